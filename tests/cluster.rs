//! End-to-end tests of the cluster: five real `sd agent` processes on loopback, joined with
//! gossip and mutual-TLS QUIC, driven through their API as users do (`sd-testkit`). A node
//! loss is a lost machine: its agent and every process it started are SIGKILLed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sd_proto::{ComponentState, DeploymentState, DeploymentStatus};
use sd_testkit::LocalCluster;

const NODES: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

/// An HA pool: ten replicas spread by a scheduler, restarted one for one.
const HA_POOL: &str = r#"#include "prelude.sf"
sfConfig extends Compound {
  sfLivenessDelay 1;
  sched extends Scheduler { sdPlacement "spread"; }
  pool extends Pool {
    replicas 10;
    scheduler LAZY sched;
    sdRestartStrategy "one_for_one";
    sdMaxRestarts 50;
    sdRestartWindow 60;
    template extends LAZY Compound {
      worker extends ProcessDomain {
        memory 10;
        command [| "/bin/sh", "-c", "echo up on $SD_NODE; exec sleep 600" |];
      }
    }
  }
}
"#;

fn start(dir: &Path) -> LocalCluster {
    LocalCluster::start_with(
        Path::new(env!("CARGO_BIN_EXE_sd")),
        dir,
        &NODES,
        &["--vm-accelerator", "tcg"],
    )
    .expect("the cluster starts")
}

fn workers(status: &DeploymentStatus) -> Vec<&sd_proto::ComponentStatus> {
    status
        .components
        .iter()
        .filter(|c| c.path.ends_with(":worker"))
        .collect()
}

fn all_running(status: &DeploymentStatus, count: usize) -> bool {
    status.deployment.state == DeploymentState::Running
        && workers(status)
            .iter()
            .filter(|c| c.state == ComponentState::Running)
            .count()
            == count
}

/// Waits until `node` sees the deployment pass `check`; the last status and every node's
/// view of the members in the panic.
fn wait_status(
    cluster: &LocalCluster,
    node: &str,
    name: &str,
    within: Duration,
    check: impl Fn(&DeploymentStatus) -> bool,
) -> DeploymentStatus {
    cluster
        .wait_status(node, name, within, check)
        .unwrap_or_else(|error| {
            let views: Vec<String> = NODES
                .iter()
                .map(|n| match cluster.members(n) {
                    Ok(members) => format!(
                        "{n} sees {:?}",
                        members
                            .iter()
                            .map(|m| format!("{}:{}", m.name, m.state))
                            .collect::<Vec<_>>()
                    ),
                    Err(error) => format!("{n}: {error}"),
                })
                .collect();
            let logs: Vec<String> = cluster
                .nodes()
                .iter()
                .map(|n| {
                    let log = std::fs::read_to_string(n.data_dir.with_extension("log"))
                        .unwrap_or_default();
                    format!("--- {} ---\n{log}", n.name)
                })
                .collect();
            panic!("members: {views:#?}\n{}\n{error}", logs.join("\n"))
        })
}

/// A live setting's value as `status` shows it.
fn setting<'s>(status: &'s DeploymentStatus, path: &str, attribute: &str) -> &'s str {
    status
        .component(path)
        .and_then(|component| component.setting(attribute))
        .unwrap_or_else(|| panic!("no setting {attribute} of {path}: {status:#?}"))
}

/// How many processes run each worker, over the whole cluster.
fn instances(cluster: &LocalCluster) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for workload in cluster.all_workloads() {
        if !workload.child_of_workload {
            *counts.entry(workload.component).or_insert(0) += 1;
        }
    }
    counts
}

/// Waits (up to 30 s) until each of `count` workers runs exactly once over the cluster.
fn wait_one_instance_each(cluster: &LocalCluster, count: usize) {
    cluster
        .wait_until(
            "one instance of each worker",
            Duration::from_secs(30),
            || {
                let counts = instances(cluster);
                counts.len() == count && counts.values().all(|&n| n == 1)
            },
        )
        .unwrap_or_else(|_| panic!("instances: {:?}", instances(cluster)));
}

/// What is left of deployments on the hosts: workload processes and deployment directories.
fn leftovers(cluster: &LocalCluster) -> Vec<String> {
    let mut left: Vec<String> = cluster
        .all_workloads()
        .into_iter()
        .map(|w| format!("{}: process {} ({})", w.node, w.pid, w.component))
        .collect();
    for node in cluster.nodes() {
        let dir = node.data_dir.join("deployments");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            left.extend(
                entries
                    .flatten()
                    .map(|e| format!("{}: {}", node.name, e.path().display())),
            );
        }
    }
    left
}

/// Waits (up to 20 s) until nothing of any deployment is left on any host (INV-3).
fn assert_clean(cluster: &LocalCluster) {
    if cluster
        .wait_until("clean hosts", Duration::from_secs(20), || {
            leftovers(cluster).is_empty()
        })
        .is_err()
    {
        panic!("left behind: {:?}", leftovers(cluster));
    }
}

#[test]
fn deploy_from_any_node_survive_the_loss_of_a_node_and_of_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start(dir.path());
    for node in NODES {
        assert_eq!(cluster.members(node).unwrap().len(), 5, "{node}");
    }
    // Deployed from a node that is not the seed: that node is the root.
    cluster.deploy("n4", "ha", HA_POOL).unwrap();
    let status = wait_status(&cluster, "n2", "ha", Duration::from_secs(30), |s| {
        all_running(s, 10)
    });
    assert_eq!(status.deployment.root_node, "n4");
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for worker in workers(&status) {
        *per_node.entry(worker.node.clone()).or_insert(0) += 1;
    }
    assert_eq!(per_node.len(), 5, "spread over every node: {per_node:?}");
    assert!(per_node.values().all(|&n| n == 2), "{per_node:?}");
    // A domain's log, read from a node that does not run it.
    let remote = workers(&status)
        .into_iter()
        .find(|c| c.node != "n1")
        .expect("a worker elsewhere");
    let logs = cluster.sd("n1", &["logs", "ha", &remote.path]).unwrap();
    assert!(logs.status.success(), "{logs:?}");
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout).trim(),
        format!("up on {}", remote.node)
    );

    // Live reconfiguration through a node that is neither the root nor the worker's: the
    // worker (on another node) and the pool (on the root) change without a restart.
    let (changed, changed_pid) = (remote.path.clone(), remote.pid.unwrap());
    let setter = NODES
        .iter()
        .find(|n| **n != "n4" && **n != remote.node)
        .unwrap();
    for (path, attribute, value) in [
        (changed.as_str(), "sfLivenessDelay", "3"),
        ("pool", "sdMaxRestarts", "40"),
    ] {
        let set = cluster
            .sd(setter, &["set", "ha", path, attribute, value])
            .unwrap();
        assert!(set.status.success(), "{set:?}");
        assert!(
            String::from_utf8_lossy(&set.stdout).contains("validated and committed on"),
            "{set:?}"
        );
    }
    let refused = cluster
        .sd(setter, &["set", "ha", &changed, "sfLivenessDelay", "-3"])
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let seen = cluster.status(&remote.node, "ha").unwrap();
    assert_eq!(setting(&seen, &changed, "sfLivenessDelay"), "3");
    assert_eq!(setting(&seen, "sfConfig:pool", "sdMaxRestarts"), "40");
    let worker = seen.components.iter().find(|c| c.path == changed).unwrap();
    assert_eq!((worker.pid, worker.restarts), (Some(changed_pid), 0));
    // The cluster's events, gathered from every node by one.
    let events = cluster.sd("n5", &["events", "--format", "json"]).unwrap();
    assert!(events.status.success(), "{events:?}");
    let events: Vec<sd_proto::Event> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect(line))
        .collect();
    let from: std::collections::BTreeSet<&str> = events.iter().map(|e| e.node.as_str()).collect();
    assert_eq!(from.len(), 5, "events from every node: {from:?}");
    assert!(
        events
            .iter()
            .any(|e| e.state == "reconfigured" && e.path == changed),
        "{events:#?}"
    );

    // A node hosting domains (not the root) is lost: its replicas come back elsewhere.
    cluster.kill_machine("n2").unwrap();
    let healed = wait_status(&cluster, "n3", "ha", Duration::from_secs(30), |s| {
        all_running(s, 10) && workers(s).iter().all(|c| c.node != "n2")
    });
    assert!(workers(&healed).iter().all(|c| c.node != "n2"));
    let counts = instances(&cluster);
    assert_eq!(counts.len(), 10, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "duplicates: {counts:?}");

    // The root is lost: another node takes the deployment over and still manages it.
    let before_pids: BTreeMap<String, u32> = workers(&healed)
        .iter()
        .filter(|c| c.node != "n4")
        .map(|c| (c.path.clone(), c.pid.unwrap()))
        .collect();
    cluster.kill_machine("n4").unwrap();
    let taken = wait_status(&cluster, "n1", "ha", Duration::from_secs(30), |s| {
        s.deployment.root_node != "n4"
            && all_running(s, 10)
            && workers(s).iter().all(|c| c.node != "n4" && c.node != "n2")
    });
    assert!(taken.deployment.epoch > status.deployment.epoch);
    // The changes are the deployment's: the new root planned it with them.
    assert_eq!(setting(&taken, &changed, "sfLivenessDelay"), "3");
    assert_eq!(setting(&taken, "sfConfig:pool", "sdMaxRestarts"), "40");
    for worker in workers(&taken) {
        if let Some(pid) = before_pids.get(&worker.path) {
            assert_eq!(
                worker.pid,
                Some(*pid),
                "{} was restarted, not adopted; before: {healed:#?}\nafter: {taken:#?}",
                worker.path
            );
        }
    }
    let counts = instances(&cluster);
    assert!(counts.values().all(|&n| n == 1), "duplicates: {counts:?}");

    // The lost machines come back empty and join; nothing of the old root runs again.
    cluster.launch("n2").unwrap();
    cluster.launch("n4").unwrap();
    cluster.wait_converged(5, Duration::from_secs(20)).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let counts = instances(&cluster);
    assert_eq!(counts.len(), 10, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "duplicates: {counts:?}");
    let listed = cluster.deployments("n4").unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].root_node, taken.deployment.root_node);

    // Terminated from yet another node: nothing is left anywhere.
    cluster.terminate("n5", "ha").unwrap();
    assert_clean(&cluster);
    for node in NODES {
        assert!(cluster.deployments(node).unwrap().is_empty(), "{node}");
    }
}

#[test]
fn after_a_partition_heals_exactly_one_instance_of_each_component_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start(dir.path());
    cluster.deploy("n1", "split", HA_POOL).unwrap();
    let before = wait_status(&cluster, "n1", "split", Duration::from_secs(30), |s| {
        all_running(s, 10)
    });
    assert_eq!(before.deployment.root_node, "n1");
    // The root is on the minority side.
    cluster
        .partition(&["n1", "n2"], &["n3", "n4", "n5"])
        .unwrap();
    let majority = wait_status(&cluster, "n3", "split", Duration::from_secs(30), |s| {
        s.deployment.root_node != "n1"
            && all_running(s, 10)
            && workers(s).iter().all(|c| c.node != "n1" && c.node != "n2")
    });
    // The minority placed nothing new meanwhile: its members still run only what they ran.
    let minority_view = cluster.status("n1", "split").unwrap();
    assert!(
        workers(&minority_view).iter().all(|c| {
            before
                .components
                .iter()
                .any(|b| b.path == c.path && b.node == c.node)
                || c.state != ComponentState::Running
        }),
        "before: {before:#?}\nminority: {minority_view:#?}"
    );
    cluster.heal();
    cluster.wait_converged(5, Duration::from_secs(20)).unwrap();
    wait_one_instance_each(&cluster, 10);
    let settled = wait_status(&cluster, "n2", "split", Duration::from_secs(30), |s| {
        all_running(s, 10) && s.deployment.root_node == majority.deployment.root_node
    });
    assert_eq!(settled.deployment.root_node, majority.deployment.root_node);
    cluster.terminate("n2", "split").unwrap();
    assert_clean(&cluster);
}

#[test]
fn a_partition_with_the_root_in_the_majority_heals_to_one_instance_of_each_component() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start(dir.path());
    cluster.deploy("n5", "major", HA_POOL).unwrap();
    let before = wait_status(&cluster, "n5", "major", Duration::from_secs(30), |s| {
        all_running(s, 10)
    });
    let cut_off: Vec<String> = workers(&before)
        .iter()
        .filter(|c| c.node == "n1" || c.node == "n2")
        .map(|c| c.path.clone())
        .collect();
    assert!(!cut_off.is_empty());
    cluster
        .partition(&["n1", "n2"], &["n3", "n4", "n5"])
        .unwrap();
    // The root's side restarts what it cannot reach; the cut-off side keeps its instances
    // running meanwhile (two of each for the length of the partition).
    let moved = wait_status(&cluster, "n5", "major", Duration::from_secs(30), |s| {
        all_running(s, 10) && workers(s).iter().all(|c| c.node != "n1" && c.node != "n2")
    });
    assert_eq!(moved.deployment.root_node, "n5");
    let during = instances(&cluster);
    for path in &cut_off {
        assert_eq!(during.get(path), Some(&2), "{path}: {during:?}");
    }
    cluster.heal();
    cluster.wait_converged(5, Duration::from_secs(20)).unwrap();
    // Their parent no longer owns the cut-off instances: their nodes stop them.
    wait_one_instance_each(&cluster, 10);
    cluster.terminate("n1", "major").unwrap();
    assert_clean(&cluster);
}

/// An agent named `x` of another cluster directory, joining through `seed`.
fn foreign_agent(binary: &Path, foreign: &Path, seed: u16) -> std::process::Child {
    std::process::Command::new(binary)
        .args(["agent", "--name", "x", "--api-listen", "127.0.0.1:0"])
        .args(["--vm-accelerator", "tcg", "--gossip-listen", "127.0.0.1:0"])
        .args(["--peer-listen", "127.0.0.1:0"])
        .args(["--join", &format!("127.0.0.1:{seed}")])
        .arg("--data-dir")
        .arg(foreign.join("x"))
        .arg("--cluster-dir")
        .arg(foreign.join("pki"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the foreign agent starts")
}

#[test]
fn gossip_with_the_wrong_key_and_a_foreign_certificate_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_sd"));
    let cluster = LocalCluster::start_with(
        binary,
        dir.path(),
        &NODES[..3],
        &["--vm-accelerator", "tcg"],
    )
    .expect("the cluster starts");
    let seed = cluster.node("n1").unwrap().gossip_port;
    // An intruder with a CA and gossip key of its own, same cluster name.
    let foreign = dir.path().join("foreign");
    let ok = std::process::Command::new(binary)
        .args(["cluster", "init"])
        .arg(foreign.join("pki"))
        .args(["--name", "local", "--node", "x"])
        .status()
        .unwrap();
    assert!(ok.success());
    let mut intruder = foreign_agent(binary, &foreign, seed);
    cluster
        .wait_until("gossip refused", Duration::from_secs(10), || {
            cluster
                .stats("n1")
                .ok()
                .flatten()
                .is_some_and(|s| s.gossip_dropped_bad_auth > 0)
        })
        .unwrap();
    assert!(cluster.members("n1").unwrap().iter().all(|m| m.name != "x"));
    let _ = intruder.kill();
    let _ = intruder.wait();

    // With the right gossip key but a certificate from another CA, it is seen in gossip (a
    // hint), but no peer talks to it, nor it to them.
    std::fs::copy(
        dir.path().join("pki/gossip.key"),
        foreign.join("pki/gossip.key"),
    )
    .unwrap();
    let mut impostor = foreign_agent(binary, &foreign, seed);
    cluster
        .wait_until("the impostor in gossip", Duration::from_secs(10), || {
            cluster.members("n1").unwrap().iter().any(|m| m.name == "x")
        })
        .unwrap();
    // Listing asks every member: the call to the impostor fails its handshake.
    let _ = cluster.deployments("n1").unwrap();
    cluster
        .wait_until("handshakes refused", Duration::from_secs(10), || {
            let _ = cluster.deployments("n1");
            cluster
                .stats("n1")
                .ok()
                .flatten()
                .is_some_and(|s| s.rpc_refused_handshakes > 0)
        })
        .unwrap();
    let _ = impostor.kill();
    let _ = impostor.wait();
}
