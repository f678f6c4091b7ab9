//! `sd-drivers`: what turns a domain into real work on one host, and cleans it away.
//!
//! It owns the workloads and their disks, not their supervision (that is `sd-runtime`):
//! - [`process`]: process domains. A domain runs in its own process group with its output
//!   in a size-capped log file (not a pipe), so it survives the agent's death and can be
//!   re-adopted; it is recognised by pid *and* start time, never by pid alone; its exit is
//!   noticed at once (child wait, or a pidfd for adopted processes); it is stopped with
//!   SIGTERM, then SIGKILL after a timeout, to its whole group.
//! - [`storage`]: storage backends. A backend prepares what a domain runs or boots from and
//!   removes it afterwards, optionally saving it compressed first.
//!
//! Guarantees: every operation that creates something on the host has a matching one that
//! removes it, and removal is idempotent (safe to repeat after a crash).

pub mod process;
pub mod storage;

use std::path::PathBuf;

/// What went wrong in a driver. The messages name the domain's files and commands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command to run is empty.
    #[error("the command is empty: a process domain needs at least a program to run")]
    EmptyCommand,
    /// The program could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program (`argv[0]`).
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file or directory operation failed.
    #[error("{action} `{path}`: {source}")]
    Io {
        /// What was being done ("cannot create", "cannot remove" ...).
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A base image or directory does not exist.
    #[error("base `{0}` does not exist")]
    MissingBase(PathBuf),
    /// A base exists but is not something the backend can use.
    #[error("base `{path}` cannot be used: {reason}")]
    BadBase {
        /// The base.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A signal could not be sent.
    #[error("cannot signal process group {pgid}: {source}")]
    Signal {
        /// The process group.
        pgid: i32,
        /// Why.
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// An [`Error::Io`] for `path`.
pub(crate) fn io_error(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
