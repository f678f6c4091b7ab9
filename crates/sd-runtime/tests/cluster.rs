//! Several nodes in one process, joined by an in-process [`Peers`]: components placed on other
//! nodes (pinned and scheduled), status and terminate from any node, a lost node's components
//! restarted elsewhere, a pinned component waiting for its node, concurrent deploys of one
//! name through two nodes, and clean hosts afterwards.
//! The real transport (QUIC, gossip) is tested in sd-net, sd-gossip and the end-to-end tests;
//! here every request still crosses the same `serve_peer` entry point.

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sd_placement::{NodeView, Resources};
use sd_proto::peer::{PeerRequest, PeerResponse};
use sd_proto::{ComponentState, DeployRequest, DeploymentState, DeploymentStatus};
use sd_runtime::{Node, NodeConfig, Peers, TestBreaks};

/// The cluster's members: each node and whether it is reachable.
#[derive(Default)]
struct Registry {
    nodes: Mutex<HashMap<String, (Option<Node>, bool)>>,
}

struct LocalPeers {
    me: String,
    registry: Arc<Registry>,
}

impl Peers for LocalPeers {
    fn call(
        &self,
        node: &str,
        request: PeerRequest,
        deadline: Duration,
    ) -> BoxFuture<'static, Result<PeerResponse, String>> {
        let target = match self.registry.nodes.lock().unwrap().get(node) {
            Some((Some(target), true)) => Some(target.clone()),
            _ => None,
        };
        let (me, node) = (self.me.clone(), node.to_string());
        Box::pin(async move {
            let target = target.ok_or_else(|| format!("node \"{node}\" is unreachable"))?;
            tokio::time::timeout(
                deadline,
                async move { target.serve_peer(&me, request).await },
            )
            .await
            .map_err(|_| format!("node \"{node}\" did not answer in time"))
        })
    }

    fn members(&self) -> Vec<NodeView> {
        let mut members: Vec<NodeView> = self
            .registry
            .nodes
            .lock()
            .unwrap()
            .iter()
            .map(|(name, (_, alive))| {
                // node-a is in zone eu, the others in zone us; node-c has a gpu.
                let mut view = NodeView::new(name.clone(), Resources::new(8, 8192))
                    .with_label("zone", if name == "node-a" { "eu" } else { "us" });
                if name == "node-c" {
                    view = view.with_label("gpu", "1");
                }
                if *alive { view } else { view.down() }
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members
    }
}

struct Cluster {
    registry: Arc<Registry>,
    nodes: HashMap<String, Node>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn new(names: &[&str]) -> Cluster {
        Cluster::with_breaks(names, TestBreaks::default()).await
    }

    /// A cluster whose every node has these safety mechanisms switched off.
    async fn with_breaks(names: &[&str], test_breaks: TestBreaks) -> Cluster {
        let registry = Arc::new(Registry::default());
        for name in names {
            registry
                .nodes
                .lock()
                .unwrap()
                .insert(name.to_string(), (None, true));
        }
        let mut nodes = HashMap::new();
        let mut dirs = Vec::new();
        for name in names {
            let dir = tempfile::tempdir().unwrap();
            let peers: Arc<dyn Peers> = Arc::new(LocalPeers {
                me: name.to_string(),
                registry: Arc::clone(&registry),
            });
            let node = Node::open(NodeConfig {
                name: name.to_string(),
                data_dir: dir.path().to_path_buf(),
                vm_accelerator: Some(sd_runtime::Accelerator::Tcg),
                peers: Some(peers),
                test_breaks,
            })
            .await
            .unwrap();
            registry
                .nodes
                .lock()
                .unwrap()
                .insert(name.to_string(), (Some(node.clone()), true));
            nodes.insert(name.to_string(), node);
            dirs.push(dir);
        }
        Cluster {
            registry,
            nodes,
            _dirs: dirs,
        }
    }

    fn node(&self, name: &str) -> &Node {
        &self.nodes[name]
    }

    fn set_alive(&self, name: &str, alive: bool) {
        if let Some(entry) = self.registry.nodes.lock().unwrap().get_mut(name) {
            entry.1 = alive;
        }
    }

    async fn deploy(&self, from: &str, name: &str, body: &str) {
        self.node(from)
            .deploy(DeployRequest {
                name: name.into(),
                description: format!("#include \"prelude.sf\"\n{body}"),
                source: format!("{name}.sf"),
            })
            .await
            .unwrap();
    }

    async fn wait(
        &self,
        from: &str,
        name: &str,
        check: impl Fn(&DeploymentStatus) -> bool,
    ) -> DeploymentStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.node(from).cluster_status(name).await;
            if let Ok(status) = &status
                && check(status)
            {
                return status.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting; last status: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn component<'s>(status: &'s DeploymentStatus, path: &str) -> &'s sd_proto::ComponentStatus {
    status
        .components
        .iter()
        .find(|c| c.path == path)
        .unwrap_or_else(|| panic!("no component {path} in {status:#?}"))
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

const PINNED: &str = r#"
sfConfig extends Compound {
  sfLivenessDelay 1;
  here extends ProcessDomain { command [| "/bin/sleep", "300" |]; }
  there extends Compound {
    sfProcessHost "node-b";
    worker extends ProcessDomain { command [| "/bin/sleep", "300" |]; }
  }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_component_runs_on_its_node_and_any_node_sees_and_terminates_it() {
    let cluster = Cluster::new(&["node-a", "node-b", "node-c"]).await;
    cluster.deploy("node-a", "pinned", PINNED).await;
    let status = cluster
        .wait("node-c", "pinned", |s| {
            s.deployment.state == DeploymentState::Running
                && s.components
                    .iter()
                    .all(|c| c.state == ComponentState::Running)
        })
        .await;
    assert_eq!(status.deployment.root_node, "node-a");
    assert_eq!(component(&status, "sfConfig:here").node, "node-a");
    assert_eq!(component(&status, "sfConfig:there").node, "node-b");
    let worker = component(&status, "sfConfig:there:worker");
    assert_eq!(worker.node, "node-b");
    let pid = worker.pid.unwrap();
    assert!(process_alive(pid));
    // The worker's process runs with node-b's data dir.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains("SD_NODE=node-b"));
    // Listed from every node, with its root.
    for node in ["node-a", "node-b", "node-c"] {
        let listed = cluster.node(node).cluster_deployments().await;
        assert_eq!(listed.len(), 1, "{node}: {listed:?}");
        assert_eq!(listed[0].root_node, "node-a");
    }
    // Terminated from a node that holds nothing of it.
    cluster.node("node-c").terminate("pinned").await.unwrap();
    assert!(!process_alive(pid));
    for node in ["node-a", "node-b", "node-c"] {
        assert!(cluster.node(node).deployments().is_empty(), "{node}");
    }
    for dir in &cluster._dirs {
        let deployments = dir.path().join("deployments");
        let left: Vec<_> = std::fs::read_dir(&deployments)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

const SCHEDULED_POOL: &str = r#"
sfConfig extends Compound {
  sfLivenessDelay 1;
  sched extends Scheduler { sdPlacement "spread"; }
  pool extends Pool {
    replicas 4;
    scheduler LAZY sched;
    sdRestartStrategy "one_for_one";
    sdMaxRestarts 10;
    sdRestartWindow 60;
    template extends LAZY Compound {
      worker extends ProcessDomain { memory 100; command [| "/bin/sleep", "300" |]; }
    }
  }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nodes_replicas_come_back_on_the_others() {
    let cluster = Cluster::new(&["node-a", "node-b", "node-c"]).await;
    cluster.deploy("node-a", "ha", SCHEDULED_POOL).await;
    let running = |s: &DeploymentStatus| {
        s.deployment.state == DeploymentState::Running
            && s.components
                .iter()
                .filter(|c| c.path.ends_with(":worker"))
                .filter(|c| c.state == ComponentState::Running)
                .count()
                == 4
    };
    let status = cluster.wait("node-a", "ha", running).await;
    let on = |status: &DeploymentStatus, node: &str| {
        status
            .components
            .iter()
            .filter(|c| c.path.ends_with(":worker") && c.node == node)
            .count()
    };
    // Spread: every node has one or two of the four.
    for node in ["node-a", "node-b", "node-c"] {
        assert!((1..=2).contains(&on(&status, node)), "{status:#?}");
    }
    let lost: Vec<u32> = status
        .components
        .iter()
        .filter(|c| c.path.ends_with(":worker") && c.node == "node-c")
        .filter_map(|c| c.pid)
        .collect();
    // node-c is lost: unreachable, and seen lost by the others.
    cluster.set_alive("node-c", false);
    cluster.node("node-a").peer_lost("node-c");
    cluster.node("node-b").peer_lost("node-c");
    let healed = cluster
        .wait("node-a", "ha", |s| {
            running(s)
                && s.components
                    .iter()
                    .filter(|c| c.path.ends_with(":worker"))
                    .all(|c| c.node != "node-c")
        })
        .await;
    assert!(
        healed
            .components
            .iter()
            .filter(|c| c.path.ends_with(":r1") || c.path.ends_with(":r2"))
            .all(|c| c.state == ComponentState::Running),
        "{healed:#?}"
    );
    // The lost node's processes are its own business (a lost machine takes them with it);
    // here they still run, so stop them the way its agent would have.
    cluster.set_alive("node-c", true);
    cluster.node("node-a").terminate("ha").await.unwrap();
    for pid in &lost {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(*pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    assert!(cluster.node("node-a").deployments().is_empty());
    assert!(cluster.node("node-b").deployments().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_pinned_to_a_down_node_waits_for_it_visibly() {
    let cluster = Cluster::new(&["node-a", "node-b", "node-c"]).await;
    cluster.set_alive("node-b", false);
    cluster.deploy("node-a", "waits", PINNED).await;
    let waiting = cluster
        .wait("node-a", "waits", |s| {
            s.components.iter().any(|c| {
                c.path == "sfConfig:there"
                    && c.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("node-b"))
            })
        })
        .await;
    assert_eq!(waiting.deployment.state, DeploymentState::Deploying);
    cluster.set_alive("node-b", true);
    let status = cluster
        .wait("node-a", "waits", |s| {
            s.deployment.state == DeploymentState::Running
        })
        .await;
    assert_eq!(component(&status, "sfConfig:there:worker").node, "node-b");
    cluster.node("node-b").terminate("waits").await.unwrap();
    assert!(cluster.node("node-b").deployments().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_that_fails_is_restarted_by_its_remote_parent() {
    let cluster = Cluster::new(&["node-a", "node-b", "node-c"]).await;
    cluster.deploy("node-a", "crash", PINNED).await;
    let status = cluster
        .wait("node-a", "crash", |s| {
            s.deployment.state == DeploymentState::Running
        })
        .await;
    let pid = component(&status, "sfConfig:there:worker").pid.unwrap();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
    // The default strategy of a Compound restarts the failed child where it was pinned.
    let restarted = cluster
        .wait("node-a", "crash", |s| {
            let worker = component(s, "sfConfig:there:worker");
            worker.state == ComponentState::Running && worker.pid.is_some_and(|p| p != pid)
        })
        .await;
    assert_eq!(component(&restarted, "sfConfig:there").node, "node-b");
    cluster.node("node-a").terminate("crash").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_root_is_taken_over_adopting_what_runs_elsewhere_and_steps_down_when_back() {
    let cluster = Cluster::new(&["node-a", "node-b", "node-c"]).await;
    cluster.deploy("node-a", "succ", SCHEDULED_POOL).await;
    let running = |s: &DeploymentStatus| {
        s.deployment.state == DeploymentState::Running
            && s.components
                .iter()
                .filter(|c| c.path.ends_with(":worker") && c.state == ComponentState::Running)
                .count()
                == 4
    };
    let before = cluster.wait("node-b", "succ", running).await;
    let pids_elsewhere: Vec<(String, u32)> = before
        .components
        .iter()
        .filter(|c| c.path.ends_with(":worker") && c.node != "node-a")
        .map(|c| (c.path.clone(), c.pid.unwrap()))
        .collect();
    assert!(!pids_elsewhere.is_empty(), "{before:#?}");
    // Every peer holds a replica before the root goes.
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.set_alive("node-a", false);
    cluster.node("node-b").peer_lost("node-a");
    cluster.node("node-c").peer_lost("node-a");
    let after = cluster
        .wait("node-c", "succ", |s| {
            s.deployment.root_node != "node-a"
                && running(s)
                && s.components.iter().all(|c| c.node != "node-a")
        })
        .await;
    assert!(
        after.deployment.epoch > before.deployment.epoch,
        "{after:#?}"
    );
    // What ran on the surviving nodes was adopted, not started again.
    for (path, pid) in &pids_elsewhere {
        assert_eq!(
            component(&after, path).pid,
            Some(*pid),
            "{path}: {after:#?}"
        );
    }
    // The old root comes back (a healed partition): it learns the newer epoch and steps down,
    // stopping its own instances; exactly one instance of each worker remains.
    let old_pids: Vec<u32> = before
        .components
        .iter()
        .filter(|c| c.path.ends_with(":worker") && c.node == "node-a")
        .filter_map(|c| c.pid)
        .collect();
    cluster.set_alive("node-a", true);
    let deadline = Instant::now() + Duration::from_secs(20);
    while old_pids.iter().any(|&pid| process_alive(pid)) {
        assert!(Instant::now() < deadline, "the old root kept its instances");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settled = cluster.wait("node-a", "succ", running).await;
    assert_eq!(settled.deployment.root_node, after.deployment.root_node);
    let new_root = after.deployment.root_node.clone();
    // The old root may still be finishing its step-down (the name is busy there a moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cluster.node("node-a").terminate("succ").await {
            Ok(()) => break,
            Err(sd_runtime::Error::Exists { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("{error}"),
        }
    }
    for node in ["node-a", "node-b", "node-c"] {
        let left = cluster.node(node).cluster_deployments().await;
        assert!(left.is_empty(), "{node} ({new_root} was root): {left:?}");
    }
    for (_, pid) in &pids_elsewhere {
        assert!(!process_alive(*pid));
    }
}

const CONSTRAINED: &str = r#"
sfConfig extends Compound {
  packer extends Scheduler { sdPlacement "binpack"; sdConstraints [| "zone=us" |]; }
  gpu extends Schedulee {
    sdConstraints [| "gpu" |];
    worker extends ProcessDomain { command [| "/bin/sleep", "300" |]; }
  }
  packed extends Pool {
    replicas 3;
    scheduler LAZY packer;
    template extends LAZY Compound {
      worker extends ProcessDomain { memory 1000; command [| "/bin/sleep", "300" |]; }
    }
  }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedulers_place_by_labels_and_policy_and_say_why_they_cannot() {
    let cluster = Cluster::new(&["node-a", "node-b", "node-c"]).await;
    cluster.deploy("node-a", "placed", CONSTRAINED).await;
    let status = cluster
        .wait("node-a", "placed", |s| {
            s.deployment.state == DeploymentState::Running
        })
        .await;
    // The Schedulee needs a gpu: node-c.
    assert_eq!(component(&status, "sfConfig:gpu:worker").node, "node-c");
    // Binpack among zone=us: the fullest node that fits, the same one each time.
    let packed: Vec<&str> = (1..=3)
        .map(|n| {
            component(&status, &format!("sfConfig:packed:r{n}:worker"))
                .node
                .as_str()
        })
        .collect();
    assert!(packed.iter().all(|node| *node == packed[0]), "{packed:?}");
    assert_ne!(packed[0], "node-a", "node-a is in zone eu");
    cluster.node("node-a").terminate("placed").await.unwrap();

    // Nowhere to go: the deploy fails, naming the constraint.
    cluster
        .deploy(
            "node-b",
            "nowhere",
            r#"sfConfig extends Compound {
                 mars extends Schedulee {
                   sdConstraints [| "zone=mars" |];
                   worker extends ProcessDomain { command [| "/bin/sleep", "300" |]; }
                 }
               }"#,
        )
        .await;
    let failed = cluster
        .wait("node-b", "nowhere", |s| {
            matches!(s.deployment.state, DeploymentState::Failed { .. })
        })
        .await;
    let DeploymentState::Failed { reason } = &failed.deployment.state else {
        unreachable!()
    };
    assert!(reason.contains("zone=mars"), "{reason}");
    cluster.node("node-b").terminate("nowhere").await.unwrap();
}

/// A description whose only domain is named after the node it was deployed through.
fn through(node: &str) -> String {
    let component = node.replace('-', "_");
    format!(
        r#"sfConfig extends Compound {{
             {component} extends ProcessDomain {{ command [| "/bin/sleep", "300" |]; }}
           }}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deploys_of_one_name_through_two_nodes_are_never_both_acknowledged() {
    let cluster = Cluster::new(&["node-a", "node-b", "node-c"]).await;
    let request = |node: &str, name: &str| DeployRequest {
        name: name.into(),
        description: format!("#include \"prelude.sf\"\n{}", through(node)),
        source: format!("{name}.sf"),
    };
    let mut winners = Vec::new();
    for round in 0..20 {
        let name = format!("race{round}");
        // Alternate which one is fired first.
        let (first, second) = if round % 2 == 0 {
            ("node-a", "node-b")
        } else {
            ("node-b", "node-a")
        };
        let (one, two) = tokio::join!(
            cluster.node(first).deploy(request(first, &name)),
            cluster.node(second).deploy(request(second, &name)),
        );
        let acknowledged: Vec<&str> = [(first, &one), (second, &two)]
            .iter()
            .filter(|(_, outcome)| outcome.is_ok())
            .map(|(node, _)| *node)
            .collect();
        assert!(
            acknowledged.len() <= 1,
            "{name}: both acknowledged ({one:?}, {two:?})"
        );
        // A refusal is the conflict, naming the deployment and the other node.
        for (node, outcome) in [(first, &one), (second, &two)] {
            let Err(error) = outcome else { continue };
            let other = if node == first { second } else { first };
            assert!(
                matches!(error, sd_runtime::Error::Exists { .. }),
                "{name} through {node}: {error}"
            );
            let text = error.to_string();
            assert!(
                text.contains(&format!("\"{name}\"")) && text.contains(&format!("\"{other}\"")),
                "{name} through {node}: {text}"
            );
        }
        if let [winner] = acknowledged[..] {
            winners.push((name, winner));
        }
    }
    // Rarely both are refused (each holding the other off); almost always one wins.
    assert!(winners.len() >= 15, "only {} of 20 won", winners.len());
    for (name, winner) in &winners {
        let domain = format!("sfConfig:{}", winner.replace('-', "_"));
        let status = cluster
            .wait("node-c", name, |s| {
                s.deployment.state == DeploymentState::Running
                    && s.components
                        .iter()
                        .any(|c| c.path == domain && c.state == ComponentState::Running)
            })
            .await;
        assert_eq!(status.deployment.root_node, *winner, "{status:#?}");
        assert_eq!(status.components.len(), 2, "{status:#?}");
    }
    // Still the winner's a moment later: no root stepped down.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for (name, winner) in &winners {
        let status = cluster.node("node-c").cluster_status(name).await.unwrap();
        assert_eq!(status.deployment.root_node, *winner, "{status:#?}");
        assert_eq!(status.deployment.state, DeploymentState::Running);
        cluster.node("node-c").terminate(name).await.unwrap();
    }
    // A terminated name can be deployed again at once, through another node.
    let (name, winner) = &winners[0];
    let other = if *winner == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    cluster
        .node(other)
        .deploy(request(other, name))
        .await
        .unwrap();
    cluster.node(other).terminate(name).await.unwrap();
    for node in ["node-a", "node-b", "node-c"] {
        assert!(cluster.node(node).deployments().is_empty(), "{node}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_needs_a_majority_of_the_known_members() {
    let cluster = Cluster::new(&["node-a", "node-b", "node-c"]).await;
    // One of three down: two grants of three are a majority.
    cluster.set_alive("node-c", false);
    cluster
        .deploy("node-a", "one-down", &through("node-a"))
        .await;
    cluster
        .wait("node-a", "one-down", |s| {
            s.deployment.state == DeploymentState::Running
        })
        .await;
    cluster.node("node-a").terminate("one-down").await.unwrap();
    // Two of three down: refused, naming a node that could not be asked.
    cluster.set_alive("node-b", false);
    let refused = cluster
        .node("node-a")
        .deploy(DeployRequest {
            name: "two-down".into(),
            description: format!("#include \"prelude.sf\"\n{}", through("node-a")),
            source: "two-down.sf".into(),
        })
        .await
        .unwrap_err();
    let text = refused.to_string();
    assert!(
        matches!(refused, sd_runtime::Error::Remote { .. }),
        "{text}"
    );
    assert!(
        text.contains("\"two-down\"") && text.contains("majority of the 3 known nodes"),
        "{text}"
    );
    assert!(cluster.node("node-a").deployments().is_empty());
}

/// Deploys a pool spread over the three nodes, cuts node-c off while the others restart its
/// workers, heals, and waits a few owner-check rounds: the pids of node-c's old workers and
/// whether each is still alive.
async fn cut_off_and_heal(cluster: &Cluster, name: &str) -> Vec<(u32, bool)> {
    cluster.deploy("node-a", name, SCHEDULED_POOL).await;
    let running = |s: &DeploymentStatus| {
        s.deployment.state == DeploymentState::Running
            && s.components
                .iter()
                .filter(|c| c.path.ends_with(":worker") && c.state == ComponentState::Running)
                .count()
                == 4
    };
    let before = cluster.wait("node-a", name, running).await;
    let cut_off: Vec<u32> = before
        .components
        .iter()
        .filter(|c| c.path.ends_with(":worker") && c.node == "node-c")
        .filter_map(|c| c.pid)
        .collect();
    assert!(!cut_off.is_empty(), "{before:#?}");
    cluster.set_alive("node-c", false);
    cluster.node("node-a").peer_lost("node-c");
    cluster.node("node-b").peer_lost("node-c");
    cluster
        .wait("node-a", name, |s| {
            running(s)
                && s.components
                    .iter()
                    .filter(|c| c.path.ends_with(":worker"))
                    .all(|c| c.node != "node-c")
        })
        .await;
    cluster.set_alive("node-c", true);
    // Owner checks run every ~2 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    cut_off
        .into_iter()
        .map(|pid| (pid, process_alive(pid)))
        .collect()
}

fn kill_all(pids: &[(u32, bool)]) {
    for (pid, _) in pids {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(*pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_restarted_elsewhere_are_stopped_on_the_node_that_was_cut_off() {
    let cluster = Cluster::new(&["node-a", "node-b", "node-c"]).await;
    let old = cut_off_and_heal(&cluster, "owned").await;
    assert!(old.iter().all(|(_, alive)| !alive), "{old:?}");
    cluster.node("node-a").terminate("owned").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_no_owner_checks_break_leaves_duplicates_after_the_heal() {
    let breaks = TestBreaks {
        no_owner_checks: true,
        ..TestBreaks::default()
    };
    let cluster = Cluster::with_breaks(&["node-a", "node-b", "node-c"], breaks).await;
    let old = cut_off_and_heal(&cluster, "doubled").await;
    assert!(old.iter().all(|(_, alive)| *alive), "{old:?}");
    // node-c still reports its instances running, while the root runs all four elsewhere.
    let on_c = cluster.node("node-c").status("doubled").unwrap();
    let doubled: Vec<&str> = on_c
        .components
        .iter()
        .filter(|c| c.path.ends_with(":worker"))
        .filter(|c| c.node == "node-c" && c.state == ComponentState::Running)
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(doubled.len(), old.len(), "{on_c:#?}");
    // The root's own records say where each replica runs now (a merged view would take
    // node-c's word for its instances): elsewhere.
    let root = cluster.node("node-a").status("doubled").unwrap();
    for path in doubled {
        let replica = path.trim_end_matches(":worker");
        assert_ne!(component(&root, replica).node, "node-c", "{root:#?}");
    }
    cluster.node("node-a").terminate("doubled").await.unwrap();
    kill_all(&old);
}
