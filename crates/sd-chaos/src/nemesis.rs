//! The nemesis: injects each fault into the running cluster and undoes it, telling the
//! observer what it did first (so that a death it caused is not counted as false), and
//! recording what came of the faults that have an immediate effect to check (a killed domain
//! coming back, forged packets refused, a deploy on a full disk refused or carried out).

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_proto::{ClusterStats, FaultSettings, LinkFaults};
use sd_testkit::LocalCluster;

use crate::observe::{self, Shared, Watched};
use crate::report::FaultRecord;
use crate::schedule::{Fault, PacketFaults, Rng};
use crate::{Error, Result};

/// How long a killed domain may take to come back before it counts as a problem (a VM boots
/// under TCG; a domain killed while its node's disk is full waits for room, then for its
/// restart backoff).
const DOMAIN_BACK_WITHIN: Duration = Duration::from_secs(60);

/// A deploy the cluster acknowledged: it must be carried out (INV-2).
#[derive(Debug, Clone)]
pub struct Acked {
    /// The deployment.
    pub name: String,
    /// Through which node.
    pub through: String,
    /// The source it was given (tells two deploys of one name apart).
    pub source: String,
}

/// A deploy the cluster refused: it must not be carried out.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The deployment.
    pub name: String,
    /// The source it was given.
    pub source: String,
    /// What the cluster answered.
    pub reason: String,
}

/// The faulting side of a run.
pub struct Nemesis {
    /// The cluster.
    pub cluster: LocalCluster,
    shared: Arc<Shared>,
    watched: Vec<Watched>,
    description: String,
    gossip_key: [u8; 32],
    /// The faults each node injects now.
    injected: BTreeMap<String, FaultSettings>,
    /// Deploys acknowledged.
    pub acked: Vec<Acked>,
    /// Deploys refused.
    pub refused: Vec<Refused>,
    /// Measurements of killed domains coming back, going on while the schedule goes on: by
    /// the time their fault was injected, the time they took or why they did not.
    comebacks: Vec<(
        u64,
        std::thread::JoinHandle<std::result::Result<u64, String>>,
    )>,
}

impl Nemesis {
    /// The nemesis of `cluster`, deploying `description` when a fault deploys.
    pub fn new(cluster: LocalCluster, shared: Arc<Shared>, description: String) -> Result<Nemesis> {
        let key_path = cluster.dir().join("pki").join("gossip.key");
        let gossip_key = read_key(&key_path)?;
        let watched = cluster
            .nodes()
            .iter()
            .map(|node| Watched {
                probe: node.probe(),
                data_dir: node.data_dir.clone(),
            })
            .collect();
        Ok(Nemesis {
            cluster,
            shared,
            watched,
            description,
            gossip_key,
            injected: BTreeMap::new(),
            acked: Vec::new(),
            refused: Vec::new(),
            comebacks: Vec::new(),
        })
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        self.shared.now_ms()
    }

    /// The nodes as the observer watches them.
    pub fn watched(&self) -> Vec<Watched> {
        self.watched.clone()
    }

    /// Injects `fault`; faults that do not last are over when this returns.
    pub fn start(&mut self, fault: &Fault) -> Result<FaultRecord> {
        let at_ms = self.shared.now_ms();
        let mut record = FaultRecord {
            fault: fault.clone(),
            at_ms,
            until_ms: at_ms,
            detected_ms: None,
            recovered_ms: None,
            notes: Vec::new(),
            problems: Vec::new(),
        };
        match fault {
            Fault::KillAgent { node } => {
                self.shared.change(|world| {
                    world.down.insert(node.clone());
                });
                self.cluster.kill_agent(node)?;
            }
            Fault::LoseMachine { node } => {
                self.shared.change(|world| {
                    world.down.insert(node.clone());
                });
                self.cluster.kill_machine(node)?;
            }
            Fault::Pause { node } => {
                self.shared.change(|world| {
                    world.paused.insert(node.clone());
                });
                self.cluster.pause(node, true)?;
            }
            Fault::Partition { minority } => {
                let rest = self.others(minority);
                self.shared.change(|world| {
                    world.cut = Some((minority.iter().cloned().collect(), true));
                });
                self.cluster.partition(&refs(minority), &refs(&rest))?;
            }
            Fault::OneWayPartition { from } => {
                let rest = self.others(from);
                self.shared.change(|world| {
                    world.cut = Some((from.iter().cloned().collect(), false));
                });
                self.cluster.partition_one_way(&refs(from), &refs(&rest))?;
            }
            Fault::GossipFaults { nodes, faults } => {
                self.shared
                    .change(|world| world.faulty.extend(nodes.iter().cloned()));
                for node in nodes {
                    self.inject(node, |settings| settings.gossip = link(*faults))?;
                }
            }
            Fault::QuicFaults { nodes, faults } => {
                self.shared
                    .change(|world| world.faulty.extend(nodes.iter().cloned()));
                for node in nodes {
                    self.inject(node, |settings| settings.quic = link(*faults))?;
                }
            }
            Fault::KillDomain { count, pick } => self.kill_domains(*count, *pick, &mut record),
            Fault::DiskFull { node } => self.fill_disk(node, &mut record)?,
            Fault::ConcurrentDeploy { through, name } => {
                self.race(through, name, &mut record);
            }
            Fault::ForgeGossip { node, count } => self.forge(node, *count, &mut record)?,
        }
        Ok(record)
    }

    /// Undoes a lasting fault.
    pub fn end(&mut self, record: &mut FaultRecord) -> Result<()> {
        match &record.fault {
            Fault::KillAgent { node } | Fault::LoseMachine { node } => {
                self.cluster.launch(node)?;
                self.shared.change(|world| {
                    world.down.remove(node);
                });
            }
            Fault::Pause { node } => {
                self.cluster.pause(node, false)?;
                self.shared.change(|world| {
                    world.paused.remove(node);
                });
            }
            Fault::Partition { .. } | Fault::OneWayPartition { .. } => {
                self.cluster.heal();
                self.shared.change(|world| world.cut = None);
            }
            Fault::GossipFaults { nodes, .. } | Fault::QuicFaults { nodes, .. } => {
                let gossip = matches!(record.fault, Fault::GossipFaults { .. });
                for node in nodes {
                    self.inject(node, |settings| {
                        if gossip {
                            settings.gossip = LinkFaults::default();
                        } else {
                            settings.quic = LinkFaults::default();
                        }
                    })?;
                }
                let clean: Vec<String> = nodes
                    .iter()
                    .filter(|node| {
                        self.injected
                            .get(*node)
                            .is_none_or(|s| *s == FaultSettings::default())
                    })
                    .cloned()
                    .collect();
                self.shared.change(|world| {
                    for node in &clean {
                        world.faulty.remove(node);
                    }
                });
            }
            Fault::DiskFull { node } => {
                self.cluster.free_disk(node)?;
                if self.answers(node) {
                    record
                        .notes
                        .push(format!("{node}'s disk freed; its agent answers"));
                } else {
                    record.problems.push(format!(
                        "{node}'s agent does not answer after its disk was freed"
                    ));
                }
            }
            Fault::KillDomain { .. }
            | Fault::ConcurrentDeploy { .. }
            | Fault::ForgeGossip { .. } => {}
        }
        record.until_ms = self.shared.now_ms();
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        self.cluster
            .nodes()
            .iter()
            .map(|node| node.name.clone())
            .collect()
    }

    fn others(&self, side: &[String]) -> Vec<String> {
        self.names()
            .into_iter()
            .filter(|name| !side.contains(name))
            .collect()
    }

    fn answers(&self, node: &str) -> bool {
        self.watched
            .iter()
            .find(|watched| watched.probe.name == node)
            .is_some_and(|watched| {
                watched
                    .probe
                    .get::<sd_proto::NodeInfo>("/node", Duration::from_secs(5))
                    .is_ok()
            })
    }

    fn inject(&mut self, node: &str, change: impl FnOnce(&mut FaultSettings)) -> Result<()> {
        let settings = self.injected.entry(node.to_string()).or_default();
        change(settings);
        let settings = *settings;
        self.cluster.set_faults(node, &settings)?;
        Ok(())
    }

    /// SIGKILLs `count` domains of the followed deployments, chosen by `pick` among those
    /// running now, and measures how long each takes to run again.
    fn kill_domains(&mut self, count: usize, pick: u64, record: &mut FaultRecord) {
        let followed = self.shared.followed();
        let running = observe::instances(&self.watched);
        let candidates: Vec<_> = running
            .iter()
            .filter(|((deployment, _), _)| followed.contains(deployment))
            .collect();
        let victims = Rng::new(pick).choose(&candidates, count);
        if victims.is_empty() {
            record.notes.push("no domain running to kill".into());
            return;
        }
        let started = Instant::now();
        let mut killed = Vec::new();
        for (key, instances) in &victims {
            for (node, pid) in instances.iter() {
                sd_testkit::signal(*pid, "KILL");
                record
                    .notes
                    .push(format!("killed {} {} (pid {pid} on {node})", key.0, key.1));
                killed.push(((*key).clone(), *pid));
            }
        }
        // Measured beside the schedule: a VM takes seconds to boot again.
        let (watched, shared) = (self.watched.clone(), Arc::clone(&self.shared));
        let measure = std::thread::spawn(move || comeback(&watched, &shared, &killed, started));
        self.comebacks.push((record.at_ms, measure));
    }

    /// Waits for the killed domains' comebacks and fills in their faults' records.
    pub fn collect_comebacks(&mut self, records: &mut [FaultRecord]) {
        for (at_ms, measure) in self.comebacks.drain(..) {
            let outcome = measure
                .join()
                .unwrap_or_else(|_| Err("the measurement panicked".into()));
            let Some(record) = records.iter_mut().find(|record| record.at_ms == at_ms) else {
                continue;
            };
            match outcome {
                Ok(ms) => record.recovered_ms = Some(ms),
                Err(problem) => record.problems.push(problem),
            }
        }
    }

    /// Fills `node`'s disk and deploys through it: the deploy must be refused with a clear
    /// error or carried out, and the agent must live on.
    fn fill_disk(&mut self, node: &str, record: &mut FaultRecord) -> Result<()> {
        let bytes = self.cluster.fill_disk(node)?;
        record.notes.push(format!(
            "{node}'s data dir filled ({} KiB written)",
            bytes / 1024
        ));
        let name = format!("full-{}", record.at_ms / 1000);
        let source = format!("{name}-via-{node}.sf");
        match self
            .cluster
            .deploy_from_source(node, &name, &self.description, &source)
        {
            Ok(()) => {
                record
                    .notes
                    .push(format!("deploy of {name} through {node}: acknowledged"));
                self.acked.push(Acked {
                    name: name.clone(),
                    through: node.to_string(),
                    source,
                });
                self.shared.follow(&name);
            }
            Err(error) => {
                let reason = error.to_string();
                record.notes.push(format!(
                    "deploy of {name} through {node}: refused: {reason}"
                ));
                // A full disk is the node's condition, not a failure of the request (507).
                if reason.contains(": 500 ") || reason.trim().is_empty() {
                    record.problems.push(format!(
                        "refused as an internal error, not as a full disk: {reason}"
                    ));
                }
                self.refused.push(Refused {
                    name,
                    source,
                    reason,
                });
            }
        }
        if !self.answers(node) {
            record
                .problems
                .push(format!("{node}'s agent stopped answering on a full disk"));
        }
        Ok(())
    }

    /// Deploys `name` through two nodes at the same moment.
    fn race(&mut self, through: &[String], name: &str, record: &mut FaultRecord) {
        let cluster = &self.cluster;
        let description = &self.description;
        let barrier = std::sync::Barrier::new(through.len());
        let answers: Vec<(String, String, std::result::Result<(), String>)> =
            std::thread::scope(|scope| {
                let calls: Vec<_> = through
                    .iter()
                    .map(|node| {
                        let barrier = &barrier;
                        scope.spawn(move || {
                            let source = format!("{name}-via-{node}.sf");
                            barrier.wait();
                            let answer = cluster
                                .deploy_from_source(node, name, description, &source)
                                .map_err(|error| error.to_string());
                            (node.clone(), source, answer)
                        })
                    })
                    .collect();
                calls
                    .into_iter()
                    .filter_map(|call| call.join().ok())
                    .collect()
            });
        for (node, source, answer) in answers {
            match answer {
                Ok(()) => {
                    record
                        .notes
                        .push(format!("{name} through {node}: acknowledged"));
                    self.acked.push(Acked {
                        name: name.to_string(),
                        through: node,
                        source,
                    });
                }
                Err(reason) => {
                    record
                        .notes
                        .push(format!("{name} through {node}: refused: {reason}"));
                    self.refused.push(Refused {
                        name: name.to_string(),
                        source,
                        reason,
                    });
                }
            }
        }
        self.shared.follow(name);
    }

    /// Sends `count` packets of each sort to `node`'s gossip port: random bytes, sealed under
    /// another key, one genuine packet replayed, and genuine ones a minute old. Every one of
    /// them must be dropped and counted.
    fn forge(&mut self, node: &str, count: usize, record: &mut FaultRecord) -> Result<()> {
        let target = self.cluster.node(node)?;
        let address = ("127.0.0.1", target.gossip_port);
        let probe = target.probe();
        let stats = || -> Option<ClusterStats> {
            probe
                .get::<Option<ClusterStats>>("/cluster", Duration::from_secs(5))
                .ok()
                .flatten()
        };
        let before = stats().ok_or_else(|| Error::Fault(format!("{node} has no cluster stats")))?;
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| Error::Fault(e.to_string()))?;
        let send = |packet: &[u8]| {
            let _ = socket.send_to(packet, address);
            // Paced a little: the point is to check each is refused, not to flood.
            std::thread::sleep(Duration::from_millis(2));
        };
        let mut rng = Rng::new(self.gossip_key[0] as u64 ^ record.at_ms);
        let genuine = sd_gossip::PacketKey::new(&self.gossip_key, "local");
        let mut other_key = [0u8; 32];
        other_key
            .iter_mut()
            .for_each(|byte| *byte = rng.next_u64() as u8);
        let forger = sd_gossip::PacketKey::new(&other_key, "local");
        let now = unix_ms();
        let sender = rng.next_u64();
        let noise = |rng: &mut Rng, len: usize| -> Vec<u8> {
            (0..len).map(|_| rng.next_u64() as u8).collect()
        };
        let seal = |key: &sd_gossip::PacketKey, counter: u64, at: u64, rng: &mut Rng| {
            sd_gossip::seal_packet(key, sender, counter, at, &noise(rng, 64))
                .map_err(|e| Error::Fault(e.to_string()))
        };
        for _ in 0..count {
            let len = 40 + rng.below(400);
            let mut packet = noise(&mut rng, len);
            packet[0] = sd_gossip::sealed::PACKET_VERSION;
            send(&packet);
        }
        for i in 0..count {
            send(&seal(&forger, i as u64, now, &mut rng)?);
        }
        let captured = seal(&genuine, 0, now, &mut rng)?;
        for _ in 0..=count {
            send(&captured);
        }
        for i in 0..count {
            send(&seal(&genuine, 1 + i as u64, now - 60_000, &mut rng)?);
        }
        // The node drops them one by one (an authentic packet holds its socket for a moment
        // while chitchat's codec refuses it): wait until all are counted, or 5 s.
        let sent = 4 * count as u64 + 1;
        let dropped = |stats: &ClusterStats| {
            (stats.gossip_dropped_bad_auth - before.gossip_dropped_bad_auth)
                + (stats.gossip_dropped_replay - before.gossip_dropped_replay)
                + (stats.gossip_dropped_malformed - before.gossip_dropped_malformed)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut after = before.clone();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            after = stats().unwrap_or(after);
            if dropped(&after) >= sent {
                break;
            }
        }
        let bad_auth = after.gossip_dropped_bad_auth - before.gossip_dropped_bad_auth;
        let replay = after.gossip_dropped_replay - before.gossip_dropped_replay;
        let malformed = after.gossip_dropped_malformed - before.gossip_dropped_malformed;
        record.notes.push(format!(
            "sent {count} random, {count} wrong-key, 1 genuine (garbage inside) + {count} replays of it, {count} a minute old; {node} dropped {bad_auth} for their key, {replay} as replayed or stale, {malformed} as malformed"
        ));
        // Random bytes fail the freshness check or the key, whichever comes first; the one
        // genuine packet reaches chitchat, which refuses its contents.
        let count = count as u64;
        if dropped(&after) < sent {
            record.problems.push(format!(
                "{} of {sent} forged, replayed or stale packets were not refused",
                sent - dropped(&after)
            ));
        }
        if bad_auth < count {
            record.problems.push(format!(
                "only {bad_auth} of {count} wrong-key packets refused for their key"
            ));
        }
        if replay < 2 * count {
            record.problems.push(format!(
                "only {replay} of {} replayed or stale packets refused as such",
                2 * count
            ));
        }
        Ok(())
    }
}

/// Milliseconds from `started` until each killed domain has a process again (another pid, in
/// `/proc`) and its agent says it runs (a VM: booted to its ready marker).
fn comeback(
    watched: &[Watched],
    shared: &Shared,
    killed: &[((String, String), u32)],
    started: Instant,
) -> std::result::Result<u64, String> {
    while started.elapsed() < DOMAIN_BACK_WITHIN {
        let now = observe::instances(watched);
        let processes = killed.iter().all(|(key, pid)| {
            now.get(key)
                .is_some_and(|running| running.iter().any(|(_, new)| new != pid))
        });
        if processes
            && killed
                .iter()
                .all(|(key, pid)| runs_again(watched, shared, key, *pid))
        {
            return Ok(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "killed domains not running again after {} s",
        DOMAIN_BACK_WITHIN.as_secs()
    ))
}

/// Whether an agent (the first serving one that answers) says the component runs, under
/// another pid than `old`.
fn runs_again(
    watched: &[Watched],
    shared: &Shared,
    (deployment, path): &(String, String),
    old: u32,
) -> bool {
    let world = shared.world();
    watched
        .iter()
        .filter(|watched| world.healthy(&watched.probe.name))
        .find_map(|watched| {
            watched
                .probe
                .get::<sd_proto::DeploymentStatus>(
                    &format!("/deployments/{deployment}"),
                    Duration::from_secs(2),
                )
                .ok()
        })
        .and_then(|status| {
            status
                .components
                .into_iter()
                .find(|component| component.path == *path)
        })
        .is_some_and(|component| {
            component.state == sd_proto::ComponentState::Running
                && component.pid.is_some_and(|pid| pid != old)
        })
}

fn refs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

fn link(faults: PacketFaults) -> LinkFaults {
    LinkFaults {
        loss: faults.loss,
        delay_ms: faults.delay_ms,
        duplicate: faults.duplicate,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The cluster's gossip key (hex, as `sd cluster init` writes it).
fn read_key(path: &Path) -> Result<[u8; 32]> {
    let failed = |reason: String| Error::Fault(format!("{}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let text = text.trim();
    if text.len() != 64 {
        return Err(failed("not 64 hex digits".into()));
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| failed("not hex".into()))?;
    }
    Ok(key)
}
