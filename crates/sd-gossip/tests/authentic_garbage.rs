//! Packets sealed under the cluster's genuine key whose content is not what chitchat sends:
//! random bytes, chitchat headers followed by random bytes, and well-formed messages built to
//! trip chitchat up. Every one must be counted as malformed, and the node must go on gossiping
//! with its real peers (its own test binary, so that no other test competes for the CPU).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use sd_gossip::{GossipStats, Membership, PacketKey, seal_packet};

/// chitchat 0.13's envelope header: magic number (LE), then protocol version and message type.
const MAGIC: [u8; 2] = 45_139u16.to_le_bytes();
const SYN: u8 = 0;
const SYN_ACK: u8 = 1;
const ACK: u8 = 2;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Seals plaintexts under the genuine key, as a key holder would, each with a fresh nonce.
struct Forger {
    key: PacketKey,
    sender: u64,
    counter: u64,
    socket: tokio::net::UdpSocket,
}

impl Forger {
    async fn new() -> Forger {
        Forger {
            key: PacketKey::new(&KEY, CLUSTER),
            sender: fastrand::u64(..),
            counter: 0,
            socket: tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("forger binds"),
        }
    }

    async fn send(&mut self, to: SocketAddr, plaintext: &[u8]) {
        self.counter += 1;
        let packet =
            seal_packet(&self.key, self.sender, self.counter, now_ms(), plaintext).expect("seal");
        self.socket
            .send_to(&packet, to)
            .await
            .expect("forger sends");
    }
}

/// 500 plaintexts: random bytes of many lengths, and chitchat headers (valid and unknown
/// versions, SYN, SYN-ACK, ACK and unknown types) followed by random bytes. Lengths are chosen
/// so that none is a whole chitchat message by chance (a bare 4-byte BAD_CLUSTER, a 5-byte ACK
/// of an empty delta or a 7-byte SYN-ACK would be).
fn garbage() -> Vec<Vec<u8>> {
    let mut plaintexts = Vec::new();
    for seed in 0..500u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let with_header = seed % 2 == 1;
        let len = match seed % 5 {
            0 if with_header => rng.usize(8..16),
            0 => rng.usize(0..8),
            1 => 64,
            2 => rng.usize(8..200),
            3 => rng.usize(200..2_000),
            _ => rng.usize(2_000..60_000),
        };
        let mut bytes: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
        if with_header {
            bytes[..2].copy_from_slice(&MAGIC);
            bytes[2] = rng.u8(0..3);
            bytes[3] = [SYN, SYN_ACK, ACK, 4, 200][rng.usize(0..5)];
        }
        plaintexts.push(bytes);
    }
    plaintexts
}

fn put_str(buf: &mut Vec<u8>, text: &str) {
    buf.extend_from_slice(&(text.len() as u16).to_le_bytes());
    buf.extend_from_slice(text.as_bytes());
}

/// A chitchat node id: name, generation, gossip address (127.0.0.1:port).
fn put_id(buf: &mut Vec<u8>, name: &str, generation: u64, port: u16) {
    put_str(buf, name);
    buf.extend_from_slice(&generation.to_le_bytes());
    buf.push(4);
    buf.extend_from_slice(&[127, 0, 0, 1]);
    buf.extend_from_slice(&port.to_le_bytes());
}

/// A delta stream holding `ops` in one uncompressed block.
fn put_delta(buf: &mut Vec<u8>, ops: &[u8]) {
    buf.push(2);
    buf.extend_from_slice(&(ops.len() as u16).to_le_bytes());
    buf.extend_from_slice(ops);
    buf.push(0);
}

/// A SYN-ACK whose V0 digest announces the node `ghost` and whose delta gives `ghost` a
/// key-value at version 100 and then lowers its max version to 5: chitchat applies it (5 is
/// above the 0 it knows) and then asserts that the max version did not go below a key's.
fn lowering_syn_ack() -> Vec<u8> {
    let mut message = MAGIC.to_vec();
    message.extend_from_slice(&[0, SYN_ACK]);
    message.extend_from_slice(&1u16.to_le_bytes());
    put_id(&mut message, "ghost", 1, 9);
    for value in [1u64, 0, 0] {
        message.extend_from_slice(&value.to_le_bytes());
    }
    let mut ops = vec![0];
    put_id(&mut ops, "ghost", 1, 9);
    ops.extend_from_slice(&0u64.to_le_bytes());
    ops.extend_from_slice(&0u64.to_le_bytes());
    ops.push(1);
    put_str(&mut ops, "k");
    put_str(&mut ops, "v");
    ops.extend_from_slice(&100u64.to_le_bytes());
    ops.push(0);
    ops.push(2);
    ops.extend_from_slice(&5u64.to_le_bytes());
    put_delta(&mut message, &ops);
    message
}

/// An ACK whose delta is made of many tiny zstd frames each inflating to 64 KiB of zeros:
/// a 60 KB datagram that chitchat would inflate to hundreds of MB.
fn inflating_ack() -> Vec<u8> {
    let frame = zstd_zeros_frame();
    let mut message = MAGIC.to_vec();
    message.extend_from_slice(&[0, ACK]);
    while message.len() + 3 + frame.len() + 1 < 60_000 {
        message.push(1);
        message.extend_from_slice(&(frame.len() as u16).to_le_bytes());
        message.extend_from_slice(&frame);
    }
    message.push(0);
    message
}

/// A zstd frame of 65 535 zero bytes, written by hand (an RLE block), so that the test needs no
/// zstd: magic, frame header (single segment, 2-byte content size), one last RLE block.
fn zstd_zeros_frame() -> Vec<u8> {
    let size: usize = 65_535;
    let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD];
    // Frame header descriptor: content size flag 1 (2 bytes, size - 256), single segment.
    frame.push(0b0110_0000);
    frame.extend_from_slice(&((size - 256) as u16).to_le_bytes());
    // Block header: last block, type RLE (1), block size = regenerated size.
    let header = 1u32 | (1 << 1) | ((size as u32) << 3);
    frame.extend_from_slice(&header.to_le_bytes()[..3]);
    frame.push(0);
    frame
}

/// An ACK whose delta sets the max version of the node `name` (generation 1, gossiping on
/// `port`) to `u64::MAX`: chitchat applies it even to the receiver's own state, whose next
/// change then overflows `max_version + 1`.
fn maxed_out_ack(name: &str, port: u16) -> Vec<u8> {
    let mut message = MAGIC.to_vec();
    message.extend_from_slice(&[0, ACK]);
    let mut ops = vec![0];
    put_id(&mut ops, name, 1, port);
    ops.extend_from_slice(&0u64.to_le_bytes());
    ops.extend_from_slice(&0u64.to_le_bytes());
    ops.push(2);
    ops.extend_from_slice(&u64::MAX.to_le_bytes());
    put_delta(&mut message, &ops);
    message
}

/// A SYN of the right cluster whose digest lists `names` (generation 1, port 9): chitchat adds
/// every node it does not know to its own state, hence to its own digest.
fn announcing_syn(names: &[String]) -> Vec<u8> {
    let mut message = MAGIC.to_vec();
    message.extend_from_slice(&[0, SYN]);
    message.extend_from_slice(&(names.len() as u16).to_le_bytes());
    for name in names {
        put_id(&mut message, name, 1, 9);
        message.extend_from_slice(&[0; 24]);
    }
    put_str(&mut message, CLUSTER);
    message
}

/// A SYN of the right cluster whose digest claims more entries than it holds.
fn truncated_syn() -> Vec<u8> {
    let mut message = MAGIC.to_vec();
    message.extend_from_slice(&[0, SYN]);
    message.extend_from_slice(&3u16.to_le_bytes());
    put_id(&mut message, "n0", 1, 9);
    message
}

/// Checks for `duration` that every node sees all of `nodes` alive and that `target` keeps
/// receiving from its peers (its received counter rises every second).
async fn assert_keeps_gossiping(nodes: &[Membership], target: &Membership, duration: Duration) {
    let count = nodes.len();
    let started = tokio::time::Instant::now();
    let mut last_second = started;
    let mut received = target.stats().received_packets;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for node in nodes {
            assert_eq!(
                alive_names(node).len(),
                count,
                "{} sees {:?}; target stats {:?}",
                node.local().name,
                alive_names(node),
                target.stats()
            );
        }
        if last_second.elapsed() >= Duration::from_secs(1) {
            let now = target.stats().received_packets;
            assert!(
                now > received,
                "the target received nothing for a second: {:?}",
                target.stats()
            );
            received = now;
            last_second = tokio::time::Instant::now();
        }
    }
}

async fn wait_for_drops(target: &Membership, before: GossipStats, expected: u64) -> GossipStats {
    let counted = wait_until(Duration::from_secs(10), || {
        target.stats().dropped_malformed - before.dropped_malformed >= expected
    })
    .await;
    let after = target.stats();
    assert!(
        counted.is_some(),
        "{} of {expected} counted as malformed: before {before:?}, after {after:?}",
        after.dropped_malformed - before.dropped_malformed
    );
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentic_packets_with_garbage_inside_never_stop_gossip() {
    let nodes = start_cluster(3).await;
    wait_converged(&nodes, 3, Duration::from_secs(10)).await;
    let target = &nodes[1];
    let to = target.gossip_addr();
    let mut forger = Forger::new().await;
    let before = target.stats();
    let plaintexts = garbage();
    let mut unconfirmed_bytes = 0;
    for (index, plaintext) in plaintexts.iter().enumerate() {
        forger.send(to, plaintext).await;
        // In bursts of up to 32 KB, each waited for, so that the socket's receive buffer
        // (about 200 KB by default, datagram overheads included) never overflows.
        unconfirmed_bytes += plaintext.len();
        if unconfirmed_bytes >= 32_000 {
            wait_for_drops(target, before, index as u64 + 1).await;
            unconfirmed_bytes = 0;
        }
    }
    let after = wait_for_drops(target, before, plaintexts.len() as u64).await;
    println!("after {} garbage packets: {after:?}", plaintexts.len());
    assert_eq!(
        after.dropped_malformed - before.dropped_malformed,
        plaintexts.len() as u64,
        "{after:?}"
    );
    assert_eq!(after.dropped_replay, before.dropped_replay, "{after:?}");
    assert_eq!(after.dropped_bad_auth, before.dropped_bad_auth, "{after:?}");
    assert_keeps_gossiping(&nodes, target, Duration::from_secs(5)).await;
    let last = target.stats();
    println!("5 s later: {last:?}");
    assert_eq!(last.dropped_malformed, after.dropped_malformed, "{last:?}");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chaos_forge_sequence_leaves_gossip_running() {
    // What `sd chaos` forge sends, in its order: the authentic garbage packet comes after 40
    // refused ones, and is then replayed.
    let nodes = start_cluster(3).await;
    wait_converged(&nodes, 3, Duration::from_secs(10)).await;
    let target = &nodes[2];
    let to = target.gossip_addr();
    let probe = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("probe binds");
    let before = target.stats();
    let mut rng = fastrand::Rng::with_seed(1);
    for _ in 0..20 {
        let mut bytes: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(120).collect();
        bytes[0] = sd_gossip::sealed::PACKET_VERSION;
        probe.send_to(&bytes, to).await.expect("send");
    }
    let wrong = PacketKey::new(&[7; 32], CLUSTER);
    for counter in 0..20 {
        let packet = seal_packet(&wrong, 1, counter, now_ms(), b"x").expect("seal");
        probe.send_to(&packet, to).await.expect("send");
    }
    let key = PacketKey::new(&KEY, CLUSTER);
    let plaintext: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(64).collect();
    let genuine = seal_packet(&key, 2, 1, now_ms(), &plaintext).expect("seal");
    for _ in 0..21 {
        probe.send_to(&genuine, to).await.expect("send");
    }
    let old = now_ms() - 60_000;
    for counter in 0..20 {
        let packet = seal_packet(&key, 3, counter, old, &plaintext).expect("seal");
        probe.send_to(&packet, to).await.expect("send");
    }
    let counted = wait_until(Duration::from_secs(5), || {
        let stats = target.stats();
        // The random packets carry random timestamps: refused as stale, like the old ones
        // and the replays.
        stats.dropped_malformed - before.dropped_malformed == 1
            && stats.dropped_bad_auth - before.dropped_bad_auth == 20
            && stats.dropped_replay - before.dropped_replay == 60
    })
    .await;
    let after = target.stats();
    assert!(counted.is_some(), "before {before:?}, after {after:?}");
    assert_keeps_gossiping(&nodes, target, Duration::from_secs(4)).await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_formed_hostile_messages_are_refused() {
    let nodes = start_cluster(3).await;
    wait_converged(&nodes, 3, Duration::from_secs(10)).await;
    let target = &nodes[0];
    let to = target.gossip_addr();
    let mut forger = Forger::new().await;
    let before = target.stats();
    let hostile = [
        lowering_syn_ack(),
        inflating_ack(),
        truncated_syn(),
        maxed_out_ack("n0", to.port()),
    ];
    for message in &hostile {
        forger.send(to, message).await;
    }
    let after = wait_for_drops(target, before, hostile.len() as u64).await;
    println!("after the hostile messages: {after:?}");
    assert_keeps_gossiping(&nodes, target, Duration::from_secs(4)).await;
    // The target can still change its own state, and its peers see the change.
    target.set_key("after", "hostile").await;
    wait_until(Duration::from_secs(5), || {
        nodes[1].key_of("n0", "after").as_deref() == Some("hostile")
    })
    .await
    .expect("the target's own changes still propagate");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_nodes_cannot_outgrow_the_digest() {
    let nodes = start_cluster(3).await;
    wait_converged(&nodes, 3, Duration::from_secs(10)).await;
    let target = &nodes[0];
    let to = target.gossip_addr();
    let mut forger = Forger::new().await;
    let before = target.stats();
    // One node with a 65 300-byte name: the target's own digest would no longer leave chitchat
    // the 100 bytes it asserts for a delta, and its server task would die on the next SYN.
    forger
        .send(to, &announcing_syn(&["g".repeat(65_300)]))
        .await;
    let after_one = wait_for_drops(target, before, 1).await;
    // Then 400 nodes per SYN with 100-byte names, 56 KB a SYN: the first fits, no other. (The
    // target's own SYNs now carry those 400 nodes: with 56 KB datagrams in every direction, a
    // forged one may be lost to a full receive buffer, hence several.)
    for round in 0..6 {
        let names: Vec<String> = (0..400)
            .map(|index| format!("{round}-{index:03}-{}", "x".repeat(94)))
            .collect();
        forger.send(to, &announcing_syn(&names)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let after = wait_for_drops(target, after_one, 1).await;
    println!("after the announcements: {after:?}");
    assert_keeps_gossiping(&nodes, target, Duration::from_secs(4)).await;
    for node in nodes {
        node.shutdown().await;
    }
}
