//! Cluster figures (prints them; not timed tests), on five real agents on loopback
//! (`sd-testkit`):
//! - failure detection: from a node's loss (its agent and workloads SIGKILLed) until every
//!   other node sees it dead (target < 2 s), p50 and max over 10 losses;
//! - node loss to domains running: from the loss until the last of its domains runs again on
//!   another node (target < 3 s), p50 and max over the same 10 losses;
//! - deploy of 1,000 process domains spread over 5 nodes from one request (target < 5 s);
//! - idle agent RSS in a 5-node cluster.
//!
//! The RPC round trip is `cargo bench -p sd-net --bench rpc`.
//!
//! Run: `cargo bench -p sd-cli --bench cluster` (`SD_BENCH_PART=losses` or `deploy` for one
//! part).

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::expect_used
)]

use std::path::Path;
use std::time::{Duration, Instant};

use sd_proto::{ComponentState, DeploymentState, DeploymentStatus};
use sd_testkit::LocalCluster;

const NODES: [&str; 5] = ["b1", "b2", "b3", "b4", "b5"];

fn pool(replicas: usize) -> String {
    format!(
        r#"#include "prelude.sf"
sfConfig extends Compound {{
  sfLivenessDelay 1;
  sched extends Scheduler {{ sdPlacement "spread"; }}
  pool extends Pool {{
    replicas {replicas};
    scheduler LAZY sched;
    sdRestartStrategy "one_for_one";
    sdMaxRestarts 1000;
    sdRestartWindow 60;
    template extends LAZY Compound {{
      worker extends ProcessDomain {{ command [| "/bin/sleep", "3600" |]; }}
    }}
  }}
}}
"#
    )
}

fn workers(status: &DeploymentStatus) -> impl Iterator<Item = &sd_proto::ComponentStatus> {
    status
        .components
        .iter()
        .filter(|c| c.path.ends_with(":worker"))
}

fn running(status: &DeploymentStatus, count: usize) -> bool {
    status.deployment.state == DeploymentState::Running
        && workers(status)
            .filter(|c| c.state == ComponentState::Running)
            .count()
            == count
}

fn wait_status(
    cluster: &LocalCluster,
    node: &str,
    name: &str,
    within: Duration,
    check: impl Fn(&DeploymentStatus) -> bool,
) -> DeploymentStatus {
    cluster.wait_status(node, name, within, check).unwrap()
}

fn quantiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() - 1])
}

fn start(dir: &Path) -> LocalCluster {
    LocalCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_sd")),
        dir,
        &NODES,
        &["--vm-accelerator", "tcg"],
    )
    .expect("the cluster starts")
}

fn losses(cluster: &mut LocalCluster) {
    cluster.deploy("b1", "ha", &pool(10)).unwrap();
    wait_status(cluster, "b1", "ha", Duration::from_secs(30), |s| {
        running(s, 10)
    });
    let mut detection = Vec::new();
    let mut recovery = Vec::new();
    for run in 0..10 {
        // A node other than the root that runs domains now.
        let status = cluster.status("b1", "ha").unwrap();
        let victim = NODES[1 + run % 4];
        let moved: Vec<String> = workers(&status)
            .filter(|c| c.node == victim)
            .map(|c| c.path.clone())
            .collect();
        let lost_at_ms = sd_store::unix_ms_now();
        let lost_at = Instant::now();
        cluster.kill_machine(victim).unwrap();
        let others: Vec<&str> = NODES.iter().copied().filter(|n| *n != victim).collect();
        let mut seen = vec![false; others.len()];
        while !seen.iter().all(|s| *s) {
            for (i, node) in others.iter().enumerate() {
                if !seen[i]
                    && cluster.members(node).is_ok_and(|members| {
                        members
                            .iter()
                            .any(|m| m.name == victim && m.state != "alive")
                    })
                {
                    seen[i] = true;
                }
            }
            assert!(lost_at.elapsed() < Duration::from_secs(30), "no detection");
            std::thread::sleep(Duration::from_millis(10));
        }
        detection.push(lost_at.elapsed());
        let healed = wait_status(cluster, "b1", "ha", Duration::from_secs(30), |s| {
            running(s, 10) && workers(s).all(|c| c.node != victim)
        });
        let back_ms = workers(&healed)
            .filter(|c| moved.contains(&c.path))
            .filter_map(|c| c.started_unix_ms)
            .max()
            .unwrap_or(lost_at_ms);
        recovery.push(Duration::from_millis(back_ms.saturating_sub(lost_at_ms)));
        println!(
            "  loss {}: {victim} ({} domains): seen dead by all in {:.0} ms, its domains running elsewhere after {:.0} ms",
            run + 1,
            moved.len(),
            detection[run].as_secs_f64() * 1e3,
            recovery[run].as_secs_f64() * 1e3
        );
        cluster.launch(victim).unwrap();
        cluster.wait_converged(5, Duration::from_secs(30)).unwrap();
        // Spread the pool again over the node that came back: terminate and deploy anew.
        cluster.terminate("b1", "ha").unwrap();
        cluster.deploy("b1", "ha", &pool(10)).unwrap();
        wait_status(cluster, "b1", "ha", Duration::from_secs(30), |s| {
            running(s, 10)
        });
    }
    let (p50, max) = quantiles(detection);
    println!(
        "failure detection (5 nodes, 10 losses): p50 {:.0} ms, max {:.0} ms (target < 2 s)",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    let (p50, max) = quantiles(recovery);
    println!(
        "node loss to domains running elsewhere (10 losses): p50 {:.0} ms, max {:.0} ms (target < 3 s)",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    cluster.terminate("b1", "ha").unwrap();
}

fn big_deploy(cluster: &LocalCluster) {
    let started = Instant::now();
    cluster.deploy("b3", "big", &pool(1000)).unwrap();
    let status = wait_status(cluster, "b3", "big", Duration::from_secs(120), |s| {
        running(s, 1000)
    });
    let elapsed = started.elapsed();
    let mut per_node = std::collections::BTreeMap::new();
    for worker in workers(&status) {
        *per_node.entry(worker.node.clone()).or_insert(0) += 1;
    }
    println!(
        "deploy of 1,000 process domains over 5 nodes from one request: all running after {:.2} s (target < 5 s); per node {per_node:?}",
        elapsed.as_secs_f64()
    );
    let started = Instant::now();
    cluster.terminate("b2", "big").unwrap();
    println!(
        "terminate of the 1,000 from another node: {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start(dir.path());
    std::thread::sleep(Duration::from_secs(10));
    let rss: Vec<f64> = cluster
        .nodes()
        .iter()
        .map(|node| sd_testkit::rss_kib(node.agent_pid().unwrap()).unwrap() as f64 / 1024.0)
        .collect();
    let stats = cluster.stats("b1").unwrap().unwrap_or_default();
    println!(
        "idle agent RSS in a 5-node cluster after 10 s: {} MiB; gossip of b1: {} packets, {} bytes sent",
        rss.iter()
            .map(|r| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(" / "),
        stats.gossip_sent_packets,
        stats.gossip_sent_bytes
    );
    // `SD_BENCH_PART=losses` or `deploy` runs only that part.
    let part = std::env::var("SD_BENCH_PART").unwrap_or_default();
    if part.is_empty() || part == "losses" {
        losses(&mut cluster);
    }
    if part.is_empty() || part == "deploy" {
        big_deploy(&cluster);
    }
}
