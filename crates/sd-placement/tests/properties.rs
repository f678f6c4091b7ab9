//! Property tests of placement: validity, no over-commit, determinism, spread and binpack
//! shapes, pinning, and the successor and majority rules.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sd_placement::{
    Constraint, Decision, NodeView, Policy, Request, Resources, majority, place, place_all,
    successor,
};

fn node_strategy(name: String) -> impl Strategy<Value = NodeView> {
    (
        0_u32..8,
        0_u64..8192,
        0_u32..=100,
        prop::option::of(prop::sample::select(vec!["eu", "us"])),
        prop::option::of(prop::sample::select(vec!["kvm", "tcg"])),
        0_u8..4,
    )
        .prop_map(
            move |(vcpus, memory, used_percent, zone, accel, liveness)| {
                let capacity = Resources::new(vcpus, memory);
                let free = Resources::new(
                    vcpus - vcpus * used_percent / 100,
                    memory - memory * u64::from(used_percent) / 100,
                );
                let mut node = NodeView::new(name.clone(), capacity).with_free(free);
                // Three nodes in four are alive.
                node.alive = liveness > 0;
                if let Some(zone) = zone {
                    node = node.with_label("zone", zone);
                }
                if let Some(accel) = accel {
                    node = node.with_label("accel", accel);
                }
                node
            },
        )
}

fn nodes_strategy() -> impl Strategy<Value = Vec<NodeView>> {
    (0_usize..8).prop_flat_map(|count| {
        (0..count)
            .map(|i| node_strategy(format!("n{i}")))
            .collect::<Vec<_>>()
    })
}

fn constraint_strategy() -> impl Strategy<Value = Constraint> {
    prop::sample::select(vec![
        "zone=eu",
        "zone=us",
        "zone!=eu",
        "zone",
        "!zone",
        "accel",
        "!accel",
        "accel=kvm",
    ])
    .prop_map(|text| Constraint::parse(text).unwrap_or_else(|e| panic!("{e}")))
}

fn name_strategy() -> impl Strategy<Value = String> {
    (0_usize..10).prop_map(|i| format!("n{i}"))
}

fn request_strategy() -> impl Strategy<Value = Request> {
    (
        0_u32..4,
        0_u64..4096,
        prop::collection::vec(constraint_strategy(), 0..3),
        prop::option::weighted(0.2, name_strategy()),
        prop::bool::ANY,
        prop::collection::vec(name_strategy(), 0..4),
    )
        .prop_map(
            |(vcpus, memory, constraints, pinned, binpack, avoid)| Request {
                component: "sfConfig:c".to_owned(),
                needs: Resources::new(vcpus, memory),
                constraints,
                pinned,
                policy: if binpack {
                    Policy::Binpack
                } else {
                    Policy::Spread
                },
                avoid,
            },
        )
}

fn find<'a>(nodes: &'a [NodeView], name: &str) -> &'a NodeView {
    nodes
        .iter()
        .find(|node| node.name == name)
        .unwrap_or_else(|| panic!("placed on {name}, which is not in the snapshot"))
}

fn equal_nodes(count: usize, capacity: Resources) -> Vec<NodeView> {
    // Names out of order, so that order in the snapshot is not what decides.
    (0..count)
        .rev()
        .map(|i| NodeView::new(format!("node-{i:02}"), capacity))
        .collect()
}

fn counts(decisions: &[Decision]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for node in decisions.iter().filter_map(Decision::node) {
        *counts.entry(node.to_owned()).or_insert(0) += 1;
    }
    counts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A placement lands on an alive node that matches every constraint and has the capacity.
    #[test]
    fn placements_are_valid(nodes in nodes_strategy(), request in request_strategy()) {
        let decision = place(&nodes, &request);
        if let Some(name) = decision.node() {
            let node = find(&nodes, name);
            prop_assert!(node.alive);
            prop_assert!(node.matches(&request.constraints));
            prop_assert!(node.fits(request.needs));
        } else {
            prop_assert!(decision.reason().is_some_and(|reason| !reason.is_empty()));
            // Unpinned, it is refused only when no node qualifies.
            if request.pinned.is_none() {
                let refused = matches!(decision, Decision::Unplaceable { .. });
                prop_assert!(refused);
                let qualifies = |node: &NodeView| {
                    node.alive && node.matches(&request.constraints) && node.fits(request.needs)
                };
                let any_qualifies = nodes.iter().any(qualifies);
                prop_assert!(!any_qualifies);
            }
        }
    }

    /// place_all never over-commits a node, and each of its placements is valid.
    #[test]
    fn place_all_never_over_commits(
        nodes in nodes_strategy(),
        requests in prop::collection::vec(request_strategy(), 0..24),
    ) {
        let decisions = place_all(&nodes, &requests);
        prop_assert_eq!(decisions.len(), requests.len());
        let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
        for (request, decision) in requests.iter().zip(&decisions) {
            if let Some(name) = decision.node() {
                let node = find(&nodes, name);
                prop_assert!(node.alive && node.matches(&request.constraints));
                let total = used.entry(node.name.as_str()).or_default();
                *total = total.saturating_add(request.needs);
                prop_assert!(total.fits_in(node.free), "{} over-committed", name);
            }
        }
    }

    /// The same snapshot and requests give the same answer, whatever the order of the nodes.
    #[test]
    fn placement_is_deterministic(
        (nodes, shuffled) in nodes_strategy()
            .prop_flat_map(|nodes| (Just(nodes.clone()), Just(nodes).prop_shuffle())),
        requests in prop::collection::vec(request_strategy(), 0..12),
    ) {
        let decisions = place_all(&nodes, &requests);
        prop_assert_eq!(&decisions, &place_all(&nodes, &requests));
        prop_assert_eq!(&decisions, &place_all(&shuffled, &requests));
        for request in &requests {
            prop_assert_eq!(place(&nodes, request), place(&shuffled, request));
        }
    }

    /// N equal replicas spread over K equal nodes: per node, counts differ by at most 1.
    #[test]
    fn spread_is_even(
        node_count in 1_usize..8,
        replicas in 0_usize..40,
        vcpus in 0_u32..3,
        memory in 0_u64..2048,
        capacity_vcpus in 0_u32..16,
        capacity_memory in 0_u64..16384,
    ) {
        let nodes = equal_nodes(node_count, Resources::new(capacity_vcpus, capacity_memory));
        let request = Request::new("pool:r", Resources::new(vcpus, memory));
        let decisions = place_all(&nodes, &vec![request; replicas]);
        let counts = counts(&decisions);
        let per_node: Vec<usize> = nodes
            .iter()
            .map(|node| counts.get(&node.name).copied().unwrap_or(0))
            .collect();
        let most = per_node.iter().max().copied().unwrap_or(0);
        let least = per_node.iter().min().copied().unwrap_or(0);
        prop_assert!(most - least <= 1, "{:?}", per_node);
    }

    /// Binpack never opens a new node while a node it already used still fits.
    #[test]
    fn binpack_fills_before_opening(
        node_count in 1_usize..6,
        needs in prop::collection::vec((0_u32..3, 0_u64..2048), 0..30),
        capacity_vcpus in 0_u32..8,
        capacity_memory in 0_u64..8192,
    ) {
        let nodes = equal_nodes(node_count, Resources::new(capacity_vcpus, capacity_memory));
        let mut free: BTreeMap<String, Resources> =
            nodes.iter().map(|node| (node.name.clone(), node.free)).collect();
        let mut opened: Vec<String> = Vec::new();
        for (vcpus, memory) in needs {
            let request = Request::new("job", Resources::new(vcpus, memory))
                .with_policy(Policy::Binpack);
            // Place against the current state, as place_all would.
            let current: Vec<NodeView> = nodes
                .iter()
                .map(|node| node.clone().with_free(free[&node.name]))
                .collect();
            let decision = place(&current, &request);
            prop_assert_eq!(&place_all(&current, std::slice::from_ref(&request))[0], &decision);
            let an_opened_one_fits = opened.iter().any(|name| request.needs.fits_in(free[name]));
            match decision.node() {
                Some(name) => {
                    if !opened.iter().any(|opened| opened == name) {
                        prop_assert!(!an_opened_one_fits, "opened {} while one fits", name);
                        opened.push(name.to_owned());
                    }
                    let left = free[name].saturating_sub(request.needs);
                    free.insert(name.to_owned(), left);
                }
                None => prop_assert!(!an_opened_one_fits),
            }
        }
    }

    /// A pinned component goes to its node or nowhere: it never moves.
    #[test]
    fn pinned_never_moves(
        nodes in nodes_strategy(),
        request in request_strategy(),
        pin in name_strategy(),
    ) {
        let request = request.pinned_to(pin.clone());
        let decision = place(&nodes, &request);
        match &decision {
            Decision::Place(name) => prop_assert_eq!(name, &pin),
            Decision::Wait { reason } => {
                prop_assert!(reason.contains(&pin));
                prop_assert!(!nodes.iter().any(|node| node.name == pin && node.alive));
            }
            Decision::Unplaceable { reason } => {
                prop_assert!(reason.contains(&pin));
                prop_assert!(nodes.iter().any(|node| node.name == pin && node.alive));
            }
        }
        let batch = place_all(&nodes, &vec![request; 3]);
        prop_assert!(batch.iter().all(|d| d.node().is_none_or(|name| name == pin)));
    }

    /// The successor is one of the candidates, and is stable when unrelated nodes join or leave.
    #[test]
    fn successor_is_a_stable_candidate(
        deployment in "[a-z0-9-]{1,12}",
        names in prop::collection::btree_set("[a-z]{1,6}", 1..10),
        joining in "[A-Z]{1,6}",
    ) {
        let candidates: Vec<&str> = names.iter().map(String::as_str).collect();
        let chosen = successor(&deployment, candidates.iter().copied());
        let Some(chosen) = chosen else {
            return Err(TestCaseError::fail("no successor among candidates"));
        };
        prop_assert!(candidates.contains(&chosen));
        // Any other node leaving does not change the choice.
        for leaving in candidates.iter().filter(|name| **name != chosen) {
            let rest = candidates.iter().copied().filter(|name| name != leaving);
            prop_assert_eq!(successor(&deployment, rest), Some(chosen));
        }
        // A node joining either takes over or changes nothing.
        let with_joiner = candidates.iter().copied().chain([joining.as_str()]);
        let after = successor(&deployment, with_joiner);
        prop_assert!(after == Some(chosen) || after == Some(joining.as_str()));
        // Order does not matter.
        prop_assert_eq!(successor(&deployment, candidates.iter().rev().copied()), Some(chosen));
    }

    /// A majority is strictly more than half of the known members.
    #[test]
    fn majority_is_more_than_half(known in 0_usize..1000, alive in 0_usize..1000) {
        prop_assert_eq!(majority(known, alive), 2 * alive > known);
    }
}

#[test]
fn majority_examples() {
    assert!(majority(5, 3));
    assert!(!majority(5, 2));
    assert!(!majority(4, 2));
}

#[test]
fn successor_of_nobody() {
    assert_eq!(successor("web", Vec::<&str>::new()), None);
}
