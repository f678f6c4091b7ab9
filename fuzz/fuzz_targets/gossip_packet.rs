//! What a node does with a gossip datagram before chitchat sees it: open the sealed packet
//! (version, nonce, freshness, XChaCha20-Poly1305 tag) and check it against the replay window.
//! Any bytes must be opened or dropped with a counted reason, never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = sd_gossip::PacketKey::new(&[7; 32], "fuzz");
    let now_ms = 1_800_000_000_000;
    if let Ok(opened) = sd_gossip::open_packet(&key, data, now_ms) {
        let mut window = sd_gossip::ReplayWindow::default();
        let _ = window.check(&opened, now_ms);
    }
});
