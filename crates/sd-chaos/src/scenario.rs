//! Scenario files (`chaos/*.toml`): the cluster, what to deploy, the faults (a schedule, a
//! seeded random one, or both), and the invariants to check. Parsing is strict: an unknown
//! key, a parameter that does not belong to its fault's kind, or a value out of range is an
//! error naming the fault and the key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The largest scenario file read.
const MAX_SCENARIO_BYTES: u64 = 256 * 1024;

/// A scenario as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name, for reports.
    pub name: String,
    /// What it shows, in a sentence.
    #[serde(default)]
    pub summary: String,
    /// How many agents the cluster has (3 to 9).
    pub nodes: usize,
    /// What is deployed before the faults start.
    pub deploy: DeploySpec,
    /// Seconds of the fault phase: the schedule's faults all start within it.
    #[serde(default = "default_duration")]
    pub duration_secs: f64,
    /// Seconds the cluster gets after the last heal to converge (INV-4) and to be back to one
    /// instance of every component (INV-1).
    #[serde(default = "default_converge")]
    pub converge_within_secs: f64,
    /// The seed when the command line gives none.
    #[serde(default)]
    pub seed: u64,
    /// The invariants checked (all five when omitted).
    #[serde(default = "Invariant::all")]
    pub invariants: Vec<Invariant>,
    /// Faults at given times.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Faults drawn from the seed.
    #[serde(default)]
    pub random: Option<RandomSpec>,
    /// Extra arguments for every agent (tests of the checker switch a safety mechanism off
    /// with `--unsafe-test-break`).
    #[serde(default)]
    pub agent_args: Vec<String>,
}

fn default_duration() -> f64 {
    30.0
}

fn default_converge() -> f64 {
    30.0
}

/// What is deployed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    /// The description, relative to the scenario file.
    pub file: PathBuf,
    /// The deployment's name.
    #[serde(default = "default_deployment")]
    pub name: String,
    /// The node it is deployed through (its root); drawn from the seed when omitted.
    #[serde(default)]
    pub through: Option<String>,
}

fn default_deployment() -> String {
    "chaos".into()
}

/// The invariants of ../shared/DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Invariant {
    /// Single placement after convergence.
    #[serde(rename = "INV-1")]
    SinglePlacement,
    /// Nothing acknowledged lost.
    #[serde(rename = "INV-2")]
    NothingLost,
    /// Clean hosts after terminate.
    #[serde(rename = "INV-3")]
    CleanHosts,
    /// Membership and deployments converge after heal within a bound.
    #[serde(rename = "INV-4")]
    Convergence,
    /// Restarts within the declared intensity.
    #[serde(rename = "INV-5")]
    BoundedRestarts,
}

impl Invariant {
    /// All five, in order.
    pub fn all() -> Vec<Invariant> {
        vec![
            Invariant::SinglePlacement,
            Invariant::NothingLost,
            Invariant::CleanHosts,
            Invariant::Convergence,
            Invariant::BoundedRestarts,
        ]
    }

    /// `INV-1` ...
    pub fn id(self) -> &'static str {
        match self {
            Invariant::SinglePlacement => "INV-1",
            Invariant::NothingLost => "INV-2",
            Invariant::CleanHosts => "INV-3",
            Invariant::Convergence => "INV-4",
            Invariant::BoundedRestarts => "INV-5",
        }
    }

    /// What it says, briefly.
    pub fn title(self) -> &'static str {
        match self {
            Invariant::SinglePlacement => "single placement after convergence",
            Invariant::NothingLost => "nothing acknowledged lost",
            Invariant::CleanHosts => "clean hosts after terminate",
            Invariant::Convergence => "membership and deployments converge after heal",
            Invariant::BoundedRestarts => "restarts within the declared intensity",
        }
    }
}

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL an agent (its workloads keep running), restart it when the fault ends.
    KillAgent,
    /// SIGKILL an agent and every workload it started (a machine lost), restart the agent
    /// (on an empty host) when the fault ends.
    LoseMachine,
    /// SIGSTOP an agent, SIGCONT when the fault ends.
    Pause,
    /// SIGKILL domain processes (or VMs) behind their agent's back.
    KillDomain,
    /// Cut a minority of the nodes off from the others, both ways.
    Partition,
    /// Drop what some nodes send to the others; the other way passes.
    OneWayPartition,
    /// Lose, delay and duplicate gossip packets.
    GossipFaults,
    /// Lose, delay and duplicate QUIC datagrams.
    QuicFaults,
    /// Fill a node's data dir (a small tmpfs) to the last byte; a deploy through it meanwhile.
    DiskFull,
    /// Deploy one name through two nodes at once.
    ConcurrentDeploy,
    /// Send forged, replayed and stale gossip packets to a node.
    ForgeGossip,
}

impl FaultKind {
    /// Its name in scenario files and reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillAgent => "kill-agent",
            FaultKind::LoseMachine => "lose-machine",
            FaultKind::Pause => "pause",
            FaultKind::KillDomain => "kill-domain",
            FaultKind::Partition => "partition",
            FaultKind::OneWayPartition => "one-way-partition",
            FaultKind::GossipFaults => "gossip-faults",
            FaultKind::QuicFaults => "quic-faults",
            FaultKind::DiskFull => "disk-full",
            FaultKind::ConcurrentDeploy => "concurrent-deploy",
            FaultKind::ForgeGossip => "forge-gossip",
        }
    }

    /// Whether the fault lasts (and ends with a heal, a restart or a resume).
    pub fn lasts(self) -> bool {
        !matches!(
            self,
            FaultKind::KillDomain | FaultKind::ConcurrentDeploy | FaultKind::ForgeGossip
        )
    }

    /// The parameters it takes, besides `at_secs`, `lasts_secs` and `kind`.
    fn parameters(self) -> &'static [&'static str] {
        match self {
            FaultKind::KillAgent | FaultKind::LoseMachine | FaultKind::Pause => &["node"],
            FaultKind::DiskFull => &["node"],
            FaultKind::KillDomain => &["count"],
            FaultKind::Partition | FaultKind::OneWayPartition => &["count", "nodes"],
            FaultKind::GossipFaults | FaultKind::QuicFaults => {
                &["count", "nodes", "loss", "delay_ms", "duplicate"]
            }
            FaultKind::ConcurrentDeploy => &[],
            FaultKind::ForgeGossip => &["node", "count"],
        }
    }
}

/// One fault of a schedule, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// When it starts, in seconds from the start of the fault phase.
    pub at_secs: f64,
    /// How long it lasts (faults that last).
    #[serde(default)]
    pub lasts_secs: Option<f64>,
    /// Its kind.
    pub kind: Option<FaultKind>,
    /// The node it hits (`n1` ...); drawn from the seed when omitted.
    #[serde(default)]
    pub node: Option<String>,
    /// How many: domains killed, nodes cut off or sending faulty packets, forged packets of
    /// each sort.
    #[serde(default)]
    pub count: Option<usize>,
    /// The nodes cut off or sending faulty packets; drawn from the seed when omitted.
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    /// Probability that a packet is lost.
    #[serde(default)]
    pub loss: Option<f64>,
    /// Delay added to every packet, in milliseconds.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Probability that a packet is sent twice.
    #[serde(default)]
    pub duplicate: Option<f64>,
}

/// A random schedule: `count` faults of the given kinds, one after another, drawn from the
/// seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomSpec {
    /// How many faults.
    pub count: usize,
    /// The kinds drawn from.
    pub kinds: Vec<FaultKind>,
    /// Seconds between the end of one fault and the start of the next: `[min, max]`.
    #[serde(default = "default_gap")]
    pub gap_secs: [f64; 2],
    /// How long a lasting fault lasts: `[min, max]` seconds.
    #[serde(default = "default_lasts")]
    pub lasts_secs: [f64; 2],
}

fn default_gap() -> [f64; 2] {
    [3.0, 6.0]
}

fn default_lasts() -> [f64; 2] {
    [4.0, 8.0]
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario> {
        let failed = |reason: String| Error::Scenario {
            path: path.to_path_buf(),
            reason,
        };
        let size = std::fs::metadata(path)
            .map_err(|error| failed(error.to_string()))?
            .len();
        if size > MAX_SCENARIO_BYTES {
            return Err(failed(format!(
                "{size} bytes is more than a scenario may have ({MAX_SCENARIO_BYTES})"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|error| failed(error.to_string()))?;
        Scenario::parse(&text).map_err(failed)
    }

    /// Parses and checks a scenario's text.
    pub fn parse(text: &str) -> std::result::Result<Scenario, String> {
        let scenario: Scenario =
            toml::from_str(text).map_err(|error| error.to_string().trim_end().to_string())?;
        scenario.check()?;
        Ok(scenario)
    }

    /// The node names of the cluster: `n1` .. `nN`.
    pub fn node_names(&self) -> Vec<String> {
        (1..=self.nodes).map(|i| format!("n{i}")).collect()
    }

    fn check(&self) -> std::result::Result<(), String> {
        if !(3..=9).contains(&self.nodes) {
            return Err(format!(
                "nodes = {}: a scenario has 3 to 9 nodes",
                self.nodes
            ));
        }
        if !(self.duration_secs > 0.0 && self.duration_secs <= 3600.0) {
            return Err(format!(
                "duration_secs = {}: between 0 and 3600",
                self.duration_secs
            ));
        }
        if !(self.converge_within_secs > 0.0 && self.converge_within_secs <= 600.0) {
            return Err(format!(
                "converge_within_secs = {}: between 0 and 600",
                self.converge_within_secs
            ));
        }
        if self.faults.is_empty() && self.random.is_none() {
            return Err("no faults: give [[faults]], [random], or both".into());
        }
        let names = self.node_names();
        if let Some(node) = &self.deploy.through
            && !names.contains(node)
        {
            return Err(format!(
                "deploy.through: \"{node}\" is not one of {}",
                names.join(", ")
            ));
        }
        for (index, fault) in self.faults.iter().enumerate() {
            let place = format!("[[faults]] #{}", index + 1);
            self.check_fault(fault, &names)
                .map_err(|reason| format!("{place}: {reason}"))?;
        }
        if let Some(random) = &self.random {
            if random.kinds.is_empty() {
                return Err("[random]: kinds is empty".into());
            }
            for (key, [low, high]) in [
                ("gap_secs", random.gap_secs),
                ("lasts_secs", random.lasts_secs),
            ] {
                if !(low >= 0.0 && low <= high && high <= 600.0) {
                    return Err(format!(
                        "[random]: {key} = [{low}, {high}] is not a range within 0..600"
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_fault(&self, fault: &FaultSpec, names: &[String]) -> std::result::Result<(), String> {
        let kind = fault.kind.ok_or("no kind")?;
        if !(0.0..=self.duration_secs).contains(&fault.at_secs) {
            return Err(format!(
                "at_secs = {} is outside the fault phase (0 to duration_secs = {})",
                fault.at_secs, self.duration_secs
            ));
        }
        let given = [
            ("node", fault.node.is_some()),
            ("count", fault.count.is_some()),
            ("nodes", fault.nodes.is_some()),
            ("loss", fault.loss.is_some()),
            ("delay_ms", fault.delay_ms.is_some()),
            ("duplicate", fault.duplicate.is_some()),
        ];
        for (key, present) in given {
            if present && !kind.parameters().contains(&key) {
                return Err(format!("{} takes no `{key}`", kind.name()));
            }
        }
        match (kind.lasts(), fault.lasts_secs) {
            (true, None) => return Err(format!("{} needs lasts_secs", kind.name())),
            (false, Some(_)) => {
                return Err(format!("{} does not last: no lasts_secs", kind.name()));
            }
            (true, Some(secs)) if !(secs > 0.0 && secs <= 600.0) => {
                return Err(format!("lasts_secs = {secs}: between 0 and 600"));
            }
            _ => {}
        }
        for node in fault.node.iter().chain(fault.nodes.iter().flatten()) {
            if !names.contains(node) {
                return Err(format!(
                    "node \"{node}\" is not one of {}",
                    names.join(", ")
                ));
            }
        }
        if let Some(nodes) = &fault.nodes {
            let minority = matches!(kind, FaultKind::Partition | FaultKind::OneWayPartition);
            if nodes.is_empty() || (minority && nodes.len() > (self.nodes - 1) / 2) {
                return Err(format!(
                    "nodes = {nodes:?}: 1 to {} nodes",
                    if minority {
                        (self.nodes - 1) / 2
                    } else {
                        self.nodes
                    }
                ));
            }
            if fault.count.is_some() {
                return Err("give nodes or count, not both".into());
            }
        }
        for (key, value) in [("loss", fault.loss), ("duplicate", fault.duplicate)] {
            if let Some(value) = value
                && !(0.0..=1.0).contains(&value)
            {
                return Err(format!("{key} = {value}: a probability in 0..=1"));
            }
        }
        if fault.delay_ms.is_some_and(|ms| ms > 10_000) {
            return Err("delay_ms: at most 10000".into());
        }
        if let Some(count) = fault.count {
            let most = match kind {
                // A minority stays a minority.
                FaultKind::Partition | FaultKind::OneWayPartition => (self.nodes - 1) / 2,
                FaultKind::GossipFaults | FaultKind::QuicFaults => self.nodes,
                _ => 1000,
            };
            if count == 0 || count > most {
                return Err(format!("count = {count}: 1 to {most} for {}", kind.name()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "partition"
nodes = 5
deploy = { file = "workers.sf" }
duration_secs = 20

[[faults]]
at_secs = 2
kind = "partition"
count = 2
lasts_secs = 8

[[faults]]
at_secs = 12
kind = "kill-domain"

[random]
count = 2
kinds = ["pause", "gossip-faults"]
"#;

    #[test]
    fn a_scenario_reads_with_its_defaults() {
        let scenario = Scenario::parse(GOOD).unwrap();
        assert_eq!(scenario.nodes, 5);
        assert_eq!(scenario.deploy.name, "chaos");
        assert_eq!(scenario.invariants, Invariant::all());
        assert_eq!(scenario.faults[0].kind, Some(FaultKind::Partition));
        assert_eq!(scenario.random.as_ref().unwrap().gap_secs, [3.0, 6.0]);
        assert_eq!(scenario.node_names(), ["n1", "n2", "n3", "n4", "n5"]);
    }

    #[test]
    fn mistakes_are_named_with_their_fault() {
        let cases = [
            (
                GOOD.replacen("count = 2", "count = 3", 1),
                "[[faults]] #1: count = 3: 1 to 2",
            ),
            (
                GOOD.replacen("count = 2", "loss = 0.5", 1),
                "partition takes no `loss`",
            ),
            (
                GOOD.replace("lasts_secs = 8", ""),
                "partition needs lasts_secs",
            ),
            (
                GOOD.replace("at_secs = 12", "at_secs = 25"),
                "[[faults]] #2: at_secs = 25",
            ),
            (GOOD.replace("nodes = 5", "nodes = 2"), "3 to 9 nodes"),
            (
                GOOD.replace("\"pause\",", "\"nap\","),
                "unknown variant `nap`",
            ),
            (
                GOOD.replace("duration_secs", "durations"),
                "unknown field `durations`",
            ),
        ];
        for (text, expected) in cases {
            let error = Scenario::parse(&text).unwrap_err();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
        let error = Scenario::parse(&GOOD.replace(
            "kind = \"kill-domain\"",
            "kind = \"kill-domain\"\nlasts_secs = 3",
        ))
        .unwrap_err();
        assert!(error.contains("kill-domain does not last"), "{error}");
    }

    #[test]
    fn every_scenario_shipped_in_chaos_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../chaos");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                let description = path.parent().unwrap().join(&scenario.deploy.file);
                assert!(
                    description.exists(),
                    "{}: {}",
                    path.display(),
                    description.display()
                );
                seen += 1;
            }
        }
        assert!(
            seen >= 11,
            "a scenario per fault kind and a mixed one: {seen}"
        );
    }
}
