//! VM figures with the test guest (prints them; not a timed test). Needs QEMU and the guest
//! (`scripts/build-guest.sh`); the accelerator is probed as an agent would (here KVM hangs, so
//! TCG is used).
//! - boot to ready (the guest's SD-READY marker) of one VM, p50 over 10 boots;
//! - 8, then 16 VMs booting at once on this node: the time until the last is ready;
//! - the agent's memory per VM domain, not counting QEMU (target under 256 KiB).
//!
//! Run: `cargo bench -p sd-runtime --bench vms`

#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use sd_proto::{DeployRequest, DeploymentState};
use sd_runtime::{Node, NodeConfig};

fn guest() -> String {
    std::env::var("SD_GUEST_DIR").unwrap_or_else(|_| "/var/lib/sd/guest".into())
}

fn pool(replicas: usize) -> String {
    let g = guest();
    format!(
        r#"#include "prelude.sf"
sfConfig extends Pool {{
  replicas {replicas};
  template extends LAZY QemuDomain {{
    kernel "{g}/vmlinuz"; initrd "{g}/initrd.img"; memory 128;
    readyMarker "SD-READY"; bootTimeout 300; sdStopTimeout 5;
  }}
}}"#
    )
}

async fn up(node: &Node, name: &str, replicas: usize) -> Duration {
    let started = Instant::now();
    node.deploy(DeployRequest {
        name: name.into(),
        description: pool(replicas),
        source: "vms.sf".into(),
    })
    .await
    .unwrap();
    loop {
        match node.status(name).unwrap().deployment.state {
            DeploymentState::Running => return started.elapsed(),
            DeploymentState::Failed { reason } => panic!("{reason}"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(NodeConfig {
            name: "bench".into(),
            data_dir: dir.path().to_path_buf(),
            vm_accelerator: None,
            peers: None,
            test_breaks: sd_runtime::TestBreaks::default(),
        })
        .await
        .unwrap();
        let mut boots = Vec::new();
        for n in 0..10 {
            let name = format!("one{n}");
            boots.push(up(&node, &name, 1).await);
            node.terminate(&name).await.unwrap();
        }
        boots.sort();
        println!(
            "boot to ready, one VM ({}), 10 boots: p50 {:.2} s, min {:.2} s, max {:.2} s",
            node.info().vm_driver,
            boots[4].as_secs_f64(),
            boots[0].as_secs_f64(),
            boots[9].as_secs_f64()
        );
        for count in [8, 16] {
            let before = rss_kib();
            let name = format!("many{count}");
            let took = up(&node, &name, count).await;
            let after = rss_kib();
            println!(
                "{count} VMs booting at once: all ready after {:.2} s; agent memory per VM domain {} KiB (RSS {} -> {} KiB)",
                took.as_secs_f64(),
                after.saturating_sub(before) / count as u64,
                before,
                after
            );
            node.terminate(&name).await.unwrap();
        }
    });
}
