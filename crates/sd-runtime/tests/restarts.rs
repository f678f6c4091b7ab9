//! Restart strategies with real processes: one_for_one, one_for_all, rest_for_one, none,
//! restart policies, intensity and escalation, backoff, and liveness failures.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestNode, alive, component, kill, pid, wait_gone};
use sd_proto::{ComponentState, DeploymentState, DeploymentStatus};

const SLEEP: &str = r#"command [| "/bin/sleep", "60" |];"#;

fn three(strategy: &str) -> String {
    format!(
        "sfConfig extends Compound {{ sdRestartStrategy \"{strategy}\"; a extends ProcessDomain {{ {SLEEP} }} b extends ProcessDomain {{ {SLEEP} }} c extends ProcessDomain {{ {SLEEP} }} }}"
    )
}

fn pids(status: &DeploymentStatus) -> [u32; 3] {
    ["a", "b", "c"].map(|n| pid(status, &format!("sfConfig:{n}")))
}

/// Kills `b` and waits until it runs again; returns the pids before and after.
async fn kill_b(t: &TestNode, name: &str) -> ([u32; 3], [u32; 3]) {
    let before = t.node.status(name).unwrap();
    let old = pids(&before);
    kill(old[1]);
    let after = t
        .wait(name, |s| {
            let b = component(s, "sfConfig:b");
            b.restarts == 1
                && s.components
                    .iter()
                    .all(|c| c.state == ComponentState::Running)
        })
        .await;
    (old, pids(&after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_one_restarts_only_the_failed_child() {
    let t = TestNode::new().await;
    t.deploy_running("s", &three("one_for_one")).await;
    let (old, new) = kill_b(&t, "s").await;
    assert_eq!((old[0], old[2]), (new[0], new[2]));
    assert_ne!(old[1], new[1]);
    t.node.terminate("s").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_restarts_every_child() {
    let t = TestNode::new().await;
    t.deploy_running("s", &three("one_for_all")).await;
    let (old, new) = kill_b(&t, "s").await;
    for i in 0..3 {
        assert_ne!(old[i], new[i], "child {i} was not restarted");
        wait_gone(old[i]).await;
    }
    t.node.terminate("s").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_restarts_the_failed_child_and_those_after_it() {
    let t = TestNode::new().await;
    t.deploy_running("s", &three("rest_for_one")).await;
    let (old, new) = kill_b(&t, "s").await;
    assert_eq!(old[0], new[0]);
    assert_ne!(old[1], new[1]);
    assert_ne!(old[2], new[2]);
    wait_gone(old[2]).await;
    t.node.terminate("s").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategy_none_terminates_the_parent_like_smartfrog() {
    let t = TestNode::new().await;
    let status = t.deploy_running("s", &three("none")).await;
    let old = pids(&status);
    kill(old[1]);
    let status = t
        .wait_state("s", |s| matches!(s, DeploymentState::Failed { .. }))
        .await;
    let text = format!("{:?}", status.deployment.state);
    assert!(
        text.contains("restart strategy is \\\"none\\\"") && text.contains("sfConfig:b"),
        "{text}"
    );
    for pid in old {
        assert!(!alive(pid), "{pid} survived");
    }
    assert!(t.leftovers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_decide_which_ends_are_restarted() {
    let t = TestNode::new().await;
    t.deploy_running(
        "p",
        r#"sfConfig extends Compound {
             keep extends ProcessDomain { command [| "/bin/sleep", "60" |]; }
             done extends ProcessDomain { command [| "/bin/sh", "-c", "sleep 0.1" |]; }
             again extends ProcessDomain { sdRestart "permanent"; sdMaxRestarts 100; command [| "/bin/sh", "-c", "sleep 0.1" |]; }
             once extends ProcessDomain { sdRestart "temporary"; command [| "/bin/sh", "-c", "sleep 0.1; exit 3" |]; }
           }"#,
    )
    .await;
    let status = t
        .wait("p", |s| component(s, "sfConfig:again").restarts >= 2)
        .await;
    // transient + exit 0: finished, not restarted.
    let done = component(&status, "sfConfig:done");
    assert_eq!((done.state, done.restarts), (ComponentState::Finished, 0));
    // temporary + exit 3: failed, not restarted.
    let once = component(&status, "sfConfig:once");
    assert_eq!((once.state, once.restarts), (ComponentState::Failed, 0));
    assert!(
        once.last_error
            .as_deref()
            .is_some_and(|e| e.contains("exited with code 3")),
        "{once:?}"
    );
    assert_eq!(status.deployment.state, DeploymentState::Running);
    t.node.terminate("p").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_the_intensity_escalates_to_the_parent() {
    let t = TestNode::new().await;
    t.deploy(
        "i",
        r#"sfConfig extends Compound {
             sdMaxRestarts 0;
             other extends ProcessDomain { command [| "/bin/sleep", "60" |]; }
             inner extends Compound {
               sdMaxRestarts 2;
               sdRestartBackoff 0.05;
               crash extends ProcessDomain { command [| "/bin/sh", "-c", "exit 1" |]; }
             }
           }"#,
    )
    .await
    .unwrap();
    let status = t
        .wait_state("i", |s| matches!(s, DeploymentState::Failed { .. }))
        .await;
    let DeploymentState::Failed { reason } = &status.deployment.state else {
        unreachable!()
    };
    // The inner compound gave up after 2 restarts, then the root (allowed none) gave up.
    assert!(reason.contains("more than 0 restarts"), "{reason}");
    assert!(reason.contains("sfConfig:inner"), "{reason}");
    assert!(reason.contains("more than 2 restarts"), "{reason}");
    assert_eq!(component(&status, "sfConfig:inner:crash").restarts, 2);
    assert!(t.leftovers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_no_restart_intensity_break_restarts_beyond_the_declared_intensity() {
    let t = TestNode::with_breaks(sd_runtime::TestBreaks {
        no_restart_intensity: true,
        ..Default::default()
    })
    .await;
    t.deploy(
        "n",
        r#"sfConfig extends Compound {
             sdMaxRestarts 2;
             sdRestartBackoff 0.01;
             sdRestartBackoffMax 0.02;
             crash extends ProcessDomain { command [| "/bin/sh", "-c", "exit 1" |]; }
           }"#,
    )
    .await
    .unwrap();
    // Far more than the 2 restarts declared, and the parent does not give up.
    let status = t
        .wait("n", |s| {
            s.components
                .iter()
                .any(|c| c.path == "sfConfig:crash" && c.restarts >= 8)
        })
        .await;
    assert!(
        !matches!(status.deployment.state, DeploymentState::Failed { .. }),
        "{status:#?}"
    );
    // What the checker compares the restarts with: the declared intensity, unchanged.
    let declared = component(&status, "sfConfig").supervision.clone().unwrap();
    assert_eq!(
        (
            declared.strategy.as_str(),
            declared.max_restarts,
            declared.window_ms
        ),
        ("one_for_one", 2, 60_000)
    );
    assert!(component(&status, "sfConfig:crash").supervision.is_none());
    t.node.terminate("n").await.unwrap();
    assert!(t.leftovers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_back_off_exponentially() {
    let t = TestNode::new().await;
    t.deploy(
        "b",
        r#"sfConfig extends Compound {
             sdMaxRestarts 4;
             sdRestartBackoff 0.2;
             sdRestartBackoffMax 10;
             crash extends ProcessDomain { command [| "/bin/sh", "-c", "exit 1" |]; }
           }"#,
    )
    .await
    .unwrap();
    t.wait_state("b", |s| matches!(s, DeploymentState::Failed { .. }))
        .await;
    // When each incarnation failed: restarts 1..4 wait 0, 0.2, 0.4, 0.8 s (+ up to 25%).
    let failed: Vec<u64> = t
        .events()
        .iter()
        .filter(|e| e.path == "sfConfig:crash" && e.state == "failed")
        .map(|e| e.unix_ms)
        .collect();
    assert_eq!(failed.len(), 5, "{}", t.timeline());
    let gaps: Vec<u64> = failed.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] < 150, "first restart is immediate: {gaps:?}");
    for (gap, (low, high)) in gaps[1..].iter().zip([(200, 400), (400, 650), (800, 1150)]) {
        assert!(
            (low..high).contains(gap),
            "gap {gap} ms not in {low}..{high}: {gaps:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_misses_its_liveness_checks_is_restarted() {
    let t = TestNode::new().await;
    let status = t
        .deploy_running(
            "l",
            r#"sfConfig extends Compound {
                 sfLivenessDelay 0.1;
                 sfLivenessFactor 2;
                 disk extends DirStorageBackend;
               }"#,
        )
        .await;
    assert_eq!(component(&status, "sfConfig:disk").restarts, 0);
    // The backend's directory vanishes behind the agent's back: its ping fails.
    let storage = t.data_dir().join("deployments/l/storage");
    let dir = std::fs::read_dir(&storage)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_dir_all(&dir).unwrap();
    let status = t
        .wait("l", |s| {
            let disk = component(s, "sfConfig:disk");
            disk.restarts == 1 && disk.state == ComponentState::Running
        })
        .await;
    let disk = component(&status, "sfConfig:disk");
    assert!(
        disk.last_error
            .as_deref()
            .is_some_and(|e| e.contains("missed 2 liveness checks")),
        "{disk:?}"
    );
    assert!(dir.is_dir(), "prepared again");
    t.node.terminate("l").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liveness_delay_of_zero_disables_the_checks() {
    let t = TestNode::new().await;
    t.deploy_running(
        "z",
        r#"sfConfig extends Compound { sfLivenessDelay 0; disk extends DirStorageBackend; }"#,
    )
    .await;
    let storage = t.data_dir().join("deployments/z/storage");
    let dir = std::fs::read_dir(&storage)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_dir_all(&dir).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = t.node.status("z").unwrap();
    assert_eq!(component(&status, "sfConfig:disk").restarts, 0);
    t.node.terminate("z").await.unwrap();
}
