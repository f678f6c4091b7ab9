//! Process domains with real processes: output, process groups, exit, stop and escalation,
//! stray processes, re-adoption by identity, log rotation, and bad commands.

use std::path::Path;
use std::time::Duration;

use sd_drivers::process::{self, Exit, ProcessIdentity, ProcessSpec, RunningProcess};

fn spec(dir: &Path, command: &[&str]) -> ProcessSpec {
    ProcessSpec {
        command: command.iter().map(|s| s.to_string()).collect(),
        env: vec![("SD_DOMAIN".into(), "test".into())],
        cwd: dir.to_path_buf(),
        log: dir.join("logs/domain.log"),
    }
}

fn sh(dir: &Path, script: &str) -> ProcessSpec {
    spec(dir, &["/bin/sh", "-c", script])
}

/// Polls until `condition` holds (at most 5 s); processes take a moment to start.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test]
async fn output_goes_to_the_log_with_env_and_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = RunningProcess::spawn(&sh(
        dir.path(),
        "echo out $SD_DOMAIN; echo err >&2; pwd; exit 3",
    ))
    .unwrap();
    assert_eq!(process.wait().await, Exit::Code(3));
    let log = std::fs::read_to_string(dir.path().join("logs/domain.log")).unwrap();
    assert!(log.contains("out test\n"), "{log}");
    assert!(log.contains("err\n"), "{log}");
    assert!(
        log.contains(&dir.path().canonicalize().unwrap().display().to_string()),
        "{log}"
    );
    assert_eq!(process.exit(), Some(Exit::Code(3)));
    assert_eq!(
        process.wait().await,
        Exit::Code(3),
        "waiting again gives the same answer"
    );
}

#[tokio::test]
async fn each_domain_has_its_own_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = RunningProcess::spawn(&spec(dir.path(), &["sleep", "30"])).unwrap();
    let pid = process.identity().pid;
    assert_eq!(process::process_group(pid), Some(pid as i32));
    assert_ne!(process::process_group(std::process::id()), Some(pid as i32));
    process.stop(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn stop_sends_sigterm_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = RunningProcess::spawn(&spec(dir.path(), &["sleep", "30"])).unwrap();
    let identity = process.identity();
    assert!(identity.is_running());
    let exit = process.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(exit, Exit::Signal(15));
    assert!(!identity.is_running());
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let script = format!(
        "trap '' TERM; touch {}; while true; do sleep 0.05; done",
        ready.display()
    );
    let mut process = RunningProcess::spawn(&sh(dir.path(), &script)).unwrap();
    assert!(eventually(|| ready.exists()).await, "the trap is set");
    let exit = process.stop(Duration::from_millis(300)).await.unwrap();
    assert_eq!(exit, Exit::Signal(9));
}

#[tokio::test]
async fn nothing_of_the_group_outlives_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let straggler = dir.path().join("straggler.pid");
    // The leader starts a background process and exits at once.
    let script = format!("sleep 30 & echo $! > {}; exit 0", straggler.display());
    let mut process = RunningProcess::spawn(&sh(dir.path(), &script)).unwrap();
    assert_eq!(process.wait().await, Exit::Code(0));
    let pid = read_pid(&straggler).expect("the script wrote the background pid");
    assert!(
        eventually(|| ProcessIdentity::of(pid).is_none_or(|identity| !identity.is_running())).await,
        "the background process {pid} was killed with its group"
    );
}

#[tokio::test]
async fn a_dropped_handle_leaves_the_domain_running_and_it_can_be_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let identity = {
        let process = RunningProcess::spawn(&spec(dir.path(), &["sleep", "30"])).unwrap();
        process.identity()
        // Dropped here, as when the agent dies.
    };
    assert!(identity.is_running(), "the domain outlives its handle");
    let mut adopted = RunningProcess::adopt(identity).expect("still running: adoptable");
    assert_eq!(adopted.identity(), identity);
    let exit = adopted.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        exit,
        Exit::Unknown,
        "an adopted process's status is not ours to read"
    );
    assert!(eventually(|| !identity.is_running()).await);
    assert!(
        RunningProcess::adopt(identity).is_none(),
        "a finished process is not adoptable"
    );
}

#[tokio::test]
async fn adoption_needs_the_same_start_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = RunningProcess::spawn(&spec(dir.path(), &["sleep", "30"])).unwrap();
    let identity = process.identity();
    let impostor = ProcessIdentity {
        start_time: identity.start_time.wrapping_sub(1),
        ..identity
    };
    assert!(
        RunningProcess::adopt(impostor).is_none(),
        "same pid, other start time: another process"
    );
    process.stop(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn an_adopted_process_is_seen_ending_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let identity = RunningProcess::spawn(&spec(dir.path(), &["sleep", "30"]))
        .unwrap()
        .identity();
    let mut adopted = RunningProcess::adopt(identity).expect("adoptable");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(identity.pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(5), adopted.wait()).await;
    assert_eq!(exit, Ok(Exit::Unknown));
}

#[tokio::test]
async fn logs_rotate_in_place_while_the_process_writes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/domain.log");
    let script = "i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done; sleep 0.3; echo after-rotation";
    let mut process = RunningProcess::spawn(&sh(dir.path(), script)).unwrap();
    assert!(
        eventually(|| std::fs::read_to_string(&log).is_ok_and(|t| t.contains("line-199"))).await
    );
    assert!(
        process::rotate_log(&log, 100).unwrap(),
        "over the cap: rotated"
    );
    assert!(
        !process::rotate_log(&log, 100).unwrap(),
        "now under the cap"
    );
    assert_eq!(process.wait().await, Exit::Code(0));
    let rotated = std::fs::read_to_string(dir.path().join("logs/domain.log.1")).unwrap();
    assert!(rotated.contains("line-0\n") && rotated.contains("line-199\n"));
    let current = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        current, "after-rotation\n",
        "the process kept writing, at the start of the emptied log"
    );
    assert!(!process::rotate_log(&dir.path().join("missing.log"), 1).unwrap());
}

#[tokio::test]
async fn bad_commands_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = RunningProcess::spawn(&spec(dir.path(), &["/no/such/program", "x"])).unwrap_err();
    assert!(
        missing
            .to_string()
            .starts_with("cannot start `/no/such/program`"),
        "{missing}"
    );
    let empty = RunningProcess::spawn(&spec(dir.path(), &[])).unwrap_err();
    assert!(empty.to_string().contains("command is empty"), "{empty}");
    let mut no_cwd = spec(dir.path(), &["true"]);
    no_cwd.cwd = dir.path().join("nowhere");
    let error = RunningProcess::spawn(&no_cwd).unwrap_err();
    assert!(error.to_string().contains("nowhere"), "{error}");
}
