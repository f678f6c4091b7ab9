//! A full disk under a live store: writes fail with a clear disk-full error and write nothing,
//! and once there is room again the same `Store` works (no agent restart) with every write
//! committed before the failure still there.
//!
//! The disk is a small tmpfs mounted on a temporary directory, which needs root (or
//! CAP_SYS_ADMIN); where mounting is not permitted the tests say so and pass without running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sd_store::{
    ComponentRecord, ComponentState, DeploymentRecord, DeploymentState, Error, ProcessRecord, Store,
};

/// A tmpfs of a few MiB on a temporary directory, unmounted (lazily) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one, or says why it cannot and returns `None`.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match output {
            Ok(output) if output.status.success() => Some(Tmpfs { dir }),
            Ok(output) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {}",
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

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system of `dir` to the last byte with a file, and returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("the filler file");
    for chunk in [vec![0x55_u8; 1 << 16], vec![0x55; 4096], vec![0x55; 1]] {
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    assert_eq!(
                        error.kind(),
                        std::io::ErrorKind::StorageFull,
                        "filling: {error}"
                    );
                    break;
                }
            }
        }
    }
    path
}

fn deployment(name: &str, description_bytes: usize) -> DeploymentRecord {
    DeploymentRecord {
        name: name.to_owned(),
        description: "x".repeat(description_bytes),
        source: format!("/srv/{name}.sf"),
        state: DeploymentState::Running,
        epoch: 3,
        root_node: "node-a".to_owned(),
        created_unix_ms: 1_700_000_000_000,
        updated_unix_ms: 1_700_000_000_000,
        overrides: Vec::new(),
    }
}

fn component(deployment: &str, path: &str, pid: u32) -> ComponentRecord {
    ComponentRecord {
        deployment: deployment.to_owned(),
        path: path.to_owned(),
        kind: "sd.ProcessDomain".to_owned(),
        state: ComponentState::Running,
        node: "node-a".to_owned(),
        process: Some(ProcessRecord {
            pid,
            start_time: 99,
        }),
        restarts: 0,
        restart_times_unix_ms: Vec::new(),
        epoch: 3,
        last_error: None,
        started_unix_ms: None,
    }
}

/// Records a deployment with two components in one batch.
fn put_group(store: &Store, name: &str, description_bytes: usize) -> Result<(), Error> {
    store.batch(|batch| {
        batch.put_deployment(&deployment(name, description_bytes))?;
        batch.put_component(&component(name, "sfConfig:vm1", 1))?;
        batch.put_component(&component(name, "sfConfig:vm2", 2))?;
        Ok(())
    })
}

/// Asserts that `store` holds exactly the deployments `names`, each with its two components.
fn assert_holds(store: &Store, names: &[String]) {
    let found: Vec<String> = store
        .deployments()
        .expect("deployments read")
        .into_iter()
        .map(|record| record.name)
        .collect();
    let mut expected = names.to_vec();
    expected.sort();
    assert_eq!(found, expected);
    for name in names {
        let paths: Vec<String> = store
            .components(name)
            .expect("components read")
            .into_iter()
            .map(|record| record.path)
            .collect();
        assert_eq!(
            paths,
            ["sfConfig:vm1", "sfConfig:vm2"],
            "components of {name}"
        );
    }
}

/// Writes groups of ~32 KiB until the full disk refuses one; returns the names committed
/// meanwhile (redb may still have had free pages) and the error.
fn write_until_refused(store: &Store, prefix: &str, committed: &mut Vec<String>) -> Error {
    for i in 0..200 {
        let name = format!("{prefix}{i}");
        match put_group(store, &name, 32 << 10) {
            Ok(()) => committed.push(name),
            Err(error) => {
                // Nothing half-written: the refused group is absent, deployment and components.
                assert_eq!(store.deployment(&name).ok().flatten(), None, "{name}");
                return error;
            }
        }
    }
    panic!("the full disk never refused a write");
}

#[test]
fn a_full_disk_fails_writes_clearly_and_the_store_works_again_once_there_is_room() {
    let Some(disk) = Tmpfs::mount("2m") else {
        return;
    };
    let path = disk.path().join("node.redb");
    let store = Store::open(&path).expect("the store opens");
    let generation = store.next_generation().unwrap();
    let mut committed = Vec::new();
    for i in 0..4 {
        let name = format!("before{i}");
        put_group(&store, &name, 1000).unwrap();
        committed.push(name);
    }

    let filler = fill(disk.path());
    let error = write_until_refused(&store, "during", &mut committed);
    assert!(error.is_disk_full(), "not seen as a full disk: {error:?}");
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("No space left on device"), "{message}");

    // Still full: every write keeps failing with the same clear error, never redb's
    // "previous I/O error".
    for attempt in 0..3 {
        let error = put_group(&store, &format!("still-full{attempt}"), 32 << 10).unwrap_err();
        assert!(error.is_disk_full(), "attempt {attempt}: {error:?}");
        assert!(!error.to_string().contains("Previous I/O"), "{error}");
        let error = store.next_generation().map(drop);
        if let Err(error) = error {
            assert!(error.is_disk_full(), "attempt {attempt}: {error:?}");
        }
    }

    // Room again: the same store works, and nothing committed before is lost.
    std::fs::remove_file(&filler).unwrap();
    put_group(&store, "after", 32 << 10).expect("a write once there is room again");
    committed.push("after".to_owned());
    assert_holds(&store, &committed);
    assert!(store.next_generation().unwrap() > generation);
    assert!(
        store.deployment("still-full0").unwrap().is_none(),
        "a refused write appeared"
    );

    // The store still holds its file alone, and all of it is durable and undamaged.
    assert!(matches!(Store::open(&path), Err(Error::Locked(_))));
    drop(store);
    let store = Store::open(&path).expect("the store reopens, its checksums verified");
    assert_holds(&store, &committed);
}

#[test]
fn readers_go_on_while_a_full_disk_fails_writes() {
    let Some(disk) = Tmpfs::mount("2m") else {
        return;
    };
    let store = Arc::new(Store::open(disk.path().join("node.redb")).unwrap());
    let mut committed = Vec::new();
    for i in 0..3 {
        let name = format!("before{i}");
        put_group(&store, &name, 1000).unwrap();
        committed.push(name);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            let stop = Arc::clone(&stop);
            let before = committed.clone();
            std::thread::spawn(move || {
                let mut reads = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    // A read may fail while the database is closed for a reopen that the full
                    // disk refused; whatever it returns holds everything committed before.
                    if let Ok(found) = store.deployments() {
                        let names: Vec<_> = found.into_iter().map(|record| record.name).collect();
                        assert!(before.iter().all(|name| names.contains(name)), "{names:?}");
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();

    let filler = fill(disk.path());
    let error = write_until_refused(&store, "during", &mut committed);
    assert!(error.is_disk_full(), "{error:?}");
    for attempt in 0..5 {
        let error = put_group(&store, &format!("full{attempt}"), 32 << 10).unwrap_err();
        assert!(error.is_disk_full(), "{error:?}");
    }
    std::fs::remove_file(&filler).unwrap();
    put_group(&store, "after", 1000).expect("a write once there is room again");
    committed.push("after".to_owned());

    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().expect("a reader panicked") > 0);
    }
    assert_holds(&store, &committed);
}
