//! sd-net: the peer transport of sd.
//!
//! This crate owns everything that crosses the wire between agents, and no other crate talks
//! QUIC or TLS:
//!
//! - **QUIC** ([quinn]) with **mutual TLS** ([rustls], the `ring` provider passed explicitly
//!   with `builder_with_provider`: with two providers compiled in, rustls' default builders
//!   panic). ALPN is [`tls::ALPN`].
//! - **The cluster's PKI files** ([`pki`]): a cluster CA, one certificate per node naming the
//!   node as a DNS SAN, and the gossip key.
//! - **Fault injection for chaos tests** ([`faults`]): outgoing UDP datagrams lost, delayed
//!   or duplicated under quinn, as [`Endpoint::set_faults`] says; none by default.
//! - **The wire codec** ([`codec`]): bincode 2.0.1 behind one small module, every decode
//!   bounded by [`codec::MAX_MESSAGE`], every frame tagged with [`codec::PROTOCOL_VERSION`].
//!
//! Guarantees:
//! - Nothing runs unencrypted: both ends present a certificate signed by the cluster CA. A
//!   peer whose certificate comes from another CA, or does not name the node it is dialled as,
//!   is refused and counted ([`Stats::refused_handshakes`]).
//! - The server hands each request's handler the peer's node name as read from its
//!   certificate ([`PeerName`]), never as claimed by the peer.
//! - Every request travels on its own QUIC stream (no head-of-line blocking between unrelated
//!   callers) and every call has a deadline ([`Error::Timeout`]).
//! - A malformed, oversized or foreign-version request is answered with an error frame and
//!   counted ([`Stats::decode_errors`]); it neither panics nor hangs the server.
//! - A dead peer's connection is dropped within [`endpoint::IDLE_TIMEOUT`]; a peer that
//!   restarts resets stale connections at once (its stateless-reset key derives from its node
//!   key), and a call that meets such a reset is retried once on a fresh connection.
//!
//! What is not guaranteed: exactly-once delivery. A call that fails may or may not have
//! reached the peer's handler; callers that need idempotence carry their own epochs.

pub mod codec;
pub mod endpoint;
pub mod faults;
pub mod pki;
pub mod stats;
pub mod tls;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub use endpoint::{Endpoint, Faults, PeerName, Service};
pub use futures::future::BoxFuture;
pub use pki::{ClusterFiles, Identity, NodeFiles};
pub use stats::Stats;

/// The errors of sd-net; each variant's doc comment is its message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// invalid name `{name}`: {reason}
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// a cluster CA already exists at {0}: refusing to overwrite it
    #[error("a cluster CA already exists at {0}: refusing to overwrite it")]
    CaExists(PathBuf),
    /// node `{node}` already has a certificate at {path}: refusing to overwrite it
    #[error("node `{node}` already has a certificate at {path}: refusing to overwrite it")]
    NodeExists {
        /// The node name.
        node: String,
        /// Its existing certificate.
        path: PathBuf,
    },
    /// cannot access {path}: {source}
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// malformed cluster file {path}: {reason}
    #[error("malformed cluster file {path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// certificate generation failed: {0}
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    /// TLS configuration failed: {0}
    #[error("TLS configuration failed: {0}")]
    Tls(String),
    /// cannot bind the endpoint to {addr}: {source}
    #[error("cannot bind the endpoint to {addr}: {source}")]
    Bind {
        /// The requested listen address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// message of {size} bytes exceeds the {limit}-byte limit
    #[error("message of {size} bytes exceeds the {limit}-byte limit")]
    FrameTooLarge {
        /// The size of the refused message.
        size: usize,
        /// The limit, [`codec::MAX_MESSAGE`].
        limit: usize,
    },
    /// protocol version mismatch: the peer speaks version {theirs}, this node speaks version {ours}
    #[error(
        "protocol version mismatch: the peer speaks version {theirs}, this node speaks version {ours}"
    )]
    VersionMismatch {
        /// This build's [`codec::PROTOCOL_VERSION`].
        ours: u16,
        /// The version found in the frame.
        theirs: u16,
    },
    /// cannot encode message: {0}
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// cannot decode message: {0}
    #[error("cannot decode message: {0}")]
    Decode(String),
    /// cannot connect to node `{node}` at {addr}: {reason}
    #[error("cannot connect to node `{node}` at {addr}: {reason}")]
    Connect {
        /// The dialled node.
        node: String,
        /// The dialled address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// handshake with node `{node}` at {addr} refused: {reason}
    #[error("handshake with node `{node}` at {addr} refused: {reason}")]
    Handshake {
        /// The dialled node.
        node: String,
        /// The dialled address.
        addr: SocketAddr,
        /// Why, as TLS tells it.
        reason: String,
    },
    /// connection to node `{node}` lost: {reason}
    #[error("connection to node `{node}` lost: {reason}")]
    ConnectionLost {
        /// The peer.
        node: String,
        /// Why.
        reason: String,
    },
    /// call to node `{node}` timed out after {deadline:?}
    #[error("call to node `{node}` timed out after {deadline:?}")]
    Timeout {
        /// The called node.
        node: String,
        /// The deadline that expired.
        deadline: Duration,
    },
    /// node `{node}` refused the request: {message}
    #[error("node `{node}` refused the request: {message}")]
    Remote {
        /// The called node.
        node: String,
        /// The peer's explanation.
        message: String,
    },
    /// the endpoint is closed
    #[error("the endpoint is closed")]
    Closed,
}

/// The result of sd-net's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
