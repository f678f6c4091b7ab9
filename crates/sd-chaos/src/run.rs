//! One run of a scenario: start the cluster, deploy, let the nemesis loose on its schedule
//! while the observer samples, heal, check the invariants, terminate, check the hosts, and
//! report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sd_proto::{DeploymentState, DeploymentSummary, MemberInfo};
use sd_testkit::{LocalCluster, Options};

use crate::checker::{self, Figures};
use crate::nemesis::Nemesis;
use crate::observe::{self, ComponentKey, Shared};
use crate::report::{FaultRecord, Report, Verdict};
use crate::scenario::{Invariant, Scenario};
use crate::schedule::{self, Rng};
use crate::{Error, Result};

/// The size of a node's data dir that a disk-full fault fills.
const SMALL_DISK_MIB: u64 = 48;
/// How long the first deployment may take to run.
const DEPLOY_WITHIN: Duration = Duration::from_secs(120);
/// How long single placement must hold, once reached, to count.
const STABLE_FOR: Duration = Duration::from_secs(2);
/// How long terminate may take to leave the hosts clean.
const CLEAN_WITHIN: Duration = Duration::from_secs(30);

/// How a run is made.
pub struct RunOptions<'a> {
    /// The `sd` binary the agents run.
    pub binary: PathBuf,
    /// The seed.
    pub seed: u64,
    /// A directory for the cluster's files (created); removed after a run that passed unless
    /// `keep`.
    pub dir: PathBuf,
    /// Keep the cluster's files even when the run passed.
    pub keep: bool,
    /// Told what happens, as it happens.
    pub progress: &'a (dyn Fn(&str) + Sync),
    /// Set (by a signal handler) to stop the run early: it then stops the cluster, leaves
    /// nothing behind, and returns [`Error::Interrupted`].
    pub interrupted: &'a AtomicBool,
}

/// Runs `scenario` (whose files are relative to `scenario_dir`).
pub fn run(scenario: &Scenario, scenario_dir: &Path, options: &RunOptions<'_>) -> Result<Report> {
    let say = options.progress;
    let planned = schedule::plan(scenario, options.seed);
    let description_path = scenario_dir.join(&scenario.deploy.file);
    let description =
        std::fs::read_to_string(&description_path).map_err(|error| Error::Scenario {
            path: description_path.clone(),
            reason: error.to_string(),
        })?;
    let names = scenario.node_names();
    // The accelerator is not probed: a probe boots a guest under KVM for seconds at every
    // agent start, and the scenarios' domains are processes (VMs run under TCG).
    let mut agent_args = vec![
        "--chaos".to_string(),
        "--vm-accelerator".to_string(),
        "tcg".to_string(),
    ];
    agent_args.extend(scenario.agent_args.iter().cloned());
    let cluster_options = Options {
        agent_args,
        small_disks: schedule::small_disks(&planned)
            .into_iter()
            .map(|node| (node, SMALL_DISK_MIB))
            .collect(),
    };
    say(&format!(
        "starting {} agents in {} (seed {})",
        names.len(),
        options.dir.display(),
        options.seed
    ));
    let started = Instant::now();
    let cluster = LocalCluster::start_opts(
        &options.binary,
        &options.dir,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
        &cluster_options,
    )?;
    let shared = Shared::new(started);
    let mut nemesis = Nemesis::new(cluster, Arc::clone(&shared), description.clone())?;
    let mut rng = Rng::new(options.seed ^ 0x00c0_ffee);

    // The deployment under test.
    let deployment = scenario.deploy.name.clone();
    let drawn = names[rng.below(names.len())].clone();
    let through = scenario.deploy.through.clone().unwrap_or(drawn);
    let source = scenario.deploy.file.display().to_string();
    nemesis
        .cluster
        .deploy_from_source(&through, &deployment, &description, &source)?;
    nemesis.acked.push(crate::nemesis::Acked {
        name: deployment.clone(),
        through: through.clone(),
        source,
    });
    nemesis
        .cluster
        .wait_status(&through, &deployment, DEPLOY_WITHIN, |status| {
            status.deployment.state == DeploymentState::Running
        })?;
    shared.follow(&deployment);
    say(&format!(
        "{deployment} deployed through {through} and running"
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let observer = {
        let (shared, stop, watched) = (Arc::clone(&shared), Arc::clone(&stop), nemesis.watched());
        std::thread::spawn(move || observe::observe(&shared, &watched, &stop))
    };
    std::thread::sleep(Duration::from_secs(1));

    let outcome = faults_then_checks(
        scenario,
        &planned,
        &mut nemesis,
        &shared,
        say,
        options.interrupted,
    );
    stop.store(true, Ordering::SeqCst);
    let _ = observer.join();
    let AfterHeal {
        mut records,
        mut verdicts,
        convergence_ms,
        orphans,
        mut crashes,
    } = outcome?;
    nemesis.collect_comebacks(&mut records);

    // Figures from the history.
    let samples = shared.samples();
    let followed = shared.followed();
    let starts: Vec<u64> = records.iter().map(|record| record.at_ms).collect();
    for (index, record) in records.iter_mut().enumerate() {
        let next = starts.get(index + 1).copied().unwrap_or(u64::MAX);
        let downed = record.fault.downed();
        record.detected_ms =
            checker::detection_ms(&samples, record.at_ms, record.until_ms, &downed);
        // A fault that downs nodes disrupts what ran there: how long until it runs again.
        if !downed.is_empty() && record.recovered_ms.is_none() {
            let expected = checker::running_before(&samples, record.at_ms, &followed);
            record.recovered_ms = checker::recovery_ms(&samples, record.at_ms, next, &expected);
        }
    }
    let (violations, declared) = checker::restart_violations(&shared.status_samples());
    if scenario.invariants.contains(&Invariant::BoundedRestarts) {
        let detail = if declared {
            format!(
                "children's restarts counted between {} status samples, per parent and window",
                shared.status_samples().len()
            )
        } else {
            "no parent declared its supervision in the statuses read".into()
        };
        verdicts.push(Verdict::new(Invariant::BoundedRestarts, detail, violations));
    }

    // Terminate, then INV-3.
    let clean = terminate_and_check(&mut nemesis, &mut rng, say);
    if scenario.invariants.contains(&Invariant::CleanHosts) {
        verdicts.push(clean);
    }
    crashes.extend(
        nemesis
            .cluster
            .exited_agents()
            .into_iter()
            .map(|(node, status)| format!("{node}: {status}")),
    );
    verdicts.sort_by_key(|verdict| verdict.invariant);
    for invariant in Invariant::all() {
        if !scenario.invariants.contains(&invariant) {
            verdicts.push(Verdict::not_checked(invariant));
        }
    }
    verdicts.sort_by_key(|verdict| verdict.invariant);
    let passed = verdicts
        .iter()
        .all(|verdict| verdict.outcome != crate::report::Outcome::Fail)
        && records.iter().all(|record| record.problems.is_empty())
        && crashes.is_empty();
    let detection: Vec<u64> = records.iter().filter_map(|r| r.detected_ms).collect();
    let recovery: Vec<u64> = records.iter().filter_map(|r| r.recovered_ms).collect();
    let report = Report {
        scenario: scenario.name.clone(),
        seed: options.seed,
        nodes: names.len(),
        passed,
        duration_ms: shared.now_ms(),
        faults: records,
        invariants: verdicts,
        detection_ms: Figures::of(&detection),
        recovery_ms: Figures::of(&recovery),
        convergence_ms,
        duplicate_instance_seconds: checker::duplicate_instance_seconds(&samples),
        orphans,
        false_deaths: checker::false_deaths(&samples),
        agent_crashes: crashes,
        samples: samples.len(),
        kept: (!passed || options.keep).then(|| options.dir.display().to_string()),
    };
    // Agents stopped and small disks unmounted before their directory goes.
    drop(nemesis);
    if report.kept.is_none() {
        let _ = std::fs::remove_dir_all(&options.dir);
    }
    Ok(report)
}

/// What the fault phase and the checks after the heal found.
struct AfterHeal {
    /// The faults as they happened.
    records: Vec<FaultRecord>,
    /// INV-4, INV-1 and INV-2, as far as the scenario checks them.
    verdicts: Vec<Verdict>,
    /// From the heal until INV-4 held.
    convergence_ms: Option<u64>,
    /// Workloads of no expected component.
    orphans: Vec<String>,
    /// Agents that exited on their own.
    crashes: Vec<String>,
}

/// The fault phase, the heal, and the checks after it (INV-4, INV-1, INV-2).
fn faults_then_checks(
    scenario: &Scenario,
    planned: &[schedule::Planned],
    nemesis: &mut Nemesis,
    shared: &Shared,
    say: &(dyn Fn(&str) + Sync),
    interrupted: &AtomicBool,
) -> Result<AfterHeal> {
    // Starts and ends in time order; at one instant, ends first.
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (index, planned) in planned.iter().enumerate() {
        events.push((planned.at_ms, false, index));
        if planned.fault.kind().lasts() {
            events.push((planned.at_ms + planned.lasts_ms, true, index));
        }
    }
    events.sort_by_key(|&(at, is_end, index)| (at, !is_end, index));
    let phase = Instant::now();
    let mut open: BTreeMap<usize, FaultRecord> = BTreeMap::new();
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut crashes = Vec::new();
    for (at, is_end, index) in events {
        sleep_until(phase + Duration::from_millis(at), interrupted)?;
        if is_end {
            if let Some(mut record) = open.remove(&index) {
                nemesis.end(&mut record)?;
                say(&format!(
                    "{:>7.1} s  {} over",
                    shared.now_ms() as f64 / 1000.0,
                    record.fault.kind().name()
                ));
                records.push(record);
            }
        } else {
            let fault = &planned[index].fault;
            let record = nemesis.start(fault)?;
            say(&format!(
                "{:>7.1} s  {} {}{}",
                record.at_ms as f64 / 1000.0,
                fault.kind().name(),
                fault.targets().join(","),
                if fault.kind().lasts() {
                    format!(" for {:.1} s", planned[index].lasts_ms as f64 / 1000.0)
                } else {
                    String::new()
                }
            ));
            for note in &record.notes {
                say(&format!("           {note}"));
            }
            if fault.kind().lasts() {
                open.insert(index, record);
            } else {
                records.push(record);
            }
        }
        note_crashes(nemesis, shared, &mut crashes, say);
    }
    sleep_until(
        phase + Duration::from_secs_f64(scenario.duration_secs),
        interrupted,
    )?;
    records.sort_by_key(|record| record.at_ms);
    let heal_ms = shared.now_ms();
    say(&format!(
        "{:>7.1} s  healed; checking convergence (within {} s)",
        heal_ms as f64 / 1000.0,
        scenario.converge_within_secs
    ));
    let deadline = Instant::now() + Duration::from_secs_f64(scenario.converge_within_secs);
    let mut verdicts = Vec::new();

    // INV-4: every running agent sees the same members alive and the same deployments.
    let (converged, disagreement) = converge(nemesis, deadline, interrupted);
    let convergence_ms = converged.then(|| shared.now_ms() - heal_ms);
    if scenario.invariants.contains(&Invariant::Convergence) {
        let detail = match convergence_ms {
            Some(ms) => format!("agreed {ms} ms after the heal"),
            None => format!("no agreement within {} s", scenario.converge_within_secs),
        };
        verdicts.push(Verdict::new(Invariant::Convergence, detail, disagreement));
    }

    // INV-1: once converged, one instance of each component, and nothing else of ours.
    let expected = expected_components(nemesis, shared);
    let (placed_after, mut misplaced, orphans) =
        single_placement(nemesis, &expected, deadline, interrupted);
    if interrupted.load(Ordering::SeqCst) {
        return Err(Error::Interrupted);
    }
    if !misplaced.is_empty() {
        misplaced.extend(component_states(nemesis, &misplaced));
    }
    if scenario.invariants.contains(&Invariant::SinglePlacement) {
        let detail = match placed_after {
            Some(at) => format!(
                "{} components, one instance each, {} ms after the heal (held {} s)",
                expected.len(),
                at.saturating_sub(heal_ms),
                STABLE_FOR.as_secs()
            ),
            None => format!(
                "{} components; not one instance each within {} s of the heal",
                expected.len(),
                scenario.converge_within_secs
            ),
        };
        verdicts.push(Verdict::new(Invariant::SinglePlacement, detail, misplaced));
    }

    // INV-2: what was acknowledged runs; what was refused does not.
    if scenario.invariants.contains(&Invariant::NothingLost) {
        let (detail, evidence) = nothing_lost(nemesis, shared);
        verdicts.push(Verdict::new(Invariant::NothingLost, detail, evidence));
    }
    note_crashes(nemesis, shared, &mut crashes, say);
    Ok(AfterHeal {
        records,
        verdicts,
        convergence_ms,
        orphans,
        crashes,
    })
}

/// Sleeps until `when`, or fails as soon as the run is interrupted.
fn sleep_until(when: Instant, interrupted: &AtomicBool) -> Result<()> {
    loop {
        if interrupted.load(Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        let Some(rest) = when.checked_duration_since(Instant::now()) else {
            return Ok(());
        };
        std::thread::sleep(rest.min(Duration::from_millis(50)));
    }
}

/// Agents that died on their own: reported, and down from then on.
fn note_crashes(
    nemesis: &mut Nemesis,
    shared: &Shared,
    crashes: &mut Vec<String>,
    say: &(dyn Fn(&str) + Sync),
) {
    for (node, status) in nemesis.cluster.exited_agents() {
        say(&format!("           AGENT CRASH: {node} exited ({status})"));
        shared.change(|world| {
            world.down.insert(node.clone());
        });
        crashes.push(format!("{node}: {status}"));
    }
}

/// The running agents.
fn running_nodes(nemesis: &Nemesis) -> Vec<String> {
    nemesis
        .cluster
        .nodes()
        .iter()
        .filter(|node| node.agent_pid().is_some())
        .map(|node| node.name.clone())
        .collect()
}

/// Polls until every running agent sees exactly the running agents alive and lists the same
/// deployments (name, root, epoch, state); the last disagreement otherwise.
fn converge(nemesis: &Nemesis, deadline: Instant, interrupted: &AtomicBool) -> (bool, Vec<String>) {
    loop {
        let running = running_nodes(nemesis);
        let expected: BTreeSet<String> = running.iter().cloned().collect();
        let mut disagreement = Vec::new();
        let mut lists: BTreeMap<String, BTreeSet<(String, String, u64, String)>> = BTreeMap::new();
        for node in &running {
            match ask::<Vec<MemberInfo>>(nemesis, node, "/nodes") {
                Ok(members) => {
                    let alive: BTreeSet<String> = members
                        .into_iter()
                        .filter(|m| m.state == "alive")
                        .map(|m| m.name)
                        .collect();
                    if alive != expected {
                        disagreement.push(format!(
                            "{node} sees alive {alive:?}, running are {expected:?}"
                        ));
                    }
                }
                Err(error) => disagreement.push(format!("{node}: {error}")),
            }
            match ask::<Vec<DeploymentSummary>>(nemesis, node, "/deployments") {
                Ok(listed) => {
                    lists.insert(
                        node.clone(),
                        listed
                            .into_iter()
                            .map(|d| (d.name, d.root_node, d.epoch, d.state.name().to_string()))
                            .collect(),
                    );
                }
                Err(error) => disagreement.push(format!("{node}: {error}")),
            }
        }
        let distinct: BTreeSet<_> = lists.values().collect();
        if distinct.len() > 1 {
            for (node, list) in &lists {
                disagreement.push(format!("{node} lists {list:?}"));
            }
        }
        if disagreement.is_empty() {
            return (true, Vec::new());
        }
        if Instant::now() > deadline || interrupted.load(Ordering::SeqCst) {
            return (false, disagreement);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// GET `path` on `node`'s API, given up after 5 s.
fn ask<T: serde::de::DeserializeOwned>(
    nemesis: &Nemesis,
    node: &str,
    path: &str,
) -> std::result::Result<T, String> {
    let target = nemesis
        .cluster
        .node(node)
        .map_err(|error| error.to_string())?;
    target
        .probe()
        .get(path, Duration::from_secs(5))
        .map_err(|error| error.to_string())
}

/// A deployment's status from the first of `running` that answers.
fn status_from_any(
    nemesis: &Nemesis,
    running: &[String],
    name: &str,
) -> Option<sd_proto::DeploymentStatus> {
    running
        .iter()
        .find_map(|node| ask(nemesis, node, &format!("/deployments/{name}")).ok())
}

/// The domains of the followed deployments that exist, as their statuses list them.
fn expected_components(nemesis: &Nemesis, shared: &Shared) -> BTreeSet<ComponentKey> {
    let running = running_nodes(nemesis);
    let mut expected = BTreeSet::new();
    for name in shared.followed() {
        let status = status_from_any(nemesis, &running, &name);
        // A failed deployment has nothing left to run (INV-2 judges its failure).
        if let Some(status) = status
            && !matches!(status.deployment.state, DeploymentState::Failed { .. })
        {
            expected.extend(
                status
                    .components
                    .iter()
                    .filter(|component| component.kind.ends_with("Domain"))
                    .map(|component| (name.clone(), component.path.clone())),
            );
        }
    }
    expected
}

/// What the agents say of the components named in `evidence` (state, node, restarts, last
/// error): the other half of a placement violation's story.
fn component_states(nemesis: &Nemesis, evidence: &[String]) -> Vec<String> {
    let running = running_nodes(nemesis);
    let mut said = Vec::new();
    let deployments: BTreeSet<&str> = evidence
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for name in deployments {
        let status = status_from_any(nemesis, &running, name);
        let Some(status) = status else { continue };
        for component in &status.components {
            let named = evidence
                .iter()
                .any(|line| line.starts_with(&format!("{name} {}: ", component.path)));
            if named {
                said.push(format!(
                    "  status of {name} {}: {} on {}, {} restarts{}",
                    component.path,
                    component.state.name(),
                    component.node,
                    component.restarts,
                    component
                        .last_error
                        .as_ref()
                        .map(|error| format!(", last error: {error}"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    said
}

/// Polls until each expected component runs exactly once and no other workload exists, for
/// [`STABLE_FOR`]. Returns when that began (ms since the run started), the evidence of the
/// last poll otherwise, and the orphans (workloads of no expected component).
fn single_placement(
    nemesis: &Nemesis,
    expected: &BTreeSet<ComponentKey>,
    deadline: Instant,
    interrupted: &AtomicBool,
) -> (Option<u64>, Vec<String>, Vec<String>) {
    let watched = nemesis.watched();
    let mut holding_since: Option<Instant> = None;
    loop {
        let instances = observe::instances(&watched);
        let mut evidence = Vec::new();
        for key in expected {
            let running = instances.get(key).map_or(&[][..], Vec::as_slice);
            if running.len() != 1 {
                evidence.push(format!(
                    "{} {}: {} instances{}",
                    key.0,
                    key.1,
                    running.len(),
                    where_(running)
                ));
            }
        }
        let orphans: Vec<String> = instances
            .iter()
            .filter(|(key, _)| !expected.contains(*key))
            .map(|(key, running)| format!("{} {}{}", key.0, key.1, where_(running)))
            .collect();
        evidence.extend(orphans.iter().map(|orphan| format!("orphan: {orphan}")));
        if evidence.is_empty() {
            let since = *holding_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= STABLE_FOR {
                let held = u64::try_from(since.elapsed().as_millis()).unwrap_or(0);
                let at = nemesis.now_ms().saturating_sub(held);
                return (Some(at), Vec::new(), orphans);
            }
        } else {
            holding_since = None;
            if Instant::now() > deadline || interrupted.load(Ordering::SeqCst) {
                return (None, evidence, orphans);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn where_(running: &[(String, u32)]) -> String {
    if running.is_empty() {
        return String::new();
    }
    let places: Vec<String> = running
        .iter()
        .map(|(node, pid)| format!("{node}:{pid}"))
        .collect();
    format!(" ({})", places.join(", "))
}

/// INV-2's evidence: every acknowledged deploy listed by every running agent, running, from
/// the source it was acknowledged with, and no two acknowledged for one name; no refused one
/// carried out. A deploy that failed before it ever ran, with its reason, was visibly
/// rejected (INV-2's own words); one that ran and then failed was lost.
fn nothing_lost(nemesis: &Nemesis, shared: &Shared) -> (String, Vec<String>) {
    let running = running_nodes(nemesis);
    let ran = shared.ever_running();
    let mut rejected = BTreeSet::new();
    let mut evidence = Vec::new();
    let mut by_name: BTreeMap<&str, Vec<&crate::nemesis::Acked>> = BTreeMap::new();
    for acked in &nemesis.acked {
        by_name.entry(acked.name.as_str()).or_default().push(acked);
    }
    for (name, acks) in &by_name {
        if acks.len() > 1 {
            let through: Vec<&str> = acks.iter().map(|a| a.through.as_str()).collect();
            evidence.push(format!(
                "{name}: {} deploys acknowledged (through {}): one of them cannot be carried out",
                acks.len(),
                through.join(", ")
            ));
        }
        for node in &running {
            match ask::<Vec<DeploymentSummary>>(nemesis, node, "/deployments") {
                Ok(listed) => match listed.iter().find(|d| d.name == *name) {
                    None => evidence.push(format!("{name}: acknowledged, not listed by {node}")),
                    Some(summary) => {
                        match &summary.state {
                            DeploymentState::Running => {}
                            DeploymentState::Failed { reason } if !ran.contains(*name) => {
                                rejected.insert(format!("{name} ({reason})"));
                            }
                            state => evidence.push(format!(
                                "{name}: {} as {node} lists it{}",
                                state.name(),
                                if ran.contains(*name) {
                                    ", after it ran"
                                } else {
                                    ""
                                }
                            )),
                        }
                        if !acks.iter().any(|a| a.source == summary.source) {
                            evidence.push(format!(
                                "{name}: {node} lists it from {}, acknowledged from {}",
                                summary.source, acks[0].source
                            ));
                        }
                    }
                },
                Err(error) => evidence.push(format!("{node}: {error}")),
            }
        }
    }
    for refused in &nemesis.refused {
        for node in &running {
            if let Ok(listed) = ask::<Vec<DeploymentSummary>>(nemesis, node, "/deployments")
                && listed
                    .iter()
                    .any(|d| d.name == refused.name && d.source == refused.source)
            {
                evidence.push(format!(
                    "{}: refused ({}) yet {node} lists it from {}",
                    refused.name, refused.reason, refused.source
                ));
            }
        }
    }
    let rejected: Vec<String> = rejected.into_iter().collect();
    let detail = format!(
        "{} acknowledged deploys{}, {} refused, checked on {} agents",
        nemesis.acked.len(),
        if rejected.is_empty() {
            String::new()
        } else {
            format!(
                " ({} failed before running: {})",
                rejected.len(),
                rejected.join("; ")
            )
        },
        nemesis.refused.len(),
        running.len()
    );
    evidence.dedup();
    (detail, evidence)
}

/// Terminates every deployment (through a node drawn from the seed) and checks INV-3.
fn terminate_and_check(
    nemesis: &mut Nemesis,
    rng: &mut Rng,
    say: &(dyn Fn(&str) + Sync),
) -> Verdict {
    let mut evidence = Vec::new();
    let running = running_nodes(nemesis);
    let names: BTreeSet<String> = nemesis.acked.iter().map(|a| a.name.clone()).collect();
    let started = Instant::now();
    if !running.is_empty() {
        let through = running[rng.below(running.len())].clone();
        for name in &names {
            if let Err(error) = nemesis.cluster.terminate(&through, name) {
                evidence.push(format!("terminate {name} through {through}: {error}"));
            }
        }
        say(&format!(
            "terminated {} deployments through {through}",
            names.len()
        ));
    }
    let deadline = Instant::now() + CLEAN_WITHIN;
    loop {
        let leftovers = leftovers(nemesis);
        if leftovers.is_empty() || Instant::now() > deadline {
            let detail = format!(
                "clean {} ms after terminate: no process, VM, loop device, directory or listing left",
                started.elapsed().as_millis()
            );
            evidence.extend(leftovers);
            if !evidence.is_empty() {
                return Verdict::new(
                    Invariant::CleanHosts,
                    format!("not clean {} s after terminate", CLEAN_WITHIN.as_secs()),
                    evidence,
                );
            }
            return Verdict::new(Invariant::CleanHosts, detail, Vec::new());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What is left on the hosts: processes (and VMs) of any deployment, deployment directories,
/// loop devices backed by a file of the cluster, deployments still listed.
fn leftovers(nemesis: &Nemesis) -> Vec<String> {
    let mut left = Vec::new();
    for workload in nemesis.cluster.all_workloads() {
        left.push(format!(
            "process {} on {}: {} {}",
            workload.pid, workload.node, workload.deployment, workload.component
        ));
    }
    for node in nemesis.cluster.nodes() {
        let dir = node.data_dir.join("deployments");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                left.push(format!("directory {}", entry.path().display()));
            }
        }
        if node.agent_pid().is_some()
            && let Ok(listed) = node
                .probe()
                .get::<Vec<DeploymentSummary>>("/deployments", Duration::from_secs(5))
        {
            for deployment in listed {
                left.push(format!("{} still lists {}", node.name, deployment.name));
            }
        }
    }
    let root = nemesis.cluster.dir().display().to_string();
    if let Ok(devices) = std::fs::read_dir("/sys/block") {
        for device in devices.flatten() {
            let backing = device.path().join("loop/backing_file");
            if let Ok(file) = std::fs::read_to_string(&backing)
                && file.trim().starts_with(&root)
            {
                left.push(format!(
                    "loop device {} backed by {}",
                    device.file_name().to_string_lossy(),
                    file.trim()
                ));
            }
        }
    }
    left
}
