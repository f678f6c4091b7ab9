//! `sd-runtime`: how sd runs the components of a deployment on one node.
//!
//! - [`plan`]: the resolved tree checked and typed before anything starts (every error at
//!   once), with pools expanded into their replicas.
//! - [`supervision`]: the pure decisions a parent takes when a child ends (restart which
//!   children after which delay, or escalate), tested exhaustively.
//! - [`component`]: every component of a deployment as a supervised actor (ractor): the
//!   lifecycle (deploy, start, run, terminate), liveness pings, restart strategies, and the
//!   kinds' work (process domains, dir storage, shells, pools, sequences ...).
//! - [`node`]: one node's deployments: deploy, terminate, status, logs, durable records, and
//!   recovery after the agent itself was killed.
//!
//! Guarantees (names as in docs/ARCHITECTURE.md):
//! - INV-2: a deploy is acknowledged only once its record is durable, and a process domain
//!   reports running only once its process identity is; an agent killed and started again
//!   re-adopts the domains still running (by pid and start time) and restarts the others. In
//!   a cluster, a deploy is recorded only once a majority of the known members granted its
//!   name, so of two deploys of one name through two nodes at most one is acknowledged.
//! - INV-3: terminate, and a failed deploy, undo everything in reverse order: no process,
//!   directory or file of the deployment is left on the host.
//! - INV-5: restarts stay within the declared intensity, then escalate.
//!
//! [`TestBreaks`] switches some of these mechanisms off, only so that the chaos checker can
//! be shown to catch the violations; the default breaks nothing.
//!
//! Components talk to their parent and children only through [`component::ComponentRef`]
//! and the deployment's registry, never through knowledge of where those run, so the
//! cluster layer can make them remote.

pub mod cluster;
pub mod component;
pub mod metrics;
pub mod node;
pub mod plan;
mod records;
pub mod settings;
pub mod supervision;
pub mod vm_host;

pub use cluster::Peers;
pub use node::{EventCursor, LogLocation, Node, NodeConfig, NodeMetrics, TestBreaks};
pub use sd_drivers::qemu::Accelerator;

/// What went wrong in the runtime. The messages name the deployment, component and attribute.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An attribute has a value the runtime cannot use.
    #[error("`{path}:{attribute}`: {reason}")]
    InvalidAttribute {
        /// The component's path.
        path: String,
        /// The attribute.
        attribute: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A live change of an attribute was refused; nothing changed.
    #[error("cannot set `{path}:{attribute}`: {reason}")]
    Setting {
        /// The component's path.
        path: String,
        /// The attribute.
        attribute: String,
        /// Why.
        reason: String,
    },
    /// The deployment is not running, so it cannot be changed live.
    #[error(
        "deployment \"{name}\" is {state}, not running: only a running deployment can be changed live"
    )]
    NotRunning {
        /// The deployment.
        name: String,
        /// Its state.
        state: String,
    },
    /// The description does not resolve or plan; nothing was started.
    #[error("the description is invalid ({} error{})", errors.len(), if errors.len() == 1 { "" } else { "s" })]
    InvalidDescription {
        /// Each error, rendered with its file:line:column and caret where it has one.
        errors: Vec<String>,
        /// Where each error that has a place is.
        diagnostics: Vec<sd_proto::Diagnostic>,
    },
    /// The deployment name breaks the naming rule.
    #[error("invalid deployment name \"{name}\": {rule}")]
    InvalidName {
        /// The name.
        name: String,
        /// The rule.
        rule: &'static str,
    },
    /// A deployment of that name exists already.
    #[error(
        "a deployment named \"{name}\" exists already ({state}); terminate it first or choose another name"
    )]
    Exists {
        /// The name.
        name: String,
        /// Its state.
        state: String,
    },
    /// No deployment of that name.
    #[error("no deployment named \"{name}\"")]
    NotFound {
        /// The name.
        name: String,
    },
    /// No component at that path in the deployment.
    #[error("deployment \"{deployment}\" has no component `{path}`")]
    NoComponent {
        /// The deployment.
        deployment: String,
        /// The path asked for.
        path: String,
    },
    /// The node's durable state failed.
    #[error(transparent)]
    Store(#[from] sd_store::Error),
    /// A file of the node's data dir could not be used.
    #[error("{action} `{path}`: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A change could not be made durable (the store's file failed: disk full, I/O error).
    /// The change stays in the node's memory and is written again once the store works.
    #[error(
        "{}: {reason}",
        if *disk_full {
            "the node's disk is full, so its state cannot be recorded durably (free some space: the agent carries on by itself once there is room)"
        } else {
            "cannot record the node's state durably"
        }
    )]
    Durability {
        /// Why, as the store says it (naming its file).
        reason: String,
        /// Whether the cause is the disk being full ([`sd_store::Error::is_disk_full`]).
        disk_full: bool,
    },
    /// Another node of the cluster could not do what was asked.
    #[error("node \"{node}\": {reason}")]
    Remote {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// The node is shutting down and takes no more work.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

impl Error {
    /// Whether the cause is the node's disk being full (its store, or a file of its data dir,
    /// could not be written for want of space). Such a failure passes once there is room.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Durability { disk_full, .. } => *disk_full,
            Error::Store(error) => error.is_disk_full(),
            Error::Io { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
