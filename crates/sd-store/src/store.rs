//! The store: one redb file, three tables, every write committed durably before it returns.
//!
//! Tables (keys and values are strings; values are JSON):
//! - `deployments`: deployment name -> [`DeploymentRecord`];
//! - `components`: `"{deployment}\0{path}"` -> [`ComponentRecord`], so one deployment's
//!   components are one range scan (see `key.rs`);
//! - `meta`: name -> `u64` (`format`, `generation`).

use std::path::{Path, PathBuf};

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

/// A node's durable state. `Send + Sync`: share one with an `Arc`. Writes are serialised
/// (one write transaction at a time); reads run concurrently with them and see the last
/// committed state.
pub struct Store {
    db: Database,
    path: PathBuf,
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

/// What a failed [`Database::create`] means to the user.
fn open_error(path: &Path, error: DatabaseError) -> Error {
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
            action: "cannot open the store",
            path,
            source,
        },
        other => Error::Database {
            action: "cannot open",
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
        // Without the integrity check, redb trusts a file it did not see damaged and may
        // panic on a damaged page; with it, the open verifies every checksum (a few ms for a
        // node's state) and reports damage as an error.
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|error| open_error(&path, error))?;
        let store = Store { db, path };
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

    /// Runs `f` in one write transaction and commits it durably if `f` succeeds; otherwise
    /// the transaction is aborted and nothing is written.
    fn write<T>(
        &self,
        action: &'static str,
        f: impl FnOnce(&WriteTransaction, &Path) -> Result<T>,
    ) -> Result<T> {
        let path = self.path.as_path();
        let mut txn = self
            .db
            .begin_write()
            .map_err(db_error("cannot begin a write transaction", path))?;
        // The default, said out loud: `commit` returns only once the data is on disk (INV-2).
        txn.set_durability(Durability::Immediate)
            .map_err(db_error(action, path))?;
        let value = f(&txn, path)?; // On error, dropping `txn` aborts it.
        txn.commit().map_err(db_error(action, path))?;
        Ok(value)
    }

    /// Runs `f` on a read transaction (a snapshot of the last commit).
    fn read<T>(&self, f: impl FnOnce(&ReadTransaction, &Path) -> Result<T>) -> Result<T> {
        let path = self.path.as_path();
        let txn = self
            .db
            .begin_read()
            .map_err(db_error("cannot begin a read transaction", path))?;
        f(&txn, path)
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
            if let Some(reason) = batch.failed {
                return Err(Error::BatchFailed {
                    path: path.to_path_buf(),
                    reason,
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
    failed: Option<String>,
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
            self.failed.get_or_insert_with(|| error.to_string());
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
        assert!(matches!(error, Error::BatchFailed { .. }), "{error}");
        assert!(error.to_string().contains("disk full"), "{error}");
        assert_eq!(store.deployment("web").unwrap(), None);
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
