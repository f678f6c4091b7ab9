//! Failure detection time on loopback: 10 runs of a 5-node cluster with the default
//! settings, one node killed per run, timed until every survivor sees it dead.
//!
//! `cargo bench -p sd-gossip --bench detection`

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sd_gossip::{MemberState, Membership, MembershipConfig, NodeMeta, Resources};

const RUNS: usize = 10;
const NODES: usize = 5;

fn meta(name: &str) -> NodeMeta {
    NodeMeta {
        name: name.to_string(),
        generation: 1,
        quic_addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
        api_url: None,
        capacity: Resources::default(),
        free: Resources::default(),
        labels: BTreeMap::new(),
        version: String::new(),
        accelerator: String::new(),
    }
}

async fn start(name: &str, seeds: &[SocketAddr]) -> anyhow::Result<Membership> {
    let mut config = MembershipConfig::new("bench", [1; 32], SocketAddr::from(([127, 0, 0, 1], 0)));
    config.seeds = seeds.to_vec();
    Ok(Membership::start(config, meta(name)).await?)
}

async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if condition() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

async fn one_run() -> anyhow::Result<Duration> {
    let first = start("n0", &[]).await?;
    let seed = first.gossip_addr();
    let mut nodes = vec![first];
    for index in 1..NODES {
        nodes.push(start(&format!("n{index}"), &[seed]).await?);
    }
    wait_until(Duration::from_secs(10), || {
        nodes.iter().all(|node| node.alive_members().len() == NODES)
    })
    .await
    .ok_or_else(|| anyhow::anyhow!("no convergence"))?;
    // Let the failure detectors learn the heartbeat rate, as in a running cluster.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim = nodes.pop().ok_or_else(|| anyhow::anyhow!("no node"))?;
    let victim_name = victim.local().name;
    victim.kill().await;
    let took = wait_until(Duration::from_secs(10), || {
        nodes.iter().all(|node| {
            node.members()
                .iter()
                .any(|member| member.meta.name == victim_name && member.state == MemberState::Dead)
        })
    })
    .await
    .ok_or_else(|| anyhow::anyhow!("not detected within 10 s"))?;
    for node in nodes {
        node.kill().await;
    }
    Ok(took)
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut times = Vec::with_capacity(RUNS);
    for run in 1..=RUNS {
        let took = runtime.block_on(one_run())?;
        println!(
            "run {run:2}: killed node seen dead by all {} peers in {took:?}",
            NODES - 1
        );
        times.push(took);
    }
    times.sort();
    let p50 = times[RUNS / 2];
    let max = times[RUNS - 1];
    println!(
        "failure detection, {NODES} nodes, {RUNS} runs: p50 {p50:?}, max {max:?}, min {:?}",
        times[0]
    );
    Ok(())
}
