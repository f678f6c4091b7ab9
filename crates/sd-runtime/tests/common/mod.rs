//! Helpers for the runtime's integration tests: a node in a temporary data dir, deploys that
//! wait, and a recorder of lifecycle events.

#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_proto::{ComponentStatus, DeployRequest, DeploymentState, DeploymentStatus, Event};
use sd_runtime::{Node, NodeConfig};

pub struct TestNode {
    pub node: Node,
    pub dir: tempfile::TempDir,
    events: Arc<Mutex<Vec<Event>>>,
}

impl TestNode {
    pub async fn new() -> TestNode {
        TestNode::with_breaks(sd_runtime::TestBreaks::default()).await
    }

    /// A node with safety mechanisms switched off (chaos-checker tests).
    pub async fn with_breaks(test_breaks: sd_runtime::TestBreaks) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = Node::open(NodeConfig {
            name: "test-node".into(),
            data_dir: dir.path().to_path_buf(),
            vm_accelerator: Some(sd_runtime::Accelerator::Tcg),
            peers: None,
            test_breaks,
        })
        .await
        .expect("node opens");
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut receiver = node.events();
        let sink = Arc::clone(&events);
        tokio::spawn(async move {
            while let Ok(event) = receiver.recv().await {
                sink.lock().unwrap().push(event);
            }
        });
        TestNode { node, dir, events }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Deploys `body` (with the prelude included) under `name`.
    pub async fn deploy(&self, name: &str, body: &str) -> sd_runtime::Result<()> {
        self.node
            .deploy(DeployRequest {
                name: name.into(),
                description: format!("#include \"prelude.sf\"\n{body}"),
                source: format!("{name}.sf"),
            })
            .await
    }

    /// Deploys and waits until the deployment runs; panics if it fails.
    pub async fn deploy_running(&self, name: &str, body: &str) -> DeploymentStatus {
        self.deploy(name, body).await.expect("deploy accepted");
        self.wait_state(name, |s| *s == DeploymentState::Running)
            .await
    }

    /// Waits (up to 20 s) until the deployment's state passes `check`.
    pub async fn wait_state(
        &self,
        name: &str,
        check: impl Fn(&DeploymentState) -> bool,
    ) -> DeploymentStatus {
        self.wait(name, |s| check(&s.deployment.state)).await
    }

    /// Waits (up to 20 s) until the deployment's status passes `check`.
    pub async fn wait(
        &self,
        name: &str,
        check: impl Fn(&DeploymentStatus) -> bool,
    ) -> DeploymentStatus {
        self.wait_within(name, Duration::from_secs(20), check).await
    }

    /// Waits (up to `limit`) until the deployment's status passes `check`.
    pub async fn wait_within(
        &self,
        name: &str,
        limit: Duration,
        check: impl Fn(&DeploymentStatus) -> bool,
    ) -> DeploymentStatus {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.node.status(name).expect("deployment exists");
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting; last status: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The events seen so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// The events, one line each, for failure messages.
    pub fn timeline(&self) -> String {
        self.events()
            .iter()
            .map(|e| {
                format!(
                    "{} {} {} {:?}\n",
                    e.unix_ms % 100_000,
                    e.path,
                    e.state,
                    e.detail
                )
            })
            .collect()
    }

    /// When (the index among events) `path` first reached `state`.
    /// Waits up to 2 s for it: events arrive through a channel.
    pub async fn first(&self, path: &str, state: &str) -> Option<usize> {
        for _ in 0..200 {
            let found = self
                .events()
                .iter()
                .position(|e| e.path == path && e.state == state);
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Everything that is left of deployments in the data dir.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let dir = self.data_dir().join("deployments");
        std::fs::read_dir(&dir)
            .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default()
    }
}

pub fn component<'s>(status: &'s DeploymentStatus, path: &str) -> &'s ComponentStatus {
    status
        .components
        .iter()
        .find(|c| c.path == path)
        .unwrap_or_else(|| panic!("no component {path} in {status:#?}"))
}

pub fn pid(status: &DeploymentStatus, path: &str) -> u32 {
    component(status, path)
        .pid
        .unwrap_or_else(|| panic!("{path} has no pid: {status:#?}"))
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|s| s != "Z")
        })
        .unwrap_or(false)
}

pub fn kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits (up to 10 s) until `pid` is gone.
pub async fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
