//! The checker: verdicts and figures computed from the observer's samples. Pure functions of
//! the history, so each rule is unit-tested on made-up histories, violations included.
//!
//! Figures are as fine as the sampling ([`crate::observe::SAMPLE_EVERY`]).

use std::collections::{BTreeMap, BTreeSet};

use sd_proto::DeploymentStatus;
use serde::Serialize;

use crate::observe::{ComponentKey, Sample, StatusSample, World};

/// How long after a node's condition changed its peers' views may still be wrong about it.
pub const VIEW_GRACE_MS: u64 = 8_000;

/// Milliseconds from `at_ms` until every node in `downed` is seen not alive by every healthy
/// node outside it (one of them at least answering); `None` if that never happens before
/// `until_ms`.
pub fn detection_ms(
    samples: &[Sample],
    at_ms: u64,
    until_ms: u64,
    downed: &[String],
) -> Option<u64> {
    if downed.is_empty() {
        return None;
    }
    samples
        .iter()
        .filter(|sample| sample.t_ms >= at_ms && sample.t_ms <= until_ms)
        .find(|sample| {
            let observers: Vec<&BTreeSet<String>> = sample
                .views
                .iter()
                .filter(|(observer, _)| !downed.contains(*observer))
                .map(|(_, alive)| alive)
                .collect();
            !observers.is_empty()
                && observers
                    .iter()
                    .all(|alive| downed.iter().all(|node| !alive.contains(node)))
        })
        .map(|sample| sample.t_ms - at_ms)
}

/// Whether a node serves: its agent runs, answers, and is on the majority's side.
fn serving(world: &World, node: &str) -> bool {
    world.healthy(node)
        && world
            .cut
            .as_ref()
            .is_none_or(|(side, _)| !side.contains(node))
}

/// Milliseconds from `at_ms` until each of `expected` runs at least once on a node that
/// serves (agent up, answering, in the majority); `None` if not by `until_ms`.
pub fn recovery_ms(
    samples: &[Sample],
    at_ms: u64,
    until_ms: u64,
    expected: &BTreeSet<ComponentKey>,
) -> Option<u64> {
    samples
        .iter()
        .filter(|sample| sample.t_ms >= at_ms && sample.t_ms <= until_ms)
        .find(|sample| {
            expected.iter().all(|key| {
                sample.instances.get(key).is_some_and(|running| {
                    running.iter().any(|(node, _)| serving(&sample.world, node))
                })
            })
        })
        .map(|sample| sample.t_ms - at_ms)
}

/// The components running in the latest sample before `at_ms`, of `deployments`.
pub fn running_before(
    samples: &[Sample],
    at_ms: u64,
    deployments: &BTreeSet<String>,
) -> BTreeSet<ComponentKey> {
    samples
        .iter()
        .rev()
        .find(|sample| sample.t_ms < at_ms)
        .map(|sample| {
            sample
                .instances
                .keys()
                .filter(|(deployment, _)| deployments.contains(deployment))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Σ over time of the instances beyond the first of each component, in seconds.
pub fn duplicate_instance_seconds(samples: &[Sample]) -> f64 {
    samples
        .windows(2)
        .map(|pair| {
            let extra: usize = pair[0]
                .instances
                .values()
                .map(|running| running.len().saturating_sub(1))
                .sum();
            #[allow(clippy::cast_precision_loss)]
            let seconds = (pair[1].t_ms - pair[0].t_ms) as f64 / 1000.0;
            #[allow(clippy::cast_precision_loss)]
            let extra = extra as f64;
            extra * seconds
        })
        .sum()
}

/// A member seen dead although it ran, answered and could be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FalseDeath {
    /// Who saw it dead.
    pub observer: String,
    /// Who was seen dead.
    pub member: String,
    /// From when (ms since the run started).
    pub from_ms: u64,
    /// Until when.
    pub until_ms: u64,
}

/// Every episode of a node seen dead by another while both were healthy, connected, and
/// untouched by the nemesis for [`VIEW_GRACE_MS`].
pub fn false_deaths(samples: &[Sample]) -> Vec<FalseDeath> {
    // When each node's condition last changed, as the samples go.
    let mut since: BTreeMap<String, u64> = BTreeMap::new();
    let mut previous: Option<&World> = None;
    let mut open: BTreeMap<(String, String), FalseDeath> = BTreeMap::new();
    let mut episodes = Vec::new();
    for sample in samples {
        let world = &sample.world;
        let nodes: BTreeSet<&String> = sample
            .views
            .keys()
            .chain(sample.views.values().flatten())
            .collect();
        for node in &nodes {
            let changed =
                previous.is_none_or(|before| condition(before, node) != condition(world, node));
            if changed {
                since.insert((*node).clone(), sample.t_ms);
            }
        }
        previous = Some(world);
        let settled = |node: &str| {
            since
                .get(node)
                .is_some_and(|&t| sample.t_ms.saturating_sub(t) >= VIEW_GRACE_MS)
                && world.healthy(node)
                && !world.faulty.contains(node)
        };
        let mut seen_now = BTreeSet::new();
        for (observer, alive) in &sample.views {
            for member in &nodes {
                if *member == observer
                    || alive.contains(*member)
                    || !settled(observer)
                    || !settled(member)
                    || !world.connected(observer, member)
                {
                    continue;
                }
                let key = (observer.clone(), (*member).clone());
                seen_now.insert(key.clone());
                open.entry(key)
                    .and_modify(|episode| episode.until_ms = sample.t_ms)
                    .or_insert_with(|| FalseDeath {
                        observer: observer.clone(),
                        member: (*member).clone(),
                        from_ms: sample.t_ms,
                        until_ms: sample.t_ms,
                    });
            }
        }
        let ended: Vec<_> = open
            .keys()
            .filter(|key| !seen_now.contains(*key))
            .cloned()
            .collect();
        for key in ended {
            if let Some(episode) = open.remove(&key) {
                episodes.push(episode);
            }
        }
    }
    episodes.extend(open.into_values());
    episodes
}

/// A node's condition, as far as views of it go.
fn condition(world: &World, node: &str) -> (bool, bool, Option<bool>, bool) {
    (
        world.down.contains(node),
        world.paused.contains(node),
        world.cut.as_ref().map(|(side, _)| side.contains(node)),
        world.faulty.contains(node),
    )
}

/// INV-5: every parent's children restarted at most its declared `sdMaxRestarts` times within
/// any `sdRestartWindow`, counted between status samples of the same incarnation of the
/// parent. Returns the violations, and whether any parent declared its supervision at all.
pub fn restart_violations(samples: &[StatusSample]) -> (Vec<String>, bool) {
    // (deployment, parent path) -> its series: (t, incarnation, declared, children's counts).
    type Series = Vec<(
        u64,
        (u32, Option<u64>),
        sd_proto::Supervision,
        BTreeMap<String, u32>,
    )>;
    let mut series: BTreeMap<(String, String), Series> = BTreeMap::new();
    for sample in samples {
        for status in &sample.statuses {
            for (parent, children) in families(status) {
                let Some(declared) = parent.supervision.clone() else {
                    continue;
                };
                let incarnation = (parent.restarts, parent.started_unix_ms);
                let counts = children
                    .iter()
                    .map(|child| (child.path.clone(), child.restarts))
                    .collect();
                series
                    .entry((status.deployment.name.clone(), parent.path.clone()))
                    .or_default()
                    .push((sample.t_ms, incarnation, declared, counts));
            }
        }
    }
    let declared_any = !series.is_empty();
    let mut violations = Vec::new();
    for ((deployment, parent), points) in series {
        'pairs: for (i, first) in points.iter().enumerate() {
            for last in &points[i + 1..] {
                let (t0, incarnation, declared, before) = first;
                let (t1, later_incarnation, _, after) = last;
                if t1 - t0 > declared.window_ms || incarnation != later_incarnation {
                    continue;
                }
                let deltas = after.iter().map(|(child, &count)| {
                    before
                        .get(child)
                        .map_or(0, |&earlier| count.saturating_sub(earlier))
                });
                // One restart decision of one_for_all or rest_for_one restarts several
                // children at once: only one_for_one's children add up.
                let restarts: u32 = if declared.strategy == "one_for_one" {
                    deltas.sum()
                } else {
                    deltas.max().unwrap_or(0)
                };
                if restarts > declared.max_restarts {
                    #[allow(clippy::cast_precision_loss)]
                    violations.push(format!(
                        "{deployment} {parent}: {restarts} restarts of its children within {:.1} s (from {:.1} s), more than sdMaxRestarts {} in {:.0} s",
                        (t1 - t0) as f64 / 1000.0,
                        *t0 as f64 / 1000.0,
                        declared.max_restarts,
                        declared.window_ms as f64 / 1000.0
                    ));
                    break 'pairs;
                }
            }
        }
    }
    (violations, declared_any)
}

/// Each component with its children (by path: a child's path is its parent's plus one step).
fn families(
    status: &DeploymentStatus,
) -> Vec<(&sd_proto::ComponentStatus, Vec<&sd_proto::ComponentStatus>)> {
    status
        .components
        .iter()
        .map(|parent| {
            let children = status
                .components
                .iter()
                .filter(|child| {
                    child
                        .path
                        .rsplit_once(':')
                        .is_some_and(|(up, _)| up == parent.path)
                })
                .collect();
            (parent, children)
        })
        .collect()
}

/// Figures over a set of measurements.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// How many.
    pub count: usize,
    /// Median.
    pub p50: Option<u64>,
    /// 99th percentile (nearest rank).
    pub p99: Option<u64>,
    /// Largest.
    pub max: Option<u64>,
}

impl Figures {
    /// The figures of `values`.
    pub fn of(values: &[u64]) -> Figures {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let rank = |q: f64| {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[index]
        };
        if sorted.is_empty() {
            return Figures::default();
        }
        Figures {
            count: sorted.len(),
            p50: Some(rank(0.5)),
            p99: Some(rank(0.99)),
            max: sorted.last().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sd_proto::{
        ComponentState, ComponentStatus, DeploymentState, DeploymentSummary, Supervision,
    };

    fn key(component: &str) -> ComponentKey {
        ("d".to_string(), component.to_string())
    }

    fn sample(
        t_ms: u64,
        world: World,
        running: &[(&str, &str)],
        views: &[(&str, &[&str])],
    ) -> Sample {
        let mut instances: BTreeMap<ComponentKey, Vec<(String, u32)>> = BTreeMap::new();
        for (i, (component, node)) in running.iter().enumerate() {
            instances
                .entry(key(component))
                .or_default()
                .push(((*node).to_string(), 100 + i as u32));
        }
        Sample {
            t_ms,
            world,
            instances,
            views: views
                .iter()
                .map(|(observer, alive)| {
                    (
                        (*observer).to_string(),
                        alive.iter().map(|name| (*name).to_string()).collect(),
                    )
                })
                .collect(),
        }
    }

    fn down(node: &str) -> World {
        World {
            down: BTreeSet::from([node.to_string()]),
            ..World::default()
        }
    }

    const ALL: &[&str] = &["a", "b", "c"];

    #[test]
    fn detection_is_when_every_other_node_sees_the_lost_one_dead() {
        let samples = vec![
            sample(
                1000,
                World::default(),
                &[],
                &[("a", ALL), ("b", ALL), ("c", ALL)],
            ),
            sample(1200, down("c"), &[], &[("a", ALL), ("b", ALL)]),
            sample(2400, down("c"), &[], &[("a", &["a", "b"]), ("b", ALL)]),
            sample(
                2600,
                down("c"),
                &[],
                &[("a", &["a", "b"]), ("b", &["a", "b"])],
            ),
        ];
        let lost = vec!["c".to_string()];
        assert_eq!(detection_ms(&samples, 1100, 9000, &lost), Some(1500));
        assert_eq!(
            detection_ms(&samples, 1100, 2500, &lost),
            None,
            "not within the fault"
        );
    }

    #[test]
    fn recovery_is_when_everything_runs_under_serving_agents() {
        let expected = BTreeSet::from([key("w1"), key("w2")]);
        let samples = vec![
            sample(1000, World::default(), &[("w1", "a"), ("w2", "c")], &[]),
            // c's agent is killed: w2 still runs there, unsupervised.
            sample(1200, down("c"), &[("w1", "a"), ("w2", "c")], &[]),
            sample(
                2800,
                down("c"),
                &[("w1", "a"), ("w2", "c"), ("w2", "b")],
                &[],
            ),
        ];
        assert_eq!(recovery_ms(&samples, 1100, 9000, &expected), Some(1700));
        assert_eq!(
            running_before(&samples, 1100, &BTreeSet::from(["d".to_string()])),
            expected
        );
        // 1.6 s with one extra instance of w2... only in the last interval, which has no end.
        assert!((duplicate_instance_seconds(&samples) - 0.0).abs() < 1e-9);
        let mut longer = samples.clone();
        longer.push(sample(
            3800,
            World::default(),
            &[("w1", "a"), ("w2", "b")],
            &[],
        ));
        assert!((duplicate_instance_seconds(&longer) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_death_is_false_only_between_settled_connected_healthy_nodes() {
        let cut = World {
            cut: Some((BTreeSet::from(["c".to_string()]), true)),
            ..World::default()
        };
        let mut samples = Vec::new();
        // 10 s of a healthy cluster, a seeing c dead from 9 s on: false.
        for t in (0..10_000).step_by(1000) {
            let a_sees: &[&str] = if t >= 9000 { &["a", "b"] } else { ALL };
            samples.push(sample(
                t,
                World::default(),
                &[],
                &[("a", a_sees), ("b", ALL), ("c", ALL)],
            ));
        }
        // Then c is cut off: a and b seeing it dead is right, long after too.
        for t in (10_000..30_000).step_by(1000) {
            samples.push(sample(
                t,
                cut.clone(),
                &[],
                &[("a", &["a", "b"]), ("b", &["a", "b"]), ("c", &["c"])],
            ));
        }
        let deaths = false_deaths(&samples);
        assert_eq!(
            deaths,
            vec![FalseDeath {
                observer: "a".into(),
                member: "c".into(),
                from_ms: 9000,
                until_ms: 9000
            }]
        );
    }

    fn status(t_counts: &[(&str, u32)], strategy: &str, parent_restarts: u32) -> DeploymentStatus {
        let component =
            |path: &str, restarts: u32, supervision: Option<Supervision>| ComponentStatus {
                path: path.into(),
                kind: "Compound".into(),
                state: ComponentState::Running,
                node: "a".into(),
                pid: None,
                restarts,
                started_unix_ms: Some(1),
                last_error: None,
                supervision,
                settings: Vec::new(),
            };
        let mut components = vec![component(
            "sfConfig",
            parent_restarts,
            Some(Supervision {
                strategy: strategy.into(),
                max_restarts: 3,
                window_ms: 10_000,
            }),
        )];
        for (path, restarts) in t_counts {
            components.push(component(path, *restarts, None));
        }
        DeploymentStatus {
            deployment: DeploymentSummary {
                name: "d".into(),
                state: DeploymentState::Running,
                source: "d.sf".into(),
                root_node: "a".into(),
                created_unix_ms: 0,
                components: components.len(),
                running: components.len(),
                epoch: 1,
            },
            components,
        }
    }

    #[test]
    fn restarts_beyond_the_declared_intensity_are_caught() {
        let at = |t_ms, counts: &[(&str, u32)], strategy, parent| StatusSample {
            t_ms,
            statuses: vec![status(counts, strategy, parent)],
        };
        // Four restarts of one_for_one children within 10 s: one too many.
        let samples = vec![
            at(0, &[("sfConfig:x", 0), ("sfConfig:y", 0)], "one_for_one", 0),
            at(
                5000,
                &[("sfConfig:x", 2), ("sfConfig:y", 2)],
                "one_for_one",
                0,
            ),
        ];
        let (violations, declared) = restart_violations(&samples);
        assert!(declared);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("4 restarts"), "{violations:?}");
        // The same counts under one_for_all are two decisions: within.
        let samples: Vec<StatusSample> = samples
            .iter()
            .map(|s| StatusSample {
                t_ms: s.t_ms,
                statuses: vec![status(
                    &[
                        ("sfConfig:x", if s.t_ms == 0 { 0 } else { 2 }),
                        ("sfConfig:y", if s.t_ms == 0 { 0 } else { 2 }),
                    ],
                    "one_for_all",
                    0,
                )],
            })
            .collect();
        assert!(restart_violations(&samples).0.is_empty());
        // Spread over more than the window: within.
        let samples = vec![
            at(0, &[("sfConfig:x", 0)], "one_for_one", 0),
            at(11_000, &[("sfConfig:x", 4)], "one_for_one", 0),
        ];
        assert!(restart_violations(&samples).0.is_empty());
        // Across a restart of the parent itself (it escalated): a new window.
        let samples = vec![
            at(0, &[("sfConfig:x", 0)], "one_for_one", 0),
            at(5000, &[("sfConfig:x", 4)], "one_for_one", 1),
        ];
        assert!(restart_violations(&samples).0.is_empty());
    }

    #[test]
    fn figures_use_the_nearest_rank() {
        let figures = Figures::of(&[5, 1, 3, 2, 4]);
        assert_eq!(
            (figures.p50, figures.p99, figures.max),
            (Some(3), Some(5), Some(5))
        );
        assert_eq!(Figures::of(&[]).count, 0);
    }
}
