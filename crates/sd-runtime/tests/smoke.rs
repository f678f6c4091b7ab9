#![allow(missing_docs)]
use std::time::Duration;
use sd_proto::{ComponentState, DeployRequest, DeploymentState};
use sd_runtime::{Node, NodeConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(NodeConfig { name: "n1".into(), data_dir: dir.path().into() }).await.unwrap();
    let text = r#"#include "prelude.sf"
sfConfig extends Compound { sfLivenessDelay 1; a extends ProcessDomain { command [| "/bin/sleep", "30" |]; } b extends ProcessDomain { command [| "/bin/sh", "-c", "echo hi; sleep 30" |]; } }"#;
    node.deploy(DeployRequest { name: "d".into(), description: text.into(), source: "t.sf".into() }).await.unwrap();
    for _ in 0..50 {
        let s = node.status("d").unwrap();
        if s.deployment.state == DeploymentState::Running { break; }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = node.status("d").unwrap();
    println!("{s:#?}");
    assert_eq!(s.deployment.state, DeploymentState::Running);
    let pid = s.components[1].pid.unwrap();
    std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = node.status("d").unwrap();
    println!("{s:#?}");
    assert_eq!(s.components[1].restarts, 1);
    assert_eq!(s.components[1].state, ComponentState::Running);
    node.terminate("d").await.unwrap();
    assert!(node.deployments().is_empty());
    assert!(!dir.path().join("deployments/d").exists());
}
