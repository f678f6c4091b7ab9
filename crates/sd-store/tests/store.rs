//! The store with real files: round trips of every record kind and state, ordering, removal,
//! batch atomicity, generations, reopening, locking, bad files, and INV-2 under a real SIGKILL
//! of a writer process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sd_store::{
    ComponentRecord, ComponentState, DeploymentRecord, DeploymentState, Error, NAME_RULE,
    ProcessRecord, Store,
};

fn deployment(name: &str) -> DeploymentRecord {
    DeploymentRecord {
        name: name.to_owned(),
        description: "sfConfig extends Compound {\n  pool extends Pool { replicas 2; }\n}\n"
            .to_owned(),
        source: format!("/srv/{name}.sf"),
        state: DeploymentState::Running,
        epoch: 7,
        root_node: "node-a".to_owned(),
        created_unix_ms: 1_700_000_000_000,
        updated_unix_ms: 1_700_000_000_500,
        overrides: Vec::new(),
    }
}

fn component(deployment: &str, path: &str) -> ComponentRecord {
    ComponentRecord {
        deployment: deployment.to_owned(),
        path: path.to_owned(),
        kind: "sd.ProcessDomain".to_owned(),
        state: ComponentState::Running,
        node: "node-a".to_owned(),
        process: Some(ProcessRecord {
            pid: 4242,
            start_time: 987_654,
        }),
        restarts: 2,
        restart_times_unix_ms: vec![1_700_000_000_100, 1_700_000_000_200],
        epoch: 7,
        last_error: Some("exited with code 3".to_owned()),
        started_unix_ms: Some(1_700_000_000_300),
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir.join("state.redb")).expect("the store opens")
}

fn paths(records: &[ComponentRecord]) -> Vec<&str> {
    records.iter().map(|record| record.path.as_str()).collect()
}

#[test]
fn every_deployment_state_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.deployment("web").unwrap(), None);
    let states = [
        DeploymentState::Deploying,
        DeploymentState::Running,
        DeploymentState::Terminating,
        DeploymentState::Terminated,
        DeploymentState::Failed {
            reason: "sfConfig:pool:vm1: cannot start `nope`: No such file".to_owned(),
        },
    ];
    for state in states {
        let record = DeploymentRecord {
            state,
            ..deployment("web")
        };
        store.put_deployment(&record).unwrap();
        assert_eq!(store.deployment("web").unwrap(), Some(record));
    }
}

#[test]
fn every_component_state_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.put_deployment(&deployment("web")).unwrap();
    assert_eq!(store.component("web", "sfConfig").unwrap(), None);
    let states = [
        ComponentState::Deploying,
        ComponentState::Deployed,
        ComponentState::Starting,
        ComponentState::Running,
        ComponentState::Failed,
        ComponentState::Restarting,
        ComponentState::Terminating,
        ComponentState::Terminated,
    ];
    for state in states {
        let record = ComponentRecord {
            state,
            ..component("web", "sfConfig:pool:vm1")
        };
        store.put_component(&record).unwrap();
        assert_eq!(
            store.component("web", "sfConfig:pool:vm1").unwrap(),
            Some(record)
        );
    }
    let bare = ComponentRecord {
        process: None,
        restarts: 0,
        restart_times_unix_ms: Vec::new(),
        last_error: None,
        started_unix_ms: None,
        ..component("web", "sfConfig")
    };
    store.put_component(&bare).unwrap();
    assert_eq!(store.component("web", "sfConfig").unwrap(), Some(bare));
}

#[test]
fn deployments_are_sorted_and_components_in_path_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for name in ["zeta", "alpha", "web2", "web", "Mid", "0day"] {
        store.put_deployment(&deployment(name)).unwrap();
    }
    let names: Vec<String> = store
        .deployments()
        .unwrap()
        .into_iter()
        .map(|record| record.name)
        .collect();
    assert_eq!(names, ["0day", "Mid", "alpha", "web", "web2", "zeta"]);

    store
        .batch(|batch| {
            for path in ["sfConfig:b", "sfConfig", "sfConfig:a:x", "sfConfig:a"] {
                batch.put_component(&component("web", path))?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(
        paths(&store.components("web").unwrap()),
        ["sfConfig", "sfConfig:a", "sfConfig:a:x", "sfConfig:b"]
    );
    assert!(store.components("web2").unwrap().is_empty());
}

#[test]
fn removing_a_deployment_removes_exactly_its_components() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .batch(|batch| {
            for name in ["we", "web", "web2", "web-x"] {
                batch.put_deployment(&deployment(name))?;
                batch.put_component(&component(name, "sfConfig"))?;
                batch.put_component(&component(name, "sfConfig:vm"))?;
            }
            Ok(())
        })
        .unwrap();
    assert!(store.remove_deployment("web").unwrap());
    assert_eq!(store.deployment("web").unwrap(), None);
    assert!(store.components("web").unwrap().is_empty());
    assert_eq!(store.component("web", "sfConfig").unwrap(), None);
    for name in ["we", "web2", "web-x"] {
        assert!(store.deployment(name).unwrap().is_some(), "{name}");
        assert_eq!(
            paths(&store.components(name).unwrap()),
            ["sfConfig", "sfConfig:vm"],
            "{name}"
        );
    }
    assert!(
        !store.remove_deployment("web").unwrap(),
        "removing again says it was not there"
    );
}

#[test]
fn components_can_be_removed_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.put_deployment(&deployment("web")).unwrap();
    store.put_component(&component("web", "sfConfig")).unwrap();
    store
        .put_component(&component("web", "sfConfig:vm"))
        .unwrap();
    assert!(store.remove_component("web", "sfConfig:vm").unwrap());
    assert!(!store.remove_component("web", "sfConfig:vm").unwrap());
    assert_eq!(paths(&store.components("web").unwrap()), ["sfConfig"]);
}

#[test]
fn a_component_needs_its_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let error = store
        .put_component(&component("ghost", "sfConfig"))
        .unwrap_err();
    assert!(
        matches!(&error, Error::NoSuchDeployment { deployment, .. } if deployment == "ghost"),
        "{error}"
    );
    assert!(error.to_string().contains("`ghost`"), "{error}");
    store
        .batch(|batch| {
            batch.put_deployment(&deployment("ghost"))?;
            batch.put_component(&component("ghost", "sfConfig"))
        })
        .unwrap();
    assert_eq!(store.components("ghost").unwrap().len(), 1);
}

#[test]
fn a_failed_batch_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.put_deployment(&deployment("keep")).unwrap();

    let error = store
        .batch(|batch| {
            batch.put_deployment(&deployment("web"))?;
            batch.put_component(&component("web", "sfConfig"))?;
            batch.remove_deployment("keep")?;
            assert!(
                batch.deployment("web")?.is_some(),
                "a batch sees its own writes"
            );
            assert_eq!(paths(&batch.components("web")?), ["sfConfig"]);
            Err::<(), _>(Error::InvalidName {
                name: "the closure gave up".to_owned(),
            })
        })
        .unwrap_err();
    assert!(matches!(error, Error::InvalidName { .. }), "{error}");

    let error = store
        .batch(|batch| {
            batch.put_deployment(&deployment("web"))?;
            batch.put_component(&component("web", "bad\0path"))
        })
        .unwrap_err();
    assert!(matches!(error, Error::InvalidPath { .. }), "{error}");

    assert_eq!(store.deployment("web").unwrap(), None);
    assert!(store.components("web").unwrap().is_empty());
    assert!(
        store.deployment("keep").unwrap().is_some(),
        "the removal was rolled back"
    );
}

#[test]
fn names_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for name in ["", ".x", "a/b", "a\0b"] {
        let error = store.put_deployment(&deployment(name)).unwrap_err();
        assert!(matches!(error, Error::InvalidName { .. }), "{name:?}");
        assert!(error.to_string().contains(NAME_RULE), "{error}");
        assert!(matches!(
            store.deployment(name).unwrap_err(),
            Error::InvalidName { .. }
        ));
    }
    store.put_deployment(&deployment("web")).unwrap();
    let error = store.put_component(&component("web", "")).unwrap_err();
    assert!(matches!(error, Error::InvalidPath { .. }), "{error}");
    assert!(store.deployments().unwrap().len() == 1);
}

#[test]
fn generation_increments_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        assert_eq!(store.generation().unwrap(), 0);
        assert_eq!(store.next_generation().unwrap(), 1);
        assert_eq!(store.next_generation().unwrap(), 2);
    }
    let store = open(dir.path());
    assert_eq!(store.generation().unwrap(), 2);
    assert_eq!(store.next_generation().unwrap(), 3);
}

#[test]
fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .batch(|batch| {
                batch.put_deployment(&deployment("web"))?;
                batch.put_component(&component("web", "sfConfig"))?;
                batch.put_component(&component("web", "sfConfig:vm1"))
            })
            .unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.deployments().unwrap(), [deployment("web")]);
    assert_eq!(
        store.components("web").unwrap(),
        [
            component("web", "sfConfig"),
            component("web", "sfConfig:vm1")
        ]
    );
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let first = Store::open(&path).unwrap();
    let error = Store::open(&path).unwrap_err();
    assert!(matches!(error, Error::Locked(_)), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains("locked"),
        "{message}"
    );
    drop(first);
    Store::open(&path).unwrap();
}

#[test]
fn a_file_that_is_not_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("short.redb", b"hello\n".to_vec()),
        ("text.redb", "not a database\n".repeat(1000).into_bytes()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &content).unwrap();
        let error = Store::open(&path).unwrap_err();
        assert!(matches!(error, Error::NotAStore { .. }), "{name}: {error}");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            content,
            "the file is left as it was"
        );
    }
}

#[test]
fn a_damaged_page_is_an_error_or_harmless_never_a_panic_or_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let record = DeploymentRecord {
        description: "sfConfig extends Compound {}\n".repeat(200),
        ..deployment("web")
    };
    {
        let store = Store::open(&path).unwrap();
        store.put_deployment(&record).unwrap();
        store.put_component(&component("web", "sfConfig")).unwrap();
    }
    let good = std::fs::read(&path).unwrap();
    let mut refused = 0;
    // Every 4 KiB page after the file header that holds anything, one at a time (the
    // file is 1 MiB, mostly zeroes never written).
    for start in (4096..good.len()).step_by(4096) {
        let end = (start + 4096).min(good.len());
        if good[start..end].iter().all(|byte| *byte == 0) {
            continue;
        }
        let mut damaged = good.clone();
        for byte in &mut damaged[start..(start + 64).min(good.len())] {
            *byte ^= 0x5a;
        }
        std::fs::write(&path, &damaged).unwrap();
        match Store::open(&path) {
            Err(Error::NotAStore { reason, .. }) => {
                refused += 1;
                assert!(!reason.is_empty());
            }
            Err(other) => panic!("page at {start}: unexpected error {other}"),
            Ok(store) => {
                // The page was free: the data must be intact.
                assert_eq!(
                    store.deployments().unwrap(),
                    std::slice::from_ref(&record),
                    "page at {start}"
                );
                assert_eq!(
                    store.components("web").unwrap(),
                    [component("web", "sfConfig")]
                );
            }
        }
    }
    assert!(refused > 0, "no page damage was noticed");
}

#[test]
fn a_record_that_does_not_decode_is_an_error_naming_table_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = Store::open(&path).unwrap();
        store.put_deployment(&deployment("web")).unwrap();
    }
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let definition: redb::TableDefinition<'_, &str, &str> =
                redb::TableDefinition::new("deployments");
            txn.open_table(definition)
                .unwrap()
                .insert("broken", "{\"name\": 3")
                .unwrap();
            let definition: redb::TableDefinition<'_, &str, &str> =
                redb::TableDefinition::new("components");
            txn.open_table(definition)
                .unwrap()
                .insert("web\0sfConfig", "[]")
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    let error = store.deployments().unwrap_err();
    assert!(matches!(error, Error::Decode { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("\"broken\"") && message.contains("`deployments`"),
        "{message}"
    );
    assert!(store.deployment("web").unwrap().is_some());

    let error = store.components("web").unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(r#""web\0sfConfig""#) && message.contains("`components`"),
        "{message}"
    );
    assert!(matches!(
        store.component("web", "sfConfig").unwrap_err(),
        Error::Decode { .. }
    ));
}

#[test]
fn a_store_is_shared_between_threads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    store.put_deployment(&deployment("web")).unwrap();
    let writers: Vec<_> = (0..4)
        .map(|thread| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for index in 0..5 {
                    let path = format!("sfConfig:t{thread}:c{index}");
                    store.put_component(&component("web", &path)).unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    assert_eq!(store.components("web").unwrap().len(), 20);
}

// ---- INV-2 under SIGKILL -------------------------------------------------------------------

/// Set to a store path, it makes `child_writer` (run in a child process) write records.
const CHILD_ENV: &str = "SD_STORE_TEST_KILL_CHILD";
/// How many components the child tries to write, one committed call each.
const CHILD_RECORDS: usize = 2_000;
/// After how many acknowledged commits the parent kills the child.
const KILL_AFTER: usize = 40;

/// Not a test on its own: in a child started by `inv2_acknowledged_writes_survive_sigkill`,
/// it writes components one durable call at a time, printing `committed K` after each, then
/// sleeps until it is killed. Without the variable, it does nothing.
#[test]
fn child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = Store::open(path).unwrap();
    store.put_deployment(&deployment("web")).unwrap();
    for index in 0..CHILD_RECORDS {
        let record = component("web", &format!("sfConfig:c{index:05}"));
        store.put_component(&record).unwrap();
        println!("committed {index}");
    }
    std::thread::sleep(Duration::from_secs(60));
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn inv2_acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node/state.redb");
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The harness may print "test child_writer ... " before the first one.
            if let Some((_, index)) = line.split_once("committed ") {
                let index: usize = index.trim().parse().unwrap();
                if lines_tx.send(index).is_err() {
                    break;
                }
            }
        }
    });

    let mut acknowledged: Vec<usize> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.len() < KILL_AFTER {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(index) => acknowledged.push(index),
            Err(_) => panic!(
                "the child acknowledged {} writes before it stopped or timed out",
                acknowledged.len()
            ),
        }
    }
    // SIGKILL, in the middle of the child's writes.
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "the child was killed: {status:?}");
    // Whatever it printed before it died was acknowledged too.
    reader.join().unwrap();
    acknowledged.extend(lines.try_iter());
    assert_eq!(
        acknowledged,
        (0..acknowledged.len()).collect::<Vec<_>>(),
        "every acknowledgement was read"
    );
    assert!(
        acknowledged.len() < CHILD_RECORDS,
        "the kill landed after the child had finished ({} writes): make the child slower",
        acknowledged.len()
    );

    let store = Store::open(&path).unwrap();
    assert_eq!(store.deployment("web").unwrap(), Some(deployment("web")));
    let found = store.components("web").unwrap();
    for index in &acknowledged {
        let path = format!("sfConfig:c{index:05}");
        assert_eq!(
            store.component("web", &path).unwrap(),
            Some(component("web", &path)),
            "INV-2: acknowledged write {index} was lost"
        );
    }
    // At most the one write in flight at the kill went through unacknowledged.
    assert!(
        found.len() == acknowledged.len() || found.len() == acknowledged.len() + 1,
        "{} found, {} acknowledged",
        found.len(),
        acknowledged.len()
    );
    eprintln!(
        "killed after {} acknowledged writes; {} found after reopening",
        acknowledged.len(),
        found.len()
    );
}

// ---- figures -------------------------------------------------------------------------------

/// Write cost: `cargo test --release -p sd-store --test store -- --ignored --nocapture figures`
#[test]
#[ignore = "a measurement, not a check"]
fn figures_1000_components() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.put_deployment(&deployment("batched")).unwrap();
    store.put_deployment(&deployment("single")).unwrap();
    let records = |name: &str| -> Vec<ComponentRecord> {
        (0..1_000)
            .map(|index| component(name, &format!("sfConfig:pool:vm{index:04}")))
            .collect()
    };

    let batched = records("batched");
    let started = Instant::now();
    store
        .batch(|batch| {
            batched
                .iter()
                .try_for_each(|record| batch.put_component(record))
        })
        .unwrap();
    let one_batch = started.elapsed();

    let single = records("single");
    let started = Instant::now();
    for record in &single {
        store.put_component(record).unwrap();
    }
    let single_puts = started.elapsed();

    let started = Instant::now();
    assert_eq!(store.components("single").unwrap().len(), 1_000);
    let read_all = started.elapsed();

    let started = Instant::now();
    store.remove_deployment("batched").unwrap();
    let remove = started.elapsed();

    let size = std::fs::metadata(store.path()).unwrap().len();
    drop(store);
    let started = Instant::now();
    let store = open(dir.path());
    let reopen = started.elapsed();
    assert_eq!(store.components("single").unwrap().len(), 1_000);

    eprintln!(
        "1,000 components: one batch {one_batch:?}; 1,000 single durable puts {single_puts:?} \
         ({:?} each); read all {read_all:?}; remove deployment {remove:?}; file {size} bytes; \
         reopen (integrity check) {reopen:?}",
        single_puts / 1_000
    );
}
