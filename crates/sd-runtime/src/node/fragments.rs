//! The node as its peers see it: fragments run here for parents on other nodes, fragments of
//! this node's deployments ending elsewhere, lost nodes, and the cluster-wide views (`sd ls`,
//! `sd status` and `sd terminate` from any node).
//!
//! A fragment is a component (with the subtree that runs with it) whose parent runs on another
//! node. Its parent's node holds a proxy and drives it with [`PeerRequest`]s; here it is an
//! ordinary component actor whose parent is the node, like a deployment's root, and whose end
//! is reported back to the parent's node. Every request carries the deployment's epoch: a
//! request under an older epoch than the one this node holds is refused (a stale owner).

use std::collections::HashMap;
use std::sync::Arc;

use sd_proto::peer::{FailureText, FragmentKey, FragmentSpec, PeerRequest, PeerResponse};
use sd_proto::{DeploymentState, DeploymentStatus, DeploymentSummary};
use sd_store::{DeploymentRecord, unix_ms_now};
use tokio::sync::mpsc;

use super::reconfigure::PhaseFailure;
use super::{Fragment, Live, LogLocation, Node, lock, remove_dir, spawn_under_node};
use crate::cluster::{SHORT_DEADLINE, is_alive};
use crate::component::{ComponentMsg, ComponentRef, Deployment, DeploymentIdentity, RootEnded};
use crate::supervision::Ending;
use crate::{Error, Result};

/// How long a node waits for each peer's answer to a query of every peer (status, lists):
/// a peer that does not answer by then is left out rather than holding the answer up.
const QUERY_DEADLINE: std::time::Duration = std::time::Duration::from_millis(1500);

/// How long a ping of a fragment's component may take here.
const LOCAL_PING: std::time::Duration = std::time::Duration::from_secs(1);

impl Node {
    /// Answers a request from the peer `from`.
    pub async fn serve_peer(&self, from: &str, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::Info => PeerResponse::Info(self.info()),
            PeerRequest::Deploy(mut spec) => {
                // Its parent is where the request came from, as the peer's certificate says.
                spec.parent_node = from.to_string();
                self.deploy_fragment(spec).await
            }
            PeerRequest::Owns(keys) => {
                PeerResponse::Owned(keys.iter().map(|key| self.owns(key)).collect())
            }
            PeerRequest::Start(key) => self.start_fragment(&key).await,
            PeerRequest::Ping(key) => match self.fragment(&key) {
                Err(why) => PeerResponse::Alive(Err(why)),
                Ok((_, component)) => PeerResponse::Alive(component.ping(LOCAL_PING).await),
            },
            PeerRequest::Terminate(key) => {
                self.terminate_fragment(&key).await;
                PeerResponse::Done
            }
            PeerRequest::Ended {
                key,
                normal,
                reason,
            } => {
                self.fragment_ended(from, &key, normal, reason);
                PeerResponse::Done
            }
            PeerRequest::Status { deployment } => {
                PeerResponse::Status(self.status(&deployment).ok())
            }
            PeerRequest::Deployments => PeerResponse::Deployments(self.own_deployments()),
            PeerRequest::Fragments { deployment } => {
                PeerResponse::Fragments(self.fragments_of(&deployment))
            }
            PeerRequest::TerminateDeployment { deployment } => {
                match self.terminate(&deployment).await {
                    Ok(()) => PeerResponse::Done,
                    Err(error) => PeerResponse::Refused(error.to_string()),
                }
            }
            PeerRequest::Replicate(replica) => self.receive_replica(replica),
            PeerRequest::Forget { deployment, epoch } => self.forget_replica(&deployment, epoch),
            PeerRequest::ReadLog {
                deployment,
                path,
                offset,
                max,
            } => self.read_log(&deployment, &path, offset, max).await,
            PeerRequest::Claim { name, claimant } => self.answer_claim(from, &name, claimant),
            PeerRequest::Release { name, claimant } => self.answer_release(from, &name, claimant),
            PeerRequest::Reconfigure {
                deployment,
                epoch,
                overrides,
                phase,
            } => match self
                .reconfigure_here(&deployment, epoch, overrides, phase)
                .await
            {
                Ok(()) => PeerResponse::Done,
                Err(PhaseFailure::Refused(why)) => PeerResponse::Refused(why),
                Err(PhaseFailure::NotApplied(why)) => PeerResponse::NotApplied(why),
            },
            PeerRequest::Events { generation, after } => {
                let (generation, events) = self.events_after(generation, after);
                PeerResponse::Events { generation, events }
            }
        }
    }

    /// The fragments of a deployment running here, with their parents' nodes.
    pub(super) fn fragments_of(&self, name: &str) -> Vec<(FragmentKey, String)> {
        lock(&self.inner.live)
            .get(name)
            .map(|entry| {
                entry
                    .fragments
                    .values()
                    .filter(|f| f.component.0.get_status() == ractor::ActorStatus::Running)
                    .map(|f| (f.key.clone(), f.parent_node.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The deployments whose root is this node.
    fn own_deployments(&self) -> Vec<DeploymentSummary> {
        self.deployments()
            .into_iter()
            .filter(|summary| summary.root_node == self.inner.config.name)
            .collect()
    }

    /// A fragment's live component, if the key is current.
    fn fragment(
        &self,
        key: &FragmentKey,
    ) -> std::result::Result<(Arc<Deployment>, ComponentRef), String> {
        let live = lock(&self.inner.live);
        let Some(entry) = live.get(&key.deployment) else {
            return Err(format!(
                "this node runs nothing of deployment \"{}\"",
                key.deployment
            ));
        };
        match entry.fragments.get(&(key.index as usize)) {
            Some(fragment) if fragment.key == *key => {
                Ok((Arc::clone(&entry.deployment), fragment.component.clone()))
            }
            Some(fragment) => Err(format!(
                "stale request: component {} runs here under epoch {} for incarnation {}, not epoch {} incarnation {}",
                key.index, fragment.key.epoch, fragment.key.incarnation, key.epoch, key.incarnation
            )),
            None => Err(format!(
                "component {} of deployment \"{}\" does not run here",
                key.index, key.deployment
            )),
        }
    }

    /// Starts a deployed fragment; one just adopted by a new owner runs already.
    async fn start_fragment(&self, key: &FragmentKey) -> PeerResponse {
        let adopted = {
            let mut live = lock(&self.inner.live);
            live.get_mut(&key.deployment)
                .and_then(|entry| entry.fragments.get_mut(&(key.index as usize)))
                .filter(|fragment| fragment.key == *key)
                .is_some_and(|fragment| std::mem::take(&mut fragment.adopted))
        };
        if adopted {
            return PeerResponse::Outcome(Ok(()));
        }
        match self.fragment(key) {
            Err(why) => PeerResponse::Refused(why),
            Ok((deployment, component)) => {
                let path = deployment
                    .plan()
                    .components
                    .get(key.index as usize)
                    .map(|planned| planned.path_text())
                    .unwrap_or_default();
                PeerResponse::Outcome(component.start(&path).await.map_err(failure_text))
            }
        }
    }

    /// The deployment's shared state on this node for a fragment: the one already here, or a
    /// new one planned from the description the parent sent (and recorded, so that a restarted
    /// agent knows what it ran). A request under an older epoch than this node knows is
    /// refused; a newer epoch is adopted, and fragments of older ones that the new owner does
    /// not adopt are stopped by the owner check ([`Node::check_owners`]).
    async fn fragment_context(
        &self,
        spec: &FragmentSpec,
    ) -> std::result::Result<Arc<Deployment>, String> {
        let name = &spec.key.deployment;
        sd_store::validate_deployment_name(name)
            .map_err(|_| format!("invalid deployment name \"{name}\""))?;
        if let Some(known) = self.known_context(spec)? {
            return Ok(known);
        }
        // The first fragments of a deployment often arrive together (a pool's replicas): one
        // of them plans the description, the others wait for it and use its plan.
        let _planning = self.inner.planning.lock().await;
        if let Some(known) = self.known_context(spec)? {
            return Ok(known);
        }
        let (planned, _) = self
            .prepare_off_thread(&spec.source, &spec.description, &spec.overrides)
            .await
            .map_err(|e| match e {
                Error::InvalidDescription { errors, .. } => errors.join("\n"),
                other => other.to_string(),
            })?;
        let now = unix_ms_now();
        if self.records().deployment_record(name).is_none() {
            self.records().put_deployment(DeploymentRecord {
                name: name.clone(),
                description: spec.description.clone(),
                source: spec.source.clone(),
                state: DeploymentState::Running,
                epoch: spec.key.epoch,
                root_node: spec.root_node.clone(),
                created_unix_ms: now,
                updated_unix_ms: now,
                overrides: spec.overrides.clone(),
            });
        }
        let deployment = Arc::new(Deployment::new(
            DeploymentIdentity {
                name: name.clone(),
                epoch: spec.key.epoch,
                description: spec.description.clone(),
                overrides: spec.overrides.clone(),
                source: spec.source.clone(),
                root: spec.root_node.clone(),
            },
            planned,
            Arc::clone(&self.inner.services),
            HashMap::new(),
        ));
        let mut live = lock(&self.inner.live);
        let entry = live.entry(name.clone()).or_insert_with(|| Live {
            deployment: Arc::clone(&deployment),
            root: None,
            fragments: HashMap::new(),
            epoch: spec.key.epoch,
        });
        Ok(Arc::clone(&entry.deployment))
    }

    /// The deployment's state already on this node for a fragment, under the request's epoch
    /// (a newer one is adopted; an older one is refused).
    fn known_context(
        &self,
        spec: &FragmentSpec,
    ) -> std::result::Result<Option<Arc<Deployment>>, String> {
        let name = &spec.key.deployment;
        let replicated = lock(&self.inner.replicas)
            .get(name)
            .map_or(0, |replica| replica.epoch);
        if spec.key.epoch < replicated {
            return Err(format!(
                "stale request: deployment \"{name}\" has epoch {replicated} now, newer than {}",
                spec.key.epoch
            ));
        }
        let mut live = lock(&self.inner.live);
        let Some(entry) = live.get_mut(name) else {
            return Ok(None);
        };
        if spec.key.epoch < entry.epoch {
            return Err(format!(
                "stale request: this node holds deployment \"{name}\" under epoch {}, newer than {}",
                entry.epoch, spec.key.epoch
            ));
        }
        if spec.key.epoch > entry.epoch {
            if entry.root.is_some() {
                // This node was the root: another took over. It steps down first; the new
                // root's request is retried by its parent's strategy.
                tokio::spawn(self.clone().step_down(
                    name.clone(),
                    spec.root_node.clone(),
                    spec.key.epoch,
                ));
                return Err(format!(
                    "this node is stepping down as the root of \"{name}\" (epoch {}); retry",
                    entry.epoch
                ));
            }
            entry.follow(spec.key.epoch, &spec.root_node);
        }
        Ok(Some(Arc::clone(&entry.deployment)))
    }

    /// How long the fragments whose parent ran on a lost node wait for a new root to adopt
    /// them before they are terminated.
    const ADOPTION_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

    /// Whether the component at `key.index`, of the given incarnation, still runs here as a
    /// proxy of a fragment (asked by the fragment's node).
    fn owns(&self, key: &FragmentKey) -> bool {
        let live = lock(&self.inner.live);
        live.get(&key.deployment).is_some_and(|entry| {
            entry
                .contexts()
                .iter()
                .any(|context| context.incarnation_of(key.index as usize) == Some(key.incarnation))
        })
    }

    /// Terminates the fragments no parent owns any more: every fragment asks its parent's node
    /// (when that node answers); one it does not own is stopped and cleaned. This is what
    /// ends an instance whose parent restarted it elsewhere while this node was cut off, or
    /// whose deployment was terminated meanwhile.
    ///
    /// The test break `no_owner_checks` switches this off (and only this): such instances
    /// then keep running after a partition heals (INV-1 broken, for the chaos checker).
    pub(super) async fn check_owners(&self) {
        if self.inner.config.test_breaks.no_owner_checks {
            return;
        }
        let Some(peers) = self.inner.services.peers.clone() else {
            return;
        };
        let fragments: Vec<(FragmentKey, String)> = lock(&self.inner.live)
            .values()
            .flat_map(|entry| {
                entry
                    .fragments
                    .values()
                    .filter(|f| !f.adopted)
                    .map(|f| (f.key.clone(), f.parent_node.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        // One request per parent node.
        let mut by_parent: HashMap<String, Vec<FragmentKey>> = HashMap::new();
        for (key, parent) in fragments {
            by_parent.entry(parent).or_default().push(key);
        }
        let checks = by_parent.into_iter().map(|(parent, keys)| {
            let peers = Arc::clone(&peers);
            async move {
                let answer = peers
                    .call(&parent, PeerRequest::Owns(keys.clone()), SHORT_DEADLINE)
                    .await;
                (keys, answer)
            }
        });
        for (keys, answer) in futures::future::join_all(checks).await {
            let Ok(PeerResponse::Owned(owned)) = answer else {
                continue;
            };
            for (key, owned) in keys.iter().zip(owned) {
                if !owned {
                    self.terminate_fragment(key).await;
                }
            }
        }
    }

    /// A lost node's fragments here: those whose parent ran there are terminated, unless a
    /// new root adopts them within [`Self::ADOPTION_GRACE`] (the lost node was their
    /// deployment's root).
    async fn release_orphans(self, lost: String) {
        tokio::time::sleep(Self::ADOPTION_GRACE).await;
        let orphans: Vec<FragmentKey> = lock(&self.inner.live)
            .values()
            .flat_map(|entry| {
                entry
                    .fragments
                    .values()
                    .filter(|f| f.parent_node == lost)
                    .map(|f| f.key.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        for key in orphans {
            self.terminate_fragment(&key).await;
        }
    }

    /// Runs a component here for a parent on another node: spawned, then deployed; or, for a
    /// new owner after a takeover, the fragment already running here is re-keyed and kept.
    async fn deploy_fragment(&self, spec: FragmentSpec) -> PeerResponse {
        if self
            .inner
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return PeerResponse::Refused(Error::ShuttingDown.to_string());
        }
        let deployment = match self.fragment_context(&spec).await {
            Ok(deployment) => deployment,
            Err(reason) => {
                return PeerResponse::Outcome(Err(FailureText {
                    path: "sfConfig".into(),
                    reason,
                }));
            }
        };
        let index = spec.key.index as usize;
        let plan = deployment.plan();
        let Some(planned) = plan.components.get(index) else {
            return PeerResponse::Outcome(Err(FailureText {
                path: "sfConfig".into(),
                reason: format!(
                    "the description has no component {index} (it has {})",
                    plan.components.len()
                ),
            }));
        };
        let path = planned.path_text();
        if spec.adopt && self.adopt_fragment(&spec) {
            return PeerResponse::Outcome(Ok(()));
        }
        // A retried or superseded request replaces what ran for an older incarnation.
        let previous = lock(&self.inner.live)
            .get(&spec.key.deployment)
            .and_then(|entry| entry.fragments.get(&index))
            .map(|fragment| fragment.key.clone());
        if let Some(previous) = previous {
            self.terminate_fragment(&previous).await;
        }
        let (component, ended_rx) = match spawn_under_node(&deployment, index).await {
            Ok(spawned) => spawned,
            Err(error) => {
                return PeerResponse::Outcome(Err(FailureText {
                    path,
                    reason: format!("cannot start its actor: {error}"),
                }));
            }
        };
        let registered = {
            let mut live = lock(&self.inner.live);
            match live.get_mut(&spec.key.deployment) {
                Some(entry) if entry.epoch == spec.key.epoch => {
                    entry.fragments.insert(
                        index,
                        Fragment {
                            key: spec.key.clone(),
                            component: component.clone(),
                            deployment: Arc::clone(&deployment),
                            parent_node: spec.parent_node.clone(),
                            adopted: false,
                        },
                    );
                    true
                }
                _ => false,
            }
        };
        if !registered {
            component.terminate().await;
            return PeerResponse::Refused("the deployment changed while deploying".into());
        }
        tokio::spawn(self.clone().watch_fragment(
            spec.key.deployment.clone(),
            index,
            component.clone(),
            ended_rx,
        ));
        let outcome = component.deploy(&path).await;
        if outcome.is_err() {
            // It undid itself; forget it.
            self.forget_fragment(&spec.key).await;
        }
        PeerResponse::Outcome(outcome.map_err(failure_text))
    }

    /// Hands a fragment running here under an older owner to the new one: same component,
    /// new key, reports to the new parent. `false` when there is none to adopt.
    fn adopt_fragment(&self, spec: &FragmentSpec) -> bool {
        let mut live = lock(&self.inner.live);
        let Some(fragment) = live
            .get_mut(&spec.key.deployment)
            .and_then(|entry| entry.fragments.get_mut(&(spec.key.index as usize)))
        else {
            return false;
        };
        let older =
            (fragment.key.epoch, fragment.key.incarnation) < (spec.key.epoch, spec.key.incarnation);
        if !older || fragment.component.0.get_status() != ractor::ActorStatus::Running {
            return false;
        }
        fragment.key = spec.key.clone();
        fragment.parent_node = spec.parent_node.clone();
        fragment.adopted = true;
        drop(live);
        self.follow_root(&spec.key.deployment, &spec.root_node, spec.key.epoch);
        true
    }

    /// A fragment holder's record names the deployment's current root and epoch.
    pub(super) fn follow_root(&self, name: &str, root: &str, epoch: u64) {
        if let Some(mut record) = self.records().deployment_record(name)
            && record.root_node != self.inner.config.name
            && record.epoch < epoch
        {
            record.root_node = root.to_string();
            record.epoch = epoch;
            self.records().put_deployment(record);
        }
    }

    /// Waits for a fragment to end on its own, then tells its parent's node (retrying while
    /// that node is alive) and forgets it here. Its key and parent are read at that moment:
    /// a new owner may have adopted it meanwhile.
    async fn watch_fragment(
        self,
        name: String,
        index: usize,
        component: ComponentRef,
        mut ended: mpsc::UnboundedReceiver<RootEnded>,
    ) {
        let Some(RootEnded { ending, reason }) = ended.recv().await else {
            // Terminated by its parent: nothing to report.
            return;
        };
        let current = lock(&self.inner.live)
            .get(&name)
            .and_then(|entry| entry.fragments.get(&index))
            .filter(|fragment| fragment.component.0.get_id() == component.0.get_id())
            .map(|fragment| (fragment.key.clone(), fragment.parent_node.clone()));
        let Some((key, parent_node)) = current else {
            return;
        };
        self.forget_fragment(&key).await;
        let Some(peers) = self.inner.services.peers.clone() else {
            return;
        };
        let request = PeerRequest::Ended {
            key,
            normal: ending == Ending::Normal,
            reason,
        };
        for attempt in 0..20u32 {
            if peers
                .call(&parent_node, request.clone(), SHORT_DEADLINE)
                .await
                .is_ok()
            {
                return;
            }
            if !is_alive(&peers, &parent_node) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(
                100 * u64::from(attempt + 1),
            ))
            .await;
        }
    }

    /// Terminates a fragment (if it is the one the key names, or an older one) and forgets it.
    async fn terminate_fragment(&self, key: &FragmentKey) {
        let component = {
            let mut live = lock(&self.inner.live);
            let Some(entry) = live.get_mut(&key.deployment) else {
                return;
            };
            let index = key.index as usize;
            match entry.fragments.get(&index) {
                Some(fragment)
                    if (fragment.key.epoch, fragment.key.incarnation)
                        <= (key.epoch, key.incarnation) =>
                {
                    // A subtree still waiting for a node stops waiting.
                    fragment.deployment.cancel(index);
                    entry.fragments.remove(&index).map(|f| f.component)
                }
                _ => None,
            }
        };
        if let Some(component) = component {
            component.terminate().await;
        }
        self.release_if_idle(&key.deployment).await;
    }

    /// Forgets a fragment that ended or failed to deploy.
    async fn forget_fragment(&self, key: &FragmentKey) {
        {
            let mut live = lock(&self.inner.live);
            if let Some(entry) = live.get_mut(&key.deployment)
                && entry
                    .fragments
                    .get(&(key.index as usize))
                    .is_some_and(|fragment| fragment.key == *key)
            {
                entry.fragments.remove(&(key.index as usize));
            }
        }
        self.release_if_idle(&key.deployment).await;
    }

    /// Once nothing of a deployment runs here any more and this node is not its root, its
    /// directory and records go.
    pub(super) async fn release_if_idle(&self, name: &str) {
        self.release(name, false).await;
    }

    /// Once nothing of a deployment runs here any more: its directory goes, and its record
    /// too if it is another node's deployment, or (`forget_own`) this node's own under the
    /// epoch that was running (a newer one, from a takeover meanwhile, stays).
    pub(super) async fn release(&self, name: &str, forget_own: bool) {
        let deployment = {
            let mut live = lock(&self.inner.live);
            match live.get(name) {
                Some(entry) if entry.root.is_none() && entry.fragments.is_empty() => {
                    live.remove(name).map(|entry| entry.deployment)
                }
                _ => return,
            }
        };
        let Some(deployment) = deployment else {
            return;
        };
        deployment.all_stopped().await;
        let dir = deployment.dir();
        let _ = tokio::task::spawn_blocking(move || remove_dir(&dir)).await;
        let me = &self.inner.config.name;
        let forget = self
            .records()
            .deployment_record(name)
            .is_some_and(|record| {
                &record.root_node != me || (forget_own && record.epoch <= deployment.epoch())
            });
        if forget && !lock(&self.inner.live).contains_key(name) {
            self.records().remove_deployment(name);
            let _ = self.records().flush().await;
        }
    }

    /// A fragment of one of this node's components ended on `from`: its proxy ends with it.
    fn fragment_ended(&self, from: &str, key: &FragmentKey, normal: bool, reason: Option<String>) {
        let contexts = lock(&self.inner.live)
            .get(&key.deployment)
            .map(Live::contexts)
            .unwrap_or_default();
        let index = key.index as usize;
        // The proxy of that incarnation, in whichever state it runs under here.
        let Some(proxy) = contexts
            .iter()
            .filter(|context| context.incarnation_of(index) == Some(key.incarnation))
            .find_map(|context| context.live_component(index))
        else {
            return;
        };
        let ending = if normal {
            Ending::Normal
        } else {
            Ending::Abnormal
        };
        let reason = reason.map(|reason| format!("on node \"{from}\": {reason}"));
        proxy.cast_message(ComponentMsg::RemoteEnded {
            incarnation: key.incarnation,
            ending,
            reason,
        });
    }

    /// A node of the cluster was lost: every proxy of a component that ran there ends
    /// abnormally, so its parent's strategy restarts it elsewhere. Call it only on a side of
    /// a partition that sees a majority (the cluster layer decides).
    pub fn peer_lost(&self, node: &str) {
        tracing::warn!(lost = node, "node lost");
        let contexts: Vec<Arc<Deployment>> = lock(&self.inner.live)
            .values()
            .flat_map(Live::contexts)
            .collect();
        for deployment in contexts {
            for component in deployment.live_components() {
                component.cast_message(ComponentMsg::NodeLost(node.to_string()));
            }
        }
        for name in lock(&self.inner.live).keys() {
            self.records()
                .note(name, "", "node_lost", format!("node \"{node}\" was lost"));
        }
        tokio::spawn(self.clone().release_orphans(node.to_string()));
        self.take_over_orphans();
    }

    /// The counters of this node's gossip and peer transport (`None` without a cluster).
    pub fn cluster_stats(&self) -> Option<sd_proto::ClusterStats> {
        self.inner.services.peers.as_ref()?.stats()
    }

    /// What the domains running here reserve (their `memory` and `vcpus`).
    pub fn reserved(&self) -> sd_placement::Resources {
        let me = &self.inner.config.name;
        let live: Vec<Arc<Deployment>> = lock(&self.inner.live)
            .values()
            .map(|entry| Arc::clone(&entry.deployment))
            .collect();
        let mut total = sd_placement::Resources::default();
        for deployment in live {
            let Some(entry) = self.records().deployment(&deployment.name) else {
                continue;
            };
            for (&index, record) in &entry.components {
                let domain = matches!(
                    deployment.plan().components.get(index).map(|c| c.kind),
                    Some(crate::plan::Kind::ProcessDomain | crate::plan::Kind::QemuDomain)
                );
                let active = !matches!(
                    record.state,
                    sd_proto::ComponentState::Terminated
                        | sd_proto::ComponentState::Finished
                        | sd_proto::ComponentState::Failed
                );
                if domain && active && record.node == *me {
                    let needs = crate::component::placing::needs(&deployment, index);
                    total = total.saturating_add(needs);
                }
            }
        }
        total
    }

    /// The members of the cluster as this node sees them (itself alone without a cluster).
    pub fn nodes(&self) -> Vec<sd_proto::MemberInfo> {
        if let Some(peers) = &self.inner.services.peers {
            return peers.describe();
        }
        let info = self.info();
        let capacity = crate::vm_host::host_capacity();
        let reserved = self.reserved();
        vec![sd_proto::MemberInfo {
            name: info.name,
            state: "alive".into(),
            generation: info.generation,
            peer_addr: String::new(),
            api_url: None,
            vcpus: capacity.vcpus,
            free_vcpus: capacity.vcpus.saturating_sub(reserved.vcpus),
            memory_mib: capacity.memory_mib,
            free_memory_mib: capacity.memory_mib.saturating_sub(reserved.memory_mib),
            labels: Default::default(),
            version: info.version,
            accelerator: self.inner.services.vm_host.describe(),
            is_self: true,
        }]
    }

    /// Every deployment of the cluster, as their roots know them (this node's own records
    /// where a root cannot be reached).
    pub async fn cluster_deployments(&self) -> Vec<DeploymentSummary> {
        let me = self.inner.config.name.clone();
        // (claimed by its root, epoch): a root's own record under the newest epoch wins over
        // an older root's and over what a fragment holder has of it.
        let rank = |summary: &DeploymentSummary, reporter: &str| {
            (summary.root_node == reporter, summary.epoch)
        };
        let mut found: std::collections::BTreeMap<String, (DeploymentSummary, (bool, u64))> = self
            .deployments()
            .into_iter()
            .map(|summary| {
                let ranked = rank(&summary, &me);
                (summary.name.clone(), (summary, ranked))
            })
            .collect();
        let answers = self.ask_every_peer(PeerRequest::Deployments).await;
        let spread = self.inner.services.peers.is_some() && !answers.is_empty();
        for (node, answer) in answers {
            let PeerResponse::Deployments(summaries) = answer else {
                continue;
            };
            for summary in summaries {
                let ranked = rank(&summary, &node);
                if found
                    .get(&summary.name)
                    .is_none_or(|(_, known)| ranked > *known)
                {
                    found.insert(summary.name.clone(), (summary, ranked));
                }
            }
        }
        let summaries: Vec<DeploymentSummary> =
            found.into_values().map(|(summary, _)| summary).collect();
        if !spread {
            return summaries;
        }
        // The root counts only the components it runs itself: count them all.
        let counted = summaries.into_iter().map(|summary| async move {
            match self.cluster_status(&summary.name).await {
                Ok(status) => DeploymentSummary {
                    components: status.deployment.components,
                    running: status.deployment.running,
                    ..summary
                },
                Err(_) => summary,
            }
        });
        futures::future::join_all(counted).await
    }

    /// One deployment and its components on every node: the root's record, each component
    /// as the node that runs it reports it (restart counts as its parent's node records them).
    pub async fn cluster_status(&self, name: &str) -> Result<DeploymentStatus> {
        let local = self.status(name).ok();
        let mut views: Vec<(String, DeploymentStatus)> = Vec::new();
        if let Some(local) = local {
            views.push((self.inner.config.name.clone(), local));
        }
        let request = PeerRequest::Status {
            deployment: name.to_string(),
        };
        for (node, answer) in self.ask_every_peer(request).await {
            if let PeerResponse::Status(Some(status)) = answer {
                views.push((node, status));
            }
        }
        merge_views(name, views)
    }

    /// Terminates a deployment through its root node.
    pub(super) async fn terminate_at_root(&self, root: &str, name: &str) -> Result<()> {
        let Some(peers) = self.inner.services.peers.clone() else {
            return Err(Error::NotFound {
                name: name.to_string(),
            });
        };
        let request = PeerRequest::TerminateDeployment {
            deployment: name.to_string(),
        };
        match peers
            .call(root, request, crate::cluster::STEP_DEADLINE)
            .await
        {
            Ok(PeerResponse::Done) => Ok(()),
            Ok(PeerResponse::Refused(why)) => Err(Error::Remote {
                node: root.to_string(),
                reason: why,
            }),
            Ok(other) => Err(Error::Remote {
                node: root.to_string(),
                reason: format!("unexpected answer {other:?}"),
            }),
            Err(why) => Err(Error::Remote {
                node: root.to_string(),
                reason: why,
            }),
        }
    }

    /// The root node of a deployment as the peers report it: the one holding it under the
    /// newest epoch (an old root may not have stepped down yet).
    pub(super) async fn find_root(&self, name: &str) -> Option<String> {
        self.ask_every_peer(PeerRequest::Deployments)
            .await
            .into_iter()
            .filter_map(|(node, answer)| match answer {
                PeerResponse::Deployments(summaries) => summaries
                    .iter()
                    .find(|summary| summary.name == name)
                    .map(|summary| (summary.epoch, node)),
                _ => None,
            })
            .max()
            .map(|(_, node)| node)
    }

    /// Asks every other alive member at once; those that do not answer are left out.
    pub(super) async fn ask_every_peer(&self, request: PeerRequest) -> Vec<(String, PeerResponse)> {
        let Some(peers) = self.inner.services.peers.clone() else {
            return Vec::new();
        };
        // Every member the gossip says is alive (a query may reach one that placement, which
        // also wants a recent answer, would not use yet); each has a short deadline.
        let calls = self.gossip_alive_peers().into_iter().map(|node| {
            let peers = Arc::clone(&peers);
            let request = request.clone();
            async move {
                let answer = peers.call(&node, request, QUERY_DEADLINE).await;
                answer.ok().map(|answer| (node, answer))
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Where the log of the component at `path` is: here, or on the node that runs it.
    pub async fn log_location(&self, name: &str, path: &str) -> Result<LogLocation> {
        let wanted = crate::plan::full_path(path);
        let here = self.records().deployment(name).is_some_and(|entry| {
            entry
                .components
                .values()
                .any(|record| record.path == wanted && record.node == self.inner.config.name)
        });
        if here || self.inner.services.peers.is_none() {
            return self.log_path(name, path).map(LogLocation::Here);
        }
        let status = self.cluster_status(name).await?;
        match status.components.iter().find(|c| c.path == wanted) {
            Some(component) if component.node == self.inner.config.name => {
                self.log_path(name, path).map(LogLocation::Here)
            }
            Some(component) => Ok(LogLocation::On(component.node.clone())),
            None => Err(Error::NoComponent {
                deployment: name.to_string(),
                path: path.to_string(),
            }),
        }
    }

    /// Up to `max` bytes of a log on another node, from `offset`: the bytes and the offset
    /// after them. An error once the node no longer has it (the deployment ended there).
    pub async fn read_log_on(
        &self,
        node: &str,
        name: &str,
        path: &str,
        offset: u64,
        max: u32,
    ) -> Result<(Vec<u8>, u64)> {
        let Some(peers) = self.inner.services.peers.clone() else {
            return Err(Error::NotFound {
                name: name.to_string(),
            });
        };
        let request = PeerRequest::ReadLog {
            deployment: name.to_string(),
            path: path.to_string(),
            offset,
            max,
        };
        let remote = |reason: String| Error::Remote {
            node: node.to_string(),
            reason,
        };
        match peers.call(node, request, SHORT_DEADLINE).await {
            Ok(PeerResponse::Log { bytes, next }) => Ok((bytes, next)),
            Ok(PeerResponse::Refused(why)) => Err(remote(why)),
            Ok(other) => Err(remote(format!("unexpected answer {other:?}"))),
            Err(why) => Err(remote(why)),
        }
    }

    /// Part of a domain's log on this node.
    async fn read_log(&self, name: &str, path: &str, offset: u64, max: u32) -> PeerResponse {
        let file = match self.log_path(name, path) {
            Ok(file) => file,
            Err(error) => return PeerResponse::Refused(error.to_string()),
        };
        let max = max.min(1 << 20) as usize;
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, u64)> {
            use std::io::{Read, Seek, SeekFrom};
            let mut file = std::fs::File::open(file)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut bytes = Vec::with_capacity(max.min(64 << 10));
            file.take(max as u64).read_to_end(&mut bytes)?;
            let next = offset + bytes.len() as u64;
            Ok((bytes, next))
        })
        .await;
        match read {
            Ok(Ok((bytes, next))) => PeerResponse::Log { bytes, next },
            Ok(Err(error)) => PeerResponse::Refused(format!("cannot read the log: {error}")),
            Err(error) => PeerResponse::Refused(format!("reading stopped: {error}")),
        }
    }
}

fn failure_text(failure: crate::component::Failure) -> FailureText {
    FailureText {
        path: failure.path,
        reason: failure.reason,
    }
}

/// One deployment's status from the views of several nodes: the summary from its root, each
/// component from the node it runs on (its proxy's node knows its restarts).
fn merge_views(name: &str, views: Vec<(String, DeploymentStatus)>) -> Result<DeploymentStatus> {
    // The root's own view, the newest epoch's if an old root has not stepped down yet.
    let root_view = views
        .iter()
        .enumerate()
        .filter(|(_, (node, view))| view.deployment.root_node == *node)
        .max_by_key(|(_, (_, view))| view.deployment.epoch)
        .map(|(position, _)| position)
        .or(if views.is_empty() { None } else { Some(0) });
    let Some(root_view) = root_view else {
        return Err(Error::NotFound {
            name: name.to_string(),
        });
    };
    let mut merged = views[root_view].1.clone();
    for (node, view) in &views {
        for component in &view.components {
            let runs_there = component.node == *node;
            match merged
                .components
                .iter_mut()
                .find(|known| known.path == component.path)
            {
                Some(known) if runs_there => {
                    let restarts = known.restarts.max(component.restarts);
                    *known = component.clone();
                    known.restarts = restarts;
                }
                Some(_) => {}
                None => merged.components.push(component.clone()),
            }
        }
    }
    merged.deployment.components = merged.components.len();
    merged.deployment.running = merged
        .components
        .iter()
        .filter(|c| c.state == sd_proto::ComponentState::Running)
        .count();
    sort_tree(&mut merged.components);
    Ok(merged)
}

/// Parents before children, children in the order they were first seen.
fn sort_tree(components: &mut [sd_proto::ComponentStatus]) {
    let order: HashMap<String, usize> = components
        .iter()
        .enumerate()
        .map(|(i, c)| (c.path.clone(), i))
        .collect();
    let key = |path: &str| -> Vec<usize> {
        let parts: Vec<&str> = path.split(':').collect();
        (1..=parts.len())
            .map(|n| {
                order
                    .get(&parts[..n].join(":"))
                    .copied()
                    .unwrap_or(usize::MAX)
            })
            .collect()
    };
    components.sort_by_cached_key(|c| key(&c.path));
}
