//! A node as placement sees it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Constraint, Resources};

/// One node of the cluster snapshot placement decides over: from membership (alive), the
/// node's configuration (capacity, labels) and what already runs there (free).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's name (`sd agent --name`); expected to be unique in a snapshot.
    pub name: String,
    /// Whether membership sees the node alive. Only alive nodes receive placements.
    pub alive: bool,
    /// What the node offers in all.
    pub capacity: Resources,
    /// What is not yet reserved by the components placed on it.
    pub free: Resources,
    /// The node's labels, matched by [`Constraint`]s.
    pub labels: BTreeMap<String, String>,
}

impl NodeView {
    /// An alive node named `name`, with nothing placed on it and no labels.
    pub fn new(name: impl Into<String>, capacity: Resources) -> Self {
        NodeView {
            name: name.into(),
            alive: true,
            capacity,
            free: capacity,
            labels: BTreeMap::new(),
        }
    }

    /// The node with label `key` set to `value`.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The node with `free` free capacity.
    #[must_use]
    pub fn with_free(mut self, free: Resources) -> Self {
        self.free = free;
        self
    }

    /// The node marked down.
    #[must_use]
    pub fn down(mut self) -> Self {
        self.alive = false;
        self
    }

    /// Whether `needs` fits in the node's free capacity (zero always fits).
    pub fn fits(&self, needs: Resources) -> bool {
        needs.fits_in(self.free)
    }

    /// Whether the node's labels match every constraint.
    pub fn matches(&self, constraints: &[Constraint]) -> bool {
        constraints
            .iter()
            .all(|constraint| constraint.matches(&self.labels))
    }

    /// Why the node's labels do not match, for the first constraint they fail: "a has zone=us";
    /// `None` when they match every constraint.
    pub fn mismatch(&self, constraints: &[Constraint]) -> Option<String> {
        constraints
            .iter()
            .find_map(|constraint| constraint.mismatch(&self.labels))
            .map(|why| format!("{} {why}", self.name))
    }

    /// How free the node is, relative to its size: the free fraction of memory plus the free
    /// fraction of vCPUs, from 0 (full) to 2 (empty). A dimension the node has none of counts 0.
    pub fn free_score(&self) -> f64 {
        fn fraction(free: f64, capacity: f64) -> f64 {
            if capacity > 0.0 { free / capacity } else { 0.0 }
        }
        // Lossy conversions are fine: the score only orders nodes, and is computed the same
        // way on every node.
        #[allow(clippy::cast_precision_loss)]
        let memory = fraction(self.free.memory_mib as f64, self.capacity.memory_mib as f64);
        let vcpus = fraction(f64::from(self.free.vcpus), f64::from(self.capacity.vcpus));
        memory + vcpus
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_and_checks() {
        let node = NodeView::new("a", Resources::new(4, 4096))
            .with_label("zone", "eu")
            .with_free(Resources::new(2, 1024));
        assert!(node.alive);
        assert!(node.fits(Resources::new(2, 1024)));
        assert!(!node.fits(Resources::new(3, 0)));
        let eu = [Constraint::Equals("zone".into(), "eu".into())];
        let gpu = [Constraint::Has("gpu".into())];
        assert!(node.matches(&eu));
        assert_eq!(node.mismatch(&eu), None);
        assert_eq!(node.mismatch(&gpu).as_deref(), Some("a has no gpu"));
        assert!(!node.clone().down().alive);
    }

    #[test]
    fn free_score_is_relative() {
        let empty = NodeView::new("a", Resources::new(4, 4096));
        assert!((empty.free_score() - 2.0).abs() < f64::EPSILON);
        let half = empty.clone().with_free(Resources::new(2, 2048));
        assert!((half.free_score() - 1.0).abs() < f64::EPSILON);
        let no_cpus = NodeView::new("b", Resources::new(0, 4096));
        assert!((no_cpus.free_score() - 1.0).abs() < f64::EPSILON);
    }
}
