//! What a node does with the bytes of a peer's request or reply, short of acting on it: the
//! transport's frame header, then the size-limited bincode decode of a `PeerRequest` or a
//! `PeerResponse`. Any bytes must decode or be refused with an error, never panic, hang or
//! allocate past the limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_proto::peer::{PeerRequest, PeerResponse};

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.first_chunk::<{ sd_net::codec::FRAME_HEADER }>() {
        let _ = sd_net::codec::frame_length(*header);
    }
    if let Ok(request) = sd_net::codec::decode::<PeerRequest>(data) {
        // What decodes must encode again.
        let _ = sd_net::codec::encode(&request);
    }
    let _ = sd_net::codec::decode::<PeerResponse>(data);
});
