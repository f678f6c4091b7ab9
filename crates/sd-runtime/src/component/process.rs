//! Process domains: a supervised process in its own process group.
//!
//! Deploy finds the working directory (its storage backend's, or a private one made here),
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

use super::attributes::{environment, number, strings};
use super::{ComponentMsg, Deployment};

/// The environment variable that marks a domain's process with its agent's data dir; the
/// agent finds, at start, the processes it started but had no time to record.
pub(crate) const DATA_DIR_MARKER: &str = "SD_DATA_DIR";

/// What the watcher is asked to do.
struct StopRequest {
    grace: Duration,
    done: oneshot::Sender<Exit>,
}

/// A process domain's own state.
pub(crate) struct ProcessDomain {
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

impl ProcessDomain {
    pub fn new(description: &Component) -> ProcessDomain {
        let env = environment(description, "env");
        let stop_timeout = number(description, "sdStopTimeout")
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(Duration::from_secs(10));
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let log_max_bytes = number(description, "logMaxBytes")
            .filter(|n| *n > 0.0)
            .map_or(8 << 20, |n| n as u64);
        ProcessDomain {
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
        let cwd = match deployment.bind_component(index, "storageBackend")? {
            Some(backend) => deployment.work_dir_of(backend).ok_or_else(|| {
                format!(
                    "its storage backend `{}` has no directory ready (it must be a DirStorageBackend deployed before this domain)",
                    deployment.plan.components[backend].path_text()
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
        self.log = Some(deployment.log_path(index));
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
                        deployment.plan.components[index].path_text(),
                    ),
                ]);
                let spec = ProcessSpec {
                    command: self.command.clone(),
                    env,
                    cwd: self.cwd.clone().unwrap_or_default(),
                    log: self.log.clone().unwrap_or_default(),
                };
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
        if adopted {
            deployment.services.records.note(
                &deployment.name,
                &deployment.plan.components[index].path_text(),
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

    pub fn ping(&self) -> Result<(), String> {
        if let Some(log) = &self.log {
            // A log that cannot be rotated is not a dead workload.
            let _ = rotate_log(log, self.log_max_bytes);
        }
        match &self.running {
            Some((identity, _)) if identity.is_running() => Ok(()),
            Some((identity, _)) => Err(format!("process {} is not running", identity.pid)),
            None => Err("no process runs".into()),
        }
    }

    async fn stop(&mut self) {
        if let Some((_, stop)) = self.running.take() {
            let (done, exited) = oneshot::channel();
            if stop
                .send(StopRequest {
                    grace: self.stop_timeout,
                    done,
                })
                .is_ok()
            {
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
