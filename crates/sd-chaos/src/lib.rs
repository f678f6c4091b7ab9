//! `sd-chaos`: chaos testing of sd, the way Jepsen does it and reproducible by seed like
//! FoundationDB's simulations. A scenario (`chaos/*.toml`) names a cluster size, a
//! description, faults (a schedule, a seeded random one, or both) and the invariants of
//! ../shared/DESIGN.md to check. A run starts real `sd agent` processes on loopback
//! (sd-testkit), deploys, lets the [`nemesis`] inject the faults while the [`observe`]r
//! samples what runs where and who sees whom, heals, and has the [`checker`] give a verdict
//! on each invariant with its evidence, plus detection and recovery times, duplicate
//! instance-seconds, orphans and false deaths ([`report`]).
//!
//! Guarantees:
//! - The same scenario and seed give the same fault schedule, targets included
//!   ([`schedule::plan`] is pure; its generator is fixed, not a crate's).
//! - A run leaves nothing behind: agents, workloads, partitions (nftables tables), small
//!   disks (tmpfs) are removed when it ends, whatever its outcome; the files are kept only
//!   for a failed run (or when asked), for the evidence.
//! - Faults in packets are injected by the agents' own transports (gossip and QUIC), which
//!   accept them only when started with `--chaos`: there is no `tc netem` here.
//! - The ground truth of what runs is `/proc`, not the agents' word.

pub mod checker;
pub mod nemesis;
pub mod observe;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;

use std::path::PathBuf;

pub use report::{Aggregate, Report};
pub use run::{RunOptions, run};
pub use scenario::Scenario;

/// What went wrong running a scenario (a violated invariant is not an error: it is in the
/// report).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scenario file (or its description) cannot be used.
    #[error("{path}: {reason}")]
    Scenario {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The local cluster could not be driven.
    #[error("cluster: {0}")]
    Cluster(#[from] sd_testkit::Error),
    /// A fault could not be injected.
    #[error("fault: {0}")]
    Fault(String),
    /// The run was interrupted (SIGINT or SIGTERM); the cluster was stopped and removed.
    #[error(
        "interrupted: the agents and their workloads were stopped, partitions and small disks removed"
    )]
    Interrupted,
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
