//! `sd-store`: the durable state of one node, so that an agent killed with SIGKILL and
//! started again knows everything it had acknowledged.
//!
//! It owns one file per node (an embedded [redb](https://www.redb.org) database) holding:
//! - the node's deployments ([`DeploymentRecord`]): name, resolved description text, state,
//!   epoch, root node;
//! - their components ([`ComponentRecord`]): path, kind, state, node, process identity (pid and
//!   start time), restarts, epoch;
//! - node metadata: the generation counter ([`Store::next_generation`]), one per agent start.
//!
//! Guarantees:
//! - **INV-2 (nothing lost)**: every write method returns only after its transaction is
//!   committed durably (fsync'd): a write that returned `Ok` survives a SIGKILL of the agent
//!   or a crash of the machine. One that returned `Err`, or was interrupted, wrote nothing.
//! - [`Store::batch`] groups any number of writes into one transaction: all of them or none,
//!   for the price of one commit.
//! - A deployment's components live and die with it: a component cannot be recorded for a
//!   deployment the store does not hold, and removing a deployment removes its components in
//!   the same transaction.
//! - One agent per file: a second [`Store::open`] of a file that is open (in this process or
//!   another) fails with [`Error::Locked`] instead of sharing it.
//! - **A full disk fails writes, clearly; once there is room again the store works without an
//!   agent restart; nothing committed is lost.** A write that fails for want of space returns
//!   an error for which [`Error::is_disk_full`] is true, and writes nothing. redb refuses every
//!   transaction of a database after one I/O error, so after any I/O failure the store closes
//!   its database and opens the file again (same path, same one-agent lock, integrity checked):
//!   the next write succeeds as soon as the disk has room, and every write that returned `Ok`
//!   before the failure is still there. Until then each call fails with the disk-full error
//!   (or tries the reopen again).
//! - Nothing read from the file panics: a file that is not a store or is damaged (every
//!   checksum is verified at open) is an [`Error::NotAStore`], and a record that does not
//!   decode is an [`Error::Decode`] naming its table and key.
//!
//! Records are stored as JSON text (keys are strings) so that the file can be inspected with
//! any redb tool, and fields can be added later with `#[serde(default)]`. The store knows
//! nothing of the description language: a description is text here.

mod key;
mod record;
mod store;

use std::path::PathBuf;

pub use key::{MAX_NAME_LEN, NAME_RULE, validate_deployment_name, validate_path};
pub use record::{
    ComponentRecord, ComponentState, DeploymentRecord, DeploymentState, ProcessRecord, unix_ms_now,
};
pub use store::{Batch, FORMAT_VERSION, Store};

/// What went wrong in the store. The messages name the file, table and key concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is already open, by another agent or by this process.
    #[error(
        "the store `{0}` is locked: another agent (or this one) has it open; one agent per data dir"
    )]
    Locked(PathBuf),
    /// The file exists but is not a redb database, or it is damaged (a checksum does not match).
    #[error("`{path}` is not an sd store (a redb database), or it is damaged: {reason}")]
    NotAStore {
        /// The file.
        path: PathBuf,
        /// What redb found wrong with it.
        reason: String,
    },
    /// The file was written by a newer sd, in a format this one does not read.
    #[error(
        "the store `{path}` has format {found}, written by a newer sd; this one reads format {supported} and older"
    )]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// The format found in the file.
        found: u64,
        /// The newest format this sd reads ([`FORMAT_VERSION`]).
        supported: u64,
    },
    /// A file or directory operation failed.
    #[error("{action} `{path}`: {source}")]
    Io {
        /// What was being done ("cannot create the directory" ...).
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database failed (I/O error, disk full, corruption found while reading ...).
    #[error("{action} in the store `{path}`: {source}")]
    Database {
        /// What was being done ("cannot commit" ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why, as redb says it (boxed: a redb error is large).
        source: Box<redb::Error>,
    },
    /// A write of a batch failed in the database, so the batch was not committed, although
    /// its closure went on and returned `Ok`.
    #[error("a write failed in the store `{path}`, so the batch was not committed: {reason}")]
    BatchFailed {
        /// The file.
        path: PathBuf,
        /// The first failure.
        reason: String,
        /// Whether that failure was an I/O error (the store then reopens its file).
        io_failure: bool,
        /// Whether that failure was the disk being full ([`Error::is_disk_full`]).
        disk_full: bool,
    },
    /// The store closed its database after an I/O failure and could not open it again yet; the
    /// next call tries again.
    #[error("the store `{path}` is closed after an I/O error and not reopened yet: {reason}")]
    Closed {
        /// The file.
        path: PathBuf,
        /// Why it is not open again.
        reason: &'static str,
    },
    /// A record read from the store is not valid JSON of its type.
    #[error("cannot decode the record at key \"{key}\" of table `{table}`: {source}")]
    Decode {
        /// The table (`deployments` or `components`).
        table: &'static str,
        /// The record's key (a NUL in a component key is shown as `\0`).
        key: String,
        /// What is wrong with the JSON.
        source: serde_json::Error,
    },
    /// A record could not be encoded as JSON (not expected from the record types).
    #[error("cannot encode the record at key \"{key}\" of table `{table}`: {source}")]
    Encode {
        /// The table.
        table: &'static str,
        /// The record's key.
        key: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A deployment name breaks [`NAME_RULE`].
    #[error("invalid deployment name {name:?}: {rule}", rule = NAME_RULE)]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// A component path is empty or contains NUL (the separator of component keys).
    #[error("invalid component path {path:?}: a path is not empty and contains no NUL character")]
    InvalidPath {
        /// The path given.
        path: String,
    },
    /// A component was recorded for a deployment that is not in the store.
    #[error(
        "no deployment `{deployment}` in the store for component `{path}`: record the deployment first (it may be in the same batch)"
    )]
    NoSuchDeployment {
        /// The deployment named by the component.
        deployment: String,
        /// The component's path.
        path: String,
    },
}

impl Error {
    /// Whether this failure is the disk (or file system) of the store being full: an
    /// `ENOSPC` ([`std::io::ErrorKind::StorageFull`]) I/O error, from the file system or from
    /// redb. Such a write wrote nothing and can be made again once there is room.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Io { source, .. } => io_is_disk_full(source),
            Error::Database { source, .. } => match source.as_ref() {
                redb::Error::Io(source) => io_is_disk_full(source),
                _ => false,
            },
            Error::BatchFailed { disk_full, .. } => *disk_full,
            _ => false,
        }
    }

    /// Whether this failure is an I/O error of the database, after which redb fails every
    /// later transaction until the database is opened again.
    pub(crate) fn is_io_failure(&self) -> bool {
        match self {
            Error::Database { source, .. } => matches!(
                source.as_ref(),
                redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed
            ),
            Error::BatchFailed { io_failure, .. } => *io_failure,
            _ => false,
        }
    }
}

/// Whether `error` (or the I/O error it wraps) says that there is no space left.
fn io_is_disk_full(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::StorageFull
        || error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<std::io::Error>())
            .is_some_and(io_is_disk_full)
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
