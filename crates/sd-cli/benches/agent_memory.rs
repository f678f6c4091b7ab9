//! Agent memory figures (prints them; not a timed test): the resident set of an idle agent
//! (target: under 15 MiB), and its growth over 1,000 deploy/terminate cycles of a small
//! deployment (target: under 1 MiB). The agent is the real `sd agent`, driven over its API.
//!
//! Run: `cargo bench -p sd-cli --bench agent_memory`

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::expect_used
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Agent {
    child: Child,
    url: String,
    token: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data_dir: &Path) -> Agent {
    let child = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args([
            "agent",
            "--name",
            "bench",
            "--api-listen",
            "127.0.0.1:0",
            "--vm-accelerator",
            "tcg",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("sd agent starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    let url_file = data_dir.join("api.url");
    while !url_file.exists() {
        assert!(Instant::now() < deadline, "the agent did not write api.url");
        std::thread::sleep(Duration::from_millis(10));
    }
    let url = std::fs::read_to_string(url_file)
        .unwrap()
        .trim()
        .to_string();
    let token = std::fs::read_to_string(data_dir.join("token"))
        .unwrap()
        .trim()
        .to_string();
    Agent { child, url, token }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

const DESCRIPTION: &str = r#"#include "prelude.sf"
sfConfig extends Compound {
  disk extends DirStorageBackend;
  app extends ProcessDomain { storageBackend LAZY ATTRIB disk; command [| "/bin/sleep", "600" |]; }
}"#;

fn cycle(agent: &Agent, n: usize) {
    let auth = format!("Bearer {}", agent.token);
    let name = format!("cycle{n}");
    let body = serde_json::json!({"name": name, "description": DESCRIPTION, "source": "bench.sf"});
    ureq::post(&format!("{}/v1/deployments", agent.url))
        .header("Authorization", &auth)
        .send_json(&body)
        .expect("deploy");
    loop {
        let status: serde_json::Value = ureq::get(&format!("{}/v1/deployments/{name}", agent.url))
            .header("Authorization", &auth)
            .call()
            .expect("status")
            .body_mut()
            .read_json()
            .unwrap();
        if status["deployment"]["state"] == "running" {
            break;
        }
        assert!(
            status["deployment"]["state"].get("failed").is_none(),
            "{status}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    ureq::delete(&format!("{}/v1/deployments/{name}?wait=true", agent.url))
        .header("Authorization", &auth)
        .call()
        .expect("terminate");
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path());
    let pid = agent.child.id();
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(pid);
    println!(
        "idle agent RSS: {:.1} MiB (target < 15 MiB)",
        idle as f64 / 1024.0
    );
    // Warm up: the first cycles fill caches, pools and the store's pages.
    for n in 0..100 {
        cycle(&agent, n);
    }
    let warm = rss_kib(pid);
    let started = Instant::now();
    for n in 100..1100 {
        cycle(&agent, n);
    }
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(pid);
    println!(
        "RSS after 100 warm-up cycles {:.2} MiB; after 1,000 more deploy/terminate cycles {:.2} MiB: growth {:+.2} MiB (target < 1 MiB); {:.1} ms per cycle",
        warm as f64 / 1024.0,
        after as f64 / 1024.0,
        (after as f64 - warm as f64) / 1024.0,
        elapsed.as_secs_f64() * 1e3 / 1000.0
    );
}
