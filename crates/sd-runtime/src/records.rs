//! The node's records: what `sd status` shows, kept in memory and written to the store.
//!
//! Every change goes to the in-memory table at once (status reads it) and to a writer task
//! that commits changes in groups: whatever queued while one commit ran goes into the next,
//! in one transaction, so a thousand domains starting together cost a handful of fsyncs.
//! [`Records::flush`] waits until everything written before it is durable; a component waits
//! for it before it reports an acknowledged change (a process started, a deployment
//! accepted), which is what INV-2 needs. Every change is also published as an [`Event`].
//!
//! The in-memory table is the truth; the store follows it. A commit that fails (the disk
//! full, an I/O error) answers the flushes waiting on it with the error, but its changes are
//! not dropped: they stay queued, merged with later ones (the last change of a record wins),
//! and are committed with the next group, or on their own after a backoff if nothing else
//! comes. So once the store works again, every change made during the outage is written,
//! without an agent restart. Only a change the store refuses for its content (an invalid
//! name, say) is dropped, and the flushes of its group are told.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sd_proto::{ComponentState, Event};
use sd_store::{ComponentRecord, DeploymentRecord, Store, unix_ms_now};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::{Error, Result};

/// How many lifecycle events a slow listener may fall behind before it loses some.
const EVENT_BACKLOG: usize = 4096;

/// How many of its latest lifecycle events the node keeps for those who ask (`sd events`,
/// the console, other nodes gathering the cluster's).
const EVENT_JOURNAL: usize = 2048;

/// How long the writer waits before trying a failed commit again, if no flush asks sooner;
/// doubled after each failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
/// The longest wait between two tries of a failed commit.
const RETRY_MAX: Duration = Duration::from_secs(5);

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
    Flush(oneshot::Sender<Flushed>),
}

/// What a flush learns: the changes before it are durable, or why not.
type Flushed = std::result::Result<(), NotDurable>;

/// Why changes could not be made durable.
#[derive(Debug, Clone)]
struct NotDurable {
    /// The store's error.
    reason: String,
    /// Whether the store's disk is full.
    disk_full: bool,
}

/// The node's records; cheap to clone.
#[derive(Clone)]
pub(crate) struct Records {
    table: Arc<Mutex<HashMap<String, DeploymentEntry>>>,
    writes: mpsc::UnboundedSender<Write>,
    events: broadcast::Sender<Event>,
    /// The latest events, oldest first, numbered from 1 in this agent run.
    journal: Arc<Mutex<Journal>>,
    node: Arc<str>,
}

#[derive(Default)]
struct Journal {
    events: std::collections::VecDeque<Event>,
    last_seq: u64,
    /// Every event since the agent started, by (`deployment` or `component`, state).
    counts: BTreeMap<(&'static str, String), u64>,
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
            journal: Arc::default(),
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

    /// How many events there were since the agent started, by (`deployment` or `component`,
    /// state).
    pub fn event_counts(&self) -> BTreeMap<(&'static str, String), u64> {
        self.journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counts
            .clone()
    }

    /// The events kept with a number above `after`, oldest first.
    pub fn events_after(&self, after: u64) -> Vec<Event> {
        let journal = self
            .journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        journal
            .events
            .iter()
            .filter(|event| event.seq > after)
            .cloned()
            .collect()
    }

    fn publish(&self, deployment: &str, path: &str, state: &str, detail: Option<String>) {
        let event = {
            let mut journal = self
                .journal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            journal.last_seq += 1;
            let of = if path.is_empty() {
                "deployment"
            } else {
                "component"
            };
            *journal.counts.entry((of, state.to_string())).or_default() += 1;
            let event = Event {
                seq: journal.last_seq,
                deployment: deployment.to_string(),
                path: path.to_string(),
                state: state.to_string(),
                node: self.node.to_string(),
                unix_ms: unix_ms_now(),
                detail,
            };
            if journal.events.len() == EVENT_JOURNAL {
                journal.events.pop_front();
            }
            journal.events.push_back(event.clone());
            event
        };
        // Absent when there is none.
        let detail = event.detail.as_deref();
        if event.state == "failed" {
            tracing::warn!(deployment = %event.deployment, path = %event.path, state = %event.state, detail, "lifecycle");
        } else {
            tracing::info!(deployment = %event.deployment, path = %event.path, state = %event.state, detail, "lifecycle");
        }
        // No listener is not an error.
        let _ = self.events.send(event);
    }

    /// Records a deployment (new or changed) and publishes its state if that changed.
    pub fn put_deployment(&self, record: DeploymentRecord) {
        let detail = match &record.state {
            sd_proto::DeploymentState::Failed { reason } => Some(reason.clone()),
            _ => None,
        };
        let before = self
            .table()
            .get(&record.name)
            .map(|entry| entry.record.state.clone());
        if before.as_ref() != Some(&record.state) {
            self.publish(&record.name, "", record.state.name(), detail);
        }
        self.table()
            .entry(record.name.clone())
            .and_modify(|entry| entry.record = record.clone())
            .or_insert_with(|| DeploymentEntry {
                record: record.clone(),
                components: BTreeMap::new(),
            });
        let _ = self.writes.send(Write::Deployment(record));
    }

    /// Changes a deployment's record in place, under the table's lock (so a change made
    /// meanwhile, a state say, is not lost), and writes it; its state must not change here.
    /// False if there is no such record.
    pub fn modify_deployment(
        &self,
        name: &str,
        change: impl FnOnce(&mut DeploymentRecord),
    ) -> bool {
        let record = {
            let mut table = self.table();
            let Some(entry) = table.get_mut(name) else {
                return false;
            };
            change(&mut entry.record);
            entry.record.clone()
        };
        let _ = self.writes.send(Write::Deployment(record));
        true
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
                // The last error explains a failure or a restart, not what follows.
                let detail = matches!(
                    record.state,
                    ComponentState::Failed | ComponentState::Restarting
                )
                .then(|| record.last_error.clone())
                .flatten();
                self.publish(deployment, &record.path, record.state.name(), detail);
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

    /// Waits until every change recorded before this call is durable. On an error (the disk
    /// full ...) those changes are not lost: they stay queued and are written once the store
    /// works again.
    pub async fn flush(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.writes
            .send(Write::Flush(done))
            .map_err(|_| Error::ShuttingDown)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(NotDurable { reason, disk_full })) => {
                Err(Error::Durability { reason, disk_full })
            }
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

/// The changes not yet committed, merged: the last change of each record wins.
#[derive(Default)]
struct Pending {
    /// Deployments removed (with their components), before anything is put.
    removed: BTreeSet<String>,
    /// Deployments put (`Some`) or removed (`None`).
    deployments: HashMap<String, Option<DeploymentRecord>>,
    /// Components put, by deployment and path.
    components: HashMap<(String, String), ComponentRecord>,
}

impl Pending {
    /// Adds a change, after those already pending; a flush goes to `flushes`.
    fn add(&mut self, write: Write, flushes: &mut Flushes) {
        match write {
            Write::Deployment(record) => {
                self.deployments.insert(record.name.clone(), Some(record));
            }
            Write::RemoveDeployment(name) => {
                self.components
                    .retain(|(deployment, _), _| *deployment != name);
                self.deployments.insert(name.clone(), None);
                self.removed.insert(name);
            }
            Write::Component(record) => {
                self.components
                    .insert((record.deployment.clone(), record.path.clone()), record);
            }
            Write::Flush(done) => flushes.push(done),
        }
    }

    fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.deployments.is_empty() && self.components.is_empty()
    }
}

type Flushes = Vec<oneshot::Sender<Flushed>>;

/// When to try a failed commit again, and the wait after that.
#[derive(Clone, Copy)]
struct Retry {
    at: Instant,
    backoff: Duration,
}

/// Commits writes in groups until every sender is gone. A group whose commit failed is kept,
/// and tried again with the next flush, or after a backoff, until it is committed.
async fn write_loop(store: Arc<Store>, mut queue: mpsc::UnboundedReceiver<Write>) {
    let mut pending = Pending::default();
    let mut flushes: Flushes = Vec::new();
    let mut incoming = Vec::new();
    let mut retry: Option<Retry> = None;
    loop {
        let closed = tokio::select! {
            received = queue.recv_many(&mut incoming, 4096) => received == 0,
            () = sleep_until(retry.map(|retry| retry.at)) => false,
        };
        for write in incoming.drain(..) {
            pending.add(write, &mut flushes);
        }
        // After a failure, a change alone waits for the backoff; a flush is answered at once.
        let due = match retry {
            None => true,
            Some(retry) => closed || !flushes.is_empty() || Instant::now() >= retry.at,
        };
        if due {
            let result = if pending.is_empty() {
                Ok(())
            } else {
                let group = std::mem::take(&mut pending);
                let store = Arc::clone(&store);
                let outcome =
                    tokio::task::spawn_blocking(move || (commit(&store, &group), group)).await;
                match outcome {
                    Ok((Ok(answer), _)) => answer,
                    Ok((Err(failed), group)) => {
                        // Nothing was written: keep the group for the next try.
                        pending = group;
                        let backoff = retry.map_or(RETRY_FIRST, |retry| {
                            retry.backoff.saturating_mul(2).min(RETRY_MAX)
                        });
                        retry = Some(Retry {
                            at: Instant::now() + backoff,
                            backoff,
                        });
                        Err(failed)
                    }
                    // The commit panicked, and took its group with it.
                    Err(_) => Err(NotDurable {
                        reason: "the node's store writer failed unexpectedly".to_owned(),
                        disk_full: false,
                    }),
                }
            };
            if pending.is_empty() {
                retry = None;
            }
            for flush in flushes.drain(..) {
                let _ = flush.send(result.clone());
            }
        }
        if closed {
            break;
        }
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes one group in one transaction: deployments are removed before anything is put, and
/// put before their components. `Ok` when committed, with a failure if some change was
/// refused for its content (and left out); `Err` when nothing was written.
fn commit(store: &Store, group: &Pending) -> std::result::Result<Flushed, NotDurable> {
    let mut refused = Vec::new();
    let result = store.batch(|batch| {
        // A name removed and deployed again within the group loses its old components first.
        for name in &group.removed {
            unless_refused(batch.remove_deployment(name), &mut refused)?;
        }
        for record in group.deployments.values().flatten() {
            unless_refused(batch.put_deployment(record), &mut refused)?;
        }
        for record in group.components.values() {
            // A component whose deployment was removed meanwhile has nothing to update.
            let deployment = unless_refused(batch.deployment(&record.deployment), &mut refused)?;
            if deployment.flatten().is_some() {
                unless_refused(batch.put_component(record), &mut refused)?;
            }
        }
        Ok(())
    });
    match result {
        Ok(()) if refused.is_empty() => Ok(Ok(())),
        Ok(()) => Ok(Err(NotDurable {
            reason: format!(
                "{} change(s) refused by the store (the others are recorded): {}",
                refused.len(),
                refused.join("; ")
            ),
            disk_full: false,
        })),
        Err(error) => Err(NotDurable {
            reason: error.to_string(),
            disk_full: error.is_disk_full(),
        }),
    }
}

/// `None` (noted in `refused`) if the store refused a change for its content, which trying
/// again cannot mend; a failure of the store itself is returned, and fails the group.
fn unless_refused<T>(
    result: sd_store::Result<T>,
    refused: &mut Vec<String>,
) -> sd_store::Result<Option<T>> {
    use sd_store::Error as E;
    match result {
        Ok(value) => Ok(Some(value)),
        Err(
            error @ (E::InvalidName { .. }
            | E::InvalidPath { .. }
            | E::NoSuchDeployment { .. }
            | E::Encode { .. }
            | E::Decode { .. }),
        ) => {
            refused.push(error.to_string());
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::path::Path;
    use std::process::Command;

    use sd_proto::DeploymentState;

    use super::*;

    fn deployment(name: &str, description_bytes: usize) -> DeploymentRecord {
        DeploymentRecord {
            name: name.to_owned(),
            description: "x".repeat(description_bytes),
            source: String::new(),
            state: DeploymentState::Running,
            epoch: 1,
            root_node: "n1".to_owned(),
            created_unix_ms: 0,
            updated_unix_ms: 0,
            overrides: Vec::new(),
        }
    }

    fn component(deployment: &str, path: &str, restarts: u32) -> ComponentRecord {
        ComponentRecord {
            deployment: deployment.to_owned(),
            path: path.to_owned(),
            kind: "sd.ProcessDomain".to_owned(),
            state: ComponentState::Running,
            node: "n1".to_owned(),
            process: None,
            restarts,
            restart_times_unix_ms: Vec::new(),
            epoch: 1,
            last_error: Some("x".repeat(8 << 10)),
            started_unix_ms: None,
        }
    }

    #[tokio::test]
    async fn a_refused_change_is_reported_and_does_not_hold_back_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("node.redb")).unwrap());
        let (records, _) = Records::open(Arc::clone(&store), "n1").unwrap();
        records.put_deployment(deployment("web", 10));
        records.put_deployment(deployment("-bad", 10));
        let error = records.flush().await.unwrap_err();
        assert!(
            matches!(
                error,
                Error::Durability {
                    disk_full: false,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("-bad"), "{error}");
        assert!(store.deployment("web").unwrap().is_some());
        // Refused for its content, the change is dropped rather than retried for ever.
        records.put_deployment(deployment("db", 10));
        records.flush().await.unwrap();
        assert!(store.deployment("db").unwrap().is_some());
    }

    /// A tmpfs mounted on a temporary directory (unmounted when dropped), or `None` with the
    /// reason printed where mounting is not permitted.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(size: &str) -> Option<Tmpfs> {
            let dir = tempfile::tempdir().unwrap();
            let output = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .output();
            match output {
                Ok(output) if output.status.success() => Some(Tmpfs(dir)),
                Ok(output) => {
                    eprintln!(
                        "SKIPPED: cannot mount a tmpfs: {}",
                        String::from_utf8_lossy(&output.stderr).trim()
                    );
                    None
                }
                Err(error) => {
                    eprintln!("SKIPPED: cannot run `mount`: {error}");
                    None
                }
            }
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }

    /// Fills the file system of `dir` to the last byte.
    fn fill(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        for chunk in [vec![0_u8; 1 << 16], vec![0; 4096], vec![0; 1]] {
            while matches!(file.write(&chunk), Ok(written) if written > 0) {}
        }
        path
    }

    #[tokio::test]
    async fn changes_made_while_the_disk_is_full_are_written_once_there_is_room() {
        let Some(disk) = Tmpfs::mount("2m") else {
            return;
        };
        let store = Arc::new(Store::open(disk.0.path().join("node.redb")).unwrap());
        let (records, _) = Records::open(Arc::clone(&store), "n1").unwrap();
        records.put_deployment(deployment("web", 100));
        records.flush().await.unwrap();

        let filler = fill(disk.0.path());
        // Components change (a domain restarting, say) until a commit fails for want of space.
        let mut restarts = 0;
        let error = loop {
            restarts += 1;
            assert!(restarts < 500, "the full disk never refused a commit");
            let path = format!("sfConfig:vm{restarts}");
            records.update(
                "web",
                restarts as usize,
                || component("web", &path, 0),
                |record| record.restarts = restarts,
            );
            if let Err(error) = records.flush().await {
                break error;
            }
        };
        assert!(error.is_disk_full(), "{error:?}");
        assert!(error.to_string().contains("disk is full"), "{error}");
        assert!(error.to_string().contains("node.redb"), "{error}");
        // More changes while it is full, and one record changed again: the last change wins.
        records.update(
            "web",
            1,
            || component("web", "sfConfig:vm1", 0),
            |record| record.restarts = 1000,
        );
        records.put_deployment(deployment("late", 100));
        let still_full = records.flush().await.unwrap_err();
        assert!(still_full.is_disk_full(), "{still_full:?}");

        // Room again: with no new change and no flush, the writer writes what waited.
        std::fs::remove_file(&filler).unwrap();
        let deadline = std::time::Instant::now() + RETRY_MAX * 3;
        while store.deployment("late").unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the changes made during the outage were never written"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let in_memory = records.deployment("web").unwrap();
        let stored = store.components("web").unwrap();
        assert_eq!(stored.len(), in_memory.components.len());
        for record in in_memory.components.values() {
            assert_eq!(
                store.component("web", &record.path).unwrap().as_ref(),
                Some(record),
                "{}",
                record.path
            );
        }
        assert_eq!(
            store
                .component("web", "sfConfig:vm1")
                .unwrap()
                .unwrap()
                .restarts,
            1000
        );
        records.flush().await.unwrap();
    }
}
