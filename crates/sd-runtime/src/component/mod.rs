//! Components as supervised actors.
//!
//! Every component of a deployment is one actor ([`ComponentActor`]); its parent spawned it,
//! is linked to it (a panic reaches the parent as a failure), and drives it through its
//! lifecycle with messages: `Deploy`, `Start`, `Ping`, `Terminate`. A component whose work
//! ends (a process exits, a sequence finishes, a supervisor gives up) cleans up what it made,
//! reports `ChildEnded` to its parent and stops; the parent's [`Supervisor`] decides what
//! follows. A restarted component is a new actor (a new incarnation), so a late message from
//! an old one is recognised and ignored.
//!
//! Components only know each other through [`ComponentRef`] and [`ParentRef`] and find
//! siblings through the deployment's registry (by path), so where they run is not their
//! concern.
//!
//! [`Supervisor`]: crate::supervision::Supervisor

mod attributes;
mod container;
mod context;
mod domain;
pub(crate) mod placing;
mod remote;
mod shell;
mod storage;
mod vm;

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use sd_drivers::process::Exit;
use sd_proto::ComponentState;
use tokio::sync::mpsc;

pub(crate) use context::{Deployment, DeploymentIdentity, Services, deployment_dir};
pub(crate) use domain::DATA_DIR_MARKER;

use crate::plan::Kind;
use crate::supervision::Ending;

/// Why a component could not do what it was asked: which component, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The component that failed first (`sfConfig:a:b`).
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.path, self.reason)
    }
}

/// What a lifecycle step answers.
pub type Outcome = std::result::Result<(), Failure>;

/// The messages a component handles.
pub enum ComponentMsg {
    /// Parent: make what you need (directories, processes not yet); answers once done, or
    /// after undoing your own part if it failed.
    Deploy(RpcReplyPort<Outcome>),
    /// Parent: start running.
    Start(RpcReplyPort<Outcome>),
    /// Parent: stop and clean everything away; answers when done (see `sfSyncTerminate`).
    Terminate(RpcReplyPort<()>),
    /// Parent: are you (and your workload) alive?
    Ping(RpcReplyPort<std::result::Result<(), String>>),
    /// Another component: run `script` with your interpreter (shells only).
    Exec {
        /// The command text.
        script: String,
        /// Where to run it.
        cwd: std::path::PathBuf,
        /// Its output, or why it failed.
        reply: RpcReplyPort<std::result::Result<String, String>>,
    },
    /// Child: I ended and cleaned up after myself.
    ChildEnded {
        /// The child's plan index.
        index: usize,
        /// Which incarnation of it.
        incarnation: u64,
        /// How.
        ending: Ending,
        /// Why, for an abnormal end.
        reason: Option<String>,
    },
    /// Self: the workload ended on its own.
    WorkloadEnded(Exit),
    /// Self: time to ping the children.
    LivenessTick,
    /// Self: a child's answer to a ping (or its absence).
    PingResult {
        /// The child's plan index.
        index: usize,
        /// Which incarnation was pinged.
        incarnation: u64,
        /// Its answer.
        result: std::result::Result<(), String>,
    },
    /// Self: a restart's backoff has passed.
    RestartDue {
        /// The children (plan indices) to start again.
        children: Vec<usize>,
    },
    /// Node: the fragment this proxy stands for ended on its node.
    RemoteEnded {
        /// Which incarnation of the proxy it belonged to.
        incarnation: u64,
        /// How.
        ending: Ending,
        /// Why, for an abnormal end.
        reason: Option<String>,
    },
    /// Node: a node of the cluster was lost (a proxy whose fragment ran there has ended).
    NodeLost(String),
    /// Node: a live setting of this component (or of one of its children, for their liveness
    /// checks) changed: check it can be applied (`commit` false), or apply it. The plan has
    /// the new value already when it is applied.
    Reconfigure {
        /// The attribute.
        attribute: String,
        /// Its new value.
        value: sd_lang::Value,
        /// Apply it (else only check).
        commit: bool,
        /// Whether it can be, or was, applied.
        reply: RpcReplyPort<std::result::Result<(), String>>,
    },
}

/// A component, wherever it runs. Today always local; the cluster layer adds remote ones.
#[derive(Clone, Debug)]
pub struct ComponentRef(pub(crate) ActorRef<ComponentMsg>);

impl ComponentRef {
    fn gone(path: &str) -> Failure {
        Failure {
            path: path.to_string(),
            reason: "the component stopped before it answered".into(),
        }
    }

    async fn step(
        &self,
        path: &str,
        message: impl FnOnce(RpcReplyPort<Outcome>) -> ComponentMsg,
    ) -> Outcome {
        match self.0.call(message, None).await {
            Ok(ractor::rpc::CallResult::Success(outcome)) => outcome,
            _ => Err(Self::gone(path)),
        }
    }

    /// Deploys it; `path` names it in the failure if it vanished.
    pub async fn deploy(&self, path: &str) -> Outcome {
        self.step(path, ComponentMsg::Deploy).await
    }

    /// Starts it.
    pub async fn start(&self, path: &str) -> Outcome {
        self.step(path, ComponentMsg::Start).await
    }

    /// Terminates it; returns when it has (at once if it is already gone).
    pub async fn terminate(&self) {
        let _ = self.0.call(ComponentMsg::Terminate, None).await;
    }

    /// Pings it, waiting at most `timeout`.
    pub async fn ping(&self, timeout: Duration) -> std::result::Result<(), String> {
        match self.0.call(ComponentMsg::Ping, Some(timeout)).await {
            Ok(ractor::rpc::CallResult::Success(answer)) => answer,
            Ok(ractor::rpc::CallResult::Timeout) => {
                Err(format!("no answer within {} s", timeout.as_secs_f64()))
            }
            _ => Err("the component is gone".into()),
        }
    }

    /// Asks a shell to run `script` in `cwd`.
    pub async fn exec(
        &self,
        script: String,
        cwd: std::path::PathBuf,
    ) -> std::result::Result<String, String> {
        match self
            .0
            .call(|reply| ComponentMsg::Exec { script, cwd, reply }, None)
            .await
        {
            Ok(ractor::rpc::CallResult::Success(answer)) => answer,
            _ => Err("the shell is gone".into()),
        }
    }

    /// Asks it to check (`commit` false) or apply a live change of `attribute`.
    pub(crate) async fn reconfigure(
        &self,
        attribute: &str,
        value: sd_lang::Value,
        commit: bool,
    ) -> std::result::Result<(), String> {
        let attribute = attribute.to_string();
        let message = |reply| ComponentMsg::Reconfigure {
            attribute,
            value,
            commit,
            reply,
        };
        match self.0.call(message, Some(Duration::from_secs(10))).await {
            Ok(ractor::rpc::CallResult::Success(answer)) => answer,
            Ok(ractor::rpc::CallResult::Timeout) => Err("no answer within 10 s".into()),
            _ => Err("the component is gone (restarting?); try again".into()),
        }
    }

    /// Sends a message without waiting (the node's notices: a fragment ended, a node lost).
    pub(crate) fn cast_message(&self, message: ComponentMsg) {
        self.cast(message);
    }

    fn cast(&self, message: ComponentMsg) {
        // A component that is gone has nothing left to be told.
        let _ = self.0.cast(message);
    }
}

/// Where a component reports its end: its parent component, or (for `sfConfig`) the node.
#[derive(Clone, Debug)]
pub enum ParentRef {
    /// A parent component.
    Component(ComponentRef),
    /// The node that holds the deployment.
    Node(mpsc::UnboundedSender<RootEnded>),
}

/// `sfConfig` ended on its own: finished, or failed beyond what supervision could repair.
#[derive(Debug, Clone)]
pub struct RootEnded {
    /// How.
    pub ending: Ending,
    /// Why, for an abnormal end.
    pub reason: Option<String>,
}

/// The actor that runs any component.
pub(crate) struct ComponentActor;

/// What a component is started with.
pub(crate) struct Args {
    pub deployment: std::sync::Arc<Deployment>,
    pub index: usize,
    pub parent: ParentRef,
    pub incarnation: u64,
    /// The node it runs on when that is not this one: this actor is then its proxy.
    pub remote: Option<String>,
    /// Recovering: take over the fragment already running on `remote` rather than start one.
    pub adopt: bool,
}

/// What a kind of component does in each phase.
enum Work {
    /// It runs on another node; this is its proxy.
    Remote(remote::Remote),
    Container(container::Container),
    Domain(domain::Domain),
    Storage(storage::Storage),
    Shell(shell::Shell),
    /// Prim and Scheduler: nothing to run of their own.
    Plain,
}

/// A component's actor state.
pub(crate) struct State {
    deployment: std::sync::Arc<Deployment>,
    index: usize,
    path: String,
    parent: ParentRef,
    incarnation: u64,
    /// Set once the component has ended or is terminating: later work messages are stale.
    finished: bool,
    /// A proxy taking over a fragment that already runs (recovery after a root was lost).
    adopt: bool,
    work: Work,
}

impl State {
    /// Records a state change (and an error) of this component.
    fn record(&self, state: ComponentState, error: Option<String>) {
        self.deployment.record(self.index, |record| {
            record.state = state;
            if error.is_some() {
                record.last_error = error;
            }
            if state == ComponentState::Running {
                record.started_unix_ms = Some(sd_store::unix_ms_now());
            }
        });
    }

    /// Ends this component on its own: reports to the parent and stops the actor. The work
    /// must already be cleaned up.
    fn end(&mut self, myself: &ActorRef<ComponentMsg>, ending: Ending, reason: Option<String>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let state = match ending {
            Ending::Normal => ComponentState::Finished,
            Ending::Abnormal => ComponentState::Failed,
        };
        self.record(state, reason.clone());
        match &self.parent {
            ParentRef::Component(parent) => parent.cast(ComponentMsg::ChildEnded {
                index: self.index,
                incarnation: self.incarnation,
                ending,
                reason,
            }),
            ParentRef::Node(node) => {
                let _ = node.send(RootEnded { ending, reason });
            }
        }
        self.stop(myself);
    }

    /// Stops the actor. It leaves the registry first: a parent that stops right after may
    /// kill it before its `post_stop` runs.
    fn stop(&self, myself: &ActorRef<ComponentMsg>) {
        self.deployment.unpublish(self.index, self.incarnation);
        myself.stop(None);
    }
}

impl Actor for ComponentActor {
    type Msg = ComponentMsg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(
        &self,
        myself: ActorRef<ComponentMsg>,
        args: Args,
    ) -> std::result::Result<State, ActorProcessingErr> {
        let deployment = args.deployment;
        let plan = deployment.plan();
        let planned = &plan.components[args.index];
        let path = planned.path_text();
        let description = plan.component(args.index);
        let work = match (&args.remote, planned.kind) {
            (Some(node), _) => Work::Remote(remote::Remote::new(
                &deployment,
                args.index,
                args.incarnation,
                node.clone(),
            )),
            (None, kind) if kind.is_container() => Work::Container(container::Container::new(
                &deployment,
                args.index,
                description,
            )),
            (None, Kind::ProcessDomain) => Work::Domain(domain::Domain::new(description, false)),
            (None, Kind::QemuDomain) => Work::Domain(domain::Domain::new(description, true)),
            (
                None,
                Kind::DirStorageBackend
                | Kind::QcowStorageBackend
                | Kind::LoopbackStorageBackend
                | Kind::LvmStorageBackend,
            ) => Work::Storage(storage::Storage::new(planned.kind)),
            (None, Kind::Shell) => Work::Shell(shell::Shell::new(description)),
            _ => Work::Plain,
        };
        deployment.publish(args.index, ComponentRef(myself), args.incarnation);
        let state = State {
            path,
            index: args.index,
            parent: args.parent,
            incarnation: args.incarnation,
            finished: false,
            adopt: args.adopt,
            work,
            deployment,
        };
        state.record(ComponentState::Deploying, None);
        // A restarted component may run elsewhere than its previous incarnation did.
        let node = match &state.work {
            Work::Remote(remote) => remote.node.clone(),
            _ => state.deployment.services.node.clone(),
        };
        state
            .deployment
            .record(state.index, |record| record.node = node);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ComponentMsg>,
        state: &mut State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        if let Work::Container(container) = &mut state.work {
            container.stop_liveness();
        }
        state.deployment.unpublish(state.index, state.incarnation);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ComponentMsg>,
        message: ComponentMsg,
        state: &mut State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match message {
            ComponentMsg::Deploy(reply) => {
                let outcome = deploy(&myself, state).await;
                if let Err(failure) = &outcome {
                    state.finished = true;
                    state.record(ComponentState::Failed, Some(failure.reason.clone()));
                    state.stop(&myself);
                } else {
                    state.record(ComponentState::Deployed, None);
                }
                let _ = reply.send(outcome);
            }
            ComponentMsg::Start(reply) => {
                state.record(ComponentState::Starting, None);
                let outcome = start(&myself, state).await;
                match &outcome {
                    Err(failure) => {
                        state.finished = true;
                        state.record(ComponentState::Failed, Some(failure.reason.clone()));
                        state.stop(&myself);
                    }
                    Ok(()) if !state.finished => state.record(ComponentState::Running, None),
                    Ok(()) => {}
                }
                let _ = reply.send(outcome);
            }
            ComponentMsg::Terminate(reply) => {
                // From here on it goes away on its own: a parent that stops first must not
                // kill it half-way through its cleanup (ractor kills linked children).
                if let ParentRef::Component(parent) = &state.parent {
                    myself.get_cell().unlink(parent.0.get_cell());
                }
                let already = state.finished;
                state.finished = true;
                if !already {
                    state.record(ComponentState::Terminating, None);
                }
                // A parent may stop (and so kill this actor) as soon as it has the answer:
                // everything is recorded before answering.
                let reply = terminate(state, reply).await;
                if !already {
                    state.record(ComponentState::Terminated, None);
                }
                state.stop(&myself);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            ComponentMsg::Ping(reply) => {
                let answer = match &mut state.work {
                    _ if state.finished => Err("it has ended".to_string()),
                    Work::Remote(remote) => {
                        // Answered from a task: a slow network must not hold this actor up.
                        let remote_ping = remote.pinger(&state.deployment);
                        tokio::spawn(async move {
                            let _ = reply.send(remote_ping.await);
                        });
                        return Ok(());
                    }
                    Work::Domain(domain) => domain.ping().await,
                    Work::Storage(storage) => storage.ping(),
                    _ => Ok(()),
                };
                let _ = reply.send(answer);
            }
            ComponentMsg::Exec { script, cwd, reply } => match &state.work {
                Work::Shell(shell) => shell.exec(script, cwd, reply),
                _ => {
                    let _ = reply.send(Err(format!("`{}` is not a shell", state.path)));
                }
            },
            ComponentMsg::WorkloadEnded(exit) => {
                if state.finished {
                    return Ok(());
                }
                if let Work::Domain(domain) = &mut state.work {
                    let reason = domain.ended(exit, &state.deployment, state.index).await;
                    let ending = if reason.is_none() {
                        Ending::Normal
                    } else {
                        Ending::Abnormal
                    };
                    state.end(&myself, ending, reason);
                }
            }
            ComponentMsg::ChildEnded {
                index,
                incarnation,
                ending,
                reason,
            } => {
                if !state.finished {
                    container::child_ended(&myself, state, index, incarnation, ending, reason)
                        .await;
                }
            }
            ComponentMsg::LivenessTick => {
                if let Work::Container(container) = &mut state.work
                    && !state.finished
                {
                    container.ping_children(&myself, &state.deployment);
                }
            }
            ComponentMsg::PingResult {
                index,
                incarnation,
                result,
            } => {
                if !state.finished {
                    container::ping_result(&myself, state, index, incarnation, result).await;
                }
            }
            ComponentMsg::RestartDue { children } => {
                if !state.finished {
                    container::restart(&myself, state, children).await;
                }
            }
            ComponentMsg::RemoteEnded {
                incarnation,
                ending,
                reason,
            } => {
                if let Work::Remote(remote) = &mut state.work
                    && incarnation == state.incarnation
                    && !state.finished
                {
                    remote.ended();
                    state.end(&myself, ending, reason);
                }
            }
            ComponentMsg::Reconfigure {
                attribute,
                value,
                commit,
                reply,
            } => {
                let answer = match &mut state.work {
                    _ if state.finished => Err("it has ended; try again".to_string()),
                    Work::Container(container) => {
                        if commit {
                            container.reload_settings(&myself, &state.deployment, state.index);
                        }
                        Ok(())
                    }
                    Work::Domain(domain) if attribute == "memory" => match value {
                        sd_lang::Value::Int(mib) if mib > 0 => {
                            domain.set_memory(mib.unsigned_abs().into(), commit).await
                        }
                        other => Err(format!(
                            "must be a whole number of MiB, not {}",
                            sd_lang::unparse::value_text(&other)
                        )),
                    },
                    Work::Storage(storage) if attribute == "saveImage" => match value {
                        sd_lang::Value::Bool(save) => {
                            if commit {
                                storage.set_save_image(save);
                            }
                            Ok(())
                        }
                        other => Err(format!(
                            "must be true or false, not {}",
                            sd_lang::unparse::value_text(&other)
                        )),
                    },
                    // A proxy: the fragment's own node applies it. Others hold nothing of it.
                    _ => Ok(()),
                };
                let _ = reply.send(answer);
            }
            ComponentMsg::NodeLost(node) => {
                if let Work::Remote(remote) = &mut state.work
                    && remote.node == node
                    && !state.finished
                {
                    remote.ended();
                    let reason = format!("its node \"{node}\" was lost");
                    state.end(&myself, Ending::Abnormal, Some(reason));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ComponentMsg>,
        event: SupervisionEvent,
        state: &mut State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        // A child that stopped on its own has reported why already; one that panicked has
        // not: that is an abnormal end.
        if let SupervisionEvent::ActorFailed(cell, error) = event
            && let Some((index, incarnation)) = state.deployment.find_actor(cell.get_id())
        {
            state.deployment.unpublish(index, incarnation);
            if !state.finished {
                let reason = Some(format!("the component's actor panicked: {error}"));
                container::child_ended(
                    &myself,
                    state,
                    index,
                    incarnation,
                    Ending::Abnormal,
                    reason,
                )
                .await;
            }
        }
        Ok(())
    }
}

async fn deploy(myself: &ActorRef<ComponentMsg>, state: &mut State) -> Outcome {
    let path = state.path.clone();
    let failure = |reason: String| Failure {
        path: path.clone(),
        reason,
    };
    match &mut state.work {
        Work::Remote(remote) => remote.deploy(&state.deployment, &path, state.adopt).await,
        Work::Container(container) => {
            container
                .deploy(myself, &state.deployment, state.index)
                .await
        }
        Work::Domain(domain) => domain
            .deploy(&state.deployment, state.index)
            .await
            .map_err(failure),
        Work::Storage(storage) => storage
            .deploy(&state.deployment, state.index)
            .await
            .map_err(failure),
        Work::Shell(shell) => shell.check().map_err(failure),
        Work::Plain => Ok(()),
    }
}

async fn start(myself: &ActorRef<ComponentMsg>, state: &mut State) -> Outcome {
    let path = state.path.clone();
    match &mut state.work {
        Work::Remote(remote) => remote.start(&state.deployment, &path).await,
        Work::Container(container) => container.start(myself, &state.deployment).await,
        Work::Domain(domain) => domain
            .start(myself, &state.deployment, state.index)
            .await
            .map_err(|reason| Failure { path, reason }),
        _ => Ok(()),
    }
}

/// Cleans the component away; returns the reply if it is still to be sent.
async fn terminate(state: &mut State, reply: RpcReplyPort<()>) -> Option<RpcReplyPort<()>> {
    match &mut state.work {
        Work::Remote(remote) => {
            remote.terminate(&state.deployment).await;
            Some(reply)
        }
        Work::Container(container) => {
            container
                .terminate(&state.deployment, state.index, reply)
                .await
        }
        Work::Domain(domain) => {
            domain.terminate(&state.deployment, state.index).await;
            Some(reply)
        }
        Work::Storage(storage) => {
            storage.terminate(&state.deployment, state.index).await;
            Some(reply)
        }
        Work::Shell(_) | Work::Plain => Some(reply),
    }
}
