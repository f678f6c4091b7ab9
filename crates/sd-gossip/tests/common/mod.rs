//! What the integration tests share: starting nodes on loopback and waiting for conditions.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sd_gossip::{Membership, MembershipConfig, NodeMeta, Resources};

pub const CLUSTER: &str = "test-cluster";
pub const KEY: [u8; 32] = [42; 32];

pub fn meta(name: &str, generation: u64) -> NodeMeta {
    NodeMeta {
        name: name.to_string(),
        generation,
        quic_addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
        api_url: Some(format!("http://{name}.invalid")),
        capacity: Resources {
            vcpus: 8,
            memory_mib: 16_384,
        },
        free: Resources {
            vcpus: 8,
            memory_mib: 16_384,
        },
        labels: BTreeMap::from([("zone".to_string(), "z1".to_string())]),
        version: "0.1.0".to_string(),
        accelerator: "tcg".to_string(),
    }
}

pub fn config(seeds: &[SocketAddr]) -> MembershipConfig {
    let mut config = MembershipConfig::new(CLUSTER, KEY, SocketAddr::from(([127, 0, 0, 1], 0)));
    config.seeds = seeds.to_vec();
    config
}

pub async fn start(name: &str, generation: u64, seeds: &[SocketAddr]) -> Membership {
    Membership::start(config(seeds), meta(name, generation))
        .await
        .expect("membership starts")
}

/// Starts `count` nodes `n0..`, all seeded with `n0`.
pub async fn start_cluster(count: usize) -> Vec<Membership> {
    let first = start("n0", 1, &[]).await;
    let seed = first.gossip_addr();
    let mut nodes = vec![first];
    for index in 1..count {
        nodes.push(start(&format!("n{index}"), 1, &[seed]).await);
    }
    nodes
}

/// Polls `condition` every 10 ms until it holds; returns how long that took, or `None` at
/// the timeout.
pub async fn wait_until(
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn alive_names(node: &Membership) -> Vec<String> {
    node.alive_members()
        .into_iter()
        .map(|member| member.meta.name)
        .collect()
}

/// Waits until every node sees all `count` nodes alive.
pub async fn wait_converged(nodes: &[Membership], count: usize, timeout: Duration) -> Duration {
    wait_until(timeout, || {
        nodes.iter().all(|node| node.alive_members().len() == count)
    })
    .await
    .unwrap_or_else(|| {
        let views: Vec<_> = nodes.iter().map(alive_names).collect();
        panic!("no convergence within {timeout:?}: {views:?}")
    })
}
