//! An idle cluster sees no false death (its own test binary, so that no other test competes
//! for the CPU meanwhile).

mod common;

use std::time::Duration;

use common::*;
use sd_gossip::ClusterChange;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_five_node_cluster_sees_no_death_for_a_minute() {
    let nodes = start_cluster(5).await;
    wait_converged(&nodes, 5, Duration::from_secs(10)).await;
    let mut receivers: Vec<_> = nodes.iter().map(|node| node.changes()).collect();
    let idle = Duration::from_secs(
        std::env::var("SD_GOSSIP_IDLE_SECS")
            .ok()
            .and_then(|secs| secs.parse().ok())
            .unwrap_or(60),
    );
    let deadline = tokio::time::Instant::now() + idle;
    let mut checks = 0u64;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        checks += 1;
        for node in &nodes {
            assert_eq!(alive_names(node).len(), 5, "{:?}", alive_names(node));
        }
    }
    for (node, receiver) in nodes.iter().zip(receivers.iter_mut()) {
        let deaths: Vec<_> = std::iter::from_fn(|| receiver.try_recv().ok())
            .filter(|change| matches!(change, ClusterChange::Died(_)))
            .collect();
        assert!(deaths.is_empty(), "{}: {deaths:?}", node.local().name);
    }
    for node in &nodes {
        let name = node.local().name;
        let peer = if name == "n0" { "n1" } else { "n0" };
        let timeout = node.failure_detection_timeout(peer).await;
        println!(
            "{name}: detection timeout for {peer} {timeout:?}, {:?}",
            node.stats()
        );
        // Everything chitchat sends passes the content check.
        assert_eq!(node.stats().dropped_malformed, 0, "{:?}", node.stats());
    }
    println!("idle for {idle:?}, {checks} checks, no death");
    for node in nodes {
        node.shutdown().await;
    }
}
