//! The observer: every few hundred milliseconds, what runs where (read from `/proc`, the
//! ground truth), whom each reachable agent sees alive, and, less often, the components'
//! restart counts. It also keeps the nemesis' account of the world (who is down, paused or cut
//! off), recorded with each sample, from which the checker tells when a node's condition
//! changed and so a correct death from a false one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sd_proto::{DeploymentStatus, MemberInfo};
use sd_testkit::Probe;
use serde::Serialize;

/// How often the observer samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// How long an agent has to answer the observer.
const ANSWER_WITHIN: Duration = Duration::from_millis(800);
/// How often restart counts are read.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// A component instance's identity: (deployment, component path).
pub type ComponentKey = (String, String);

/// What the nemesis has done to the cluster, now.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct World {
    /// Nodes whose agent is not running (killed, machine lost).
    pub down: BTreeSet<String>,
    /// Nodes whose agent is paused.
    pub paused: BTreeSet<String>,
    /// Cut-off nodes and whether the cut goes both ways (`false`: only what they send is
    /// dropped).
    pub cut: Option<(BTreeSet<String>, bool)>,
    /// Nodes sending faulty packets.
    pub faulty: BTreeSet<String>,
}

impl World {
    /// Whether `a` and `b` can talk, as far as the nemesis is concerned.
    pub fn connected(&self, a: &str, b: &str) -> bool {
        match &self.cut {
            None => true,
            Some((side, _)) => side.contains(a) == side.contains(b),
        }
    }

    /// Whether `node`'s agent runs and answers.
    pub fn healthy(&self, node: &str) -> bool {
        !self.down.contains(node) && !self.paused.contains(node)
    }
}

/// One observation.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Milliseconds since the run started.
    pub t_ms: u64,
    /// The world as the nemesis had made it.
    pub world: World,
    /// Every instance of every component: where it runs (node, pid).
    pub instances: BTreeMap<ComponentKey, Vec<(String, u32)>>,
    /// For each agent that answered: the members it sees alive.
    pub views: BTreeMap<String, BTreeSet<String>>,
}

/// The followed deployments' statuses at one time: restart counts and the supervision each
/// parent declares.
#[derive(Debug, Clone)]
pub struct StatusSample {
    /// Milliseconds since the run started.
    pub t_ms: u64,
    /// The statuses read.
    pub statuses: Vec<DeploymentStatus>,
}

/// What the observer and the nemesis share.
#[derive(Debug)]
pub struct Shared {
    started: Instant,
    world: Mutex<World>,
    /// The deployments whose components the observer follows.
    deployments: Mutex<BTreeSet<String>>,
    samples: Mutex<Vec<Sample>>,
    statuses: Mutex<Vec<StatusSample>>,
}

impl Shared {
    /// Shared state of a run that started at `started`.
    pub fn new(started: Instant) -> Arc<Shared> {
        Arc::new(Shared {
            started,
            world: Mutex::new(World::default()),
            deployments: Mutex::new(BTreeSet::new()),
            samples: Mutex::new(Vec::new()),
            statuses: Mutex::new(Vec::new()),
        })
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Changes the world (each sample records it, so the checker can tell when a node's
    /// condition changed).
    pub fn change(&self, change: impl FnOnce(&mut World)) {
        change(&mut self.world.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The world now.
    pub fn world(&self) -> World {
        self.world
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Follows the components of `deployment` from now on.
    pub fn follow(&self, deployment: &str) {
        self.deployments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(deployment.to_string());
    }

    /// The deployments followed.
    pub fn followed(&self) -> BTreeSet<String> {
        self.deployments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every sample so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every status sample so far.
    pub fn status_samples(&self) -> Vec<StatusSample> {
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The followed deployments seen running at least once (status samples, every second).
    pub fn ever_running(&self) -> BTreeSet<String> {
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(|sample| &sample.statuses)
            .filter(|status| status.deployment.state == sd_proto::DeploymentState::Running)
            .map(|status| status.deployment.name.clone())
            .collect()
    }
}

/// A node as the observer reaches it.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Its API.
    pub probe: Probe,
    /// Its data dir (its workloads carry it).
    pub data_dir: PathBuf,
}

/// Samples until `stop` is set; restart counts are read by a thread of their own, as a
/// status may take seconds to gather while a node is lost.
pub fn observe(shared: &Shared, nodes: &[Watched], stop: &AtomicBool) {
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let began = Instant::now();
                let world = shared.world();
                let t_ms = shared.now_ms();
                let statuses = statuses(shared, nodes, &world);
                shared
                    .statuses
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(StatusSample { t_ms, statuses });
                pace(began, STATUS_EVERY, stop);
            }
        });
        while !stop.load(Ordering::SeqCst) {
            let began = Instant::now();
            let sample = take(shared, nodes);
            shared
                .samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(sample);
            pace(began, SAMPLE_EVERY, stop);
        }
    });
}

/// Sleeps what is left of `period` since `began`, waking early when stopped.
fn pace(began: Instant, period: Duration, stop: &AtomicBool) {
    while began.elapsed() < period && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20).min(period.saturating_sub(began.elapsed())));
    }
}

/// One sample now.
pub fn take(shared: &Shared, nodes: &[Watched]) -> Sample {
    let world = shared.world();
    let t_ms = shared.now_ms();
    let instances = instances(nodes);
    // Agents are asked concurrently: one that is slow to answer must not skew the others.
    let views: BTreeMap<String, BTreeSet<String>> = std::thread::scope(|scope| {
        let asks: Vec<_> = nodes
            .iter()
            .filter(|node| world.healthy(&node.probe.name))
            .map(|node| {
                scope.spawn(move || {
                    let members: Vec<MemberInfo> = node.probe.get("/nodes", ANSWER_WITHIN).ok()?;
                    let alive = members
                        .into_iter()
                        .filter(|member| member.state == "alive")
                        .map(|member| member.name)
                        .collect();
                    Some((node.probe.name.clone(), alive))
                })
            })
            .collect();
        asks.into_iter()
            .filter_map(|ask| ask.join().ok().flatten())
            .collect()
    });
    Sample {
        t_ms,
        world,
        instances,
        views,
    }
}

/// Every workload of every node, by component.
pub fn instances(nodes: &[Watched]) -> BTreeMap<ComponentKey, Vec<(String, u32)>> {
    let mut instances: BTreeMap<ComponentKey, Vec<(String, u32)>> = BTreeMap::new();
    for node in nodes {
        let workloads = sd_testkit::workloads_of(&node.probe.name, &node.data_dir);
        for workload in workloads.into_iter().filter(|w| !w.child_of_workload) {
            instances
                .entry((workload.deployment, workload.component))
                .or_default()
                .push((workload.node, workload.pid));
        }
    }
    instances
}

/// The followed deployments' statuses, each from one healthy node in the majority.
fn statuses(shared: &Shared, nodes: &[Watched], world: &World) -> Vec<DeploymentStatus> {
    let Some(node) = nodes.iter().find(|node| {
        let name = &node.probe.name;
        world.healthy(name)
            && world
                .cut
                .as_ref()
                .is_none_or(|(side, _)| !side.contains(name))
    }) else {
        return Vec::new();
    };
    shared
        .followed()
        .iter()
        .filter_map(|name| {
            node.probe
                .get(&format!("/deployments/{name}"), Duration::from_secs(3))
                .ok()
        })
        .collect()
}
