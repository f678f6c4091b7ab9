//! Containers: Compound, Sequence, Parallel, Pool, PhysicalHost, Schedulee. They deploy and
//! start their children, ping them, and carry out their supervisor's decisions.
//!
//! - Compound (and PhysicalHost, Schedulee): every child deployed, in order, before any is
//!   started, in order.
//! - Parallel and Pool: children deployed at the same time, then started at the same time.
//! - Sequence: one child at a time: deployed and started once the previous one finished
//!   normally; a failed step is retried (the strategy's siblings do not apply: only one step
//!   runs). The Sequence finishes when its last child has.
//! - A deploy or start that fails undoes the children already deployed, in reverse order.
//! - Terminate: children in reverse order, one after the other (Parallel and Pool: all at
//!   once). `sfSyncTerminate true`: the parent answers once all are clean; `false`: it
//!   answers at once (and still waits for them before it stops, so nothing is cut short).
//! - A container whose children have all ended (and none is being restarted) finishes.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use ractor::{Actor, ActorRef, RpcReplyPort};
use sd_proto::ComponentState;
use sd_store::unix_ms_now;

use super::placing::{self, Placement};
use super::{
    Args, ComponentActor, ComponentMsg, ComponentRef, Deployment, Failure, Outcome, ParentRef,
    State, Work,
};
use crate::plan::Kind;
use crate::supervision::{Decision, Ending, Escalation, RestartPolicy, Supervisor, SupervisorSpec};

/// A lifecycle step a parent takes its children through.
#[derive(Clone, Copy)]
enum Step {
    Deploy,
    Start,
}

impl Step {
    async fn on(self, child: &ComponentRef, path: &str) -> Outcome {
        match self {
            Step::Deploy => child.deploy(path).await,
            Step::Start => child.start(path).await,
        }
    }
}

/// One child as its parent sees it.
struct Slot {
    /// Its plan index.
    index: usize,
    /// Its live actor.
    child: Option<ComponentRef>,
    /// Which incarnation `child` is.
    incarnation: u64,
    running: bool,
    ended: bool,
    /// A restart is decided and not carried out yet.
    restarting: bool,
    /// Liveness checks missed in a row.
    missed: u32,
    /// How many missed checks make a failure (the child's `sfLivenessFactor`).
    factor: u32,
    /// How often it is checked (the child's `sfLivenessDelay`); zero: never.
    delay: Duration,
    /// When its next check is due.
    due: std::time::Instant,
    ping_in_flight: bool,
}

/// A container's own state.
pub(crate) struct Container {
    kind: Kind,
    slots: Vec<Slot>,
    supervisor: Supervisor,
    policies: Vec<RestartPolicy>,
    sync_terminate: bool,
    /// How often the children's checks are looked at: the shortest of their delays.
    tick: Duration,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Container {
    pub fn new(deployment: &Deployment, index: usize, description: &sd_lang::Component) -> Self {
        let planned = &deployment.plan().components[index];
        let slots = planned
            .children
            .iter()
            .map(|&child| Slot {
                index: child,
                child: None,
                incarnation: 0,
                running: false,
                ended: false,
                restarting: false,
                missed: 0,
                factor: deployment.plan().components[child].liveness.factor.max(1),
                delay: deployment.plan().components[child].liveness.delay,
                due: std::time::Instant::now(),
                ping_in_flight: false,
            })
            .collect();
        Container {
            kind: planned.kind,
            slots,
            supervisor: Supervisor::new(supervisor_spec(
                planned.supervisor.unwrap_or_default(),
                deployment.services.breaks,
            )),
            policies: planned
                .children
                .iter()
                .map(|&child| deployment.plan().components[child].restart)
                .collect(),
            sync_terminate: matches!(
                description.get("sfSyncTerminate"),
                Some(sd_lang::Value::Bool(true))
            ),
            tick: planned
                .children
                .iter()
                .map(|&child| deployment.plan().components[child].liveness.delay)
                .filter(|delay| !delay.is_zero())
                .min()
                .unwrap_or(Duration::ZERO),
            ticker: None,
        }
    }

    fn concurrent(&self) -> bool {
        matches!(self.kind, Kind::Parallel | Kind::Pool)
    }

    /// Takes the live settings of the plan as it is now (after a reconfiguration): its own
    /// restart intensity, and its children's liveness checks. Restart counts are kept, and a
    /// check made sooner by the change is due sooner.
    pub fn reload_settings(
        &mut self,
        myself: &ActorRef<ComponentMsg>,
        deployment: &Deployment,
        index: usize,
    ) {
        let plan = deployment.plan();
        let planned = &plan.components[index];
        self.supervisor.reconfigure(supervisor_spec(
            planned.supervisor.unwrap_or_default(),
            deployment.services.breaks,
        ));
        let now = std::time::Instant::now();
        for slot in &mut self.slots {
            let liveness = plan.components[slot.index].liveness;
            slot.factor = liveness.factor.max(1);
            slot.delay = liveness.delay;
            slot.due = slot.due.min(now + liveness.delay);
        }
        let tick = self
            .slots
            .iter()
            .map(|slot| slot.delay)
            .filter(|delay| !delay.is_zero())
            .min()
            .unwrap_or(Duration::ZERO);
        if tick != self.tick {
            self.tick = tick;
            self.stop_liveness();
            // Only a started container checks its children (a check of a child not yet
            // running is skipped anyway).
            if !tick.is_zero() && self.slots.iter().any(|slot| slot.running) {
                self.ticker = Some(myself.send_interval(tick, || ComponentMsg::LivenessTick));
            }
        }
    }

    pub fn stop_liveness(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
    }

    pub async fn deploy(
        &mut self,
        myself: &ActorRef<ComponentMsg>,
        deployment: &Arc<Deployment>,
        _index: usize,
    ) -> Outcome {
        if self.kind == Kind::Sequence {
            return Ok(());
        }
        let all: Vec<usize> = (0..self.slots.len()).collect();
        if self.concurrent() {
            for &pos in &all {
                if let Err(failure) = spawn(myself, deployment, &mut self.slots[pos]).await {
                    self.terminate_all().await;
                    return Err(failure);
                }
            }
            return self.all_at_once(deployment, Step::Deploy).await;
        }
        for pos in all {
            if let Err(failure) = deploy_one(myself, deployment, &mut self.slots[pos]).await {
                self.terminate_all().await;
                return Err(failure);
            }
        }
        Ok(())
    }

    pub async fn start(
        &mut self,
        myself: &ActorRef<ComponentMsg>,
        deployment: &Arc<Deployment>,
    ) -> Outcome {
        if self.kind == Kind::Sequence {
            // Steps that finished before the agent restarted are not run again.
            let first = self
                .slots
                .iter()
                .position(|slot| {
                    deployment
                        .take_recovered(slot.index)
                        .is_none_or(|record| record.state != ComponentState::Finished)
                })
                .unwrap_or(self.slots.len());
            for slot in &mut self.slots[..first] {
                slot.ended = true;
            }
            if first < self.slots.len() {
                run(myself, deployment, &mut self.slots[first]).await?;
            }
        } else if self.concurrent() {
            self.all_at_once(deployment, Step::Start).await?;
            for slot in &mut self.slots {
                slot.running = slot.child.is_some();
            }
        } else {
            for pos in 0..self.slots.len() {
                let slot = &mut self.slots[pos];
                let path = deployment.plan().components[slot.index].path_text();
                let Some(child) = slot.child.clone() else {
                    continue;
                };
                if let Err(failure) = child.start(&path).await {
                    slot.child = None;
                    self.terminate_all().await;
                    return Err(failure);
                }
                slot.running = true;
            }
        }
        if !self.tick.is_zero() {
            self.ticker = Some(myself.send_interval(self.tick, || ComponentMsg::LivenessTick));
        }
        Ok(())
    }

    /// Takes every live child through `step` at once; if one fails, every child is
    /// terminated and the first failure (in declaration order) is returned.
    async fn all_at_once(&mut self, deployment: &Deployment, step: Step) -> Outcome {
        let outcomes = join_all(self.slots.iter().map(|slot| {
            let path = deployment.plan().components[slot.index].path_text();
            let child = slot.child.clone();
            async move {
                match child {
                    Some(child) => step.on(&child, &path).await,
                    None => Ok(()),
                }
            }
        }))
        .await;
        let Some(failure) = outcomes.iter().find_map(|o| o.clone().err()) else {
            return Ok(());
        };
        // A child that failed has undone itself and stopped.
        for (slot, outcome) in self.slots.iter_mut().zip(&outcomes) {
            if outcome.is_err() {
                slot.child = None;
            }
        }
        self.terminate_all().await;
        Err(failure)
    }

    /// Terminates every live child: in reverse order, one after the other (Parallel and Pool:
    /// all at once); returns once all are done.
    async fn terminate_all(&mut self) {
        self.stop_liveness();
        let children: Vec<ComponentRef> = self
            .slots
            .iter_mut()
            .rev()
            .filter_map(|slot| {
                slot.restarting = false;
                slot.running = false;
                slot.child.take()
            })
            .collect();
        if self.concurrent() {
            join_all(children.iter().map(ComponentRef::terminate)).await;
        } else {
            for child in children {
                child.terminate().await;
            }
        }
    }

    /// Terminates the children; returns the reply when it is still to be sent (sync).
    pub async fn terminate(
        &mut self,
        deployment: &Deployment,
        index: usize,
        reply: RpcReplyPort<()>,
    ) -> Option<RpcReplyPort<()>> {
        if self.sync_terminate {
            self.terminate_all().await;
            return Some(reply);
        }
        // Reported terminated at once; the children clean up on their own time (the actor
        // stays until they are done, so that none is cut short).
        deployment.record(index, |record| record.state = ComponentState::Terminated);
        let _ = reply.send(());
        self.terminate_all().await;
        None
    }

    /// Pings every running child whose check is due; the answers come back as messages.
    pub fn ping_children(&mut self, myself: &ActorRef<ComponentMsg>, deployment: &Deployment) {
        let now = std::time::Instant::now();
        for slot in &mut self.slots {
            let Some(child) = slot.child.clone() else {
                continue;
            };
            if !slot.running || slot.ping_in_flight || slot.delay.is_zero() || slot.due > now {
                continue;
            }
            slot.ping_in_flight = true;
            slot.due = now + slot.delay;
            let (index, incarnation, timeout) = (slot.index, slot.incarnation, slot.delay);
            let parent = myself.clone();
            let services = Arc::clone(&deployment.services);
            tokio::spawn(async move {
                let asked = std::time::Instant::now();
                let result = child.ping(timeout).await;
                if result.is_ok() {
                    services
                        .metrics
                        .liveness_round_trip
                        .observe(asked.elapsed());
                }
                let _ = parent.cast(ComponentMsg::PingResult {
                    index,
                    incarnation,
                    result,
                });
            });
        }
    }

    fn all_ended(&self) -> bool {
        !self.slots.is_empty() && self.slots.iter().all(|s| s.ended && !s.restarting)
    }
}

/// Spawns a new incarnation of a slot's child.
async fn spawn(
    myself: &ActorRef<ComponentMsg>,
    deployment: &Arc<Deployment>,
    slot: &mut Slot,
) -> Outcome {
    let adoption = deployment.take_adoption(slot.index).filter(|node| {
        deployment
            .services
            .peers
            .as_ref()
            .is_some_and(|peers| crate::cluster::is_alive(peers, node))
    });
    let (remote, adopt) = match adoption {
        Some(node) => (Some(node), true),
        None => (
            wait_for_placement(myself, deployment, slot.index).await?,
            false,
        ),
    };
    let incarnation = deployment.next_incarnation();
    let args = Args {
        deployment: Arc::clone(deployment),
        index: slot.index,
        parent: ParentRef::Component(ComponentRef(myself.clone())),
        incarnation,
        remote,
        adopt,
    };
    let (actor, _) = Actor::spawn_linked(None, ComponentActor, args, myself.get_cell())
        .await
        .map_err(|error| Failure {
            path: deployment.plan().components[slot.index].path_text(),
            reason: format!("cannot start its actor: {error}"),
        })?;
    slot.child = Some(ComponentRef(actor));
    slot.incarnation = incarnation;
    slot.ended = false;
    slot.missed = 0;
    slot.ping_in_flight = false;
    Ok(())
}

/// Where the child at `index` runs: `None` here, else the node. A child whose node is down
/// waits for it, visibly (its record says why), until the deployment is terminated.
async fn wait_for_placement(
    myself: &ActorRef<ComponentMsg>,
    deployment: &Arc<Deployment>,
    index: usize,
) -> std::result::Result<Option<String>, Failure> {
    let path = deployment.plan().components[index].path_text();
    let parent = deployment.plan().components[index].parent;
    let siblings: Vec<usize> = parent
        .map(|parent| deployment.plan().components[parent].children.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|&sibling| sibling != index)
        .collect();
    let siblings = deployment.nodes_of(&siblings);
    let mut waited = false;
    loop {
        let placed = match placing::place(deployment, index, &siblings) {
            Ok(Placement::Here) => Ok(None),
            Ok(Placement::On(node)) => Ok(Some(node)),
            Ok(Placement::Wait(reason)) => {
                waited = true;
                deployment.record(index, |record| {
                    record.state = ComponentState::Deploying;
                    record.last_error = Some(format!("waiting: {reason}"));
                });
                Err(None)
            }
            Err(reason) => Err(Some(reason)),
        };
        match placed {
            Ok(node) => {
                if waited {
                    deployment.record(index, |record| record.last_error = None);
                }
                return Ok(node);
            }
            Err(Some(reason)) => return Err(Failure { path, reason }),
            Err(None) => {}
        }
        if deployment.is_terminating()
            || deployment.is_cancelled(index)
            || myself.get_status() != ractor::ActorStatus::Running
        {
            return Err(Failure {
                path,
                reason: "the deployment was terminated while the component waited for its node"
                    .into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn deploy_one(
    myself: &ActorRef<ComponentMsg>,
    deployment: &Arc<Deployment>,
    slot: &mut Slot,
) -> Outcome {
    spawn(myself, deployment, slot).await?;
    let path = deployment.plan().components[slot.index].path_text();
    let child = slot.child.clone().ok_or_else(|| Failure {
        path: path.clone(),
        reason: "it vanished".into(),
    })?;
    if let Err(failure) = child.deploy(&path).await {
        slot.child = None;
        return Err(failure);
    }
    Ok(())
}

/// Deploys and starts a slot's child (a sequence step, a restart).
async fn run(
    myself: &ActorRef<ComponentMsg>,
    deployment: &Arc<Deployment>,
    slot: &mut Slot,
) -> Outcome {
    deploy_one(myself, deployment, slot).await?;
    let path = deployment.plan().components[slot.index].path_text();
    let Some(child) = slot.child.clone() else {
        return Ok(());
    };
    if let Err(failure) = child.start(&path).await {
        slot.child = None;
        return Err(failure);
    }
    slot.running = true;
    Ok(())
}

fn container(state: &mut State) -> Option<&mut Container> {
    match &mut state.work {
        Work::Container(container) => Some(container),
        _ => None,
    }
}

/// Runs a step or restart; a failure is handled as the child's abnormal end.
async fn run_or_fail(myself: &ActorRef<ComponentMsg>, state: &mut State, pos: usize) {
    let deployment = Arc::clone(&state.deployment);
    let Some(c) = container(state) else {
        return;
    };
    let slot = &mut c.slots[pos];
    if let Err(failure) = run(myself, &deployment, slot).await {
        let _ = myself.cast(ComponentMsg::ChildEnded {
            index: slot.index,
            incarnation: slot.incarnation,
            ending: Ending::Abnormal,
            reason: Some(failure.to_string()),
        });
    }
}

/// The parent's supervision settings, with the intensity lifted when the test break
/// `no_restart_intensity` is set (its children are then restarted however often they fail).
fn supervisor_spec(spec: SupervisorSpec, breaks: crate::TestBreaks) -> SupervisorSpec {
    if breaks.no_restart_intensity {
        return SupervisorSpec {
            max_restarts: u32::MAX,
            ..spec
        };
    }
    spec
}

fn escalation_text(escalation: &Escalation) -> String {
    match escalation {
        Escalation::StrategyNone { .. } => {
            "a child failed and the restart strategy is \"none\"".into()
        }
        Escalation::IntensityExceeded {
            max_restarts,
            window,
        } => format!(
            "more than {max_restarts} restarts within {} s (sdMaxRestarts / sdRestartWindow)",
            window.as_secs_f64()
        ),
    }
}

/// A child ended: apply the supervisor's decision.
pub(super) async fn child_ended(
    myself: &ActorRef<ComponentMsg>,
    state: &mut State,
    index: usize,
    incarnation: u64,
    ending: Ending,
    reason: Option<String>,
) {
    let deployment = Arc::clone(&state.deployment);
    let Some(c) = container(state) else {
        return;
    };
    let Some(pos) = c
        .slots
        .iter()
        .position(|s| s.index == index && s.incarnation == incarnation && !s.ended)
    else {
        return;
    };
    let slot = &mut c.slots[pos];
    slot.ended = true;
    slot.running = false;
    slot.child = None;
    let child_path = deployment.plan().components[index].path_text();
    let decision =
        c.supervisor
            .on_child_end(pos, ending, &c.policies, unix_ms_now(), fastrand::f64());
    match decision {
        Decision::Carry => {
            let next = pos + 1;
            if c.kind == Kind::Sequence && ending == Ending::Normal && next < c.slots.len() {
                run_or_fail(myself, state, next).await;
            } else if c.all_ended() {
                state.end(myself, Ending::Normal, None);
            }
        }
        Decision::Restart {
            terminate,
            restart,
            delay,
        } => {
            let (terminate, restart) = if c.kind == Kind::Sequence {
                (Vec::new(), vec![pos])
            } else {
                (terminate, restart)
            };
            let why = reason.unwrap_or_else(|| "it finished and is permanent".into());
            deployment.services.records.note(
                &deployment.name,
                &child_path,
                "restart",
                format!(
                    "{why}; restarting in {:.3} s (with {} sibling(s))",
                    delay.as_secs_f64(),
                    restart.len().saturating_sub(1)
                ),
            );
            for &t in terminate.iter().rev() {
                let slot = &mut c.slots[t];
                slot.running = false;
                slot.ended = true;
                if let Some(child) = slot.child.take() {
                    child.terminate().await;
                }
            }
            let children: Vec<usize> = restart
                .iter()
                .map(|&r| {
                    c.slots[r].restarting = true;
                    c.slots[r].index
                })
                .collect();
            for &child in &children {
                deployment.record(child, |record| {
                    record.state = ComponentState::Restarting;
                });
            }
            if delay.is_zero() {
                restart_children(myself, state, children).await;
            } else {
                myself.send_after(delay, move || ComponentMsg::RestartDue { children });
            }
        }
        Decision::Escalate(escalation) => {
            let why = format!(
                "{}; last failure: `{child_path}`: {}",
                escalation_text(&escalation),
                reason.unwrap_or_default()
            );
            c.terminate_all().await;
            state.end(myself, Ending::Abnormal, Some(why));
        }
    }
}

/// Starts again the children whose restart is due, in declaration order.
pub(super) async fn restart(
    myself: &ActorRef<ComponentMsg>,
    state: &mut State,
    children: Vec<usize>,
) {
    restart_children(myself, state, children).await;
}

async fn restart_children(
    myself: &ActorRef<ComponentMsg>,
    state: &mut State,
    children: Vec<usize>,
) {
    let deployment = Arc::clone(&state.deployment);
    for index in children {
        let Some(c) = container(state) else {
            return;
        };
        let Some(pos) = c
            .slots
            .iter()
            .position(|s| s.index == index && s.restarting)
        else {
            continue;
        };
        c.slots[pos].restarting = false;
        let now = unix_ms_now();
        deployment.record(index, |record| {
            record.restarts += 1;
            record.restart_times_unix_ms.push(now);
            // Only the recent ones matter (the restart window); keep the record small.
            let keep = record.restart_times_unix_ms.len().saturating_sub(32);
            record.restart_times_unix_ms.drain(..keep);
        });
        run_or_fail(myself, state, pos).await;
    }
}

/// A child answered a ping (or did not).
pub(super) async fn ping_result(
    myself: &ActorRef<ComponentMsg>,
    state: &mut State,
    index: usize,
    incarnation: u64,
    result: std::result::Result<(), String>,
) {
    let Some(c) = container(state) else {
        return;
    };
    let Some(slot) = c
        .slots
        .iter_mut()
        .find(|s| s.index == index && s.incarnation == incarnation && !s.ended)
    else {
        return;
    };
    slot.ping_in_flight = false;
    let reason = match result {
        Ok(()) => {
            slot.missed = 0;
            return;
        }
        Err(reason) => reason,
    };
    slot.missed += 1;
    if slot.missed < slot.factor {
        return;
    }
    let missed = slot.missed;
    if let Some(child) = slot.child.clone() {
        child.terminate().await;
    }
    let reason = format!("missed {missed} liveness checks in a row: {reason}");
    state.deployment.record(index, |record| {
        record.state = ComponentState::Failed;
        record.last_error = Some(reason.clone());
    });
    child_ended(
        myself,
        state,
        index,
        incarnation,
        Ending::Abnormal,
        Some(reason),
    )
    .await;
}
