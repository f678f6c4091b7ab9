//! Live reconfiguration (`sd set`) on a real node: each live attribute changed on a running
//! deployment takes effect on the running components without restarting them, an invalid
//! change changes nothing. (That a change outlives an agent restart is tested in
//! tests/agent.rs, with real agents.)

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestNode, component, kill, pid, wait_gone};
use sd_proto::{ComponentState, DeploymentState, ReconfigureRequest};

fn set(path: &str, attribute: &str, value: &str) -> ReconfigureRequest {
    ReconfigureRequest {
        path: path.into(),
        attribute: attribute.into(),
        value: value.into(),
    }
}

fn setting<'s>(status: &'s sd_proto::DeploymentStatus, path: &str, attribute: &str) -> &'s str {
    status
        .component(path)
        .and_then(|component| component.setting(attribute))
        .unwrap_or_else(|| panic!("no setting {attribute} of {path}: {status:#?}"))
}

const WORKER: &str = r#"command [| "/bin/sh", "-c", "exec sleep 120" |];"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_the_restart_intensity_live_makes_the_next_failure_escalate() {
    let t = TestNode::new().await;
    let status = t
        .deploy_running(
            "intensity",
            &format!(
                "sfConfig extends Compound {{ sdMaxRestarts 5; sdRestartWindow 60; a extends ProcessDomain {{ {WORKER} }} }}"
            ),
        )
        .await;
    // With 5 allowed, a failure is a restart.
    kill(pid(&status, "sfConfig:a"));
    let status = t
        .wait("intensity", |s| {
            let a = component(s, "sfConfig:a");
            a.restarts == 1 && a.state == ComponentState::Running
        })
        .await;
    let worker = pid(&status, "sfConfig:a");
    let done = t
        .node
        .reconfigure("intensity", set("sfConfig", "sdMaxRestarts", "1"))
        .await
        .unwrap();
    assert_eq!((done.previous.as_str(), done.value.as_str()), ("5", "1"));
    let status = t.node.status("intensity").unwrap();
    assert_eq!(pid(&status, "sfConfig:a"), worker, "nothing restarted");
    assert_eq!(
        status.components[0]
            .supervision
            .as_ref()
            .unwrap()
            .max_restarts,
        1
    );
    // Now the second restart within the window is one too many: the root gives up.
    kill(worker);
    t.wait_state("intensity", |s| matches!(s, DeploymentState::Failed { .. }))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_checks_follow_their_delay_changed_live() {
    let t = TestNode::new().await;
    let status = t
        .deploy_running(
            "checks",
            &format!(
                "sfConfig extends Compound {{ sfLivenessDelay 0; a extends ProcessDomain {{ {WORKER} }} }}"
            ),
        )
        .await;
    let worker = pid(&status, "sfConfig:a");
    let checks = || t.node.metrics().liveness_round_trip.count;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(checks(), 0, "a delay of 0 checks nothing");
    t.node
        .reconfigure("checks", set("sfConfig:a", "sfLivenessDelay", "0.2"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while checks() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checks after the change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And back off again.
    t.node
        .reconfigure("checks", set("sfConfig:a", "sfLivenessDelay", "0"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = checks();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(checks(), settled, "checks stopped");
    assert_eq!(pid(&t.node.status("checks").unwrap(), "sfConfig:a"), worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_image_set_live_saves_the_directory_at_terminate() {
    let t = TestNode::new().await;
    let saved = tempfile::tempdir().unwrap();
    t.deploy_running(
        "keep",
        &format!(
            r#"sfConfig extends Compound {{
                 disk extends DirStorageBackend {{ saveDir "{}"; domainName "kept"; }}
               }}"#,
            saved.path().display()
        ),
    )
    .await;
    let refused = t
        .node
        .reconfigure("keep", set("sfConfig:disk", "saveImage", "1"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("saveImage"), "{refused}");
    t.node
        .reconfigure("keep", set("sfConfig:disk", "saveImage", "true"))
        .await
        .unwrap();
    t.node.terminate("keep").await.unwrap();
    let names: Vec<String> = std::fs::read_dir(saved.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.len() == 1 && names[0].starts_with("kept-"),
        "one saved image: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_change_changes_nothing_and_a_replica_is_changed_on_its_own() {
    let t = TestNode::new().await;
    let status = t
        .deploy_running(
            "durable",
            &format!(
                "sfConfig extends Compound {{ sfLivenessDelay 1; pool extends Pool {{ replicas 2; template extends LAZY ProcessDomain {{ {WORKER} }} }} }}"
            ),
        )
        .await;
    let worker = pid(&status, "sfConfig:pool:r2");
    for (change, says) in [
        (set("pool:r2", "sfLivenessDelay", "-2"), "sfLivenessDelay"),
        (set("pool:r2", "sfLivenessFactor", "0"), "sfLivenessFactor"),
        (set("pool:r2", "memory", "64"), "what can: sfLivenessDelay"),
        (
            set("pool:r9", "sfLivenessDelay", "2"),
            "no running component",
        ),
    ] {
        let error = t.node.reconfigure("durable", change).await.unwrap_err();
        assert!(
            matches!(error, sd_runtime::Error::Setting { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains(says), "{error}");
    }
    let status = t.node.status("durable").unwrap();
    assert_eq!(setting(&status, "sfConfig:pool:r2", "sfLivenessDelay"), "1");

    // One replica of the pool, on its own.
    t.node
        .reconfigure("durable", set("pool:r2", "sfLivenessDelay", "4"))
        .await
        .unwrap();
    let status = t.node.status("durable").unwrap();
    assert_eq!(setting(&status, "sfConfig:pool:r2", "sfLivenessDelay"), "4");
    assert_eq!(setting(&status, "sfConfig:pool:r1", "sfLivenessDelay"), "1");

    assert_eq!(pid(&status, "sfConfig:pool:r2"), worker, "not restarted");
    // Durable: the change is in the deployment's record, so a restarted agent or a node
    // taking the deployment over plans with it (tests/agent.rs restarts an agent over it).
    t.node.terminate("durable").await.unwrap();
    wait_gone(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_changes_none_is_lost() {
    let t = TestNode::new().await;
    t.deploy_running(
        "race",
        &format!(
            "sfConfig extends Compound {{ sfLivenessDelay 1; pool extends Pool {{ replicas 2; template extends LAZY ProcessDomain {{ {WORKER} }} }} }}"
        ),
    )
    .await;
    for round in 2..12 {
        let value = round.to_string();
        let (one, two) = tokio::join!(
            t.node
                .reconfigure("race", set("pool:r1", "sfLivenessDelay", &value)),
            t.node
                .reconfigure("race", set("pool:r2", "sfLivenessDelay", &value)),
        );
        let status = t.node.status("race").unwrap();
        for (answer, path) in [(one, "sfConfig:pool:r1"), (two, "sfConfig:pool:r2")] {
            match answer {
                // What was acknowledged is what the deployment has.
                Ok(_) => assert_eq!(setting(&status, path, "sfLivenessDelay"), value),
                Err(error) => assert!(error.to_string().contains("try again"), "{error}"),
            }
        }
    }
    t.node.terminate("race").await.unwrap();
}
