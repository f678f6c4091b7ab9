//! The node's records: what `sd status` shows, kept in memory and written to the store.
//!
//! Every change goes to the in-memory table at once (status reads it) and to a writer task
//! that commits changes in groups: whatever queued while one commit ran goes into the next,
//! in one transaction, so a thousand domains starting together cost a handful of fsyncs.
//! [`Records::flush`] waits until everything written before it is durable; a component waits
//! for it before it reports an acknowledged change (a process started, a deployment
//! accepted), which is what INV-2 needs. Every change is also published as an [`Event`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use sd_proto::{ComponentState, Event};
use sd_store::{ComponentRecord, DeploymentRecord, Store, unix_ms_now};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{Error, Result};

/// How many lifecycle events a slow listener may fall behind before it loses some.
const EVENT_BACKLOG: usize = 4096;

/// One deployment's records, components in plan order.
#[derive(Debug, Clone)]
pub(crate) struct DeploymentEntry {
    pub record: DeploymentRecord,
    /// By plan index (replicas and all), so listing is in tree order.
    pub components: BTreeMap<usize, ComponentRecord>,
}

enum Write {
    Deployment(DeploymentRecord),
    RemoveDeployment(String),
    Component(ComponentRecord),
    Flush(oneshot::Sender<std::result::Result<(), String>>),
}

/// The node's records; cheap to clone.
#[derive(Clone)]
pub(crate) struct Records {
    table: Arc<Mutex<HashMap<String, DeploymentEntry>>>,
    writes: mpsc::UnboundedSender<Write>,
    events: broadcast::Sender<Event>,
    node: Arc<str>,
}

impl Records {
    /// Loads what the store holds and starts the writer. Must run inside a tokio runtime.
    pub fn open(store: Arc<Store>, node: &str) -> Result<(Records, Vec<DeploymentEntry>)> {
        let mut loaded = Vec::new();
        for record in store.deployments()? {
            let components = store.components(&record.name)?;
            loaded.push((record, components));
        }
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(store, queue));
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        // Components are keyed by plan index once their deployment is planned again; until
        // then they keep the store's (path) order.
        let entries: Vec<DeploymentEntry> = loaded
            .into_iter()
            .map(|(record, components)| DeploymentEntry {
                record,
                components: components.into_iter().enumerate().collect(),
            })
            .collect();
        let table = entries
            .iter()
            .map(|entry| (entry.record.name.clone(), entry.clone()))
            .collect();
        let records = Records {
            table: Arc::new(Mutex::new(table)),
            writes,
            events,
            node: node.into(),
        };
        Ok((records, entries))
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, DeploymentEntry>> {
        // A panic while holding the lock leaves plain data behind: keep serving it.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lifecycle events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn publish(&self, deployment: &str, path: &str, state: &str, detail: Option<String>) {
        // No listener is not an error.
        let _ = self.events.send(Event {
            deployment: deployment.to_string(),
            path: path.to_string(),
            state: state.to_string(),
            node: self.node.to_string(),
            unix_ms: unix_ms_now(),
            detail,
        });
    }

    /// Records a deployment (new or changed) and publishes its state.
    pub fn put_deployment(&self, record: DeploymentRecord) {
        let detail = match &record.state {
            sd_proto::DeploymentState::Failed { reason } => Some(reason.clone()),
            _ => None,
        };
        self.publish(&record.name, "", record.state.name(), detail);
        self.table()
            .entry(record.name.clone())
            .and_modify(|entry| entry.record = record.clone())
            .or_insert_with(|| DeploymentEntry {
                record: record.clone(),
                components: BTreeMap::new(),
            });
        let _ = self.writes.send(Write::Deployment(record));
    }

    /// Forgets a deployment and its components.
    pub fn remove_deployment(&self, name: &str) {
        self.table().remove(name);
        let _ = self.writes.send(Write::RemoveDeployment(name.to_string()));
    }

    /// Replaces a deployment's components (after it was planned again at recovery).
    pub fn reindex(&self, name: &str, components: BTreeMap<usize, ComponentRecord>) {
        if let Some(entry) = self.table().get_mut(name) {
            entry.components = components;
        }
    }

    /// Records a component's change, as `change` makes it from its current record.
    /// Returns the new record. Nothing happens if the deployment is gone.
    pub fn update(
        &self,
        deployment: &str,
        index: usize,
        base: impl FnOnce() -> ComponentRecord,
        change: impl FnOnce(&mut ComponentRecord),
    ) -> Option<ComponentRecord> {
        let record = {
            let mut table = self.table();
            let entry = table.get_mut(deployment)?;
            let mut created = false;
            let record = entry.components.entry(index).or_insert_with(|| {
                created = true;
                base()
            });
            let before = record.state;
            change(record);
            let record = record.clone();
            if created || record.state != before {
                self.publish(
                    deployment,
                    &record.path,
                    record.state.name(),
                    record.last_error.clone(),
                );
            }
            record
        };
        let _ = self.writes.send(Write::Component(record.clone()));
        Some(record)
    }

    /// Publishes an event that changes no record (a restart decided, an image saved).
    pub fn note(&self, deployment: &str, path: &str, what: &str, detail: String) {
        self.publish(deployment, path, what, Some(detail));
    }

    /// Waits until every change recorded before this call is durable.
    pub async fn flush(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.writes
            .send(Write::Flush(done))
            .map_err(|_| Error::ShuttingDown)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Error::Durability(reason)),
            Err(_) => Err(Error::ShuttingDown),
        }
    }

    /// A deployment's records.
    pub fn deployment(&self, name: &str) -> Option<DeploymentEntry> {
        self.table().get(name).cloned()
    }

    /// The nodes the components at `indices` were last recorded on (those with a record),
    /// read without copying the deployment's records.
    pub fn nodes_of(&self, deployment: &str, indices: &[usize]) -> Vec<String> {
        let table = self.table();
        let Some(entry) = table.get(deployment) else {
            return Vec::new();
        };
        indices
            .iter()
            .filter_map(|index| entry.components.get(index))
            .map(|record| record.node.clone())
            .collect()
    }

    /// A deployment's record only.
    pub fn deployment_record(&self, name: &str) -> Option<DeploymentRecord> {
        self.table().get(name).map(|entry| entry.record.clone())
    }

    /// Every deployment's records.
    pub fn deployments(&self) -> Vec<DeploymentEntry> {
        let mut entries: Vec<DeploymentEntry> = self.table().values().cloned().collect();
        entries.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        entries
    }

    /// How many components of a deployment are running.
    pub fn running(entry: &DeploymentEntry) -> usize {
        entry
            .components
            .values()
            .filter(|c| c.state == ComponentState::Running)
            .count()
    }
}

/// Commits writes in groups until every sender is gone.
async fn write_loop(store: Arc<Store>, mut queue: mpsc::UnboundedReceiver<Write>) {
    let mut pending = Vec::new();
    while queue.recv_many(&mut pending, 4096).await > 0 {
        let group = std::mem::take(&mut pending);
        let store = Arc::clone(&store);
        let outcome = tokio::task::spawn_blocking(move || commit(&store, group)).await;
        let (flushes, result) = match outcome {
            Ok(done) => done,
            Err(_) => continue,
        };
        for flush in flushes {
            let _ = flush.send(result.clone());
        }
    }
}

type Flushes = Vec<oneshot::Sender<std::result::Result<(), String>>>;

/// Writes one group in one transaction: the last change of each record wins, deployments are
/// written before their components and removed after them.
fn commit(store: &Store, group: Vec<Write>) -> (Flushes, std::result::Result<(), String>) {
    let mut deployments: HashMap<String, Option<DeploymentRecord>> = HashMap::new();
    let mut removed = Vec::new();
    let mut components: HashMap<(String, String), ComponentRecord> = HashMap::new();
    let mut flushes = Vec::new();
    for write in group {
        match write {
            Write::Deployment(record) => {
                deployments.insert(record.name.clone(), Some(record));
            }
            Write::RemoveDeployment(name) => {
                components.retain(|(deployment, _), _| *deployment != name);
                deployments.insert(name.clone(), None);
                removed.push(name);
            }
            Write::Component(record) => {
                components.insert((record.deployment.clone(), record.path.clone()), record);
            }
            Write::Flush(done) => flushes.push(done),
        }
    }
    let result = store.batch(|batch| {
        // A name removed and deployed again within the group loses its old components first.
        for name in &removed {
            batch.remove_deployment(name)?;
        }
        for record in deployments.values().flatten() {
            batch.put_deployment(record)?;
        }
        for record in components.values() {
            // A component whose deployment was removed meanwhile has nothing to update.
            if batch.deployment(&record.deployment)?.is_some() {
                batch.put_component(record)?;
            }
        }
        Ok(())
    });
    (flushes, result.map_err(|error| error.to_string()))
}
