//! Real clusters on 127.0.0.1: convergence, failure detection, authentication, restarts and
//! metadata propagation.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sd_gossip::{ClusterChange, Faults, MemberState, Membership, MembershipConfig, Resources};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_converge_and_see_each_others_metadata() {
    let nodes = start_cluster(5).await;
    let took = wait_converged(&nodes, 5, Duration::from_secs(10)).await;
    println!("5 nodes converged in {took:?}");
    for node in &nodes {
        let members = node.members();
        let names: Vec<_> = members.iter().map(|member| member.name()).collect();
        assert_eq!(names, ["n0", "n1", "n2", "n3", "n4"]);
        for member in &members {
            assert_eq!(member.meta, meta(member.name(), 1));
            assert_eq!(member.state, MemberState::Alive);
        }
        assert_eq!(node.local(), meta(&node.local().name, 1));
    }
    let gossip_addr = nodes[3].gossip_addr();
    let seen_by_first = nodes[0].members();
    assert_eq!(seen_by_first[3].gossip_addr, gossip_addr);
    let stats = nodes[0].stats();
    assert!(
        stats.sent_packets > 0 && stats.received_packets > 0,
        "{stats:?}"
    );
    assert_eq!(stats.dropped_bad_auth, 0);
    // Everything chitchat sends passes the content check.
    for node in &nodes {
        assert_eq!(node.stats().dropped_malformed, 0, "{:?}", node.stats());
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_seen_dead_by_every_peer_within_two_seconds() {
    let nodes = start_cluster(5).await;
    wait_converged(&nodes, 5, Duration::from_secs(10)).await;
    // Let the failure detectors learn the heartbeat rate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let timeout = nodes[0].failure_detection_timeout("n4").await;
    println!("n0's detection timeout for n4: {timeout:?}");
    let mut survivors = nodes;
    let victim = survivors.pop().expect("five nodes");
    let mut changes = survivors[0].changes();
    let killed_at = Instant::now();
    victim.kill().await;
    let took = wait_until(Duration::from_secs(5), || {
        survivors.iter().all(|node| {
            node.members()
                .iter()
                .any(|member| member.name() == "n4" && member.state == MemberState::Dead)
        })
    })
    .await
    .expect("n4 seen dead");
    println!("n4 seen dead by all 4 peers {took:?} after the kill");
    assert!(took < Duration::from_secs(2), "detection took {took:?}");
    let died = std::iter::from_fn(|| changes.try_recv().ok())
        .any(|change| matches!(change, ClusterChange::Died(member) if member.name() == "n4"));
    assert!(died, "a Died change is sent");
    // The dead node stays listed for majority counting.
    for node in &survivors {
        assert_eq!(node.members().len(), 5);
        assert_eq!(node.alive_members().len(), 4);
        let n4 = node
            .members()
            .into_iter()
            .find(|member| member.name() == "n4");
        assert!(n4.is_some_and(|member| member.since >= killed_at));
    }
    for node in survivors {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_key_never_joins() {
    let nodes = start_cluster(3).await;
    wait_converged(&nodes, 3, Duration::from_secs(10)).await;
    let mut config = config(&[nodes[0].gossip_addr()]);
    config.gossip_key = [7; 32];
    let intruder = Membership::start(config, meta("intruder", 1))
        .await
        .expect("intruder starts");
    // Another cluster name under the right key is refused too.
    let mut config = common::config(&[nodes[1].gossip_addr()]);
    config.cluster_name = "other-cluster".to_string();
    let stranger = Membership::start(config, meta("stranger", 1))
        .await
        .expect("stranger starts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in &nodes {
        let names = alive_names(node);
        assert_eq!(names, ["n0", "n1", "n2"]);
        assert_eq!(node.members().len(), 3);
    }
    assert_eq!(alive_names(&intruder), ["intruder"]);
    assert_eq!(alive_names(&stranger), ["stranger"]);
    let stats = nodes[0].stats();
    println!("n0 after the intruder: {stats:?}");
    assert!(stats.dropped_bad_auth > 0, "{stats:?}");
    assert!(nodes[1].stats().dropped_bad_auth > 0);
    // Nothing is answered: the intruder never receives a packet it can open, nor any at all.
    let intruder_stats = intruder.stats();
    assert_eq!(intruder_stats.received_packets, 0, "{intruder_stats:?}");
    assert_eq!(intruder_stats.dropped_bad_auth, 0, "{intruder_stats:?}");
    intruder.kill().await;
    stranger.kill().await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_is_seen_with_its_new_generation() {
    let nodes = start_cluster(3).await;
    wait_converged(&nodes, 3, Duration::from_secs(10)).await;
    let mut survivors = nodes;
    let old = survivors.pop().expect("three nodes");
    old.kill().await;
    let seed = survivors[0].gossip_addr();
    let restarted = start("n2", 2, &[seed]).await;
    let took = wait_until(Duration::from_secs(10), || {
        survivors.iter().all(|node| {
            node.members().iter().any(|member| {
                member.name() == "n2" && member.meta.generation == 2 && member.is_alive()
            })
        })
    })
    .await
    .expect("the new generation is seen alive");
    println!("restarted n2 seen alive in {took:?}");
    // Only the newest generation is reported, and it stays alive while the old one dies.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in &survivors {
        let n2: Vec<_> = node
            .members()
            .into_iter()
            .filter(|member| member.name() == "n2")
            .collect();
        assert_eq!(n2.len(), 1);
        assert_eq!(n2[0].meta.generation, 2);
        assert!(n2[0].is_alive());
    }
    restarted.shutdown().await;
    for node in survivors {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_hints_propagate() {
    let nodes = start_cluster(3).await;
    wait_converged(&nodes, 3, Duration::from_secs(10)).await;
    let mut changes = nodes[2].changes();
    let free = Resources {
        vcpus: 3,
        memory_mib: 1024,
    };
    nodes[0].update_free(free).await;
    nodes[0].set_label("rack", "r7").await;
    nodes[0].set_key("epoch/web", "12").await;
    assert_eq!(nodes[0].local().free, free);
    let took = wait_until(Duration::from_secs(5), || {
        nodes[1..].iter().all(|node| {
            let n0 = node
                .members()
                .into_iter()
                .find(|member| member.name() == "n0");
            n0.is_some_and(|member| {
                member.meta.free == free
                    && member.meta.labels.get("rack").map(String::as_str) == Some("r7")
            }) && node.key_of("n0", "epoch/web").as_deref() == Some("12")
        })
    })
    .await
    .expect("the update propagates");
    println!("metadata update propagated in {took:?}");
    let updated = std::iter::from_fn(|| changes.try_recv().ok())
        .any(|change| matches!(change, ClusterChange::Updated(member) if member.name() == "n0"));
    assert!(updated, "an Updated change is sent");
    nodes[0].remove_key("epoch/web").await;
    wait_until(Duration::from_secs(5), || {
        nodes[1].key_of("n0", "epoch/web").is_none()
    })
    .await
    .expect("the removal propagates");
    assert_eq!(nodes[1].key_of("n0", "missing"), None);
    assert_eq!(nodes[1].key_of("nobody", "epoch/web"), None);
    for node in &nodes {
        assert_eq!(node.stats().dropped_malformed, 0, "{:?}", node.stats());
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shut_down_is_seen_as_left() {
    let nodes = start_cluster(3).await;
    wait_converged(&nodes, 3, Duration::from_secs(10)).await;
    let mut survivors = nodes;
    let leaving = survivors.pop().expect("three nodes");
    let started = Instant::now();
    leaving.shutdown().await;
    wait_until(Duration::from_secs(5), || {
        survivors.iter().all(|node| {
            node.members()
                .iter()
                .any(|member| member.name() == "n2" && member.state == MemberState::Left)
        })
    })
    .await
    .expect("n2 seen as left");
    println!(
        "n2 seen as left {:?} after shutdown began",
        started.elapsed()
    );
    for node in survivors {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_packets_are_refused_as_replays_and_gossip_goes_on() {
    let nodes = start_cluster(2).await;
    nodes[0].set_faults(Faults {
        duplicate: 1.0,
        ..Faults::default()
    });
    wait_converged(&nodes, 2, Duration::from_secs(10)).await;
    nodes[0].update_free(Resources::default()).await;
    wait_until(Duration::from_secs(5), || {
        nodes[1].members()[0].meta.free == Resources::default()
    })
    .await
    .expect("updates still flow");
    let stats = nodes[1].stats();
    assert!(stats.dropped_replay > 0, "{stats:?}");
    // Cutting n0's outgoing gossip makes it dead to n1.
    nodes[0].set_faults(Faults {
        loss: 1.0,
        ..Faults::default()
    });
    wait_until(Duration::from_secs(5), || {
        nodes[1].alive_members().len() == 1
    })
    .await
    .expect("n0 cut off");
    nodes[0].set_faults(Faults::default());
    wait_converged(&nodes, 2, Duration::from_secs(10)).await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let mut config = config(&[]);
    config.listen = "0.0.0.0:0".parse().expect("address");
    let error = Membership::start(config.clone(), meta("a", 1))
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("advertise"), "{error}");
    let error = Membership::start(common::config(&[]), meta("", 1))
        .await
        .err()
        .expect("refused");
    assert_eq!(error.to_string(), "the node name is empty");
    let taken = start("a", 1, &[]).await;
    let mut config = MembershipConfig::new(CLUSTER, KEY, taken.gossip_addr());
    config.seeds.clear();
    let error = Membership::start(config, meta("b", 1))
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().starts_with("cannot bind"), "{error}");
    taken.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_is_counted_and_never_answered() {
    let node = start("a", 1, &[]).await;
    let probe = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("probe binds");
    let mut forged = vec![sd_gossip::sealed::PACKET_VERSION; 120];
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    forged[9..17].copy_from_slice(&now_ms.to_le_bytes());
    for packet in [&b"abc"[..], &forged, &[9u8; 64][..]] {
        probe
            .send_to(packet, node.gossip_addr())
            .await
            .expect("probe sends");
    }
    let stats_after = wait_until(Duration::from_secs(2), || {
        let stats = node.stats();
        stats.dropped_malformed == 2 && stats.dropped_bad_auth == 1
    })
    .await;
    assert!(stats_after.is_some(), "{:?}", node.stats());
    let mut buffer = [0u8; 2048];
    let answer =
        tokio::time::timeout(Duration::from_millis(500), probe.recv_from(&mut buffer)).await;
    assert!(answer.is_err(), "junk was answered");
    assert_eq!(node.stats().received_packets, 0);
    node.kill().await;
}
