//! A run's report: JSON for machines, a summary for people, and the aggregate of many seeds.

use std::fmt::Write as _;

use serde::Serialize;

use crate::checker::{FalseDeath, Figures};
use crate::scenario::Invariant;
use crate::schedule::Fault;

/// An invariant's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// It held.
    Pass,
    /// It was violated: see the evidence.
    Fail,
    /// The scenario does not check it.
    NotChecked,
}

/// One invariant's verdict with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// `INV-1` ...
    pub invariant: &'static str,
    /// What it says.
    pub title: &'static str,
    /// The verdict.
    pub outcome: Outcome,
    /// How it was checked, or what was measured.
    pub detail: String,
    /// What violated it.
    pub evidence: Vec<String>,
}

impl Verdict {
    /// A verdict on `invariant`: failed if there is evidence.
    pub fn new(invariant: Invariant, detail: String, evidence: Vec<String>) -> Verdict {
        Verdict {
            invariant: invariant.id(),
            title: invariant.title(),
            outcome: if evidence.is_empty() {
                Outcome::Pass
            } else {
                Outcome::Fail
            },
            detail,
            evidence,
        }
    }

    /// `invariant`, not checked by this scenario.
    pub fn not_checked(invariant: Invariant) -> Verdict {
        Verdict {
            invariant: invariant.id(),
            title: invariant.title(),
            outcome: Outcome::NotChecked,
            detail: "not in the scenario's invariants".into(),
            evidence: Vec::new(),
        }
    }
}

/// A fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// The fault and its targets.
    #[serde(flatten)]
    pub fault: Fault,
    /// When it was injected (ms since the run started).
    pub at_ms: u64,
    /// When it was undone (the same for faults that do not last).
    pub until_ms: u64,
    /// Until every other node saw the nodes it downed dead.
    pub detected_ms: Option<u64>,
    /// Until every component ran again under a serving agent.
    pub recovered_ms: Option<u64>,
    /// What it did and what came of it.
    pub notes: Vec<String>,
    /// What went wrong that no invariant covers (a refused forged packet that was accepted,
    /// an agent that died of a full disk ...): any fails the run.
    pub problems: Vec<String>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The seed: the same seed replays the same schedule.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Whether every checked invariant held and no fault had a problem.
    pub passed: bool,
    /// Length of the run, in ms.
    pub duration_ms: u64,
    /// The faults, in order.
    pub faults: Vec<FaultRecord>,
    /// The verdicts, INV-1 to INV-5.
    pub invariants: Vec<Verdict>,
    /// Detection times of the faults that downed nodes.
    pub detection_ms: Figures,
    /// Recovery times.
    pub recovery_ms: Figures,
    /// From the last heal until membership and deployments agreed everywhere.
    pub convergence_ms: Option<u64>,
    /// Σ over time of instances beyond the first of each component.
    pub duplicate_instance_seconds: f64,
    /// Processes of no expected component after convergence.
    pub orphans: Vec<String>,
    /// Healthy, reachable nodes seen dead.
    pub false_deaths: Vec<FalseDeath>,
    /// Agents that exited without the nemesis killing them.
    pub agent_crashes: Vec<String>,
    /// How many observations were taken.
    pub samples: usize,
    /// Where the cluster's files were kept (a failed run keeps them).
    pub kept: Option<String>,
}

fn ms(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |ms| format!("{ms} ms"))
}

impl Report {
    /// The summary for people.
    pub fn human(&self) -> String {
        let mut text = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(
            text,
            "chaos scenario {} · seed {} · {} nodes · {:.1} s · {verdict}",
            self.scenario,
            self.seed,
            self.nodes,
            self.duration_ms as f64 / 1000.0
        );
        let _ = writeln!(text, "\nfaults:");
        for fault in &self.faults {
            let targets = fault.fault.targets().join(",");
            let _ = writeln!(
                text,
                "  {:>7.1} s  {:<18} {:<12} lasted {:>5.1} s  detected {:>8}  recovered {:>8}",
                fault.at_ms as f64 / 1000.0,
                fault.fault.kind().name(),
                if targets.is_empty() {
                    "-".into()
                } else {
                    targets
                },
                (fault.until_ms - fault.at_ms) as f64 / 1000.0,
                ms(fault.detected_ms),
                ms(fault.recovered_ms),
            );
            for note in &fault.notes {
                let _ = writeln!(text, "             {note}");
            }
            for problem in &fault.problems {
                let _ = writeln!(text, "             PROBLEM: {problem}");
            }
        }
        let _ = writeln!(text, "\ninvariants:");
        for verdict in &self.invariants {
            let outcome = match verdict.outcome {
                Outcome::Pass => "pass",
                Outcome::Fail => "FAIL",
                Outcome::NotChecked => "not checked",
            };
            let _ = writeln!(
                text,
                "  {} {:<48} {outcome:<11} {}",
                verdict.invariant, verdict.title, verdict.detail
            );
            for line in verdict.evidence.iter().take(12) {
                let _ = writeln!(text, "        {line}");
            }
            if verdict.evidence.len() > 12 {
                let _ = writeln!(text, "        ... and {} more", verdict.evidence.len() - 12);
            }
        }
        let _ = writeln!(text, "\nfigures:");
        let figures = |f: &Figures| {
            format!(
                "p50 {}, p99 {}, max {} (n={})",
                ms(f.p50),
                ms(f.p99),
                ms(f.max),
                f.count
            )
        };
        let _ = writeln!(text, "  detection       {}", figures(&self.detection_ms));
        let _ = writeln!(text, "  recovery        {}", figures(&self.recovery_ms));
        let _ = writeln!(text, "  convergence     {}", ms(self.convergence_ms));
        let _ = writeln!(
            text,
            "  duplicate instance-seconds {:.1} · orphans {} · false deaths {} · agent crashes {} · samples {}",
            self.duplicate_instance_seconds,
            self.orphans.len(),
            self.false_deaths.len(),
            self.agent_crashes.len(),
            self.samples
        );
        for crash in &self.agent_crashes {
            let _ = writeln!(text, "  agent crash: {crash}");
        }
        for death in &self.false_deaths {
            let _ = writeln!(
                text,
                "  false death: {} saw {} dead from {:.1} s to {:.1} s",
                death.observer,
                death.member,
                death.from_ms as f64 / 1000.0,
                death.until_ms as f64 / 1000.0
            );
        }
        if let Some(kept) = &self.kept {
            let _ = writeln!(
                text,
                "  the cluster's files (agent logs, data dirs) are kept in {kept}"
            );
        }
        text
    }
}

/// Several seeds of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    /// The scenario.
    pub scenario: String,
    /// The seeds run.
    pub seeds: Vec<u64>,
    /// How many runs passed.
    pub passed: usize,
    /// Detection over every fault of every run.
    pub detection_ms: Figures,
    /// Recovery over every fault of every run.
    pub recovery_ms: Figures,
    /// Convergence over the runs.
    pub convergence_ms: Figures,
    /// Per invariant: (passes, failures).
    pub verdicts: Vec<(String, usize, usize)>,
    /// Duplicate instance-seconds, summed.
    pub duplicate_instance_seconds: f64,
    /// False deaths, summed.
    pub false_deaths: usize,
    /// Orphans, summed.
    pub orphans: usize,
}

impl Aggregate {
    /// The aggregate of `reports`.
    pub fn of(reports: &[Report]) -> Aggregate {
        let all = |pick: fn(&FaultRecord) -> Option<u64>| -> Vec<u64> {
            reports
                .iter()
                .flat_map(|report| report.faults.iter().filter_map(pick))
                .collect()
        };
        let verdicts = Invariant::all()
            .into_iter()
            .map(|invariant| {
                let outcomes = reports.iter().filter_map(|report| {
                    report
                        .invariants
                        .iter()
                        .find(|verdict| verdict.invariant == invariant.id())
                        .map(|verdict| verdict.outcome)
                });
                let (mut pass, mut fail) = (0, 0);
                for outcome in outcomes {
                    match outcome {
                        Outcome::Pass => pass += 1,
                        Outcome::Fail => fail += 1,
                        Outcome::NotChecked => {}
                    }
                }
                (invariant.id().to_string(), pass, fail)
            })
            .collect();
        Aggregate {
            scenario: reports
                .first()
                .map(|r| r.scenario.clone())
                .unwrap_or_default(),
            seeds: reports.iter().map(|report| report.seed).collect(),
            passed: reports.iter().filter(|report| report.passed).count(),
            detection_ms: Figures::of(&all(|fault| fault.detected_ms)),
            recovery_ms: Figures::of(&all(|fault| fault.recovered_ms)),
            convergence_ms: Figures::of(
                &reports
                    .iter()
                    .filter_map(|r| r.convergence_ms)
                    .collect::<Vec<_>>(),
            ),
            verdicts,
            duplicate_instance_seconds: reports.iter().map(|r| r.duplicate_instance_seconds).sum(),
            false_deaths: reports.iter().map(|r| r.false_deaths.len()).sum(),
            orphans: reports.iter().map(|r| r.orphans.len()).sum(),
        }
    }

    /// One line per figure, for people.
    pub fn human(&self) -> String {
        let figures =
            |f: &Figures| format!("p50 {} · p99 {} · n={}", ms(f.p50), ms(f.p99), f.count);
        let verdicts: Vec<String> = self
            .verdicts
            .iter()
            .map(|(id, pass, fail)| {
                if pass + fail == 0 {
                    format!("{id} not checked")
                } else {
                    format!("{id} {pass}/{} pass", pass + fail)
                }
            })
            .collect();
        format!(
            "{} over {} seeds: {} passed · detection {} · recovery {} · convergence {} · {} · duplicate instance-seconds {:.1} · false deaths {} · orphans {}\n",
            self.scenario,
            self.seeds.len(),
            self.passed,
            figures(&self.detection_ms),
            figures(&self.recovery_ms),
            figures(&self.convergence_ms),
            verdicts.join(", "),
            self.duplicate_instance_seconds,
            self.false_deaths,
            self.orphans
        )
    }
}
