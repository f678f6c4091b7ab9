//! Live reconfiguration (`sd set`), in two phases like SmartFrog's Update: every node that
//! holds part of the deployment first checks the change (it plans the description with it,
//! and the component that would apply it says whether it can), and only if all agree does each
//! commit it: record it durably with the deployment, take the new plan, and have the running
//! component apply it without a restart. The root commits first, then re-replicates, so a node
//! taking the deployment over later plans with the change too.

use std::time::Duration;

use sd_proto::peer::{PeerRequest, PeerResponse, Phase};
use sd_proto::{DeploymentState, Override, Reconfiguration, ReconfigureRequest};

use super::{Node, lock};
use crate::plan::Plan;
use crate::settings::{AppliedBy, settings_of, target};
use crate::{Error, Result};

/// How long a node has to answer one phase (a VM's balloon answers in milliseconds).
const PHASE_DEADLINE: Duration = Duration::from_secs(15);

/// What the coordinator knows of a deployment: from its record (the root) or its replica.
struct Known {
    description: String,
    source: String,
    overrides: Vec<Override>,
    epoch: u64,
    root: String,
}

impl Node {
    /// Changes `request.attribute` of the running component at `request.path` of deployment
    /// `name` to `request.value`, on every node that holds part of it, without restarting it.
    /// An invalid value, an attribute that cannot change live, or any node that cannot apply
    /// it refuses the change, and nothing changes.
    pub async fn reconfigure(
        &self,
        name: &str,
        request: ReconfigureRequest,
    ) -> Result<Reconfiguration> {
        let path = crate::plan::full_path(&request.path);
        let status = self.cluster_status(name).await?;
        if status.deployment.state != DeploymentState::Running {
            return Err(Error::NotRunning {
                name: name.to_string(),
                state: status.deployment.state.name().to_string(),
            });
        }
        let known = self.known(name)?;
        let setting_error = |reason: String| Error::Setting {
            path: path.clone(),
            attribute: request.attribute.clone(),
            reason,
        };
        crate::settings::parse_value(&request.value).map_err(setting_error)?;
        let change = Override {
            path: path.clone(),
            attribute: request.attribute.clone(),
            value: request.value.trim().to_string(),
        };
        // A later change of the same attribute replaces the earlier one.
        let mut overrides: Vec<Override> = known
            .overrides
            .iter()
            .filter(|o| !(o.path == change.path && o.attribute == change.attribute))
            .cloned()
            .collect();
        overrides.push(change.clone());
        let old = self
            .plan_known(&known, known.overrides.clone())
            .await
            .map_err(setting_error)?;
        // What cannot change live is refused for that, before its value is looked at.
        let (index, _) = target(&old, &path, &request.attribute)?;
        let new = self
            .plan_known(&known, overrides.clone())
            .await
            .map_err(setting_error)?;
        let value_in = |plan: &Plan| {
            settings_of(plan, index)
                .into_iter()
                .find(|s| s.attribute == request.attribute)
                .map(|s| s.value)
                .unwrap_or_default()
        };
        let mut nodes: Vec<String> = status
            .components
            .iter()
            .map(|c| c.node.clone())
            .chain([known.root.clone()])
            .collect();
        nodes.sort();
        nodes.dedup();
        let others: Vec<String> = nodes
            .iter()
            .filter(|node| **node != known.root)
            .cloned()
            .collect();
        let (refused, _) = self
            .phase_on(&nodes, name, known.epoch, &overrides, Phase::Validate)
            .await;
        if !refused.is_empty() {
            return Err(setting_error(refused.join("; ")));
        }
        // The root commits first, alone: it takes the change only over the changes this
        // coordinator started from, so of two concurrent changes one is refused, not lost.
        // Once the root has recorded it, the change is the deployment's.
        let root = [known.root.clone()];
        let (refused, mut not_applied) = self
            .phase_on(&root, name, known.epoch, &overrides, Phase::Commit)
            .await;
        if !refused.is_empty() {
            return Err(setting_error(refused.join("; ")));
        }
        let (refused, more) = self
            .phase_on(&others, name, known.epoch, &overrides, Phase::Commit)
            .await;
        not_applied.extend(refused.into_iter().chain(more));
        if !not_applied.is_empty() {
            return Err(Error::Remote {
                node: nodes.join(", "),
                reason: format!(
                    "the change is recorded but was not applied everywhere ({}); it applies there when the component next starts",
                    not_applied.join("; ")
                ),
            });
        }
        let (previous, value) = (value_in(&old), value_in(&new));
        self.records().note(
            name,
            &path,
            "reconfigured",
            format!("{}: {previous} -> {value}", request.attribute),
        );
        Ok(Reconfiguration {
            deployment: name.to_string(),
            path,
            attribute: request.attribute,
            previous,
            value,
            nodes,
        })
    }

    /// The deployment as this node knows it: its own record if it is the root, else the
    /// root's replica.
    fn known(&self, name: &str) -> Result<Known> {
        if let Some(record) = self.records().deployment_record(name)
            && record.root_node == self.inner.config.name
        {
            return Ok(Known {
                description: record.description,
                source: record.source,
                overrides: record.overrides,
                epoch: record.epoch,
                root: record.root_node,
            });
        }
        lock(&self.inner.replicas)
            .get(name)
            .map(|replica| Known {
                description: replica.description.clone(),
                source: replica.summary.source.clone(),
                overrides: replica.overrides.clone(),
                epoch: replica.epoch,
                root: replica.summary.root_node.clone(),
            })
            .ok_or_else(|| Error::NotFound {
                name: name.to_string(),
            })
    }

    /// The deployment's plan with `overrides`; a change the planner refuses is the reason.
    async fn plan_known(
        &self,
        known: &Known,
        overrides: Vec<Override>,
    ) -> std::result::Result<Plan, String> {
        self.prepare_off_thread(&known.source, &known.description, &overrides)
            .await
            .map(|(plan, _)| plan)
            .map_err(|e| plan_errors(&e))
    }

    /// One phase on each of `nodes` at once: the nodes that refused it (nothing changed
    /// there) and those that recorded it without applying it, each with why.
    async fn phase_on(
        &self,
        nodes: &[String],
        name: &str,
        epoch: u64,
        overrides: &[Override],
        phase: Phase,
    ) -> (Vec<String>, Vec<String>) {
        let answers = futures::future::join_all(
            nodes
                .iter()
                .map(|node| self.reconfigure_on(node, name, epoch, overrides.to_vec(), phase)),
        )
        .await;
        let (mut refused, mut not_applied) = (Vec::new(), Vec::new());
        for (node, answer) in nodes.iter().zip(answers) {
            match answer {
                Ok(()) => {}
                Err(PhaseFailure::Refused(why)) => refused.push(format!("node \"{node}\": {why}")),
                Err(PhaseFailure::NotApplied(why)) => {
                    not_applied.push(format!("node \"{node}\": {why}"));
                }
            }
        }
        (refused, not_applied)
    }

    /// One phase on one node (this one directly).
    async fn reconfigure_on(
        &self,
        node: &str,
        name: &str,
        epoch: u64,
        overrides: Vec<Override>,
        phase: Phase,
    ) -> std::result::Result<(), PhaseFailure> {
        if node == self.inner.config.name {
            return self.reconfigure_here(name, epoch, overrides, phase).await;
        }
        let Some(peers) = self.inner.services.peers.clone() else {
            return Err(PhaseFailure::Refused(
                "no cluster to reach it through".into(),
            ));
        };
        let request = PeerRequest::Reconfigure {
            deployment: name.to_string(),
            epoch,
            overrides,
            phase,
        };
        // An unreachable node in the commit phase may have committed: it is reported as
        // not applied (the root's record and the replicas have the change either way).
        let unknown = |why: String| match phase {
            Phase::Validate => PhaseFailure::Refused(why),
            Phase::Commit => PhaseFailure::NotApplied(why),
        };
        match peers.call(node, request, PHASE_DEADLINE).await {
            Ok(PeerResponse::Done) => Ok(()),
            Ok(PeerResponse::Refused(why)) => Err(PhaseFailure::Refused(why)),
            Ok(PeerResponse::NotApplied(why)) => Err(PhaseFailure::NotApplied(why)),
            Ok(other) => Err(unknown(format!("unexpected answer {other:?}"))),
            Err(why) => Err(unknown(format!("unreachable: {why}"))),
        }
    }

    /// A phase of a reconfiguration, for what this node holds of the deployment. One
    /// reconfiguration at a time per node: the root's check of the changes a commit builds
    /// on, and the record it then writes, are one step.
    pub(super) async fn reconfigure_here(
        &self,
        name: &str,
        epoch: u64,
        overrides: Vec<Override>,
        phase: Phase,
    ) -> std::result::Result<(), PhaseFailure> {
        let _one_at_a_time = self.inner.reconfiguring.lock().await;
        let refused = PhaseFailure::Refused;
        let Some(change) = overrides.last().cloned() else {
            return Err(refused("no change".into()));
        };
        let (contexts, is_root) = {
            let live = lock(&self.inner.live);
            let Some(entry) = live.get(name) else {
                // Nothing of it runs here (any more): nothing to check or apply.
                return Ok(());
            };
            if entry.epoch != epoch {
                return Err(refused(format!(
                    "this node holds deployment \"{name}\" under epoch {}, not {epoch} (it was taken over meanwhile); try again",
                    entry.epoch
                )));
            }
            (entry.contexts(), entry.root.is_some())
        };
        let plan = self
            .prepare_off_thread(&contexts[0].source, &contexts[0].description, &overrides)
            .await
            .map_err(|e| refused(plan_errors(&e)))?
            .0;
        let (index, applied_by) =
            target(&plan, &change.path, &change.attribute).map_err(|e| refused(e.to_string()))?;
        let actor_index = match applied_by {
            AppliedBy::Itself => Some(index),
            AppliedBy::Parent => plan.components[index].parent,
        };
        let value = crate::settings::parse_value(&change.value).map_err(refused)?;
        if is_root && let Some(record) = self.records().deployment_record(name) {
            // The changes the coordinator started from must be the deployment's now.
            let base: Vec<&Override> = record
                .overrides
                .iter()
                .filter(|o| !(o.path == change.path && o.attribute == change.attribute))
                .collect();
            let asked: Vec<&Override> = overrides[..overrides.len() - 1].iter().collect();
            if base != asked {
                return Err(refused(
                    "another change of this deployment was made meanwhile; try again".into(),
                ));
            }
        }
        let actors: Vec<_> = contexts
            .iter()
            .filter_map(|context| context.live_component(actor_index?))
            .collect();
        if phase == Phase::Validate {
            for actor in actors {
                actor
                    .reconfigure(&change.attribute, value.clone(), false)
                    .await
                    .map_err(|why| refused(format!("`{}` cannot apply it: {why}", change.path)))?;
            }
            return Ok(());
        }
        // Commit: record it (durably, unless the disk is full: then it is written once there
        // is room), take the new plan, then have the running component apply it. From the
        // record on, the change is made here whatever the component answers.
        self.records().modify_deployment(name, |record| {
            record.overrides.clone_from(&overrides);
            record.updated_unix_ms = sd_store::unix_ms_now();
        });
        for context in &contexts {
            context.replan(plan.clone(), overrides.clone());
        }
        let mut problems = Vec::new();
        if let Err(error) = self.records().flush().await {
            problems.push(format!("not yet durable: {error}"));
        }
        for actor in actors {
            if let Err(why) = actor
                .reconfigure(&change.attribute, value.clone(), true)
                .await
            {
                problems.push(format!("`{}` did not apply it: {why}", change.path));
            }
        }
        if is_root {
            self.replicate_now(name).await;
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PhaseFailure::NotApplied(problems.join("; ")))
        }
    }
}

/// Why a phase did not go through on a node.
#[derive(Debug)]
pub(super) enum PhaseFailure {
    /// Refused: nothing changed there.
    Refused(String),
    /// Committed (the change is recorded and planned there), but not applied to the running
    /// component, or not durable yet.
    NotApplied(String),
}

/// The planner's errors as one line.
fn plan_errors(error: &Error) -> String {
    match error {
        Error::InvalidDescription { errors, .. } => errors.join("; "),
        other => other.to_string(),
    }
}
