//! What a node does with an authentic gossip packet (sealed under the cluster's key, so only a
//! key holder can send it) whatever its plaintext: the input is the plaintext, sealed with
//! `seal_packet` and taken through `accept_packet`, the very path of the node's socket (open,
//! replay window, `check_envelope`, digest budget). It must be accepted or refused with a
//! reason, never panic, hang or allocate past the inflation bound.
//!
//! And a differential check against chitchat 0.13 itself, which decodes every input too (so a
//! panic of its decoder would be found): a plaintext `check_envelope` accepts must be one
//! chitchat's own UDP socket decodes (the node hands only those to chitchat's codec, and would
//! otherwise wait for an answer that never comes). The plaintext is sent over loopback to a
//! `chitchat::transport::UdpSocket`, followed by a 4-byte BAD_CLUSTER message as a sentinel:
//! if the sentinel comes out first, chitchat refused the plaintext.

#![no_main]

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chitchat::transport::{Socket, UdpSocket};
use chitchat::{ChitchatId, ChitchatMessage, ProtocolVersion};
use libfuzzer_sys::fuzz_target;
use sd_gossip::sealed::DigestBudget;

const NOW_MS: u64 = 1_800_000_000_000;
/// BAD_CLUSTER, protocol version 0: the smallest whole chitchat message.
const SENTINEL: [u8; 4] = [0x53, 0xB0, 0, 3];

struct Loopback {
    runtime: tokio::runtime::Runtime,
    tap: tokio::net::UdpSocket,
    codec: UdpSocket,
    codec_addr: SocketAddr,
}

fn loopback() -> &'static Mutex<Loopback> {
    static LOOPBACK: OnceLock<Mutex<Loopback>> = OnceLock::new();
    LOOPBACK.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (tap, codec) = runtime.block_on(async {
            let tap = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("tap binds");
            let codec = UdpSocket::open("127.0.0.1:0".parse().expect("address"))
                .await
                .expect("codec binds");
            (tap, codec)
        });
        let codec_addr = codec.local_addr().expect("codec address");
        Mutex::new(Loopback {
            runtime,
            tap,
            codec,
            codec_addr,
        })
    })
}

/// Whether chitchat's UDP socket decodes `plaintext`.
fn chitchat_decodes(plaintext: &[u8]) -> bool {
    let mut guard = loopback().lock().unwrap_or_else(|poison| poison.into_inner());
    let Loopback {
        runtime,
        tap,
        codec,
        codec_addr,
    } = &mut *guard;
    runtime.block_on(async {
        tap.send_to(plaintext, *codec_addr).await.expect("send");
        tap.send_to(&SENTINEL, *codec_addr).await.expect("send");
        let wait = Duration::from_secs(5);
        let first = tokio::time::timeout(wait, codec.recv())
            .await
            .expect("the sentinel always comes")
            .expect("recv");
        let is_sentinel = first.num_bytes_received == SENTINEL.len()
            && first.envelope.version == ProtocolVersion::V0
            && first.envelope.message == ChitchatMessage::BadCluster;
        if is_sentinel && plaintext != SENTINEL {
            return false;
        }
        // The plaintext came out first: read the sentinel too.
        let second = tokio::time::timeout(wait, codec.recv())
            .await
            .expect("the sentinel always comes")
            .expect("recv");
        assert_eq!(second.num_bytes_received, SENTINEL.len());
        true
    })
}

fuzz_target!(|plaintext: &[u8]| {
    let key = sd_gossip::PacketKey::new(&[7; 32], "fuzz");
    let local = ChitchatId::new("me", 1, "127.0.0.1:9000".parse().expect("address"));
    let mut budget = DigestBudget::default();
    budget.reset([local.clone()]);
    let mut window = sd_gossip::ReplayWindow::default();
    // Too long to seal: refused before anything else, nothing to check.
    let Ok(packet) = sd_gossip::seal_packet(&key, 1, 1, NOW_MS, plaintext) else {
        return;
    };
    let accepted = sd_gossip::accept_packet(
        &key,
        &mut window,
        Some(&local),
        &mut budget,
        &packet,
        NOW_MS,
    );
    assert!(budget.digest_len() <= sd_gossip::sealed::MAX_DIGEST_LEN);
    // Its replay is refused as a replay, whatever the content.
    assert!(matches!(
        sd_gossip::accept_packet(&key, &mut window, Some(&local), &mut budget, &packet, NOW_MS),
        Err(sd_gossip::Error::ReplayedPacket)
    ));
    let checked = sd_gossip::check_envelope(plaintext, Some(&local));
    match &accepted {
        Ok(opened) => {
            assert_eq!(opened.plaintext, plaintext);
            assert!(checked.is_ok());
        }
        Err(sd_gossip::Error::BadEnvelope(_)) => {}
        Err(other) => panic!("an authentic packet refused as {other:?}"),
    }
    // chitchat's own decoder sees every input (a panic there would be found too).
    let decoded = chitchat_decodes(plaintext);
    if checked.is_ok() {
        assert!(decoded, "check_envelope accepted what chitchat refuses");
    }
});
