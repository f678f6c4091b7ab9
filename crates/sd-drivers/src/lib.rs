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
pub mod qemu;
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
    /// A QMP exchange with a VM failed.
    #[error("QMP `{socket}`: {reason}")]
    Qmp {
        /// The VM's QMP socket.
        socket: PathBuf,
        /// What went wrong.
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
    /// An external command (`qemu-img`, `losetup` ...) ended with a failure.
    #[error("`{program} {}` failed ({status}): {stderr}", .args.join(" "))]
    Command {
        /// The program run.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// How it ended.
        status: std::process::ExitStatus,
        /// What it wrote on stderr (trimmed).
        stderr: String,
    },
    /// An external command succeeded but its output could not be understood.
    #[error("unexpected output from `{program} {}`: {reason}", .args.join(" "))]
    CommandOutput {
        /// The program run.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// What was wrong with the output.
        reason: String,
    },
    /// A disk cannot have the size asked for.
    #[error("disk `{disk}` cannot have {size_mib} MiB: {reason}")]
    DiskSize {
        /// The disk (overlay or image).
        disk: PathBuf,
        /// The size asked for.
        size_mib: u64,
        /// Why not.
        reason: String,
    },
    /// A loop device could not be detached because it is still open.
    #[error(
        "loop device `{device}` of `{image}` is still open: it is detached once closed (stop what uses it and clean up again)"
    )]
    LoopDeviceBusy {
        /// The loop device.
        device: PathBuf,
        /// Its backing image.
        image: PathBuf,
    },
    /// This host lacks what a backend needs (a kernel feature, a program).
    #[error("{missing}: {backend} needs it")]
    Unavailable {
        /// The backend ("LVMStorageBackend").
        backend: &'static str,
        /// What is missing, and how that was seen.
        missing: String,
    },
    /// A backend is not implemented in this build.
    #[error("{backend} is not implemented: {reason}")]
    Unimplemented {
        /// The backend.
        backend: &'static str,
        /// Why, and what exists instead.
        reason: &'static str,
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
