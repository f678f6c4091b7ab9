//! Runtime figures with real processes (prints them; not a timed test):
//! - deploy+start of 1,000 process domains on one node (target: under 2 s), and their terminate;
//! - a process domain's crash to its restarted process running, p50 and p99 (target p50 under
//!   20 ms);
//! - the CPU the liveness checks cost: 1,000 idle domains pinged every 2 s and every 10 s
//!   (the paper saw 0.25% between the two).
//!
//! Run: `cargo bench -p sd-runtime --bench domains`

#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use sd_proto::{ComponentState, DeployRequest, DeploymentState};
use sd_runtime::{Node, NodeConfig};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

async fn deploy(node: &Node, name: &str, body: &str) {
    node.deploy(DeployRequest {
        name: name.into(),
        description: format!("#include \"prelude.sf\"\n{body}"),
        source: format!("{name}.sf"),
    })
    .await
    .unwrap();
}

async fn wait_running(node: &Node, name: &str) {
    loop {
        let state = node.status(name).unwrap().deployment.state;
        match state {
            DeploymentState::Running => return,
            DeploymentState::Failed { reason } => panic!("{reason}"),
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

async fn thousand_domains(node: &Node) {
    for round in 1..=3 {
        let name = format!("big{round}");
        let started = Instant::now();
        deploy(
            node,
            &name,
            r#"sfConfig extends Pool { replicas 1000; template extends LAZY ProcessDomain { command [| "/bin/sleep", "600" |]; } }"#,
        )
        .await;
        wait_running(node, &name).await;
        let up = started.elapsed();
        let status = node.status(&name).unwrap();
        let running = status
            .components
            .iter()
            .filter(|c| c.state == ComponentState::Running && c.pid.is_some())
            .count();
        assert_eq!(running, 1000);
        let started = Instant::now();
        node.terminate(&name).await.unwrap();
        let down = started.elapsed();
        println!(
            "1,000 process domains, round {round}: deploy+start {:.0} ms, terminate {:.0} ms",
            up.as_secs_f64() * 1e3,
            down.as_secs_f64() * 1e3
        );
    }
}

async fn crash_to_restart(node: &Node) {
    deploy(
        node,
        "crash",
        r#"sfConfig extends Compound { sdMaxRestarts 1000; sdRestartWindow 1; d extends ProcessDomain { command [| "/bin/sleep", "600" |]; } }"#,
    )
    .await;
    wait_running(node, "crash").await;
    let mut events = node.events();
    let mut samples = Vec::new();
    for _ in 0..200 {
        let status = node.status("crash").unwrap();
        let pid = status.components[1].pid.unwrap();
        // Pace the crashes so that each restart is the first in its window (no backoff).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        while events.try_recv().is_ok() {}
        let killed = Instant::now();
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        loop {
            let event = events.recv().await.unwrap();
            if event.path == "sfConfig:d" && event.state == "running" {
                break;
            }
        }
        samples.push(killed.elapsed());
        if samples.len() == 60 {
            break;
        }
    }
    samples.sort();
    println!(
        "crash to restarted process running ({} crashes): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (includes ~1 ms to run kill(1))",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.9).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
    node.terminate("crash").await.unwrap();
}

/// This process's CPU time (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    // Clock ticks: 100 per second on Linux.
    Duration::from_millis((fields[0] + fields[1]) * 10)
}

async fn liveness_cost(node: &Node) {
    let window = Duration::from_secs(20);
    for delay in [2, 10] {
        let name = format!("live{delay}");
        deploy(
            node,
            &name,
            &format!(
                r#"sfConfig extends Pool {{ sfLivenessDelay {delay}; replicas 1000; template extends LAZY ProcessDomain {{ command [| "/bin/sleep", "600" |]; }} }}"#
            ),
        )
        .await;
        wait_running(node, &name).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = cpu_time();
        tokio::time::sleep(window).await;
        let used = cpu_time() - before;
        println!(
            "liveness of 1,000 idle domains every {delay} s: {:.3}% of one core over {} s",
            used.as_secs_f64() * 100.0 / window.as_secs_f64(),
            window.as_secs()
        );
        node.terminate(&name).await.unwrap();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported here.
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
            vm_accelerator: Some(sd_runtime::Accelerator::Tcg),
            peers: None,
            test_breaks: sd_runtime::TestBreaks::default(),
        })
        .await
        .unwrap();
        thousand_domains(&node).await;
        crash_to_restart(&node).await;
        liveness_cost(&node).await;
    });
}
