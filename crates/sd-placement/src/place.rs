//! Choosing the node for a component: [`place`] and [`place_all`].

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Constraint, Error, NodeView, Resources};

/// How many nodes an explanation lists before "and N more".
const LISTED_NODES: usize = 4;

/// How a Scheduler picks among the nodes that qualify (`sdPlacement`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// `"spread"`: the node with the most free capacity (relative to its size), so load is
    /// spread; among equals, the one with fewest nodes to avoid, then by name.
    #[default]
    Spread,
    /// `"binpack"`: the fullest node that still fits (relative to its size), so whole nodes
    /// stay free; among equals, the one named most in `avoid` (where siblings already run:
    /// packed together while free capacity has not caught up yet), then by name.
    Binpack,
}

impl Policy {
    /// The policy as written in `sdPlacement`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Policy::Spread => "spread",
            Policy::Binpack => "binpack",
        }
    }
}

impl FromStr for Policy {
    type Err = Error;

    /// Reads `"spread"` or `"binpack"`.
    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "spread" => Ok(Policy::Spread),
            "binpack" => Ok(Policy::Binpack),
            _ => Err(Error::UnknownPolicy {
                text: text.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A component to place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The component's path, used in the reasons of [`Decision`]s (`""`: none).
    pub component: String,
    /// What the component reserves on its node (zero fits everywhere).
    pub needs: Resources,
    /// Labels the node must match: the Scheduler's and the component's.
    pub constraints: Vec<Constraint>,
    /// The node the component is pinned to (`sfProcessHost`): it goes there or nowhere.
    pub pinned: Option<String>,
    /// How to pick among the nodes that qualify.
    pub policy: Policy,
    /// Where siblings already run, once per sibling (e.g. one entry per replica placed): among
    /// nodes otherwise equal, spread takes the one named fewest times, binpack the one named
    /// most.
    pub avoid: Vec<String>,
}

impl Request {
    /// A request to place `component`, reserving `needs`, spread, without constraints.
    pub fn new(component: impl Into<String>, needs: Resources) -> Self {
        Request {
            component: component.into(),
            needs,
            ..Request::default()
        }
    }

    /// The request with these constraints.
    #[must_use]
    pub fn with_constraints(mut self, constraints: Vec<Constraint>) -> Self {
        self.constraints = constraints;
        self
    }

    /// The request pinned to node `node`.
    #[must_use]
    pub fn pinned_to(mut self, node: impl Into<String>) -> Self {
        self.pinned = Some(node.into());
        self
    }

    /// The request with this policy.
    #[must_use]
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The request avoiding these nodes if possible.
    #[must_use]
    pub fn avoiding(mut self, nodes: Vec<String>) -> Self {
        self.avoid = nodes;
        self
    }

    /// `"{component}: {detail}"`, or the detail alone for a request without a component path.
    fn explain(&self, detail: String) -> String {
        if self.component.is_empty() {
            detail
        } else {
            format!("{}: {detail}", self.component)
        }
    }
}

/// What placement decided for one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Run the component on this node.
    Place(String),
    /// The component is pinned to a node that is down or not known: it waits for it, visibly.
    Wait {
        /// Which node it waits for, and why.
        reason: String,
    },
    /// No node can take the component now; the reason says, per node, why not.
    Unplaceable {
        /// Why not, compactly.
        reason: String,
    },
}

impl Decision {
    /// The chosen node, if the component is placed.
    pub fn node(&self) -> Option<&str> {
        match self {
            Decision::Place(node) => Some(node),
            Decision::Wait { .. } | Decision::Unplaceable { .. } => None,
        }
    }

    /// Why the component is not placed, if it is not.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Decision::Place(_) => None,
            Decision::Wait { reason } | Decision::Unplaceable { reason } => Some(reason),
        }
    }
}

/// "place on a", "wait: ...", "unplaceable: ...".
impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Place(node) => write!(f, "place on {node}"),
            Decision::Wait { reason } => write!(f, "wait: {reason}"),
            Decision::Unplaceable { reason } => write!(f, "unplaceable: {reason}"),
        }
    }
}

/// Chooses the node for one component.
///
/// A pinned request goes to its node if that node is alive, matches the constraints and has
/// the capacity; it waits ([`Decision::Wait`]) if the node is down or not known, and is
/// refused otherwise. Any other request goes to an alive node that matches every constraint
/// and has the capacity, picked by the request's [`Policy`]; ties are broken by the number of
/// times the node is named in `avoid` (spread: fewer first; binpack: more first), then by name.
pub fn place(nodes: &[NodeView], request: &Request) -> Decision {
    match choose(nodes, request, &[]) {
        Choice::Node(index) => Decision::Place(nodes[index].name.clone()),
        Choice::Wait(reason) => Decision::Wait { reason },
        Choice::Unplaceable(reason) => Decision::Unplaceable { reason },
    }
}

/// Chooses the nodes for several components, in order, as if each placed one already ran.
///
/// Each placement takes its `needs` from a copy of the snapshot, so the requests together
/// never over-commit a node: 10 equal replicas spread over 5 equal nodes go 2 per node, and
/// binpack fills the fullest node that fits before it opens another. With spread, a node that
/// already received a component of this batch also counts as one to avoid, so even requests
/// that need nothing are spread.
pub fn place_all(nodes: &[NodeView], requests: &[Request]) -> Vec<Decision> {
    let mut snapshot = nodes.to_vec();
    let mut placed_here = vec![0_usize; nodes.len()];
    requests
        .iter()
        .map(|request| match choose(&snapshot, request, &placed_here) {
            Choice::Node(index) => {
                let node = &mut snapshot[index];
                debug_assert!(
                    node.fits(request.needs),
                    "placement over-commits {}",
                    node.name
                );
                node.free = node.free.saturating_sub(request.needs);
                placed_here[index] += 1;
                Decision::Place(node.name.clone())
            }
            Choice::Wait(reason) => Decision::Wait { reason },
            Choice::Unplaceable(reason) => Decision::Unplaceable { reason },
        })
        .collect()
}

/// A decision about the index of a node in the snapshot.
enum Choice {
    Node(usize),
    Wait(String),
    Unplaceable(String),
}

/// The decision for `request`; `placed_here[i]` (missing: 0) counts the components of the
/// current batch already on node `i`.
fn choose(nodes: &[NodeView], request: &Request, placed_here: &[usize]) -> Choice {
    if let Some(pinned) = &request.pinned {
        return choose_pinned(nodes, request, pinned);
    }
    // In name order, so that explanations do not depend on the order of the snapshot.
    let mut alive: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].alive).collect();
    alive.sort_by(|&x, &y| by_name(nodes, x, y));
    if alive.is_empty() {
        let detail = if nodes.is_empty() {
            "no node is known".to_owned()
        } else {
            format!("no node is alive ({} known, all down)", nodes.len())
        };
        return Choice::Unplaceable(request.explain(detail));
    }
    let matching: Vec<usize> = alive
        .iter()
        .copied()
        .filter(|&i| nodes[i].matches(&request.constraints))
        .collect();
    if matching.is_empty() {
        let why = alive
            .iter()
            .filter_map(|&i| nodes[i].mismatch(&request.constraints));
        let detail = format!(
            "no alive node matches {} ({} alive: {})",
            constraints_text(&request.constraints),
            alive.len(),
            list(why, alive.len()),
        );
        return Choice::Unplaceable(request.explain(detail));
    }
    let scores: Vec<f64> = nodes.iter().map(NodeView::free_score).collect();
    let fitting: Vec<usize> = matching
        .iter()
        .copied()
        .filter(|&i| nodes[i].fits(request.needs))
        .collect();
    if fitting.is_empty() {
        let most_free = matching.iter().copied().min_by(|&x, &y| {
            scores[y]
                .total_cmp(&scores[x])
                .then_with(|| by_name(nodes, x, y))
        });
        let scope = if request.constraints.is_empty() {
            String::new()
        } else {
            format!(" matching {}", constraints_text(&request.constraints))
        };
        let mut detail = format!("no node{scope} has {} free", request.needs.demand());
        if let Some(i) = most_free {
            detail.push_str(&format!(
                " (most free: {} with {})",
                nodes[i].name, nodes[i].free
            ));
        }
        return Choice::Unplaceable(request.explain(detail));
    }
    let avoided = |i: usize| {
        let named = request
            .avoid
            .iter()
            .filter(|name| **name == nodes[i].name)
            .count();
        let batch = match request.policy {
            Policy::Spread => placed_here.get(i).copied().unwrap_or(0),
            Policy::Binpack => 0,
        };
        named + batch
    };
    let best = fitting.iter().copied().min_by(|&x, &y| {
        let by_score = match request.policy {
            Policy::Spread => scores[y].total_cmp(&scores[x]),
            Policy::Binpack => scores[x].total_cmp(&scores[y]),
        };
        let by_siblings = match request.policy {
            Policy::Spread => avoided(x).cmp(&avoided(y)),
            Policy::Binpack => avoided(y).cmp(&avoided(x)),
        };
        by_score
            .then(by_siblings)
            .then_with(|| by_name(nodes, x, y))
    });
    match best {
        Some(index) => Choice::Node(index),
        // `fitting` is not empty.
        None => Choice::Unplaceable(request.explain("no node fits".to_owned())),
    }
}

/// A pinned request: its node or nothing.
fn choose_pinned(nodes: &[NodeView], request: &Request, pinned: &str) -> Choice {
    let mut named = (0..nodes.len()).filter(|&i| nodes[i].name == pinned);
    let first = named.next();
    let index = first
        .into_iter()
        .chain(named)
        .find(|&i| nodes[i].alive)
        .or(first);
    let Some(index) = index else {
        let detail = format!("waits for node {pinned}, which is not known to the cluster");
        return Choice::Wait(request.explain(detail));
    };
    let node = &nodes[index];
    if !node.alive {
        return Choice::Wait(request.explain(format!("waits for node {pinned}, which is down")));
    }
    if let Some(why) = node.mismatch(&request.constraints) {
        let detail = format!(
            "pinned to node {pinned}, which does not match {}: {why}",
            constraints_text(&request.constraints)
        );
        return Choice::Unplaceable(request.explain(detail));
    }
    if !node.fits(request.needs) {
        let detail = format!(
            "pinned to node {pinned}, which has {} free; {} needed",
            node.free,
            request.needs.demand()
        );
        return Choice::Unplaceable(request.explain(detail));
    }
    Choice::Node(index)
}

/// Orders node indices by name, then by position (for duplicate names).
fn by_name(nodes: &[NodeView], x: usize, y: usize) -> Ordering {
    nodes[x].name.cmp(&nodes[y].name).then(x.cmp(&y))
}

/// "zone=eu, !gpu".
fn constraints_text(constraints: &[Constraint]) -> String {
    let texts: Vec<String> = constraints.iter().map(Constraint::to_string).collect();
    texts.join(", ")
}

/// The first few items joined by ", ", then "and N more" out of `total`.
fn list(items: impl Iterator<Item = String>, total: usize) -> String {
    let shown: Vec<String> = items.take(LISTED_NODES).collect();
    let mut text = shown.join(", ");
    if total > shown.len() {
        text.push_str(&format!(", and {} more", total - shown.len()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, vcpus: u32, memory_mib: u64) -> NodeView {
        NodeView::new(name, Resources::new(vcpus, memory_mib))
    }

    fn constraints(texts: &[&str]) -> Vec<Constraint> {
        texts
            .iter()
            .map(|text| Constraint::parse(text).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn placed_on(decision: &Decision) -> &str {
        decision
            .node()
            .unwrap_or_else(|| panic!("not placed: {decision}"))
    }

    fn reason(decision: &Decision) -> &str {
        decision
            .reason()
            .unwrap_or_else(|| panic!("placed: {decision}"))
    }

    #[test]
    fn policy_reads_and_writes() {
        assert_eq!("spread".parse::<Policy>(), Ok(Policy::Spread));
        assert_eq!("binpack".parse::<Policy>(), Ok(Policy::Binpack));
        let message = "Spread".parse::<Policy>().map_err(|e| e.to_string());
        assert_eq!(
            message,
            Err(r#"placement policy "Spread" is not known: use "spread" or "binpack""#.to_owned())
        );
        assert_eq!(Policy::Binpack.to_string(), "binpack");
        assert_eq!(Policy::default(), Policy::Spread);
    }

    #[test]
    fn spread_picks_the_most_free_relative_to_size() {
        let nodes = [
            node("a", 4, 4096).with_free(Resources::new(1, 1024)),
            node("b", 64, 65536).with_free(Resources::new(32, 32768)),
            node("c", 2, 2048).with_free(Resources::new(2, 1536)),
        ];
        let request = Request::new("web", Resources::new(1, 512));
        assert_eq!(place(&nodes, &request), Decision::Place("c".into()));
    }

    #[test]
    fn binpack_picks_the_fullest_that_fits() {
        let nodes = [
            node("a", 4, 4096).with_free(Resources::new(1, 256)),
            node("b", 4, 4096).with_free(Resources::new(1, 1024)),
            node("c", 4, 4096),
        ];
        let request = Request::new("job", Resources::new(1, 512)).with_policy(Policy::Binpack);
        assert_eq!(place(&nodes, &request), Decision::Place("b".into()));
    }

    #[test]
    fn ties_go_to_fewer_avoided_with_spread_and_more_with_binpack_then_by_name() {
        let nodes = [node("c", 2, 2048), node("b", 2, 2048), node("a", 2, 2048)];
        let request = Request::new("r", Resources::new(1, 1));
        assert_eq!(place(&nodes, &request), Decision::Place("a".into()));
        let avoiding = request
            .clone()
            .avoiding(vec!["a".into(), "b".into(), "a".into()]);
        assert_eq!(place(&nodes, &avoiding), Decision::Place("c".into()));
        let binpack = avoiding.with_policy(Policy::Binpack);
        assert_eq!(place(&nodes, &binpack), Decision::Place("a".into()));
    }

    #[test]
    fn avoid_does_not_beat_free_capacity() {
        let nodes = [
            node("a", 2, 2048),
            node("b", 2, 2048).with_free(Resources::new(1, 1024)),
        ];
        let request = Request::new("r", Resources::new(1, 1)).avoiding(vec!["a".into()]);
        assert_eq!(place(&nodes, &request), Decision::Place("a".into()));
    }

    #[test]
    fn zero_needs_fit_full_nodes() {
        let nodes = [
            node("a", 0, 0),
            node("b", 2, 2048).with_free(Resources::ZERO),
        ];
        let request = Request::new("r", Resources::ZERO);
        assert_eq!(place(&nodes, &request), Decision::Place("a".into()));
    }

    #[test]
    fn constraints_filter_and_explain() {
        let nodes = [
            node("a", 2, 2048).with_label("zone", "us"),
            node("b", 2, 2048),
            node("c", 2, 2048).with_label("zone", "eu").down(),
            node("d", 2, 2048)
                .with_label("zone", "us")
                .with_label("gpu", "a100"),
        ];
        let request = Request::new("sfConfig:job", Resources::new(1, 1))
            .with_constraints(constraints(&["zone=eu"]));
        let decision = place(&nodes, &request);
        assert_eq!(
            reason(&decision),
            "sfConfig:job: no alive node matches zone=eu (3 alive: a has zone=us, b has no zone, \
             d has zone=us)"
        );
        let us_no_gpu = request.with_constraints(constraints(&["zone=us", "!gpu"]));
        assert_eq!(place(&nodes, &us_no_gpu), Decision::Place("a".into()));
    }

    #[test]
    fn long_explanations_are_cut() {
        let nodes: Vec<NodeView> = (0..7).map(|i| node(&format!("n{i}"), 1, 1)).collect();
        let request = Request::new("", Resources::ZERO).with_constraints(constraints(&["gpu"]));
        assert_eq!(
            reason(&place(&nodes, &request)),
            "no alive node matches gpu (7 alive: n0 has no gpu, n1 has no gpu, n2 has no gpu, \
             n3 has no gpu, and 3 more)"
        );
    }

    #[test]
    fn capacity_is_explained_with_the_most_free_node() {
        let nodes = [
            node("a", 8, 8192).with_free(Resources::new(1, 1024)),
            node("b", 4, 8192).with_free(Resources::new(2, 4096)),
            node("c", 64, 65536).with_label("zone", "us"),
        ];
        let request = Request::new("vm", Resources::new(4, 2048))
            .with_constraints(constraints(&["zone!=us"]));
        assert_eq!(
            reason(&place(&nodes, &request)),
            "vm: no node matching zone!=us has 4 vCPUs and 2048 MiB free (most free: b with 2 \
             vCPUs, 4096 MiB)"
        );
        let unconstrained = Request::new("vm", Resources::new(65, 0));
        assert_eq!(
            reason(&place(&nodes, &unconstrained)),
            "vm: no node has 65 vCPUs free (most free: c with 64 vCPUs, 65536 MiB)"
        );
    }

    #[test]
    fn nothing_alive() {
        let request = Request::new("r", Resources::ZERO);
        assert_eq!(reason(&place(&[], &request)), "r: no node is known");
        let nodes = [node("a", 1, 1).down(), node("b", 1, 1).down()];
        assert_eq!(
            reason(&place(&nodes, &request)),
            "r: no node is alive (2 known, all down)"
        );
    }

    #[test]
    fn pinned_goes_to_its_node_or_waits() {
        let nodes = [
            node("a", 4, 4096),
            node("b", 4, 4096).with_free(Resources::new(1, 512)),
            node("c", 4, 4096).down(),
        ];
        let request = Request::new("host", Resources::new(2, 1024));
        assert_eq!(
            place(&nodes, &request.clone().pinned_to("a")),
            Decision::Place("a".into())
        );
        let too_small = place(&nodes, &request.clone().pinned_to("b"));
        assert!(matches!(too_small, Decision::Unplaceable { .. }));
        assert_eq!(
            reason(&too_small),
            "host: pinned to node b, which has 1 vCPU, 512 MiB free; 2 vCPUs and 1024 MiB needed"
        );
        let down = place(&nodes, &request.clone().pinned_to("c"));
        assert!(matches!(down, Decision::Wait { .. }));
        assert_eq!(reason(&down), "host: waits for node c, which is down");
        let unknown = place(&nodes, &request.clone().pinned_to("z"));
        assert!(matches!(unknown, Decision::Wait { .. }));
        assert_eq!(
            reason(&unknown),
            "host: waits for node z, which is not known to the cluster"
        );
        let mismatched = request
            .pinned_to("a")
            .with_constraints(constraints(&["accel=kvm"]));
        assert_eq!(
            reason(&place(&nodes, &mismatched)),
            "host: pinned to node a, which does not match accel=kvm: a has no accel"
        );
    }

    #[test]
    fn place_all_spreads_replicas_evenly() {
        let nodes: Vec<NodeView> = ["e", "d", "c", "b", "a"]
            .iter()
            .map(|name| node(name, 8, 8192))
            .collect();
        let requests = vec![Request::new("r", Resources::new(1, 1024)); 10];
        let decisions = place_all(&nodes, &requests);
        for name in ["a", "b", "c", "d", "e"] {
            assert_eq!(
                decisions.iter().filter(|d| d.node() == Some(name)).count(),
                2
            );
        }
        let first: Vec<&str> = decisions[..5].iter().map(placed_on).collect();
        assert_eq!(first, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn place_all_spreads_requests_that_need_nothing() {
        let nodes = [node("a", 1, 1), node("b", 1, 1), node("c", 1, 1)];
        let decisions = place_all(&nodes, &vec![Request::new("r", Resources::ZERO); 6]);
        let names: Vec<&str> = decisions.iter().map(placed_on).collect();
        assert_eq!(names, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn place_all_binpacks_then_opens_the_next_node() {
        let nodes = [node("b", 4, 4096), node("a", 4, 4096), node("c", 4, 4096)];
        let request = Request::new("r", Resources::new(1, 1024)).with_policy(Policy::Binpack);
        let decisions = place_all(&nodes, &vec![request; 13]);
        let names: Vec<&str> = decisions[..12].iter().map(placed_on).collect();
        assert_eq!(
            names,
            ["a", "a", "a", "a", "b", "b", "b", "b", "c", "c", "c", "c"]
        );
        assert_eq!(
            reason(&decisions[12]),
            "r: no node has 1 vCPU and 1024 MiB free (most free: a with 0 vCPUs, 0 MiB)"
        );
    }

    #[test]
    fn decisions_read_and_write() {
        let placed = Decision::Place("a".into());
        assert_eq!(placed.to_string(), "place on a");
        assert_eq!(placed.reason(), None);
        let waiting = Decision::Wait { reason: "x".into() };
        assert_eq!(waiting.to_string(), "wait: x");
        assert_eq!(waiting.node(), None);
        assert_eq!(
            Decision::Unplaceable { reason: "y".into() }.to_string(),
            "unplaceable: y"
        );
    }
}
