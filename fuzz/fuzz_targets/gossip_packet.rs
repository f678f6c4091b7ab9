//! What a node does with a gossip datagram before chitchat sees it: `accept_packet`, the very
//! path of the node's socket (version, nonce, freshness, XChaCha20-Poly1305 tag, the replay
//! window, then the content check and the digest budget for what opens). Any bytes must be
//! accepted or dropped with a counted reason, never panic. Authentic packets with arbitrary
//! plaintexts are the `gossip_plaintext` target's.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = sd_gossip::PacketKey::new(&[7; 32], "fuzz");
    let now_ms = 1_800_000_000_000;
    let mut window = sd_gossip::ReplayWindow::default();
    let mut budget = sd_gossip::sealed::DigestBudget::default();
    let _ = sd_gossip::accept_packet(&key, &mut window, None, &mut budget, data, now_ms);
});
