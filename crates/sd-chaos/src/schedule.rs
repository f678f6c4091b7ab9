//! The fault schedule of a run: the scenario's faults and its random ones, every choice
//! (which node, which side, when, how long) drawn from the seed, so that one seed gives one
//! schedule. Pure: no clock, no cluster.

use serde::Serialize;

use crate::scenario::{FaultKind, FaultSpec, Scenario};

/// A small deterministic generator (SplitMix64): the same seed draws the same numbers on
/// every machine and every version of every crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A number in `[low, high]`.
    pub fn between(&mut self, low: f64, high: f64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        low + (high - low) * unit
    }

    /// `count` distinct items of `items`, in a drawn order.
    pub fn choose<T: Clone>(&mut self, items: &[T], count: usize) -> Vec<T> {
        let mut pool: Vec<T> = items.to_vec();
        let mut chosen = Vec::new();
        while chosen.len() < count && !pool.is_empty() {
            let index = self.below(pool.len());
            chosen.push(pool.swap_remove(index));
        }
        chosen
    }
}

/// Faults in a link's packets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PacketFaults {
    /// Probability of loss.
    pub loss: f64,
    /// Delay in milliseconds.
    pub delay_ms: u64,
    /// Probability of duplication.
    pub duplicate: f64,
}

/// A fault with its targets chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL the agent of `node`; restarted at the end.
    KillAgent {
        /// The node.
        node: String,
    },
    /// SIGKILL the agent of `node` and its workloads; the agent restarted at the end.
    LoseMachine {
        /// The node.
        node: String,
    },
    /// SIGSTOP the agent of `node`; SIGCONT at the end.
    Pause {
        /// The node.
        node: String,
    },
    /// SIGKILL `count` domain processes, chosen when the fault starts (by `pick`).
    KillDomain {
        /// How many.
        count: usize,
        /// Drawn now, used to choose among the domains running then.
        pick: u64,
    },
    /// `minority` cut off from the rest, both ways.
    Partition {
        /// The cut-off side.
        minority: Vec<String>,
    },
    /// Nothing `from` sends reaches the rest.
    OneWayPartition {
        /// The nodes whose traffic is dropped.
        from: Vec<String>,
    },
    /// Faulty gossip from `nodes`.
    GossipFaults {
        /// The nodes.
        nodes: Vec<String>,
        /// The faults.
        faults: PacketFaults,
    },
    /// Faulty QUIC from `nodes`.
    QuicFaults {
        /// The nodes.
        nodes: Vec<String>,
        /// The faults.
        faults: PacketFaults,
    },
    /// `node`'s disk filled; a deploy through it meanwhile.
    DiskFull {
        /// The node.
        node: String,
    },
    /// `name` deployed through two nodes at once.
    ConcurrentDeploy {
        /// The two nodes.
        through: Vec<String>,
        /// The deployment's name.
        name: String,
    },
    /// `count` packets of each sort (random bytes, wrong key, replayed, stale) sent to `node`.
    ForgeGossip {
        /// The node.
        node: String,
        /// How many of each sort.
        count: usize,
    },
}

impl Fault {
    /// Its kind.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::KillAgent { .. } => FaultKind::KillAgent,
            Fault::LoseMachine { .. } => FaultKind::LoseMachine,
            Fault::Pause { .. } => FaultKind::Pause,
            Fault::KillDomain { .. } => FaultKind::KillDomain,
            Fault::Partition { .. } => FaultKind::Partition,
            Fault::OneWayPartition { .. } => FaultKind::OneWayPartition,
            Fault::GossipFaults { .. } => FaultKind::GossipFaults,
            Fault::QuicFaults { .. } => FaultKind::QuicFaults,
            Fault::DiskFull { .. } => FaultKind::DiskFull,
            Fault::ConcurrentDeploy { .. } => FaultKind::ConcurrentDeploy,
            Fault::ForgeGossip { .. } => FaultKind::ForgeGossip,
        }
    }

    /// The nodes it makes unreachable or unresponsive while it lasts (those the others should
    /// see dead: a node nobody hears from is dead to them, even if it hears them).
    pub fn downed(&self) -> Vec<String> {
        match self {
            Fault::KillAgent { node } | Fault::LoseMachine { node } | Fault::Pause { node } => {
                vec![node.clone()]
            }
            Fault::Partition { minority } => minority.clone(),
            Fault::OneWayPartition { from } => from.clone(),
            _ => Vec::new(),
        }
    }

    /// The nodes it hits at all.
    pub fn targets(&self) -> Vec<String> {
        match self {
            Fault::KillAgent { node }
            | Fault::LoseMachine { node }
            | Fault::Pause { node }
            | Fault::DiskFull { node }
            | Fault::ForgeGossip { node, .. } => vec![node.clone()],
            Fault::Partition { minority } => minority.clone(),
            Fault::OneWayPartition { from } => from.clone(),
            Fault::GossipFaults { nodes, .. } | Fault::QuicFaults { nodes, .. } => nodes.clone(),
            Fault::ConcurrentDeploy { through, .. } => through.clone(),
            Fault::KillDomain { .. } => Vec::new(),
        }
    }
}

/// A fault at its time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    /// Milliseconds from the start of the fault phase.
    pub at_ms: u64,
    /// How long it lasts (0 for faults that do not).
    pub lasts_ms: u64,
    /// The fault.
    pub fault: Fault,
}

/// The schedule of `scenario` under `seed`, by start time.
pub fn plan(scenario: &Scenario, seed: u64) -> Vec<Planned> {
    let mut rng = Rng::new(seed);
    let names = scenario.node_names();
    let mut planned: Vec<Planned> = Vec::new();
    for spec in &scenario.faults {
        let Some(kind) = spec.kind else { continue };
        let lasts = spec.lasts_secs.unwrap_or(0.0);
        planned.push(Planned {
            at_ms: millis(spec.at_secs),
            lasts_ms: millis(lasts),
            fault: choose(kind, spec, &names, &mut rng, planned.len()),
        });
    }
    if let Some(random) = &scenario.random {
        let mut at = random.gap_secs[0];
        for _ in 0..random.count {
            let kind = random.kinds[rng.below(random.kinds.len())];
            let lasts = if kind.lasts() {
                rng.between(random.lasts_secs[0], random.lasts_secs[1])
            } else {
                0.0
            };
            if at > scenario.duration_secs {
                break;
            }
            let fault = choose(kind, &FaultSpec::default(), &names, &mut rng, planned.len());
            planned.push(Planned {
                at_ms: millis(at),
                lasts_ms: millis(lasts),
                fault,
            });
            at += lasts + rng.between(random.gap_secs[0], random.gap_secs[1]);
        }
    }
    planned.sort_by_key(|planned| planned.at_ms);
    planned
}

/// The nodes whose data dir must be a small disk (a disk-full fault hits them).
pub fn small_disks(planned: &[Planned]) -> Vec<String> {
    let mut nodes: Vec<String> = planned
        .iter()
        .filter_map(|planned| match &planned.fault {
            Fault::DiskFull { node } => Some(node.clone()),
            _ => None,
        })
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

fn millis(secs: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ms = (secs * 1000.0).round().max(0.0) as u64;
    ms
}

/// The fault of `kind` with the spec's parameters, the rest drawn.
fn choose(
    kind: FaultKind,
    spec: &FaultSpec,
    names: &[String],
    rng: &mut Rng,
    serial: usize,
) -> Fault {
    let node = || spec.node.clone();
    let one = |rng: &mut Rng| node().unwrap_or_else(|| names[rng.below(names.len())].clone());
    // The nodes given, else `count` (or `default`) of them drawn.
    let some = |rng: &mut Rng, default: usize| match &spec.nodes {
        Some(nodes) => sorted(nodes.clone()),
        None => sorted(rng.choose(names, spec.count.unwrap_or(default))),
    };
    let packets = |loss: f64, delay_ms: u64, duplicate: f64| PacketFaults {
        loss: spec.loss.unwrap_or(loss),
        delay_ms: spec.delay_ms.unwrap_or(delay_ms),
        duplicate: spec.duplicate.unwrap_or(duplicate),
    };
    match kind {
        FaultKind::KillAgent => Fault::KillAgent { node: one(rng) },
        FaultKind::LoseMachine => Fault::LoseMachine { node: one(rng) },
        FaultKind::Pause => Fault::Pause { node: one(rng) },
        FaultKind::DiskFull => Fault::DiskFull { node: one(rng) },
        FaultKind::ForgeGossip => Fault::ForgeGossip {
            node: one(rng),
            count: spec.count.unwrap_or(20),
        },
        FaultKind::KillDomain => Fault::KillDomain {
            count: spec.count.unwrap_or(1),
            pick: rng.next_u64(),
        },
        FaultKind::Partition => Fault::Partition {
            minority: some(rng, (names.len() - 1) / 2),
        },
        FaultKind::OneWayPartition => Fault::OneWayPartition { from: some(rng, 1) },
        FaultKind::GossipFaults => Fault::GossipFaults {
            nodes: some(rng, names.len()),
            faults: packets(0.3, 20, 0.1),
        },
        FaultKind::QuicFaults => Fault::QuicFaults {
            nodes: some(rng, names.len()),
            faults: packets(0.2, 20, 0.1),
        },
        FaultKind::ConcurrentDeploy => Fault::ConcurrentDeploy {
            through: rng.choose(names, 2),
            name: format!("race-{}", serial + 1),
        },
    }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        Scenario::parse(
            r#"
name = "mixed"
nodes = 5
deploy = { file = "workers.sf" }
duration_secs = 60

[[faults]]
at_secs = 1
kind = "disk-full"
node = "n3"
lasts_secs = 4

[random]
count = 6
kinds = ["kill-agent", "pause", "partition", "kill-domain", "quic-faults", "concurrent-deploy"]
"#,
        )
        .unwrap()
    }

    #[test]
    fn one_seed_gives_one_schedule_and_another_seed_another() {
        let scenario = scenario();
        assert_eq!(plan(&scenario, 7), plan(&scenario, 7));
        assert_ne!(plan(&scenario, 7), plan(&scenario, 8));
    }

    #[test]
    fn random_faults_follow_one_another_within_the_phase() {
        let scenario = scenario();
        for seed in 0..50 {
            let planned = plan(&scenario, seed);
            let random: Vec<&Planned> = planned
                .iter()
                .filter(|p| p.fault.kind() != FaultKind::DiskFull)
                .collect();
            for pair in random.windows(2) {
                assert!(
                    pair[1].at_ms >= pair[0].at_ms + pair[0].lasts_ms,
                    "{pair:?}"
                );
            }
            for planned in &planned {
                assert!(planned.at_ms <= 60_000);
                if let Fault::Partition { minority } = &planned.fault {
                    assert_eq!(minority.len(), 2, "a minority of five is two");
                }
                if let Fault::ConcurrentDeploy { through, .. } = &planned.fault {
                    assert_ne!(through[0], through[1]);
                }
            }
            assert_eq!(small_disks(&planned), ["n3"]);
        }
    }

    #[test]
    fn the_generator_is_stable_and_fair_enough() {
        let mut rng = Rng::new(42);
        // Fixed values: a schedule recorded in a report must replay on any machine.
        assert_eq!(rng.next_u64(), 0xbdd7_3226_2feb_6e95);
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[rng.below(4)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        let x = rng.between(2.0, 3.0);
        assert!((2.0..=3.0).contains(&x));
    }
}
