//! One node's deployments: the public face of the runtime, used by the agent's API.
//!
//! A deploy is resolved and planned first (a description with errors is refused whole and
//! nothing starts), then, in a cluster, its name is claimed on a majority of the known
//! members (`claims`), then recorded durably (that is the acknowledgement), then its root
//! component is spawned and deployed and started in the background. Terminate takes the tree
//! down in reverse order and forgets the deployment once every component is gone and its
//! directory removed. A deployment whose root fails (a deploy that could not complete, or
//! supervision that gave up) is undone at once and stays listed as failed, with the reason,
//! until it is terminated.
//!
//! At [`Node::open`], deployments the previous agent left running are planned again from
//! their recorded description and deployed in recovery mode: storage already prepared is
//! kept, processes still running are re-adopted (pid and start time), and those that died
//! meanwhile are reported ended so that their parents' strategies restart them.

mod claims;
mod events;
mod fragments;
mod reconfigure;
mod succession;

pub use events::EventCursor;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ractor::Actor;
use sd_proto::{
    ComponentStatus, DeployRequest, DeploymentState, DeploymentStatus, DeploymentSummary, Event,
    NodeInfo,
};
use sd_store::{DeploymentRecord, Store, unix_ms_now};
use tokio::sync::{broadcast, mpsc};

use sd_proto::peer::FragmentKey;

use crate::cluster::Peers;
use crate::component::{
    Args, ComponentActor, ComponentRef, Deployment, DeploymentIdentity, ParentRef, RootEnded,
    Services, deployment_dir,
};
use crate::plan::{Plan, plan_with};
use crate::records::{DeploymentEntry, Records};
use crate::supervision::Ending;
use crate::{Error, Result};

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name (in status, and later in the cluster).
    pub name: String,
    /// Where its state, logs and working directories live.
    pub data_dir: PathBuf,
    /// The accelerator VMs with `accelerator "auto"` use: `None` probes it (in the
    /// background, at start; recorded in the data dir for the next start).
    pub vm_accelerator: Option<sd_drivers::qemu::Accelerator>,
    /// The other nodes of the cluster; `None`: a single node that runs everything itself.
    pub peers: Option<Arc<dyn Peers>>,
    /// Safety mechanisms switched off for chaos tests; the default breaks nothing.
    pub test_breaks: TestBreaks,
}

/// Safety mechanisms switched off on purpose, only to show that the chaos checker catches the
/// violations that follow. Never set in production; the default breaks nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestBreaks {
    /// Fragments no longer ask their parents whether they still own them (node/fragments.rs
    /// `check_owners`): an instance restarted elsewhere while its node was cut off keeps
    /// running after the heal (breaks INV-1).
    ///
    /// Only the owner check is switched off. The other mechanisms that stop components stay,
    /// and none of them reaches such an instance: epoch fencing only refuses requests (and
    /// the epoch does not even change when a parent restarts a child elsewhere), step-down
    /// stops only an old root's own tree, and orphan release needs the parent's node
    /// reported lost, which a cut-off node (on the minority side) never does. (The sweep of
    /// unadopted old-epoch fragments that an older version had is gone: the owner check
    /// replaced it.) The duplicate then ends only if it exits on its own, if its parent
    /// places that component on its node again, or if its agent restarts; a terminate of
    /// the deployment leaves it running too.
    pub no_owner_checks: bool,
    /// Supervisors ignore `sdMaxRestarts`: children are restarted however often they fail
    /// (breaks INV-5). The backoff between restarts still applies.
    pub no_restart_intensity: bool,
}

impl std::fmt::Debug for dyn Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Peers")
    }
}

/// Where a component's log is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLocation {
    /// In this file on this node.
    Here(PathBuf),
    /// On that node (read it with [`Node::read_log_on`]).
    On(String),
}

/// What `/metrics` shows of a node.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    /// The deployments whose root is this node, by state.
    pub deployments: BTreeMap<String, u64>,
    /// The components this node runs (or ran, while their deployment is recorded), by state.
    pub components: BTreeMap<String, u64>,
    /// Lifecycle events since the agent started, by (`deployment` or `component`, state).
    pub events: BTreeMap<(&'static str, String), u64>,
    /// Liveness checks' round trips.
    pub liveness_round_trip: crate::metrics::HistogramSnapshot,
    /// VM boot times.
    pub vm_boot: crate::metrics::HistogramSnapshot,
    /// The gossip's and the peer transport's counters (`None` alone).
    pub cluster: Option<sd_proto::ClusterStats>,
}

/// A deployment this node holds actors for: its root (on the node it was deployed from), or
/// fragments (components whose parent runs on another node), or both.
struct Live {
    deployment: Arc<Deployment>,
    root: Option<ComponentRef>,
    fragments: HashMap<usize, Fragment>,
    /// The newest epoch of the deployment this node has heard of: requests under an older
    /// one are refused, and fragments of an older one that no new owner adopts are swept.
    epoch: u64,
}

/// Spawns the component at `index` with the node as its parent (a deployment's root, a
/// fragment run for another node, a leaf taken over to be cleaned): its end on its own
/// arrives on the returned channel.
async fn spawn_under_node(
    deployment: &Arc<Deployment>,
    index: usize,
) -> std::result::Result<(ComponentRef, mpsc::UnboundedReceiver<RootEnded>), ractor::SpawnErr> {
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    let args = Args {
        deployment: Arc::clone(deployment),
        index,
        parent: ParentRef::Node(ended_tx),
        incarnation: deployment.next_incarnation(),
        remote: None,
        adopt: false,
    };
    let (actor, _) = Actor::spawn(None, ComponentActor, args).await?;
    Ok((ComponentRef(actor), ended_rx))
}

impl Live {
    /// Moves to a newer epoch (and its root) after a takeover: the entry, and every
    /// deployment state it holds, so that components created here from now on are keyed
    /// under it. An older epoch changes nothing.
    fn follow(&mut self, epoch: u64, root: &str) {
        self.epoch = self.epoch.max(epoch);
        for context in self.contexts() {
            context.set_owner(epoch, root);
        }
    }

    /// Every deployment state the node holds for it: the root's and the fragments' (after a
    /// takeover, fragments adopted here keep running under the state they started with).
    fn contexts(&self) -> Vec<Arc<Deployment>> {
        let mut contexts = vec![Arc::clone(&self.deployment)];
        for fragment in self.fragments.values() {
            if !contexts
                .iter()
                .any(|known| Arc::ptr_eq(known, &fragment.deployment))
            {
                contexts.push(Arc::clone(&fragment.deployment));
            }
        }
        contexts
    }
}

/// A component run here for a parent on another node.
struct Fragment {
    key: FragmentKey,
    component: ComponentRef,
    /// The deployment state it runs under.
    deployment: Arc<Deployment>,
    /// Where its end is reported: its parent's node (a new root may adopt it).
    parent_node: String,
    /// Adopted by a new owner: it runs already, so the owner's start has nothing to do.
    adopted: bool,
}

struct Inner {
    config: NodeConfig,
    generation: u64,
    services: Arc<Services>,
    live: Mutex<HashMap<String, Live>>,
    /// Names being deployed or terminated right now, so that two requests do not race.
    busy: Mutex<std::collections::HashSet<String>>,
    shutting_down: AtomicBool,
    /// Deployment records other nodes replicated here, so that this node can take a
    /// deployment over if its root is lost.
    replicas: Mutex<HashMap<String, sd_proto::peer::Replica>>,
    /// Held while a fragment's description is planned (once per deployment and node).
    planning: tokio::sync::Mutex<()>,
    /// The claims on deployment names this node has granted (its own deploys' included).
    claims: Mutex<claims::Claims>,
    /// Held while a phase of a live reconfiguration runs here.
    reconfiguring: tokio::sync::Mutex<()>,
}

/// One node's runtime: cheap to clone, all clones are the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// Releases a name reserved in `busy` when dropped.
struct Reservation<'n> {
    inner: &'n Inner,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.inner.busy).remove(&self.name);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// Resolves and plans a description: every error at once.
/// Resolves and plans a description with the live changes made to it so far; answers the plan
/// and the resolved `sfConfig` in SmartFrog notation (what is recorded and sent to peers).
fn prepare(
    source: &str,
    text: &str,
    overrides: &[sd_proto::Override],
    properties: &sd_lang::Properties,
) -> Result<(Plan, String)> {
    let options = sd_lang::Options {
        include_dirs: Vec::new(),
        properties: properties.clone(),
    };
    let name = if source.is_empty() {
        "description.sf"
    } else {
        source
    };
    let resolved = sd_lang::resolve_str(name, text, &options).map_err(|diagnostics| {
        Error::InvalidDescription {
            errors: diagnostics
                .errors
                .iter()
                .map(|d| d.render(&diagnostics.sources).trim_end().to_string())
                .collect(),
            diagnostics: diagnostics
                .errors
                .iter()
                .filter_map(|d| {
                    let at = diagnostics.sources.location(d.span?);
                    Some(sd_proto::Diagnostic {
                        file: at.file.to_string(),
                        line: u32::try_from(at.line).unwrap_or(u32::MAX),
                        column: u32::try_from(at.column).unwrap_or(u32::MAX),
                        message: d.error.to_string(),
                    })
                })
                .collect(),
        }
    })?;
    let planned =
        plan_with(&resolved.config, overrides).map_err(|errors| Error::InvalidDescription {
            errors: errors.iter().map(ToString::to_string).collect(),
            diagnostics: Vec::new(),
        })?;
    Ok((planned, sd_lang::unparse::unparse_config(&resolved.config)))
}

fn summary(entry: &DeploymentEntry) -> DeploymentSummary {
    DeploymentSummary {
        name: entry.record.name.clone(),
        state: entry.record.state.clone(),
        source: entry.record.source.clone(),
        root_node: entry.record.root_node.clone(),
        created_unix_ms: entry.record.created_unix_ms,
        components: entry.components.len(),
        running: Records::running(entry),
        epoch: entry.record.epoch,
    }
}

impl Node {
    /// Opens the node's store in `config.data_dir` (creating it), then recovers every
    /// deployment it holds: re-adopts the domains still running, restarts the others.
    /// Must run inside a tokio runtime.
    pub async fn open(config: NodeConfig) -> Result<Node> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(io_error("cannot create the data dir", &config.data_dir))?;
        let store = Arc::new(Store::open(config.data_dir.join("node.redb"))?);
        let generation = store.next_generation()?;
        let (records, entries) = Records::open(Arc::clone(&store), &config.name)?;
        let properties = sd_lang::Properties {
            properties: BTreeMap::new(),
            env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        };
        let services = Arc::new(Services {
            node: config.name.clone(),
            data_dir: config.data_dir.clone(),
            records,
            properties,
            vm_host: crate::vm_host::VmHost::new(&config.data_dir, config.vm_accelerator),
            peers: config.peers.clone(),
            breaks: config.test_breaks,
            metrics: crate::metrics::Metrics::default(),
        });
        if config.vm_accelerator.is_none() {
            // Known before the first VM needs it, and published in the node's metadata.
            let services = Arc::clone(&services);
            tokio::spawn(async move {
                let _ = services.vm_host.probe().await;
            });
        }
        let replicas = succession::load_replicas(&config.data_dir);
        let node = Node {
            inner: Arc::new(Inner {
                config,
                generation,
                services,
                live: Mutex::default(),
                busy: Mutex::default(),
                shutting_down: AtomicBool::new(false),
                replicas: Mutex::new(replicas),
                planning: tokio::sync::Mutex::new(()),
                claims: Mutex::default(),
                reconfiguring: tokio::sync::Mutex::default(),
            }),
        };
        node.stop_unrecorded(&entries).await;
        for entry in entries {
            node.recover(entry).await;
        }
        if node.inner.services.peers.is_some() {
            tokio::spawn(node.clone().replicate_forever());
        }
        Ok(node)
    }

    /// Who this node is.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            name: self.inner.config.name.clone(),
            generation: self.inner.generation,
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            vm_driver: self.inner.services.vm_host.describe(),
        }
    }

    fn records(&self) -> &Records {
        &self.inner.services.records
    }

    fn reserve(&self, name: &str) -> Result<Reservation<'_>> {
        if !lock(&self.inner.busy).insert(name.to_string()) {
            return Err(Error::Exists {
                name: name.to_string(),
                state: "being deployed or terminated right now".into(),
            });
        }
        Ok(Reservation {
            inner: &self.inner,
            name: name.to_string(),
        })
    }

    /// Resolves and plans `request.description`, records the deployment durably, and starts
    /// deploying it in the background. Returns once the deployment is acknowledged (durable);
    /// follow its progress with [`Node::status`] or [`Node::events`].
    ///
    /// In a cluster, the name is claimed first on a majority of the known members (see
    /// `claims`): of two deploys of one name through two nodes at once, at most one is
    /// acknowledged; the other is refused ([`Error::Exists`], naming the node the other
    /// deploy came through or the deployment's root), or [`Error::Remote`] when too few
    /// members can be asked.
    pub async fn deploy(&self, request: DeployRequest) -> Result<()> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        let name = request.name.clone();
        sd_store::validate_deployment_name(&name).map_err(|_| Error::InvalidName {
            name: name.clone(),
            rule: sd_store::NAME_RULE,
        })?;
        let _reservation = self.reserve(&name)?;
        if let Some(existing) = self.records().deployment_record(&name) {
            return Err(Error::Exists {
                name,
                state: existing.state.name().to_string(),
            });
        }
        // Another node's deployment of that name, as its replica here says.
        let replicated = lock(&self.inner.replicas)
            .get(&name)
            .map(|replica| replica.summary.root_node.clone());
        if let Some(root) = replicated {
            return Err(Error::Exists {
                name,
                state: format!("its root is node \"{root}\""),
            });
        }
        let source = request.source.clone();
        let (planned, description) = self
            .prepare_off_thread(&request.source, &request.description, &[])
            .await?;
        let claim = self.claim_name(&name).await?;
        let now = unix_ms_now();
        let record = DeploymentRecord {
            name: name.clone(),
            description,
            source,
            state: DeploymentState::Deploying,
            epoch: self.inner.generation,
            root_node: self.inner.config.name.clone(),
            created_unix_ms: now,
            updated_unix_ms: now,
            overrides: Vec::new(),
        };
        self.records().put_deployment(record);
        if let Err(error) = self.records().flush().await {
            self.records().remove_deployment(&name);
            if let (Some(claim), Some(peers)) = (&claim, &self.inner.services.peers) {
                self.release_claim(peers, &name, &claim.claimant, &claim.granted)
                    .await;
            }
            return Err(error);
        }
        if let Some(claim) = &claim {
            self.recorded(&name, claim);
        }
        // The replica ends the claim on the members it reaches; the others' expire.
        self.replicate_now(&name).await;
        self.launch(name, planned, HashMap::new(), HashMap::new())
            .await
    }

    /// [`prepare`] on a blocking thread (resolving a large description takes a while), with
    /// the node's properties.
    async fn prepare_off_thread(
        &self,
        source: &str,
        text: &str,
        overrides: &[sd_proto::Override],
    ) -> Result<(Plan, String)> {
        let properties = self.inner.services.properties.clone();
        let (source, text, overrides) = (source.to_string(), text.to_string(), overrides.to_vec());
        tokio::task::spawn_blocking(move || prepare(&source, &text, &overrides, &properties))
            .await
            .map_err(|e| Error::InvalidDescription {
                errors: vec![format!("resolving stopped: {e}")],
                diagnostics: Vec::new(),
            })?
    }

    /// Checks a description as a deploy would (resolved with the node's library and
    /// properties, then planned), without deploying it: how many components would run.
    pub async fn validate(&self, source: &str, description: &str) -> Result<usize> {
        let (planned, _) = self.prepare_off_thread(source, description, &[]).await?;
        Ok(planned.components.len())
    }

    /// Spawns the root of a recorded deployment and drives it in the background.
    async fn launch(
        &self,
        name: String,
        planned: Plan,
        recovered: HashMap<usize, sd_store::ComponentRecord>,
        adoptions: HashMap<usize, String>,
    ) -> Result<()> {
        let Some(record) = self.records().deployment_record(&name) else {
            return Err(Error::NotFound { name });
        };
        let identity = DeploymentIdentity {
            name: name.clone(),
            epoch: record.epoch,
            description: record.description,
            overrides: record.overrides,
            source: record.source,
            root: self.inner.config.name.clone(),
        };
        let deployment = Arc::new(Deployment::new(
            identity,
            planned,
            Arc::clone(&self.inner.services),
            recovered,
        ));
        deployment.set_adoptions(adoptions);
        let (root, ended_rx) = match spawn_under_node(&deployment, 0).await {
            Ok(spawned) => spawned,
            Err(error) => {
                let reason = format!("cannot start the root component: {error}");
                self.set_state(&name, DeploymentState::Failed { reason });
                return Ok(());
            }
        };
        {
            let mut live = lock(&self.inner.live);
            let entry = live.entry(name.clone()).or_insert_with(|| Live {
                deployment: Arc::clone(&deployment),
                root: None,
                fragments: HashMap::new(),
                epoch: deployment.epoch(),
            });
            entry.deployment = Arc::clone(&deployment);
            entry.root = Some(root.clone());
            // Fragments adopted here after a takeover create their own children under the
            // new epoch too.
            entry.follow(deployment.epoch(), &deployment.root_node());
        }
        tokio::spawn(self.clone().drive(deployment, root, ended_rx));
        Ok(())
    }

    fn set_state(&self, name: &str, state: DeploymentState) {
        if let Some(mut record) = self.records().deployment_record(name) {
            record.state = state;
            record.updated_unix_ms = unix_ms_now();
            self.records().put_deployment(record);
        }
    }

    fn is_terminating(&self, name: &str) -> bool {
        self.records()
            .deployment_record(name)
            .is_none_or(|record| record.state == DeploymentState::Terminating)
    }

    /// Deploys and starts the root, then waits for it to end on its own.
    async fn drive(
        self,
        deployment: Arc<Deployment>,
        root: ComponentRef,
        mut ended: mpsc::UnboundedReceiver<RootEnded>,
    ) {
        let name = deployment.name.clone();
        let path = "sfConfig";
        let mut outcome = root.deploy(path).await;
        if outcome.is_ok() {
            outcome = root.start(path).await;
        }
        if self.is_terminating(&name) {
            return;
        }
        match outcome {
            Ok(()) => self.set_state(&name, DeploymentState::Running),
            Err(failure) => {
                self.fail(&deployment, failure.to_string()).await;
                return;
            }
        }
        let _ = self.records().flush().await;
        // The root reports only if it ends on its own; terminate drops it without a word.
        if let Some(RootEnded { ending, reason }) = ended.recv().await {
            if self.is_terminating(&name) {
                return;
            }
            match ending {
                Ending::Normal => {
                    deployment.all_stopped().await;
                    self.clean(&deployment).await;
                    self.set_state(&name, DeploymentState::Terminated);
                    let _ = self.records().flush().await;
                }
                Ending::Abnormal => {
                    let reason = reason.unwrap_or_else(|| "the root component failed".into());
                    self.fail(&deployment, reason).await;
                }
            }
        }
    }

    /// Marks a deployment failed; its components have undone themselves: wait for them, then
    /// remove what is left of it on the host.
    async fn fail(&self, deployment: &Deployment, reason: String) {
        deployment.all_stopped().await;
        self.clean(deployment).await;
        // Failed is shown once the host is clean again.
        self.set_state(&deployment.name, DeploymentState::Failed { reason });
        let _ = self.records().flush().await;
    }

    /// Removes the deployment's directory and forgets its actors (the records stay).
    async fn clean(&self, deployment: &Deployment) {
        {
            let mut live = lock(&self.inner.live);
            if let Some(entry) = live.get_mut(&deployment.name) {
                entry.root = None;
                if !entry.fragments.is_empty() {
                    // Fragments of it still run here for parents elsewhere.
                    return;
                }
            }
            live.remove(&deployment.name);
        }
        let dir = deployment.dir();
        let _ = tokio::task::spawn_blocking(move || remove_dir(&dir)).await;
        let _ = self.records().flush().await;
    }

    /// Terminates a deployment (every component, in reverse order) and forgets it. Returns
    /// once everything is terminated and cleaned. A failed deployment is just forgotten.
    pub async fn terminate(&self, name: &str) -> Result<()> {
        tracing::info!(deployment = name, "terminate requested");
        let _reservation = self.reserve(name)?;
        let Some(record) = self.records().deployment_record(name) else {
            drop(_reservation);
            return match self.find_root(name).await {
                Some(root) => self.terminate_at_root(&root, name).await,
                None => Err(Error::NotFound {
                    name: name.to_string(),
                }),
            };
        };
        if record.root_node != self.inner.config.name {
            drop(_reservation);
            // This node holds fragments only; the root may have changed since it recorded.
            let root = self.find_root(name).await.unwrap_or(record.root_node);
            return self.terminate_at_root(&root, name).await;
        }
        let live = lock(&self.inner.live)
            .get(name)
            .and_then(|live| Some((Arc::clone(&live.deployment), live.root.clone()?)));
        if let Some((deployment, root)) = live {
            if !matches!(record.state, DeploymentState::Failed { .. }) {
                self.set_state(name, DeploymentState::Terminating);
                self.records().flush().await?;
            }
            root.terminate().await;
            deployment.all_stopped().await;
            self.clean(&deployment).await;
        } else {
            let dir = deployment_dir(&self.inner.config.data_dir, name);
            let _ = tokio::task::spawn_blocking(move || remove_dir(&dir)).await;
        }
        self.set_state(name, DeploymentState::Terminated);
        self.records().remove_deployment(name);
        self.records().flush().await?;
        // The name is free again once the peers have dropped their replicas: at once for
        // those that answer now, so that it can be deployed again straight away.
        self.forget_now(name, record.epoch).await;
        Ok(())
    }

    /// Every deployment.
    pub fn deployments(&self) -> Vec<DeploymentSummary> {
        self.records().deployments().iter().map(summary).collect()
    }

    /// One deployment and its components.
    pub fn status(&self, name: &str) -> Result<DeploymentStatus> {
        let entry = self
            .records()
            .deployment(name)
            .ok_or_else(|| Error::NotFound {
                name: name.to_string(),
            })?;
        // The declared supervision of each parent, from the plan while the node holds it.
        let planned = lock(&self.inner.live)
            .get(name)
            .map(|live| Arc::clone(&live.deployment));
        let plan = planned.as_ref().map(|deployment| deployment.plan());
        // The plan's component at `index`, if it is the one recorded at `path`.
        let planned_at = |index: usize, path: &str| {
            let plan = plan.as_ref()?;
            let component = plan.components.get(index)?;
            (component.path_text() == path).then_some((plan, component))
        };
        let supervision = |index: usize, path: &str| {
            let (_, component) = planned_at(index, path)?;
            component.supervisor.map(|spec| sd_proto::Supervision {
                strategy: spec.strategy.name().to_string(),
                max_restarts: spec.max_restarts,
                window_ms: u64::try_from(spec.window.as_millis()).unwrap_or(u64::MAX),
            })
        };
        let settings = |index: usize, path: &str| {
            planned_at(index, path)
                .map(|(plan, _)| crate::settings::settings_of(plan, index))
                .unwrap_or_default()
        };
        Ok(DeploymentStatus {
            deployment: summary(&entry),
            components: entry
                .components
                .iter()
                .map(|(&index, record)| ComponentStatus {
                    supervision: supervision(index, &record.path),
                    settings: settings(index, &record.path),
                    path: record.path.clone(),
                    kind: record.kind.clone(),
                    state: record.state,
                    node: record.node.clone(),
                    pid: record.process.map(|p| p.pid),
                    restarts: record.restarts,
                    started_unix_ms: record.started_unix_ms,
                    last_error: record.last_error.clone(),
                })
                .collect(),
        })
    }

    /// The log file of the domain at `path` (`sfConfig:a:b`) of deployment `name`.
    pub fn log_path(&self, name: &str, path: &str) -> Result<PathBuf> {
        let deployment = lock(&self.inner.live)
            .get(name)
            .map(|live| Arc::clone(&live.deployment));
        let Some(deployment) = deployment else {
            return if self.records().deployment_record(name).is_some() {
                Err(Error::NoComponent {
                    deployment: name.to_string(),
                    path: format!("{path} (the deployment has ended: its logs are removed)"),
                })
            } else {
                Err(Error::NotFound {
                    name: name.to_string(),
                })
            };
        };
        let wanted = crate::plan::full_path(path);
        deployment
            .plan()
            .components
            .iter()
            .position(|c| c.path_text() == wanted)
            .map(|index| deployment.log_path(index))
            .ok_or_else(|| Error::NoComponent {
                deployment: name.to_string(),
                path: path.to_string(),
            })
    }

    /// The VM driver's state once the accelerator is known (waits for the probe): what the
    /// agent reports at start.
    pub async fn vm_driver(&self) -> String {
        let _ = self.inner.services.vm_host.probe().await;
        self.inner.services.vm_host.describe()
    }

    /// What `/metrics` shows of this node.
    pub fn metrics(&self) -> NodeMetrics {
        let me = &self.inner.config.name;
        let mut deployments = BTreeMap::new();
        let mut components = BTreeMap::new();
        for entry in self.records().deployments() {
            if entry.record.root_node == *me {
                *deployments
                    .entry(entry.record.state.name().to_string())
                    .or_default() += 1;
            }
            for record in entry.components.values().filter(|c| c.node == *me) {
                *components
                    .entry(record.state.name().to_string())
                    .or_default() += 1;
            }
        }
        let metrics = &self.inner.services.metrics;
        NodeMetrics {
            deployments,
            components,
            events: self.records().event_counts(),
            liveness_round_trip: metrics.liveness_round_trip.snapshot(),
            vm_boot: metrics.vm_boot.snapshot(),
            cluster: self.cluster_stats(),
        }
    }

    /// Lifecycle events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.records().subscribe()
    }

    /// Stops taking work and makes every record durable. The workloads keep running: the
    /// next agent on this data dir re-adopts them.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.records().flush().await;
    }

    /// Stops the domain processes a previous agent on this data dir started but did not
    /// record (it was killed in between): nothing acknowledged them, and nothing else would
    /// ever stop them.
    async fn stop_unrecorded(&self, entries: &[DeploymentEntry]) {
        let recorded: std::collections::HashSet<(u32, u64)> = entries
            .iter()
            .flat_map(|entry| entry.components.values())
            .filter_map(|record| record.process)
            .map(|p| (p.pid, p.start_time))
            .collect();
        let marker = self.inner.config.data_dir.display().to_string();
        let found = tokio::task::spawn_blocking(move || {
            sd_drivers::process::marked_processes(crate::component::DATA_DIR_MARKER, &marker)
        })
        .await
        .unwrap_or_default();
        for identity in found {
            if recorded.contains(&(identity.pid, identity.start_time)) {
                continue;
            }
            if let Some(mut process) = sd_drivers::process::RunningProcess::adopt(identity) {
                let _ = process.stop(std::time::Duration::ZERO).await;
            }
        }
    }

    /// Takes a recorded deployment over after the agent restarted.
    async fn recover(&self, entry: DeploymentEntry) {
        let name = entry.record.name.clone();
        let state = entry.record.state.clone();
        if matches!(
            state,
            DeploymentState::Failed { .. } | DeploymentState::Terminated
        ) {
            // Undone already; finish removing it from the host if the agent died meanwhile.
            let dir = deployment_dir(&self.inner.config.data_dir, &name);
            let _ = tokio::task::spawn_blocking(move || remove_dir(&dir)).await;
            return;
        }
        if entry.record.root_node != self.inner.config.name {
            self.discard(entry).await;
            return;
        }
        if self.inner.services.peers.is_some() {
            // Another node may have taken it over while this one was away: ask first.
            tokio::spawn(self.clone().recover_root_in_cluster(entry));
            return;
        }
        self.recover_root(entry).await;
    }

    /// Takes a recorded deployment whose root is this node over after the agent restarted.
    async fn recover_root(&self, entry: DeploymentEntry) {
        let name = entry.record.name.clone();
        let state = entry.record.state.clone();
        let properties = self.inner.services.properties.clone();
        let planned = match prepare(
            &entry.record.source,
            &entry.record.description,
            &entry.record.overrides,
            &properties,
        ) {
            Ok((planned, _)) => planned,
            Err(error) => {
                let reason = format!("cannot plan the recorded description again: {error}");
                self.set_state(&name, DeploymentState::Failed { reason });
                return;
            }
        };
        let mut recovered = HashMap::new();
        let mut reindexed = BTreeMap::new();
        for record in entry.components.into_values() {
            if let Some(index) = planned
                .components
                .iter()
                .position(|c| c.path_text() == record.path)
            {
                reindexed.insert(index, record.clone());
                recovered.insert(index, record);
            }
        }
        self.records().reindex(&name, reindexed);
        let _ = self
            .launch(name.clone(), planned, recovered, HashMap::new())
            .await;
        if state == DeploymentState::Terminating {
            let node = self.clone();
            tokio::spawn(async move {
                // Finish what the previous agent started, once the tree is back.
                let _ = node.terminate(&name).await;
            });
        }
    }
}

impl Node {
    /// Cleans away what a previous agent ran of a deployment that is no longer this node's to
    /// run: fragments whose parents have seen them fail (or will at their next liveness check)
    /// and restarted them elsewhere, or a root that another node took over meanwhile. Each
    /// recorded leaf (domain, storage backend) is taken over alone, in recovery mode, so that
    /// its process is re-adopted and its storage found, and then terminated: domains first,
    /// then the storage they ran on. Containers hold nothing of their own on the host.
    async fn discard(&self, entry: DeploymentEntry) {
        let name = entry.record.name.clone();
        let properties = self.inner.services.properties.clone();
        let planned = prepare(
            &entry.record.source,
            &entry.record.description,
            &entry.record.overrides,
            &properties,
        );
        let Ok((planned, _)) = planned else {
            self.records().remove_deployment(&name);
            return;
        };
        let mut recovered = HashMap::new();
        for record in entry.components.into_values() {
            if let Some(index) = planned
                .components
                .iter()
                .position(|c| c.path_text() == record.path)
            {
                recovered.insert(index, record);
            }
        }
        let mut leaves: Vec<usize> = recovered
            .keys()
            .copied()
            .filter(|&index| !planned.components[index].kind.is_container())
            .collect();
        // Domains before storage backends, each group in reverse plan order.
        leaves.sort_by_key(|&index| {
            let storage = matches!(
                planned.components[index].kind,
                crate::plan::Kind::DirStorageBackend
                    | crate::plan::Kind::QcowStorageBackend
                    | crate::plan::Kind::LoopbackStorageBackend
                    | crate::plan::Kind::LvmStorageBackend
            );
            (storage, std::cmp::Reverse(index))
        });
        self.records()
            .reindex(&name, recovered.clone().into_iter().collect());
        let deployment = Arc::new(Deployment::new(
            DeploymentIdentity {
                name: name.clone(),
                epoch: entry.record.epoch,
                description: entry.record.description.clone(),
                overrides: entry.record.overrides.clone(),
                source: entry.record.source.clone(),
                root: entry.record.root_node.clone(),
            },
            planned,
            Arc::clone(&self.inner.services),
            recovered,
        ));
        lock(&self.inner.live).insert(
            name.clone(),
            Live {
                deployment: Arc::clone(&deployment),
                root: None,
                fragments: HashMap::new(),
                epoch: entry.record.epoch,
            },
        );
        let node = self.clone();
        tokio::spawn(async move {
            for index in leaves {
                let Ok((component, _ended)) = spawn_under_node(&deployment, index).await else {
                    continue;
                };
                let path = deployment.plan().components[index].path_text();
                if component.deploy(&path).await.is_ok() {
                    let _ = component.start(&path).await;
                }
                component.terminate().await;
            }
            node.release(&name, true).await;
        });
    }
}

/// Removes a directory tree; one that is already gone is fine.
fn remove_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}
