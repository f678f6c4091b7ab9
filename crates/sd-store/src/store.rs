//! The store: one redb file, three tables, every write committed durably before it returns.
//!
//! Tables (keys and values are strings; values are JSON):
//! - `deployments`: deployment name -> [`DeploymentRecord`];
//! - `components`: `"{deployment}\0{path}"` -> [`ComponentRecord`], so one deployment's
//!   components are one range scan (see `key.rs`);
//! - `meta`: name -> `u64` (`format`, `generation`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use redb::{
    Database, DatabaseError, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    StorageError, Table, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::key::{component_key, component_range, display_key};
use crate::{
    ComponentRecord, DeploymentRecord, Error, Result, validate_deployment_name, validate_path,
};

const DEPLOYMENTS_NAME: &str = "deployments";
const COMPONENTS_NAME: &str = "components";
const DEPLOYMENTS: TableDefinition<'_, &str, &str> = TableDefinition::new(DEPLOYMENTS_NAME);
const COMPONENTS: TableDefinition<'_, &str, &str> = TableDefinition::new(COMPONENTS_NAME);
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The `meta` key of the file's format version.
const FORMAT_KEY: &str = "format";
/// The `meta` key of the node's generation counter.
const GENERATION_KEY: &str = "generation";

/// The format of the files this version writes. A file of a newer format is refused with
/// [`Error::NewerFormat`] rather than misread. Adding a field with `#[serde(default)]` does not
/// change the format; changing the meaning of a table or key does.
pub const FORMAT_VERSION: u64 = 1;

/// How long a reopen waits for the calls still using the failed database to end. They end
/// soon (that database fails them at once; new calls wait for the reopen), unless one is made
/// from inside a [`Store::batch`] closure, which this bound keeps from hanging.
const REOPEN_WAIT: Duration = Duration::from_secs(10);

/// A node's durable state. `Send + Sync`: share one with an `Arc`. Writes are serialised
/// (one write transaction at a time); reads run concurrently with them and see the last
/// committed state.
///
/// After an I/O failure (a full disk ...), redb fails every later transaction of the same
/// `Database` ("previous I/O error"), even once the cause is gone. So the store closes its
/// database after such a failure and opens the file again (with the integrity check of
/// [`Store::open`]): the next call works as soon as the disk does. If that reopen fails too
/// (the disk is still full), the next call tries again.
pub struct Store {
    handle: RwLock<Handle>,
    /// Held by the call that reopens the database, for the whole reopen.
    reopening: Mutex<()>,
    /// Set during a reopen: new calls wait for it (on `reopening`) instead of taking the
    /// read lock, so that the reopen gets the lock once the calls in flight are done.
    gate: AtomicBool,
    path: PathBuf,
}

/// The open database, behind the store's lock: calls share it (read lock); a reopen takes it
/// alone (write lock), so that the old database, and the file lock it holds, is gone before
/// the file is opened again.
struct Handle {
    /// `None` after a reopen failed: the next call tries again.
    db: Option<Database>,
    /// How many times the file was opened: a call that failed on open number `n` reopens only
    /// if no other call has done it since.
    opened: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// An [`Error::Database`] for the store at `path`.
fn db_error<E: Into<redb::Error>>(action: &'static str, path: &Path) -> impl FnOnce(E) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Database {
        action,
        path,
        source: Box::new(source.into()),
    }
}

/// Opens (or creates) the redb file at `path`, checking every checksum. `action` says what
/// is being done, for an I/O error ("cannot open the store" ...).
fn open_database(path: &Path, action: &'static str) -> Result<Database> {
    // Without the integrity check, redb trusts a file it did not see damaged and may panic on
    // a damaged page; with it, the open verifies every checksum (a few ms for a node's state)
    // and reports damage as an error.
    Database::builder()
        .set_check_integrity_on_open(true)
        .create(path)
        .map_err(|error| open_error(path, action, error))
}

/// What a failed [`Database::create`] means to the user.
fn open_error(path: &Path, action: &'static str, error: DatabaseError) -> Error {
    let path = path.to_path_buf();
    match error {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            Error::Locked(path)
        }
        DatabaseError::Storage(StorageError::Corrupted(reason)) => {
            Error::NotAStore { path, reason }
        }
        DatabaseError::UpgradeRequired(version) => Error::NotAStore {
            path,
            reason: format!("it is in redb file format {version}, which this redb does not read"),
        },
        // redb says "Not a redb database: magic number mismatch" as an `InvalidData` I/O error.
        DatabaseError::Storage(StorageError::Io(source))
            if source.kind() == std::io::ErrorKind::InvalidData =>
        {
            Error::NotAStore {
                path,
                reason: source.to_string(),
            }
        }
        DatabaseError::Storage(StorageError::Io(source))
            if source.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Error::NotAStore {
                path,
                reason: "it is too short to hold a redb header".to_owned(),
            }
        }
        DatabaseError::Storage(StorageError::Io(source)) => Error::Io {
            action,
            path,
            source,
        },
        other => Error::Database {
            action,
            path,
            source: Box::new(other.into()),
        },
    }
}

fn encode(table: &'static str, key: &str, record: &impl Serialize) -> Result<String> {
    serde_json::to_string(record).map_err(|source| Error::Encode {
        table,
        key: display_key(key),
        source,
    })
}

fn decode<T: DeserializeOwned>(table: &'static str, key: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|source| Error::Decode {
        table,
        key: display_key(key),
        source,
    })
}

/// Decodes every record of a table range (`iter()` or `range()`), in key order.
fn decode_all<T: DeserializeOwned>(
    entries: redb::Range<'_, &'static str, &'static str>,
    table: &'static str,
    action: &'static str,
    path: &Path,
) -> Result<Vec<T>> {
    entries
        .map(|entry| {
            let (key, json) = entry.map_err(db_error(action, path))?;
            decode(table, key.value(), json.value())
        })
        .collect()
}

/// Reads one deployment from a `deployments` table (of a read or a write transaction).
fn read_deployment(
    table: &impl ReadableTable<&'static str, &'static str>,
    path: &Path,
    name: &str,
) -> Result<Option<DeploymentRecord>> {
    validate_deployment_name(name)?;
    let found = table
        .get(name)
        .map_err(db_error("cannot read a deployment", path))?;
    found
        .map(|json| decode(DEPLOYMENTS_NAME, name, json.value()))
        .transpose()
}

/// Reads one component from a `components` table.
fn read_component(
    table: &impl ReadableTable<&'static str, &'static str>,
    store_path: &Path,
    deployment: &str,
    path: &str,
) -> Result<Option<ComponentRecord>> {
    validate_deployment_name(deployment)?;
    validate_path(path)?;
    let key = component_key(deployment, path);
    let found = table
        .get(key.as_str())
        .map_err(db_error("cannot read a component", store_path))?;
    found
        .map(|json| decode(COMPONENTS_NAME, &key, json.value()))
        .transpose()
}

/// Reads every component of `deployment`, in path order.
fn read_components(
    table: &impl ReadableTable<&'static str, &'static str>,
    path: &Path,
    deployment: &str,
) -> Result<Vec<ComponentRecord>> {
    validate_deployment_name(deployment)?;
    let (start, end) = component_range(deployment);
    let range = table
        .range(start.as_str()..end.as_str())
        .map_err(db_error("cannot read components", path))?;
    decode_all(range, COMPONENTS_NAME, "cannot read components", path)
}

impl Store {
    /// Opens the store at `path`, creating the file (and its directory) if missing.
    ///
    /// Fails with [`Error::Locked`] if the file is open already (by another agent, or by
    /// this process), [`Error::NotAStore`] if it is not a redb database or is damaged, and
    /// [`Error::NewerFormat`] if a newer sd wrote it. After an agent was killed, opening
    /// repairs the file (redb checks its checksums) and keeps every committed write.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                action: "cannot create the directory",
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let db = open_database(&path, "cannot open the store")?;
        let store = Store {
            handle: RwLock::new(Handle {
                db: Some(db),
                opened: 1,
            }),
            reopening: Mutex::new(()),
            gate: AtomicBool::new(false),
            path,
        };
        store.initialise()?;
        Ok(store)
    }

    /// Creates the tables of a new file, and checks the format of an existing one.
    fn initialise(&self) -> Result<()> {
        self.write("cannot initialise", |txn, path| {
            txn.open_table(DEPLOYMENTS)
                .map_err(db_error("cannot create table `deployments`", path))?;
            txn.open_table(COMPONENTS)
                .map_err(db_error("cannot create table `components`", path))?;
            let mut meta = txn
                .open_table(META)
                .map_err(db_error("cannot create table `meta`", path))?;
            let format = meta
                .get(FORMAT_KEY)
                .map_err(db_error("cannot read the format", path))?
                .map(|found| found.value());
            match format {
                Some(found) if found > FORMAT_VERSION => Err(Error::NewerFormat {
                    path: path.to_path_buf(),
                    found,
                    supported: FORMAT_VERSION,
                }),
                Some(_) => Ok(()),
                None => {
                    meta.insert(FORMAT_KEY, FORMAT_VERSION)
                        .map_err(db_error("cannot write the format", path))?;
                    Ok(())
                }
            }
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store's lock, for a call (shared), after any reopen under way. A panic while it
    /// was held for a reopen left a handle that is either open or `None`: both are usable.
    fn handle(&self) -> RwLockReadGuard<'_, Handle> {
        if self.gate.load(Ordering::Acquire) {
            // Waits for the reopen (bounded: it gives up after `REOPEN_WAIT`).
            drop(
                self.reopening
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
        self.handle.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The store's lock, alone, for a reopen; `None` if the calls using the database did not
    /// end within [`REOPEN_WAIT`]. It is not waited for in the lock's queue, where it would
    /// deadlock with a call that takes the lock again while holding it (a call made from
    /// inside a batch closure); new calls wait on the gate instead.
    fn handle_alone(&self) -> Option<RwLockWriteGuard<'_, Handle>> {
        let deadline = Instant::now() + REOPEN_WAIT;
        loop {
            match self.handle.try_write() {
                Ok(handle) => return Some(handle),
                Err(TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TryLockError::WouldBlock) => return None,
            }
        }
    }

    /// Closes the database and opens the file again, unless another call did it since open
    /// number `seen` (the one that failed, or was found closed). The caller holds no guard.
    fn reopen(&self, seen: u64) -> Result<()> {
        let _reopening = self
            .reopening
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.gate.store(true, Ordering::Release);
        let reopened = self.reopen_alone(seen);
        self.gate.store(false, Ordering::Release);
        reopened
    }

    fn reopen_alone(&self, seen: u64) -> Result<()> {
        let Some(mut handle) = self.handle_alone() else {
            return Err(Error::Closed {
                path: self.path.clone(),
                reason: "it is still in use (is the store called from inside a batch?)",
            });
        };
        if handle.opened != seen && handle.db.is_some() {
            return Ok(());
        }
        // Dropping the database closes the file and releases its lock, which the new open
        // would otherwise find taken. Nothing is lost: what was committed is in the file, and
        // the failed transaction was never committed.
        drop(handle.db.take());
        handle.opened += 1;
        handle.db = Some(open_database(
            &self.path,
            "cannot reopen the store after an I/O error",
        )?);
        Ok(())
    }

    /// Runs `op` on the database, reopening it first if it is closed, and after `op` if `op`
    /// failed with an I/O error (so that the next call finds it working again).
    fn with_db<T>(&self, op: impl FnOnce(&Database, &Path) -> Result<T>) -> Result<T> {
        let mut handle = self.handle();
        // A few rounds, in case another call's reopen fails between ours and this call.
        for _ in 0..3 {
            if handle.db.is_some() {
                break;
            }
            let seen = handle.opened;
            drop(handle);
            self.reopen(seen)?;
            handle = self.handle();
        }
        let Some(db) = handle.db.as_ref() else {
            return Err(Error::Closed {
                path: self.path.clone(),
                reason: "reopening it failed (see the errors of other calls); the next call tries again",
            });
        };
        let opened = handle.opened;
        let result = op(db, &self.path);
        drop(handle);
        if result.as_ref().is_err_and(Error::is_io_failure) {
            // A reopen that fails (the disk still full) leaves the database closed, and the
            // next call tries again and reports it.
            let _ = self.reopen(opened);
        }
        result
    }

    /// Runs `f` in one write transaction and commits it durably if `f` succeeds; otherwise
    /// the transaction is aborted and nothing is written.
    fn write<T>(
        &self,
        action: &'static str,
        f: impl FnOnce(&WriteTransaction, &Path) -> Result<T>,
    ) -> Result<T> {
        self.with_db(|db, path| {
            let mut txn = db
                .begin_write()
                .map_err(db_error("cannot begin a write transaction", path))?;
            // The default, said out loud: `commit` returns only once the data is on disk (INV-2).
            txn.set_durability(Durability::Immediate)
                .map_err(db_error(action, path))?;
            let value = f(&txn, path)?; // On error, dropping `txn` aborts it.
            txn.commit().map_err(db_error(action, path))?;
            Ok(value)
        })
    }

    /// Runs `f` on a read transaction (a snapshot of the last commit).
    fn read<T>(&self, f: impl FnOnce(&ReadTransaction, &Path) -> Result<T>) -> Result<T> {
        self.with_db(|db, path| {
            let txn = db
                .begin_read()
                .map_err(db_error("cannot begin a read transaction", path))?;
            f(&txn, path)
        })
    }

    /// Increments the node's generation and returns it (1 for the first agent start). Each
    /// agent start takes a new one, so that messages from an earlier life can be told apart.
    pub fn next_generation(&self) -> Result<u64> {
        self.write("cannot advance the generation", |txn, path| {
            let mut meta = txn
                .open_table(META)
                .map_err(db_error("cannot open table `meta`", path))?;
            let current = meta
                .get(GENERATION_KEY)
                .map_err(db_error("cannot read the generation", path))?
                .map_or(0, |found| found.value());
            let next = current + 1;
            meta.insert(GENERATION_KEY, next)
                .map_err(db_error("cannot write the generation", path))?;
            Ok(next)
        })
    }

    /// The node's current generation (0 before the first [`Store::next_generation`]).
    pub fn generation(&self) -> Result<u64> {
        self.read(|txn, path| {
            let meta = txn
                .open_table(META)
                .map_err(db_error("cannot open table `meta`", path))?;
            let current = meta
                .get(GENERATION_KEY)
                .map_err(db_error("cannot read the generation", path))?
                .map_or(0, |found| found.value());
            Ok(current)
        })
    }

    /// Runs `f` in ONE durable transaction: every put and remove it makes is written, with one
    /// commit, if it returns `Ok`; nothing is written if it fails. A write refused for its
    /// input (an invalid name, a missing deployment) changes nothing, so `f` may go on after
    /// one; a write the database failed spoils the batch, which is then not committed
    /// ([`Error::BatchFailed`]) even if `f` ignored the error.
    pub fn batch<T>(&self, f: impl FnOnce(&mut Batch<'_>) -> Result<T>) -> Result<T> {
        self.write("cannot commit", |txn, path| {
            let mut batch = Batch::open(txn, path)?;
            let value = f(&mut batch)?;
            if let Some(failed) = batch.failed {
                return Err(Error::BatchFailed {
                    path: path.to_path_buf(),
                    reason: failed.reason,
                    io_failure: failed.io_failure,
                    disk_full: failed.disk_full,
                });
            }
            Ok(value)
        })
    }

    /// Records a deployment (replacing the record of the same name), durably.
    pub fn put_deployment(&self, record: &DeploymentRecord) -> Result<()> {
        self.batch(|batch| batch.put_deployment(record))
    }

    /// Removes a deployment and all its components, in one durable transaction. Returns
    /// whether the deployment was there.
    pub fn remove_deployment(&self, name: &str) -> Result<bool> {
        self.batch(|batch| batch.remove_deployment(name))
    }

    /// Records a component (replacing the record of the same deployment and path), durably.
    /// Its deployment must be in the store ([`Error::NoSuchDeployment`]).
    pub fn put_component(&self, record: &ComponentRecord) -> Result<()> {
        self.batch(|batch| batch.put_component(record))
    }

    /// Removes one component, durably. Returns whether it was there.
    pub fn remove_component(&self, deployment: &str, path: &str) -> Result<bool> {
        self.batch(|batch| batch.remove_component(deployment, path))
    }

    /// The deployment called `name`, if the store holds it.
    pub fn deployment(&self, name: &str) -> Result<Option<DeploymentRecord>> {
        self.read(|txn, path| {
            let table = txn
                .open_table(DEPLOYMENTS)
                .map_err(db_error("cannot open table `deployments`", path))?;
            read_deployment(&table, path, name)
        })
    }

    /// Every deployment, sorted by name (byte order).
    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>> {
        self.read(|txn, path| {
            let table = txn
                .open_table(DEPLOYMENTS)
                .map_err(db_error("cannot open table `deployments`", path))?;
            let entries = table
                .iter()
                .map_err(db_error("cannot read deployments", path))?;
            decode_all(entries, DEPLOYMENTS_NAME, "cannot read deployments", path)
        })
    }

    /// Component `path` of `deployment`, if the store holds it.
    pub fn component(&self, deployment: &str, path: &str) -> Result<Option<ComponentRecord>> {
        self.read(|txn, store_path| {
            let table = txn
                .open_table(COMPONENTS)
                .map_err(db_error("cannot open table `components`", store_path))?;
            read_component(&table, store_path, deployment, path)
        })
    }

    /// Every component of `deployment`, in path order (byte order: `vm10` before `vm2`).
    pub fn components(&self, deployment: &str) -> Result<Vec<ComponentRecord>> {
        self.read(|txn, path| {
            let table = txn
                .open_table(COMPONENTS)
                .map_err(db_error("cannot open table `components`", path))?;
            read_components(&table, path, deployment)
        })
    }
}

/// The writes of one [`Store::batch`]: they are committed together, or not at all. Reads
/// through a batch see its own writes.
pub struct Batch<'txn> {
    deployments: Table<'txn, &'static str, &'static str>,
    components: Table<'txn, &'static str, &'static str>,
    path: &'txn Path,
    /// The first database failure of a write, if any: the batch must not be committed.
    failed: Option<Spoiled>,
}

/// The first database failure of a batch's writes.
struct Spoiled {
    /// The failure's message.
    reason: String,
    /// Whether it was an I/O error.
    io_failure: bool,
    /// Whether it was the disk being full.
    disk_full: bool,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("path", &self.path).finish()
    }
}

impl<'txn> Batch<'txn> {
    fn open(txn: &'txn WriteTransaction, path: &'txn Path) -> Result<Batch<'txn>> {
        Ok(Batch {
            deployments: txn
                .open_table(DEPLOYMENTS)
                .map_err(db_error("cannot open table `deployments`", path))?,
            components: txn
                .open_table(COMPONENTS)
                .map_err(db_error("cannot open table `components`", path))?,
            path,
            failed: None,
        })
    }

    /// Notes a database failure of a write (which may have done part of its work).
    fn check<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(error @ Error::Database { .. }) = &result {
            self.failed.get_or_insert_with(|| Spoiled {
                reason: error.to_string(),
                io_failure: error.is_io_failure(),
                disk_full: error.is_disk_full(),
            });
        }
        result
    }

    /// Records a deployment (replacing the record of the same name).
    pub fn put_deployment(&mut self, record: &DeploymentRecord) -> Result<()> {
        validate_deployment_name(&record.name)?;
        let json = encode(DEPLOYMENTS_NAME, &record.name, record)?;
        let written = self
            .deployments
            .insert(record.name.as_str(), json.as_str())
            .map(drop)
            .map_err(db_error("cannot write a deployment", self.path));
        self.check(written)
    }

    /// Removes a deployment and all its components. Returns whether the deployment was there.
    pub fn remove_deployment(&mut self, name: &str) -> Result<bool> {
        validate_deployment_name(name)?;
        let removed = self
            .deployments
            .remove(name)
            .map(|previous| previous.is_some())
            .map_err(db_error("cannot remove a deployment", self.path));
        let removed = self.check(removed)?;
        let (start, end) = component_range(name);
        let cleared = self
            .components
            .retain_in(start.as_str()..end.as_str(), |_, _| false)
            .map_err(db_error("cannot remove components", self.path));
        self.check(cleared)?;
        Ok(removed)
    }

    /// Records a component (replacing the record of the same deployment and path). Its
    /// deployment must be in the store, or put earlier in this batch.
    pub fn put_component(&mut self, record: &ComponentRecord) -> Result<()> {
        validate_deployment_name(&record.deployment)?;
        validate_path(&record.path)?;
        let deployment_known = self
            .deployments
            .get(record.deployment.as_str())
            .map(|found| found.is_some())
            .map_err(db_error("cannot read a deployment", self.path))?;
        if !deployment_known {
            return Err(Error::NoSuchDeployment {
                deployment: record.deployment.clone(),
                path: record.path.clone(),
            });
        }
        let key = component_key(&record.deployment, &record.path);
        let json = encode(COMPONENTS_NAME, &key, record)?;
        let written = self
            .components
            .insert(key.as_str(), json.as_str())
            .map(drop)
            .map_err(db_error("cannot write a component", self.path));
        self.check(written)
    }

    /// Removes one component. Returns whether it was there.
    pub fn remove_component(&mut self, deployment: &str, path: &str) -> Result<bool> {
        validate_deployment_name(deployment)?;
        validate_path(path)?;
        let key = component_key(deployment, path);
        let removed = self
            .components
            .remove(key.as_str())
            .map(|previous| previous.is_some())
            .map_err(db_error("cannot remove a component", self.path));
        self.check(removed)
    }

    /// The deployment called `name`, as this batch sees it.
    pub fn deployment(&self, name: &str) -> Result<Option<DeploymentRecord>> {
        read_deployment(&self.deployments, self.path, name)
    }

    /// Component `path` of `deployment`, as this batch sees it.
    pub fn component(&self, deployment: &str, path: &str) -> Result<Option<ComponentRecord>> {
        read_component(&self.components, self.path, deployment, path)
    }

    /// Every component of `deployment`, in path order, as this batch sees it.
    pub fn components(&self, deployment: &str) -> Result<Vec<ComponentRecord>> {
        read_components(&self.components, self.path, deployment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }

    #[test]
    fn a_missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/state.redb");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.path(), path);
        assert!(path.is_file());
    }

    fn deployment(name: &str) -> DeploymentRecord {
        DeploymentRecord {
            name: name.to_owned(),
            description: String::new(),
            source: String::new(),
            state: crate::DeploymentState::Deploying,
            epoch: 1,
            root_node: "n1".to_owned(),
            created_unix_ms: 0,
            updated_unix_ms: 0,
            overrides: Vec::new(),
        }
    }

    #[test]
    fn a_database_failure_spoils_the_batch_even_if_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("state.redb")).unwrap();
        let error = store
            .batch(|batch| {
                batch.put_deployment(&deployment("web"))?;
                let failure = Err::<(), _>(Error::Database {
                    action: "cannot write a component",
                    path: batch.path.to_path_buf(),
                    source: Box::new(redb::Error::Io(std::io::Error::other("disk full"))),
                });
                let _ignored = batch.check(failure);
                Ok(())
            })
            .unwrap_err();
        assert!(
            matches!(
                error,
                Error::BatchFailed {
                    io_failure: true,
                    disk_full: false,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("disk full"), "{error}");
        assert_eq!(store.deployment("web").unwrap(), None);
        // An I/O failure reopens the database, and the store works on.
        assert_eq!(store.handle().opened, 2);
        store.put_deployment(&deployment("web")).unwrap();
        assert!(store.deployment("web").unwrap().is_some());
    }

    #[test]
    fn disk_full_is_recognised_from_the_error_kind_not_the_text() {
        let path = PathBuf::from("/d/node.redb");
        let database = |source: redb::Error| Error::Database {
            action: "cannot commit",
            path: path.clone(),
            source: Box::new(source),
        };
        let enospc = || std::io::Error::from_raw_os_error(28);
        assert!(database(redb::Error::Io(enospc())).is_disk_full());
        assert!(database(StorageError::Io(enospc()).into()).is_disk_full());
        let wrapped = std::io::Error::other(enospc());
        assert!(database(redb::Error::Io(wrapped)).is_disk_full());
        let io = Error::Io {
            action: "cannot open the store",
            path: path.clone(),
            source: enospc(),
        };
        assert!(io.is_disk_full());
        let eio = database(redb::Error::Io(std::io::Error::from_raw_os_error(5)));
        assert!(!eio.is_disk_full() && eio.is_io_failure());
        let text = database(redb::Error::Io(std::io::Error::other(
            "No space left on device",
        )));
        assert!(!text.is_disk_full());
        assert!(database(redb::Error::PreviousIo).is_io_failure());
        assert!(!database(redb::Error::PreviousIo).is_disk_full());
        assert!(!database(redb::Error::Corrupted("x".into())).is_io_failure());
    }

    #[test]
    fn a_closed_database_is_reopened_by_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = Store::open(&path).unwrap();
        store.put_deployment(&deployment("web")).unwrap();
        // As a reopen refused by a full disk leaves it.
        store.handle.write().unwrap().db = None;
        assert!(store.deployment("web").unwrap().is_some());
        store.put_deployment(&deployment("db")).unwrap();
        assert_eq!(store.handle().opened, 2);
        assert!(matches!(Store::open(&path), Err(Error::Locked(_))));
    }

    #[test]
    fn a_failed_reopen_is_reported_and_tried_again_by_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let aside = dir.path().join("aside.redb");
        let store = Store::open(&path).unwrap();
        store.put_deployment(&deployment("web")).unwrap();
        store.handle.write().unwrap().db = None;
        // The file cannot be opened for now: each call says so.
        std::fs::rename(&path, &aside).unwrap();
        std::fs::create_dir(&path).unwrap();
        for _ in 0..2 {
            let error = store.deployment("web").unwrap_err();
            assert!(matches!(error, Error::Io { .. }), "{error:?}");
            assert!(error.to_string().contains("cannot reopen"), "{error}");
            assert!(!error.is_disk_full());
        }
        std::fs::remove_dir(&path).unwrap();
        std::fs::rename(&aside, &path).unwrap();
        assert!(store.deployment("web").unwrap().is_some());
        store.put_deployment(&deployment("db")).unwrap();
    }

    #[test]
    fn a_refused_input_does_not_spoil_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("state.redb")).unwrap();
        store
            .batch(|batch| {
                batch.put_deployment(&deployment("web"))?;
                let refused = batch.put_deployment(&deployment("-bad"));
                assert!(matches!(refused, Err(Error::InvalidName { .. })));
                Ok(())
            })
            .unwrap();
        assert!(store.deployment("web").unwrap().is_some());
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(FORMAT_KEY, FORMAT_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let error = Store::open(&path).unwrap_err();
        assert!(
            matches!(error, Error::NewerFormat { found, .. } if found == FORMAT_VERSION + 1),
            "{error}"
        );
        assert!(error.to_string().contains("newer sd"), "{error}");
    }
}
