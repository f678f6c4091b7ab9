//! Lifecycle rules with real processes: order of deploy, start and terminate, Compound,
//! Sequence, Parallel, Pool, sync terminate, failed-deploy rollback, saveImage, shells, and a
//! clean host after terminate.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::{TestNode, alive, component, pid, wait_gone};
use sd_proto::{ComponentState, DeploymentState};

const SLEEP: &str = r#"command [| "/bin/sleep", "60" |];"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compound_deploys_every_child_before_starting_any_and_terminates_in_reverse() {
    let t = TestNode::new().await;
    let status = t
        .deploy_running(
            "order",
            &format!(
                "sfConfig extends Compound {{ a extends ProcessDomain {{ {SLEEP} }} b extends ProcessDomain {{ {SLEEP} }} c extends ProcessDomain {{ {SLEEP} }} }}"
            ),
        )
        .await;
    let pids: Vec<u32> = ["a", "b", "c"]
        .iter()
        .map(|n| pid(&status, &format!("sfConfig:{n}")))
        .collect();
    let mut deployed = Vec::new();
    let mut starting = Vec::new();
    for n in ["a", "b", "c"] {
        let path = format!("sfConfig:{n}");
        deployed.push(t.first(&path, "deployed").await.unwrap());
        starting.push(t.first(&path, "starting").await.unwrap());
    }
    let last_deployed = deployed.iter().max().unwrap();
    let first_starting = starting.iter().min().unwrap();
    assert!(last_deployed < first_starting, "{}", t.timeline());
    assert!(t.first("sfConfig:a", "starting").await < t.first("sfConfig:b", "starting").await);
    assert!(t.first("sfConfig:b", "starting").await < t.first("sfConfig:c", "starting").await);

    t.node.terminate("order").await.unwrap();
    let c = t.first("sfConfig:c", "terminated").await.unwrap();
    let b = t.first("sfConfig:b", "terminated").await.unwrap();
    let a = t.first("sfConfig:a", "terminated").await.unwrap();
    assert!(c < b && b < a, "reverse order: {}", t.timeline());
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived terminate");
    }
    assert!(t.node.deployments().is_empty());
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_runs_each_child_to_completion_before_the_next_and_then_finishes() {
    let t = TestNode::new().await;
    t.deploy(
        "seq",
        r#"sfConfig extends Sequence {
             one extends ProcessDomain { command [| "/bin/sh", "-c", "sleep 0.2" |]; }
             two extends ProcessDomain { command [| "/bin/sh", "-c", "sleep 0.2" |]; }
           }"#,
    )
    .await
    .unwrap();
    let status = t
        .wait_state("seq", |s| *s == DeploymentState::Terminated)
        .await;
    assert_eq!(
        component(&status, "sfConfig:one").state,
        ComponentState::Finished
    );
    assert_eq!(
        component(&status, "sfConfig:two").state,
        ComponentState::Finished
    );
    let one_finished = t.first("sfConfig:one", "finished").await.unwrap();
    let two_deploying = t.first("sfConfig:two", "deploying").await.unwrap();
    assert!(one_finished < two_deploying, "{}", t.timeline());
    assert!(t.leftovers().is_empty());
    t.node.terminate("seq").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_runs_children_at_the_same_time_and_finishes_when_all_have() {
    let t = TestNode::new().await;
    let started = std::time::Instant::now();
    t.deploy(
        "par",
        r#"sfConfig extends Parallel {
             a extends ProcessDomain { command [| "/bin/sleep", "0.6" |]; }
             b extends ProcessDomain { command [| "/bin/sleep", "0.6" |]; }
             c extends ProcessDomain { command [| "/bin/sleep", "0.6" |]; }
           }"#,
    )
    .await
    .unwrap();
    t.wait_state("par", |s| *s == DeploymentState::Terminated)
        .await;
    // One after another would take 1.8 s.
    assert!(
        started.elapsed().as_secs_f64() < 1.5,
        "{:?}",
        started.elapsed()
    );
    t.node.terminate("par").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_runs_named_replicas_each_supervised_on_its_own() {
    let t = TestNode::new().await;
    let status = t
        .deploy_running(
            "pool",
            &format!(
                "sfConfig extends Pool {{ replicas 3; template extends LAZY ProcessDomain {{ {SLEEP} }} }}"
            ),
        )
        .await;
    let paths: Vec<&str> = status.components.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        ["sfConfig", "sfConfig:r1", "sfConfig:r2", "sfConfig:r3"]
    );
    let r1 = pid(&status, "sfConfig:r1");
    let r3 = pid(&status, "sfConfig:r3");
    common::kill(pid(&status, "sfConfig:r2"));
    let status = t
        .wait("pool", |s| {
            component(s, "sfConfig:r2").restarts == 1
                && component(s, "sfConfig:r2").state == ComponentState::Running
        })
        .await;
    assert_eq!(pid(&status, "sfConfig:r1"), r1);
    assert_eq!(pid(&status, "sfConfig:r3"), r3);
    t.node.terminate("pool").await.unwrap();
    wait_gone(r1).await;
    assert!(t.leftovers().is_empty());
}

/// `inner` holds a process that takes 0.5 s to clean up after SIGTERM.
fn slow_cleanup(sync: bool) -> String {
    format!(
        r#"sfConfig extends Compound {{
             inner extends Compound {{
               sfSyncTerminate {sync};
               slow extends ProcessDomain {{
                 command [| "/bin/sh", "-c", "trap 'sleep 0.5; exit 0' TERM; sleep 60 & wait" |];
               }}
             }}
           }}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_terminate_reports_only_after_every_child_cleaned_up() {
    let t = TestNode::new().await;
    t.deploy_running("sync", &slow_cleanup(true)).await;
    t.node.terminate("sync").await.unwrap();
    let child = t.first("sfConfig:inner:slow", "terminated").await.unwrap();
    let parent = t.first("sfConfig:inner", "terminated").await.unwrap();
    assert!(child < parent, "{}", t.timeline());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sync_terminate_the_parent_reports_before_its_children_finish() {
    let t = TestNode::new().await;
    let status = t.deploy_running("async", &slow_cleanup(false)).await;
    let slow = pid(&status, "sfConfig:inner:slow");
    t.node.terminate("async").await.unwrap();
    let child = t.first("sfConfig:inner:slow", "terminated").await.unwrap();
    let parent = t.first("sfConfig:inner", "terminated").await.unwrap();
    assert!(parent < child, "{}", t.timeline());
    // The deployment's terminate still waits for every component.
    assert!(!alive(slow));
    assert!(t.leftovers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_that_fails_part_way_is_undone_in_reverse_and_says_why() {
    let t = TestNode::new().await;
    t.deploy(
        "broken",
        &format!(
            r#"sfConfig extends Compound {{
                 store extends DirStorageBackend;
                 good extends ProcessDomain {{ {SLEEP} storageBackend LAZY ATTRIB store; }}
                 bad extends ProcessDomain {{ command [| "/no/such/program" |]; }}
               }}"#
        ),
    )
    .await
    .unwrap();
    let status = t
        .wait_state("broken", |s| matches!(s, DeploymentState::Failed { .. }))
        .await;
    let DeploymentState::Failed { reason } = &status.deployment.state else {
        unreachable!()
    };
    assert!(
        reason.contains("sfConfig:bad") && reason.contains("/no/such/program"),
        "{reason}"
    );
    let good = t
        .events()
        .iter()
        .find(|e| e.path == "sfConfig:good" && e.state == "running")
        .map(|_| ());
    assert!(good.is_some(), "good had started");
    let good_terminated = t.first("sfConfig:good", "terminated").await.unwrap();
    let store_terminated = t.first("sfConfig:store", "terminated").await.unwrap();
    assert!(good_terminated < store_terminated, "reverse order");
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
    // A failed deployment stays listed with its reason until terminated.
    assert_eq!(t.node.deployments().len(), 1);
    t.node.terminate("broken").await.unwrap();
    assert!(t.node.deployments().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_running_deployments_are_untouched() {
    let t = TestNode::new().await;
    let status = t
        .deploy_running(
            "keep",
            &format!("sfConfig extends Compound {{ a extends ProcessDomain {{ {SLEEP} }} }}"),
        )
        .await;
    let keep = pid(&status, "sfConfig:a");
    let exists = t
        .deploy("keep", "sfConfig extends Compound;")
        .await
        .unwrap_err();
    assert!(exists.to_string().contains("exists already"), "{exists}");
    let unknown = t.node.terminate("nothing").await.unwrap_err();
    assert_eq!(unknown.to_string(), "no deployment named \"nothing\"");
    let invalid = t
        .deploy("bad", "sfConfig extends Compound { a ATTRIB nowhere; }")
        .await
        .unwrap_err();
    match &invalid {
        sd_runtime::Error::InvalidDescription {
            errors,
            diagnostics,
        } => {
            assert!(errors[0].contains("bad.sf:2:"), "{errors:?}");
            // The same error at its place, for the console to point at.
            assert_eq!(diagnostics[0].file, "bad.sf", "{diagnostics:?}");
            assert_eq!(diagnostics[0].line, 2, "{diagnostics:?}");
            assert!(diagnostics[0].column > 1, "{diagnostics:?}");
        }
        other => panic!("{other}"),
    }
    let name = t.deploy("no/slash", "sfConfig extends Compound;").await;
    assert!(
        name.unwrap_err()
            .to_string()
            .contains("invalid deployment name")
    );
    let missing_base = t
        .deploy(
            "nobase",
            r#"sfConfig extends Compound { s extends DirStorageBackend { baseImage "/no/such/base"; } }"#,
        )
        .await;
    missing_base.unwrap();
    let status = t
        .wait_state("nobase", |s| matches!(s, DeploymentState::Failed { .. }))
        .await;
    assert!(
        format!("{:?}", status.deployment.state).contains("/no/such/base"),
        "{status:#?}"
    );
    assert!(alive(keep), "the running deployment was disturbed");
    assert_eq!(t.node.deployments().len(), 2);
    t.node.terminate("keep").await.unwrap();
    t.node.terminate("nobase").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_image_archives_the_working_directory_before_removing_it() {
    let t = TestNode::new().await;
    let saved = tempfile::tempdir().unwrap();
    t.deploy_running(
        "save",
        &format!(
            r#"sfConfig extends Compound {{
                 disk extends DirStorageBackend {{ saveImage true; saveDir "{}"; domainName "web"; }}
                 app extends ProcessDomain {{
                   storageBackend LAZY ATTRIB disk;
                   command [| "/bin/sh", "-c", "echo data > result.txt; sleep 60" |];
                 }}
               }}"#,
            saved.path().display()
        ),
    )
    .await;
    // The process writes its file once started.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    t.node.terminate("save").await.unwrap();
    let images: Vec<_> = std::fs::read_dir(saved.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    let image = &images[0];
    let name = image.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with("web-") && name.ends_with(".tar.zst"),
        "{name}"
    );
    let decoder = zstd::Decoder::new(std::fs::File::open(image).unwrap()).unwrap();
    let mut archive = tar::Archive::new(decoder);
    let files: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().to_string())
        .collect();
    assert!(files.iter().any(|f| f.ends_with("result.txt")), "{files:?}");
    assert!(t.leftovers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_backends_run_their_setup_through_the_hosts_shell() {
    let t = TestNode::new().await;
    let status = t
        .deploy_running(
            "shell",
            r#"sfConfig extends PhysicalHost {
                 disk extends DirStorageBackend { setupScript "echo from-shell > setup.txt"; }
                 app extends ProcessDomain {
                   storageBackend LAZY ATTRIB disk;
                   command [| "/bin/sh", "-c", "cat setup.txt; sleep 60" |];
                 }
               }"#,
        )
        .await;
    assert_eq!(
        component(&status, "sfConfig:myShell").state,
        ComponentState::Running
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = t.node.log_path("shell", "sfConfig:app").unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("from-shell"), "{text}");
    t.node.terminate("shell").await.unwrap();
    assert!(t.leftovers().is_empty());

    t.deploy(
        "badshell",
        r#"sfConfig extends PhysicalHost { disk extends DirStorageBackend { setupScript "exit 3"; } }"#,
    )
    .await
    .unwrap();
    let status = t
        .wait_state("badshell", |s| matches!(s, DeploymentState::Failed { .. }))
        .await;
    let text = format!("{:?}", status.deployment.state);
    assert!(text.contains("setupScript failed"), "{text}");
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_pool_runs_restarts_a_killed_worker_and_leaves_nothing() {
    let t = TestNode::new().await;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/examples/pool.sf"),
    )
    .unwrap();
    t.node
        .deploy(sd_proto::DeployRequest {
            name: "web".into(),
            description: text,
            source: "pool.sf".into(),
        })
        .await
        .unwrap();
    let status = t
        .wait_state("web", |s| *s == DeploymentState::Running)
        .await;
    let workers: Vec<u32> = (1..=3)
        .map(|n| pid(&status, &format!("sfConfig:pool:r{n}:worker")))
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = t.node.log_path("web", "sfConfig:pool:r2:worker").unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("prepared on"), "{text}");
    assert!(text.contains("sfConfig:pool:r2:worker beat 1"), "{text}");
    common::kill(workers[1]);
    let status = t
        .wait("web", |s| {
            let w = component(s, "sfConfig:pool:r2:worker");
            w.restarts == 1 && w.state == ComponentState::Running
        })
        .await;
    assert_ne!(pid(&status, "sfConfig:pool:r2:worker"), workers[1]);
    t.node.terminate("web").await.unwrap();
    for worker in workers {
        assert!(!alive(worker));
    }
    assert!(t.leftovers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_ignores_sigterm_is_killed_after_its_stop_timeout() {
    let t = TestNode::new().await;
    let status = t
        .deploy_running(
            "stubborn",
            r#"sfConfig extends Compound {
                 p extends ProcessDomain {
                   sdStopTimeout 0.3;
                   command [| "/bin/sh", "-c", "trap '' TERM; while true; do sleep 0.05; done" |];
                 }
               }"#,
        )
        .await;
    let p = pid(&status, "sfConfig:p");
    let started = std::time::Instant::now();
    t.node.terminate("stubborn").await.unwrap();
    let took = started.elapsed();
    assert!(!alive(p));
    assert!(
        took >= std::time::Duration::from_millis(300) && took < std::time::Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domains_log_is_capped_and_rotated() {
    let t = TestNode::new().await;
    t.deploy_running(
        "chatty",
        r#"sfConfig extends Compound {
             sfLivenessDelay 0.1;
             p extends ProcessDomain {
               logMaxBytes 4096;
               command [| "/bin/sh", "-c", "while true; do echo 0123456789012345678901234567890123456789; sleep 0.001; done" |];
             }
           }"#,
    )
    .await;
    let log = t.node.log_path("chatty", "sfConfig:p").unwrap();
    let mut rotated = log.clone().into_os_string();
    rotated.push(".1");
    let rotated = std::path::PathBuf::from(rotated);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !rotated.exists() {
        assert!(std::time::Instant::now() < deadline, "never rotated");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Checked every 0.1 s: the log stays near its cap (the process writes ~40 KB/s).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size < 4096 + 16 * 1024, "{size}");
    t.node.terminate("chatty").await.unwrap();
    assert!(
        !log.exists() && !rotated.exists(),
        "logs go with the deployment"
    );
}
