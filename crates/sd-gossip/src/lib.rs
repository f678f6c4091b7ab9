//! `sd-gossip`: cluster membership. Who is in the cluster, what each node offers (its
//! [`NodeMeta`]: QUIC address, API URL, capacity, free resources, labels), and who is alive,
//! learned by gossip ([chitchat](https://docs.rs/chitchat) over UDP).
//!
//! Gossip carries **hints** only: membership, addresses, capacity and free-form keys other
//! crates publish (for instance deployment epochs). Authoritative placement and ownership
//! travel over mutual-TLS QUIC, in another crate; nothing here is trusted for more than a hint.
//!
//! What it guarantees:
//! - **Sealed packets.** chitchat's UDP gossip is unauthenticated, so every datagram is sealed
//!   with XChaCha20-Poly1305 under a key derived from the cluster's gossip key *and* the
//!   cluster name ([`sealed`]). A packet with a bad tag, from another key or cluster, older than
//!   [`sealed::MAX_PACKET_AGE`], replayed, or malformed is dropped silently (never answered,
//!   so nothing amplifies) and counted by reason in [`GossipStats`].
//! - **Checked content.** An authentic packet's plaintext reaches chitchat only if it is one
//!   whole chitchat message that chitchat decodes and can process ([`check_envelope`]); any
//!   other is dropped and counted as malformed at once, and nothing a peer sends ends or stalls
//!   the node's reception (see [`sealed`]).
//! - **Generations.** A node carries the generation of its agent start; a node that restarts
//!   comes back with a higher one, and only the newest generation of a name is reported: an
//!   old generation is never reported alive.
//! - **Failure detection.** With the default settings (gossip every 100 ms, phi accrual
//!   threshold tuned for it) a node whose process is gone is seen dead by every peer within
//!   about 1.5 s on a LAN or loopback; an idle cluster sees no false death (see
//!   [`MembershipConfig`] for the reasoning). Dead nodes stay listed for
//!   [`MembershipConfig::dead_node_grace_period`] (an hour by default) so callers can count
//!   known members for majority decisions, and are forgotten after.
//! - **Hosts need synchronised clocks** (NTP): a packet whose sealed timestamp is more than
//!   [`sealed::MAX_PACKET_AGE`] away from the receiver's clock is refused.
//!
//! What holders of the gossip key can no longer do: stop a node's gossip, or make chitchat
//! panic with any message known to. The panics of chitchat 0.13 on received state are the
//! assertions of `NodeState::apply_delta` (a max version lowered below a key's) and
//! `ClusterState::apply_delta` (unreachable once the former is refused), the
//! `assert!(mtu >= 100)` of its `DeltaSerializer` once its own digest outgrows a datagram (node
//! ids announced in digests: [`sealed::DigestBudget`]), and the overflow of the receiver's own
//! `max_version + 1`; each is refused before chitchat sees the message ([`envelope`]).
//!
//! What they can still do, with well-formed messages (chitchat 0.13 applies whatever state a
//! peer sends, about any node): rewrite or reset any node's key-values as its receivers see
//! them, the receiver's own included (metadata, hints, a `left` mark), for as long as that
//! node's own versions stay below the forged ones; announce node ids that never existed, up to
//! [`sealed::MAX_DIGEST_LEN`] bytes of digest, each costing every receiver about 8 KB of
//! failure detector state, and, with the budget full, keep new ids (joins, restarts) out until
//! the ghosts are scheduled for deletion (half of
//! [`MembershipConfig::dead_node_grace_period`]); make a receiver inflate up to
//! [`envelope::MAX_INFLATED_LEN`] per datagram; and plant megabytes of highly compressible
//! state, which honest nodes would then relay in deltas the others refuse (as inflating past
//! that bound), stalling the spread of updates (not liveness, carried by digests). Gossip is a
//! hint: nothing here is trusted for more. Should chitchat's server task stop for another
//! reason, [`Membership`] does not restart it.
//!
//! Fault injection for chaos tests (loss, delay, duplication of outgoing packets) is built into
//! the transport and off by default: [`Membership::set_faults`].

pub mod envelope;
pub mod membership;
pub mod sealed;

use std::net::SocketAddr;

pub use envelope::check_envelope;
pub use membership::{
    ClusterChange, Member, MemberState, Membership, MembershipConfig, NodeMeta, Resources,
};
pub use sealed::{
    Faults, GossipStats, OpenedPacket, PacketKey, ReplayWindow, SealedTransport, accept_packet,
    open_packet, seal_packet,
};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// the cluster name is empty
    #[error("the cluster name is empty")]
    EmptyClusterName,
    /// the node name is empty
    #[error("the node name is empty")]
    EmptyNodeName,
    /// cannot bind the gossip socket on {addr}: {source}
    #[error("cannot bind the gossip socket on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// the gossip listen address {0} is unspecified: set an advertise address peers can reach
    #[error(
        "the gossip listen address {0} is unspecified: set an advertise address peers can reach"
    )]
    NoAdvertiseAddress(SocketAddr),
    /// cannot start gossip: {0}
    #[error("cannot start gossip: {0}")]
    Start(String),
    /// cannot encode the node metadata: {0}
    #[error("cannot encode the node metadata: {0}")]
    EncodeMeta(#[from] serde_json::Error),
    /// packet too short ({0} bytes)
    #[error("packet too short ({0} bytes)")]
    PacketTooShort(usize),
    /// packet too large ({0} bytes)
    #[error("packet too large ({0} bytes)")]
    PacketTooLarge(usize),
    /// unknown packet format version {0}
    #[error("unknown packet format version {0}")]
    UnknownPacketVersion(u8),
    /// packet failed authentication (another key or cluster, or altered)
    #[error("packet failed authentication (another key or cluster, or altered)")]
    BadAuth,
    /// packet is stale: its timestamp is {age_ms} ms away from this node's clock
    #[error("packet is stale: its timestamp is {age_ms} ms away from this node's clock")]
    StalePacket {
        /// Distance between the packet's timestamp and the receiver's clock.
        age_ms: u64,
    },
    /// packet was already received
    #[error("packet was already received")]
    ReplayedPacket,
    /// authentic packet whose content is not a chitchat message this node accepts: {0}
    #[error("authentic packet whose content is not a chitchat message this node accepts: {0}")]
    BadEnvelope(&'static str),
}

/// The result of this crate's fallible functions.
pub type Result<T> = std::result::Result<T, Error>;
