//! Domains: a supervised process in its own process group, which for a QEMU domain is the
//! VMM (see `vm.rs` for what is particular to VMs: the command line, readiness, QMP).
//!
//! Deploy finds the working directory (its storage backend's, or a private one made here;
//! a VM always gets a private run directory for its QMP socket, and its disk from its
//! storage backend),
//! start spawns the process (or, when recovering, re-adopts the one the previous agent
//! started, by pid and start time) and records its identity durably before it reports
//! running. A watcher task waits on the process (pidfd: the exit is seen at once) and tells
//! the actor; it also stops it on request, and kills it if the actor vanishes without asking,
//! so a process never outlives its supervision by accident.

use std::path::PathBuf;
use std::time::Duration;

use ractor::ActorRef;
use sd_drivers::process::{Exit, ProcessIdentity, ProcessSpec, RunningProcess, rotate_log};
use sd_lang::Component;
use sd_store::ProcessRecord;
use tokio::sync::{mpsc, oneshot};

use super::attributes::{environment, number, seconds, strings};
use super::vm::Vm;
use super::{ComponentMsg, Deployment};

/// The environment variable that marks a domain's process with its agent's data dir; the
/// agent finds, at start, the processes it started but had no time to record.
pub(crate) const DATA_DIR_MARKER: &str = "SD_DATA_DIR";

/// What the watcher is asked to do.
struct StopRequest {
    grace: Duration,
    done: oneshot::Sender<Exit>,
}

/// A domain's own state.
pub(crate) struct Domain {
    /// What makes it a VM, for a QEMU domain.
    vm: Option<Vm>,
    /// Where this start's output begins in the log (readiness looks only after it).
    log_offset: u64,
    command: Vec<String>,
    env: Vec<(String, String)>,
    stop_timeout: Duration,
    log_max_bytes: u64,
    /// The working directory, once deployed.
    cwd: Option<PathBuf>,
    /// A working directory made for this domain alone (no storage backend): removed after.
    private_dir: Option<PathBuf>,
    log: Option<PathBuf>,
    running: Option<(ProcessIdentity, mpsc::UnboundedSender<StopRequest>)>,
}

impl Domain {
    pub fn new(description: &Component, vm: bool) -> Domain {
        let env = environment(description, "env");
        let stop_timeout = seconds(description, "sdStopTimeout", Duration::from_secs(10));
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let log_max_bytes = number(description, "logMaxBytes")
            .filter(|n| *n > 0.0)
            .map_or(8 << 20, |n| n as u64);
        Domain {
            vm: vm.then(|| Vm::new(description)),
            log_offset: 0,
            command: strings(description, "command"),
            env,
            stop_timeout,
            log_max_bytes,
            cwd: None,
            private_dir: None,
            log: None,
            running: None,
        }
    }

    pub async fn deploy(&mut self, deployment: &Deployment, index: usize) -> Result<(), String> {
        let log = deployment.log_path(index);
        if let Some(vm) = &mut self.vm {
            let disk = match deployment.bind_component(index, "storageBackend")? {
                Some(backend) => Some(deployment.disk_of(backend).ok_or_else(|| {
                    format!(
                        "its storage backend `{}` has no disk ready (it must be a Qcow or Loopback backend deployed before this domain)",
                        deployment.plan().components[backend].path_text()
                    )
                })?),
                None => None,
            };
            let run_dir = deployment.component_dir("run", index);
            std::fs::create_dir_all(&run_dir)
                .map_err(|e| format!("cannot create `{}`: {e}", run_dir.display()))?;
            self.private_dir = Some(run_dir.clone());
            match vm.command(deployment, index, &run_dir, disk, &log).await {
                Ok(command) => self.command = command,
                Err(reason) => {
                    self.remove_private_dir();
                    return Err(reason);
                }
            }
            self.cwd = Some(run_dir);
            self.log = Some(log);
            return Ok(());
        }
        let cwd = match deployment.bind_component(index, "storageBackend")? {
            Some(backend) => deployment.work_dir_of(backend).ok_or_else(|| {
                format!(
                    "its storage backend `{}` has no directory ready (it must be a DirStorageBackend deployed before this domain)",
                    deployment.plan().components[backend].path_text()
                )
            })?,
            None => {
                let dir = deployment.component_dir("run", index);
                // Left over by an agent that was killed: it is this domain's own.
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
                self.private_dir = Some(dir.clone());
                dir
            }
        };
        self.cwd = Some(cwd);
        self.log = Some(log);
        Ok(())
    }

    pub async fn start(
        &mut self,
        myself: &ActorRef<ComponentMsg>,
        deployment: &Deployment,
        index: usize,
    ) -> Result<(), String> {
        let recovered = deployment
            .take_recovered(index)
            .and_then(|record| record.process);
        let (process, adopted) = match recovered {
            Some(record) => {
                let identity = ProcessIdentity {
                    pid: record.pid,
                    start_time: record.start_time,
                };
                match RunningProcess::adopt(identity) {
                    Some(process) => (process, true),
                    None => {
                        // It died while no agent watched it: its end is reported like any
                        // other, once started, and its parent's strategy applies.
                        let _ = myself.cast(ComponentMsg::WorkloadEnded(Exit::Unknown));
                        return Ok(());
                    }
                }
            }
            None => {
                let mut env = self.env.clone();
                env.extend([
                    ("SD_NODE".to_string(), deployment.services.node.clone()),
                    (
                        DATA_DIR_MARKER.to_string(),
                        deployment.services.data_dir.display().to_string(),
                    ),
                    ("SD_DEPLOYMENT".to_string(), deployment.name.clone()),
                    (
                        "SD_COMPONENT".to_string(),
                        deployment.plan().components[index].path_text(),
                    ),
                ]);
                let spec = ProcessSpec {
                    command: self.command.clone(),
                    env,
                    cwd: self.cwd.clone().unwrap_or_default(),
                    log: self.log.clone().unwrap_or_default(),
                };
                self.log_offset = std::fs::metadata(&spec.log).map_or(0, |m| m.len());
                (
                    RunningProcess::spawn(&spec).map_err(|e| e.to_string())?,
                    false,
                )
            }
        };
        let identity = process.identity();
        let (stop, requests) = mpsc::unbounded_channel();
        tokio::spawn(watch(process, requests, myself.clone()));
        self.running = Some((identity, stop));
        deployment.record(index, |record| {
            record.process = Some(ProcessRecord {
                pid: identity.pid,
                start_time: identity.start_time,
            });
        });
        // Running is reported only once the process can be found again after a crash.
        if let Err(error) = deployment.services.records.flush().await {
            self.stop().await;
            return Err(error.to_string());
        }
        if let (Some(vm), false) = (&self.vm, adopted) {
            let log = self.log.clone().unwrap_or_default();
            let ready = vm
                .wait_ready(&log, self.log_offset, || identity.is_running())
                .await;
            match ready {
                Ok(took) => {
                    deployment.services.metrics.vm_boot.observe(took);
                    deployment.services.records.note(
                        &deployment.name,
                        &deployment.plan().components[index].path_text(),
                        "ready",
                        format!(
                            "guest ready {:.2} s after the VMM started",
                            took.as_secs_f64()
                        ),
                    );
                }
                Err(reason) => {
                    self.stop().await;
                    self.remove_private_dir();
                    return Err(reason);
                }
            }
        }
        if adopted {
            deployment.services.records.note(
                &deployment.name,
                &deployment.plan().components[index].path_text(),
                "adopted",
                format!("process {} re-adopted", identity.pid),
            );
        }
        Ok(())
    }

    /// The workload ended on its own: cleans up. Returns why, if it was a failure.
    pub async fn ended(
        &mut self,
        exit: Exit,
        deployment: &Deployment,
        index: usize,
    ) -> Option<String> {
        self.running = None;
        deployment.record(index, |record| record.process = None);
        self.remove_private_dir();
        if self.vm.is_some() {
            // A VM runs until it is terminated: a guest that panics, reboots (-no-reboot) or
            // powers off ends its VMM with code 0 as well, and its strategy decides.
            return Some(match exit {
                Exit::Code(0) => {
                    "the VM stopped by itself (the guest crashed, rebooted or powered off)".into()
                }
                Exit::Unknown => "the VM ended while the agent was not watching it".into(),
                other => format!("the VMM {other}"),
            });
        }
        if exit.is_success() {
            None
        } else if exit == Exit::Unknown {
            Some("the process ended while the agent was not watching it".into())
        } else if let Exit::Signal(_) = exit {
            Some(format!("the process was {exit}"))
        } else {
            Some(format!("the process {exit}"))
        }
    }

    /// Changes a running VM's memory through its balloon (`memory`, live); `commit` false only
    /// checks that it can be done.
    pub async fn set_memory(&mut self, mib: u64, commit: bool) -> Result<(), String> {
        let Some(vm) = &mut self.vm else {
            return Err("a process domain has no memory to change".into());
        };
        if self.running.is_none() {
            return Err("the VM is not running".into());
        }
        vm.resize(mib, commit).await
    }

    pub async fn ping(&self) -> Result<(), String> {
        if let Some(log) = &self.log {
            // A log that cannot be rotated is not a dead workload.
            let _ = rotate_log(log, self.log_max_bytes);
        }
        match &self.running {
            Some((identity, _)) if identity.is_running() => {}
            Some((identity, _)) => return Err(format!("process {} is not running", identity.pid)),
            None => return Err("no process runs".into()),
        }
        match &self.vm {
            Some(vm) => vm.check_running().await,
            None => Ok(()),
        }
    }

    /// Stops the workload: a VM is asked to power off and given `sdStopTimeout` to do so;
    /// then (for a process, at once) SIGTERM, and SIGKILL after the timeout.
    async fn stop(&mut self) {
        let mut grace = self.stop_timeout;
        if let (Some(vm), Some((identity, _))) = (&self.vm, &self.running) {
            vm.power_down().await;
            let deadline = tokio::time::Instant::now() + self.stop_timeout;
            while identity.is_running() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // QEMU quits cleanly on SIGTERM.
            grace = Duration::from_secs(2);
        }
        if let Some((_, stop)) = self.running.take() {
            let (done, exited) = oneshot::channel();
            if stop.send(StopRequest { grace, done }).is_ok() {
                let _ = exited.await;
            }
        }
    }

    pub async fn terminate(&mut self, deployment: &Deployment, index: usize) {
        self.stop().await;
        deployment.record(index, |record| record.process = None);
        self.remove_private_dir();
    }

    fn remove_private_dir(&mut self) {
        if let Some(dir) = self.private_dir.take() {
            // Nothing to do if it is gone; anything else is left for the deployment's
            // directory removal at terminate.
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Waits for the process to end, or stops it when asked; kills it if the actor is gone.
async fn watch(
    mut process: RunningProcess,
    mut requests: mpsc::UnboundedReceiver<StopRequest>,
    domain: ActorRef<ComponentMsg>,
) {
    tokio::select! {
        exit = process.wait() => {
            let _ = domain.cast(ComponentMsg::WorkloadEnded(exit));
        }
        request = requests.recv() => match request {
            Some(StopRequest { grace, done }) => {
                let exit = process.stop(grace).await.unwrap_or(Exit::Unknown);
                let _ = done.send(exit);
            }
            None => {
                let _ = process.stop(Duration::ZERO).await;
            }
        }
    }
}
