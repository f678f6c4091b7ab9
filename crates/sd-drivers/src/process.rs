//! Process domains: start, watch, stop and re-adopt a supervised process.
//!
//! A domain's process runs in a process group of its own, with stdin closed and stdout and
//! stderr appended to one log file. No pipe ties it to the agent, so it outlives an agent
//! that is killed, and a new agent re-adopts it by its [`ProcessIdentity`] (pid and kernel
//! start time: a recycled pid is never mistaken for the domain). Exit is noticed at once
//! through a pidfd, for children and adopted processes alike. When the group's leader has
//! exited, what is left of its group is killed, so a domain leaves no stray process.

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::{Error, Result, io_error};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Extra environment, over the agent's own.
    pub env: Vec<(String, String)>,
    /// The working directory (it must exist).
    pub cwd: PathBuf,
    /// Where stdout and stderr go (appended; created if missing).
    pub log: PathBuf,
}

/// A process as the kernel knows it: pid and start time (clock ticks after boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessIdentity {
    /// The process id.
    pub pid: u32,
    /// When it started, in clock ticks after boot (`/proc/PID/stat`, field 22).
    pub start_time: u64,
}

/// A process's state as `/proc` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    ppid: u32,
    pgrp: i32,
    start_time: u64,
}

/// Reads `/proc/PID/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state); field N is fields[N - 3].
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(4 - 3)?.parse().ok()?,
        pgrp: fields.get(5 - 3)?.parse().ok()?,
        start_time: fields.get(22 - 3)?.parse().ok()?,
    })
}

impl ProcessIdentity {
    /// The identity of the process that has `pid` now, if there is one.
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        proc_stat(pid).map(|stat| ProcessIdentity {
            pid,
            start_time: stat.start_time,
        })
    }

    /// Whether this very process (same pid, same start time) still runs (a zombie does not).
    pub fn is_running(&self) -> bool {
        proc_stat(self.pid)
            .is_some_and(|stat| stat.start_time == self.start_time && stat.state != 'Z')
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It ended, but it was not this agent's child, so its status cannot be known.
    Unknown,
}

impl Exit {
    /// Whether it ended normally (code 0). Restart policy `transient` restarts the others.
    pub fn is_success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Signal(signal) => write!(f, "killed by signal {signal}"),
            Exit::Unknown => f.write_str("ended (status unknown: adopted process)"),
        }
    }
}

/// A running (or just ended) domain process.
#[derive(Debug)]
pub struct RunningProcess {
    identity: ProcessIdentity,
    /// Readable once the process has ended.
    pidfd: AsyncFd<OwnedFd>,
    /// Our child, to reap and read its status; `None` for an adopted process.
    child: Option<tokio::process::Child>,
    /// Set once the end has been seen.
    exit: Option<Exit>,
}

fn pid_of(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

fn open_pidfd(pid: u32) -> std::io::Result<AsyncFd<OwnedFd>> {
    let pid = pid_of(pid).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let fd = rustix::process::pidfd_open(pid, PidfdFlags::NONBLOCK)?;
    // Deprecated because a wrapped type could swap its fd behind tokio's back (tokio #8587);
    // an `OwnedFd` cannot, and this keeps the crate free of `unsafe`.
    #[allow(deprecated)]
    AsyncFd::with_interest(fd, Interest::READABLE)
}

fn open_log(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error("cannot create the log directory", dir))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error("cannot open the log", path))
}

impl RunningProcess {
    /// Starts `spec` in a new process group. Must run inside a tokio runtime.
    pub fn spawn(spec: &ProcessSpec) -> Result<RunningProcess> {
        let (program, args) = spec.command.split_first().ok_or(Error::EmptyCommand)?;
        if !spec.cwd.is_dir() {
            let source = std::io::Error::from(std::io::ErrorKind::NotFound);
            return Err(io_error("cannot use the working directory", &spec.cwd)(
                source,
            ));
        }
        let log = open_log(&spec.log)?;
        let stderr = log
            .try_clone()
            .map_err(io_error("cannot open the log", &spec.log))?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .process_group(0)
            // The domain must outlive the agent: dropping the handle must not kill it.
            .kill_on_drop(false);
        let child = command.spawn().map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id().expect("a child that was just spawned has a pid");
        // Until it is reaped, even a child that already exited keeps its /proc entry, so
        // only an unreadable /proc (restricted mounts) fails here: then the process cannot be
        // supervised safely, and is not left running.
        let watched = ProcessIdentity::of(pid)
            .ok_or_else(|| std::io::Error::other(format!("cannot read /proc/{pid}/stat")))
            .and_then(|identity| Ok((identity, open_pidfd(pid)?)));
        let (identity, pidfd) = match watched {
            Ok(watched) => watched,
            Err(source) => {
                if let Some(group) = pid_of(pid) {
                    let _ = rustix::process::kill_process_group(group, Signal::KILL);
                }
                return Err(Error::Spawn {
                    program: program.clone(),
                    source,
                });
            }
        };
        Ok(RunningProcess {
            identity,
            pidfd,
            child: Some(child),
            exit: None,
        })
    }

    /// Takes over a process started by an earlier agent. `None` if that process is gone
    /// (or its pid now belongs to another process). Must run inside a tokio runtime.
    pub fn adopt(identity: ProcessIdentity) -> Option<RunningProcess> {
        if !identity.is_running() {
            return None;
        }
        let pidfd = open_pidfd(identity.pid).ok()?;
        // The pidfd pins whatever process had the pid when it was opened: check it is ours.
        if !identity.is_running() {
            return None;
        }
        Some(RunningProcess {
            identity,
            pidfd,
            child: None,
            exit: None,
        })
    }

    /// Who it is.
    pub fn identity(&self) -> ProcessIdentity {
        self.identity
    }

    /// How it ended, if it has (without waiting).
    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// Waits until the process ends, kills what is left of its group, and says how it
    /// ended. Cancel-safe; returns at once after the end has been seen.
    pub async fn wait(&mut self) -> Exit {
        if let Some(exit) = self.exit {
            return exit;
        }
        // The pidfd turns readable when the process ends. An error here means the fd is
        // unusable; then the reaping below is the fallback.
        if let Ok(mut guard) = self.pidfd.readable().await {
            guard.retain_ready();
        }
        // The leader has ended but is not reaped yet (if ours), so its pid, which is the
        // group id, cannot be reused: the group can be killed safely.
        let _ = self.signal_group(Signal::KILL);
        let exit = match self.child.as_mut() {
            Some(child) => {
                // The pidfd said it ended, so it can be reaped now: asking directly does not
                // wait for the runtime's SIGCHLD handling to get round to it.
                let status = match child.try_wait() {
                    Ok(Some(status)) => Ok(status),
                    _ => child.wait().await,
                };
                match status {
                    Ok(status) => {
                        use std::os::unix::process::ExitStatusExt;
                        match (status.code(), status.signal()) {
                            (Some(code), _) => Exit::Code(code),
                            (None, Some(signal)) => Exit::Signal(signal),
                            (None, None) => Exit::Unknown,
                        }
                    }
                    Err(_) => Exit::Unknown,
                }
            }
            None => Exit::Unknown,
        };
        self.exit = Some(exit);
        exit
    }

    /// Stops it: SIGTERM to its group, then SIGKILL after `grace`. Returns how it ended.
    pub async fn stop(&mut self, grace: Duration) -> Result<Exit> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        self.signal_group(Signal::TERM)?;
        if let Ok(exit) = tokio::time::timeout(grace, self.wait()).await {
            return Ok(exit);
        }
        self.signal_group(Signal::KILL)?;
        Ok(self.wait().await)
    }

    /// Sends `signal` to the process's group. A group already gone is not an error.
    fn signal_group(&self, signal: Signal) -> Result<()> {
        let Some(pgid) = pid_of(self.identity.pid) else {
            return Ok(());
        };
        match rustix::process::kill_process_group(pgid, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(errno) => Err(Error::Signal {
                pgid: pgid.as_raw_nonzero().get(),
                source: errno.into(),
            }),
        }
    }
}

/// Keeps a log under `max_bytes`: when it is larger, its content moves to `LOG.1` (replacing
/// an older one) and the log is emptied in place, so the process, which appends to the same
/// open file, goes on writing at its start. Returns whether it rotated. The supervisor calls
/// it on its liveness checks.
pub fn rotate_log(path: &Path, max_bytes: u64) -> Result<bool> {
    let size = match std::fs::metadata(path) {
        Ok(metadata) => metadata.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error("cannot read the log", path)(e)),
    };
    if size <= max_bytes {
        return Ok(false);
    }
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    std::fs::copy(path, &rotated).map_err(io_error(
        "cannot rotate the log into",
        PathBuf::from(&rotated),
    ))?;
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| file.set_len(0))
        .map_err(io_error("cannot empty the log", path))?;
    Ok(true)
}

/// The process-group leaders whose environment holds `name=value` (exactly), read from
/// `/proc`, leaving out those whose parent is marked too (a workload's own process groups).
/// An agent marks the domains it starts this way, so that a process it started but had no
/// time to record before it was killed is still found, and not left running.
pub fn marked_processes(name: &str, value: &str) -> Vec<ProcessIdentity> {
    let wanted = format!("{name}={value}");
    let marked = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
            environ
                .split(|&byte| byte == 0)
                .any(|entry| entry == wanted.as_bytes())
        })
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|stat| {
                u32::try_from(stat.pgrp).ok() == Some(pid)
                    && stat.state != 'Z'
                    && marked(pid)
                    && !marked(stat.ppid)
            })
        })
        .filter_map(ProcessIdentity::of)
        .collect()
}

/// The process group a running process is in (for tests and diagnostics).
pub fn process_group(pid: u32) -> Option<i32> {
    proc_stat(pid).map(|stat| stat.pgrp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let me = std::process::id();
        let stat = proc_stat(me).expect("this process has a /proc entry");
        assert!(stat.start_time > 0);
        assert!(matches!(stat.state, 'R' | 'S'));
        let identity = ProcessIdentity::of(me).expect("identity");
        assert!(identity.is_running());
        let other_start = ProcessIdentity {
            start_time: identity.start_time + 1,
            ..identity
        };
        assert!(
            !other_start.is_running(),
            "a different start time is another process"
        );
    }

    #[tokio::test]
    async fn marked_processes_are_found_by_their_environment() {
        let dir = tempfile::tempdir().unwrap();
        let marker = format!("{}-{}", std::process::id(), dir.path().display());
        let mut process = RunningProcess::spawn(&ProcessSpec {
            command: vec!["/bin/sleep".into(), "30".into()],
            env: vec![("SD_TEST_MARK".into(), marker.clone())],
            cwd: dir.path().to_path_buf(),
            log: dir.path().join("log"),
        })
        .unwrap();
        // Until the child has exec'd, its environment is still its parent's.
        let mut found = Vec::new();
        for _ in 0..200 {
            found = marked_processes("SD_TEST_MARK", &marker);
            if !found.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(found, vec![process.identity()]);
        process.stop(Duration::from_secs(1)).await.unwrap();
        assert!(marked_processes("SD_TEST_MARK", &marker).is_empty());
    }

    #[test]
    fn exits_describe_themselves() {
        assert_eq!(Exit::Code(3).to_string(), "exited with code 3");
        assert_eq!(Exit::Signal(9).to_string(), "killed by signal 9");
        assert!(Exit::Code(0).is_success());
        assert!(!Exit::Signal(15).is_success());
    }
}
