//! End-to-end test of `sd demo`, the README's first command: it runs the real binary from a
//! directory that is not the repository, with a client environment pointing elsewhere.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the whole demo may take.
const LIMIT: Duration = Duration::from_secs(60);

fn read_all(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The pids of the processes whose environment holds every one of `vars`.
fn processes_with(vars: &[String]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let environ: Vec<&[u8]> = environ.split(|byte| *byte == 0).collect();
            vars.iter().all(|var| environ.contains(&var.as_bytes()))
        })
        .collect()
}

#[test]
fn demo_deploys_heals_a_killed_worker_and_leaves_nothing() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let mut demo = Command::new(env!("CARGO_BIN_EXE_sd"))
        .arg("demo")
        .current_dir(cwd.path())
        .env("SD_AGENT", "http://127.0.0.1:1")
        .env("SD_DATA_DIR", cwd.path().join("nowhere"))
        .env_remove("SD_TOKEN_FILE")
        .env_remove("SD_DEMO_WORKERS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sd demo starts");
    let stdout = read_all(demo.stdout.take().expect("stdout"));
    let stderr = read_all(demo.stderr.take().expect("stderr"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = demo.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            // Ctrl-C: the demo terminates its deployment and stops its agent.
            let _ = Command::new("kill")
                .args(["-INT", &demo.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(10));
            let _ = demo.kill();
            let _ = demo.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().expect("stdout");
    let stderr = stderr.join().expect("stderr");
    let output = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("sd demo took more than 60 s\n{output}"));
    assert!(status.success(), "{status}\n{output}");

    for shown in [
        "1. starting a cluster of three agents",
        "node-a *",
        "web: 22 components running",
        "root node-b",
        "the web console shows it live at http://127.0.0.1:",
        "sfConfig:pool sdMaxRestarts: 20 -> 30 (validated and committed on node-",
        "3. losing node-c",
        "runs again on node-",
        "ms after the loss",
        "terminated web",
        "node-c comes back",
        "processes: none; directories: none",
        "6. stopping the agents",
        "done: ",
    ] {
        assert!(stdout.contains(shown), "`{shown}` is not shown\n{output}");
    }
    assert!(stderr.is_empty(), "{output}");

    let dir = stdout
        .split_once("), in ")
        .and_then(|(_, rest)| rest.split_once(":\n"))
        .map(|(dir, _)| dir.to_string())
        .unwrap_or_else(|| panic!("the directory is not shown\n{output}"));
    assert!(!Path::new(&dir).exists(), "{dir} is left\n{output}");
    for node in ["node-a", "node-b", "node-c"] {
        let left = processes_with(&[
            "SD_DEPLOYMENT=web".to_string(),
            format!("SD_DATA_DIR={dir}/{node}"),
        ]);
        assert!(left.is_empty(), "processes {left:?} are left\n{output}");
    }
}
