//! What the components of one deployment share: the plan, the registry of live components
//! (by plan index, with what they publish, such as a storage backend's directory), the
//! node's services, and the records of the previous agent when recovering.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ractor::ActorId;
use sd_lang::Properties;
use sd_lang::bind::{Bound, bind};
use sd_proto::Override;
use sd_store::ComponentRecord;
use tokio::sync::watch;

use super::ComponentRef;
use crate::plan::Plan;
use crate::records::Records;

/// The node's services, shared by every deployment.
pub(crate) struct Services {
    /// The node's name.
    pub node: String,
    /// The node's data dir.
    pub data_dir: PathBuf,
    /// Status and durable records.
    pub records: Records,
    /// What `PROPERTY` / `ENVPROPERTY` read when a LAZY reference is bound at run time.
    pub properties: Properties,
    /// What the node offers virtual machines.
    pub vm_host: crate::vm_host::VmHost,
    /// The other nodes of the cluster; `None`: a single node, everything runs here.
    pub peers: Option<Arc<dyn crate::cluster::Peers>>,
    /// Safety mechanisms switched off for chaos tests (none by default).
    pub breaks: crate::TestBreaks,
    /// What the node measures of its work.
    pub metrics: crate::metrics::Metrics,
}

/// A live component as the registry holds it.
struct Published {
    component: ComponentRef,
    actor: ActorId,
    incarnation: u64,
    /// A storage backend's prepared directory.
    work_dir: Option<PathBuf>,
    /// A storage backend's prepared disk.
    disk: Option<sd_drivers::qemu::Disk>,
}

/// One deployment's shared state.
pub(crate) struct Deployment {
    pub name: String,
    /// What runs, with the live changes made so far: replaced whole when a change commits
    /// (the tree's shape never changes, only attribute values), so a component reads it
    /// when it (re)starts and sees the latest values.
    plan: Mutex<(Arc<Plan>, Vec<Override>)>,
    /// The epoch of the deployment's placement this node acts under, and its root: both move
    /// forward when another node takes the deployment over.
    owner: Mutex<(u64, String)>,
    /// The resolved `sfConfig` in SmartFrog notation: what fragments on other nodes plan.
    pub description: String,
    /// The file it came from, for display.
    pub source: String,
    pub services: Arc<Services>,
    registry: Mutex<HashMap<usize, Published>>,
    incarnations: AtomicU64,
    /// How many component actors are alive: terminate waits for none.
    live: watch::Sender<usize>,
    /// The previous agent's records, by plan index, while recovering.
    recovered: Mutex<HashMap<usize, ComponentRecord>>,
    /// After a takeover: the components that still run on other nodes (plan index -> node),
    /// to adopt there rather than start again.
    adoptions: Mutex<HashMap<usize, String>>,
    /// Components being terminated while they may still wait for a node: they and their
    /// subtrees stop waiting.
    cancelled: Mutex<std::collections::HashSet<usize>>,
}

/// What names a deployment's run on this node: shared by its root and its fragments.
pub(crate) struct DeploymentIdentity {
    pub name: String,
    pub epoch: u64,
    pub description: String,
    /// The live changes made to it so far (applied in `plan`).
    pub overrides: Vec<Override>,
    pub source: String,
    pub root: String,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A file name made of a component path: `sfConfig:pool:r1` → `sfConfig.pool.r1`. Characters
/// other than letters, digits, `.`, `_` and `-` become `_`; then the plan index keeps two
/// different paths from sharing a name.
fn file_name(path: &str, index: usize) -> String {
    let mut clean = true;
    let name: String = path
        .chars()
        .map(|c| match c {
            ':' => '.',
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') => c,
            _ => {
                clean = false;
                '_'
            }
        })
        .collect();
    if clean {
        name
    } else {
        format!("{name}-{index}")
    }
}

impl Deployment {
    pub fn new(
        identity: DeploymentIdentity,
        plan: Plan,
        services: Arc<Services>,
        recovered: HashMap<usize, ComponentRecord>,
    ) -> Deployment {
        Deployment {
            name: identity.name,
            plan: Mutex::new((Arc::new(plan), identity.overrides)),
            owner: Mutex::new((identity.epoch, identity.root)),
            description: identity.description,
            source: identity.source,
            services,
            registry: Mutex::default(),
            incarnations: AtomicU64::new(1),
            live: watch::Sender::new(0),
            recovered: Mutex::new(recovered),
            adoptions: Mutex::default(),
            cancelled: Mutex::default(),
        }
    }

    /// The plan as it is now.
    pub fn plan(&self) -> Arc<Plan> {
        Arc::clone(&lock(&self.plan).0)
    }

    /// The live changes made so far, in order.
    pub fn overrides(&self) -> Vec<Override> {
        lock(&self.plan).1.clone()
    }

    /// Replaces the plan after a live change (same tree, new values).
    pub fn replan(&self, plan: Plan, overrides: Vec<Override>) {
        *lock(&self.plan) = (Arc::new(plan), overrides);
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<usize, Published>> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The node holding the deployment's root.
    pub fn root_node(&self) -> String {
        self.owner().1.clone()
    }

    /// The epoch this node acts under for the deployment.
    pub fn epoch(&self) -> u64 {
        self.owner().0
    }

    /// A newer epoch (and its root) after a takeover; an older one changes nothing.
    pub fn set_owner(&self, epoch: u64, root: &str) {
        let mut owner = self.owner();
        if epoch > owner.0 {
            *owner = (epoch, root.to_string());
        }
    }

    fn owner(&self) -> MutexGuard<'_, (u64, String)> {
        self.owner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new incarnation number for a component about to be spawned.
    pub fn next_incarnation(&self) -> u64 {
        self.incarnations.fetch_add(1, Ordering::Relaxed)
    }

    /// The deployment's directory in the node's data dir: everything it makes on the host
    /// (logs, private run directories, storage) is below it.
    pub fn dir(&self) -> PathBuf {
        deployment_dir(&self.services.data_dir, &self.name)
    }

    /// The log file of the component at `index`.
    pub fn log_path(&self, index: usize) -> PathBuf {
        let path = self.plan().components[index].path_text();
        self.dir()
            .join("logs")
            .join(format!("{}.log", file_name(&path, index)))
    }

    /// A directory of this deployment for the component at `index` (`run`, `storage`).
    pub fn component_dir(&self, area: &str, index: usize) -> PathBuf {
        let path = self.plan().components[index].path_text();
        self.dir().join(area).join(file_name(&path, index))
    }

    /// Records a change of the component at `index`.
    pub fn record(&self, index: usize, change: impl FnOnce(&mut ComponentRecord)) {
        let planned = &self.plan().components[index];
        self.services.records.update(
            &self.name,
            index,
            || ComponentRecord {
                deployment: self.name.clone(),
                path: planned.path_text(),
                kind: format!("{:?}", planned.kind),
                state: sd_proto::ComponentState::Deploying,
                node: self.services.node.clone(),
                process: None,
                restarts: 0,
                restart_times_unix_ms: Vec::new(),
                epoch: self.epoch(),
                last_error: None,
                started_unix_ms: None,
            },
            change,
        );
    }

    /// Marks the component at `index` as being terminated: it and its subtree stop waiting.
    pub fn cancel(&self, index: usize) {
        self.cancelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(index);
    }

    /// Whether the component at `index` or one of its ancestors is being terminated.
    pub fn is_cancelled(&self, index: usize) -> bool {
        let cancelled = self
            .cancelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut at = Some(index);
        while let Some(index) = at {
            if cancelled.contains(&index) {
                return true;
            }
            at = self.plan().components.get(index).and_then(|c| c.parent);
        }
        false
    }

    /// The incarnation of the live component at `index`.
    pub fn incarnation_of(&self, index: usize) -> Option<u64> {
        self.registry().get(&index).map(|p| p.incarnation)
    }

    /// Sets the components to adopt where they run (a takeover).
    pub fn set_adoptions(&self, adoptions: HashMap<usize, String>) {
        *self
            .adoptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = adoptions;
    }

    /// The node the component at `index` still runs on, to adopt it there (taken once).
    pub fn take_adoption(&self, index: usize) -> Option<String> {
        self.adoptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&index)
    }

    /// The node the component at `index` was last recorded on.
    pub fn node_of(&self, index: usize) -> Option<String> {
        self.services.records.nodes_of(&self.name, &[index]).pop()
    }

    /// The nodes the components at `indices` were last recorded on.
    pub fn nodes_of(&self, indices: &[usize]) -> Vec<String> {
        self.services.records.nodes_of(&self.name, indices)
    }

    /// Whether the component at `index` runs on another node than this one (the parts of the
    /// tree this node does not hold: above a fragment, or placed elsewhere).
    pub fn runs_elsewhere(&self, index: usize) -> bool {
        self.live_component(index).is_none()
            && self
                .node_of(index)
                .is_none_or(|node| node != self.services.node)
    }

    /// Whether the deployment is being terminated (or is gone) on this node.
    pub fn is_terminating(&self) -> bool {
        self.services
            .records
            .deployment_record(&self.name)
            .is_none_or(|record| record.state == sd_proto::DeploymentState::Terminating)
    }

    /// The previous agent's record of the component at `index`, taken once (recovery).
    pub fn take_recovered(&self, index: usize) -> Option<ComponentRecord> {
        self.recovered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&index)
    }

    /// Registers a live component.
    pub fn publish(&self, index: usize, component: ComponentRef, incarnation: u64) {
        let actor = component.0.get_id();
        let replaced = self.registry().insert(
            index,
            Published {
                component,
                actor,
                incarnation,
                work_dir: None,
                disk: None,
            },
        );
        // A new incarnation takes its predecessor's place (and count), whose own
        // unpublish then finds itself replaced and does nothing.
        if replaced.is_none() {
            self.live.send_modify(|live| *live += 1);
        }
    }

    /// Forgets a component that stopped (unless a newer incarnation replaced it).
    pub fn unpublish(&self, index: usize, incarnation: u64) {
        let mut registry = self.registry();
        if registry
            .get(&index)
            .is_some_and(|p| p.incarnation == incarnation)
        {
            registry.remove(&index);
            drop(registry);
            self.live.send_modify(|live| *live = live.saturating_sub(1));
        }
    }

    /// Publishes a storage backend's directory for the domains that use it.
    pub fn publish_work_dir(&self, index: usize, dir: Option<PathBuf>) {
        if let Some(published) = self.registry().get_mut(&index) {
            published.work_dir = dir;
        }
    }

    /// Publishes a storage backend's disk for the VMs that use it.
    pub fn publish_disk(&self, index: usize, disk: Option<sd_drivers::qemu::Disk>) {
        if let Some(published) = self.registry().get_mut(&index) {
            published.disk = disk;
        }
    }

    /// The disk the storage backend at `index` prepared.
    pub fn disk_of(&self, index: usize) -> Option<sd_drivers::qemu::Disk> {
        self.registry().get(&index)?.disk.clone()
    }

    /// The component at `index` and its incarnation, if it is live.
    pub fn live_component(&self, index: usize) -> Option<ComponentRef> {
        self.registry().get(&index).map(|p| p.component.clone())
    }

    /// Every live component of the deployment on this node.
    pub fn live_components(&self) -> Vec<ComponentRef> {
        self.registry()
            .values()
            .map(|p| p.component.clone())
            .collect()
    }

    /// Which component an actor is.
    pub fn find_actor(&self, actor: ActorId) -> Option<(usize, u64)> {
        self.registry()
            .iter()
            .find(|(_, p)| p.actor == actor)
            .map(|(index, p)| (*index, p.incarnation))
    }

    /// Waits until no component actor of the deployment is alive.
    pub async fn all_stopped(&self) {
        let mut live = self.live.subscribe();
        loop {
            let wait = live.wait_for(|n| *n == 0);
            if tokio::time::timeout(std::time::Duration::from_millis(100), wait)
                .await
                .is_ok()
            {
                return;
            }
            // An actor killed with its parent (after a panic) never unregisters: prune the
            // registry of actors that are gone.
            let gone: Vec<(usize, u64)> = self
                .registry()
                .iter()
                .filter(|(_, p)| p.component.0.get_status() == ractor::ActorStatus::Stopped)
                .map(|(index, p)| (*index, p.incarnation))
                .collect();
            for (index, incarnation) in gone {
                self.unpublish(index, incarnation);
            }
        }
    }

    /// Binds the LAZY attribute `attribute` of the component at `index` to a live component
    /// of this deployment. `Ok(None)` when the attribute is NULL or absent.
    pub fn bind_component(
        &self,
        index: usize,
        attribute: &str,
    ) -> std::result::Result<Option<usize>, String> {
        let plan = self.plan();
        let description = plan.component(index);
        let from = &plan.components[index].path;
        let reference = match description.get(attribute) {
            None | Some(sd_lang::Value::Null) => return Ok(None),
            Some(sd_lang::Value::Lazy(reference)) => reference,
            Some(other) => {
                return Err(format!(
                    "`{attribute}` must be a LAZY reference to a component, not {}",
                    other.type_name()
                ));
            }
        };
        match bind(&plan.config, from, reference, &self.services.properties) {
            Ok(Bound::Component(path)) => plan.index_of(&path).map(Some).ok_or_else(|| {
                format!(
                    "`{attribute}` ({reference}) names `{}`, which is not a running component",
                    sd_lang::bind::path_text(&path)
                )
            }),
            Ok(Bound::Value(sd_lang::Value::Null)) => Ok(None),
            Ok(Bound::Value(value)) => Err(format!(
                "`{attribute}` ({reference}) must name a component, but gives {}",
                value.type_name()
            )),
            Err(error) => Err(format!("`{attribute}` ({reference}): {error}")),
        }
    }

    /// The directory the storage backend at `index` prepared.
    pub fn work_dir_of(&self, index: usize) -> Option<PathBuf> {
        self.registry().get(&index)?.work_dir.clone()
    }
}

/// A deployment's directory in a data dir.
pub(crate) fn deployment_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("deployments").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_paths_and_stay_distinct() {
        assert_eq!(file_name("sfConfig:pool:r1", 3), "sfConfig.pool.r1");
        assert_eq!(file_name("sfConfig:\"a b\"", 4), "sfConfig._a_b_-4");
        assert_ne!(file_name("sfConfig:a/b", 1), file_name("sfConfig:a_b", 2));
    }
}
