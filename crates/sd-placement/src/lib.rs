//! `sd-placement`: where components run.
//!
//! It owns the decisions of placement, as pure functions over a snapshot of the cluster
//! ([`NodeView`]s): which node runs a component ([`place`], [`place_all`]), whether a side of
//! a partition may replace what it lost ([`majority`]), and which node takes a lost root over
//! ([`successor`]). It only decides: sd-runtime acts on the decisions.
//!
//! Guarantees:
//! - No I/O, no clock, no randomness: the functions are fast to test and easy to reason about.
//! - Deterministic: the same snapshot and requests give the same answer, on every node (ties
//!   are broken by node name; hashing uses FNV-1a, never std's randomized hasher).
//! - A component is only placed on a node that is alive, matches every constraint and has the
//!   free capacity it needs; [`place_all`] never over-commits a node.
//! - A component pinned to a node (`sfProcessHost`) never moves: it goes there, or waits for a
//!   node that is down ([`Decision::Wait`]), or is refused with the reason.
//! - Every refusal says why, compactly, per node.
//!
//! ```
//! use sd_placement::{place_all, Decision, NodeView, Policy, Request, Resources};
//!
//! let nodes: Vec<NodeView> = ["a", "b"]
//!     .into_iter()
//!     .map(|name| NodeView::new(name, Resources::new(4, 8192)))
//!     .collect();
//! let replica = Request::new("sfConfig:workers:r", Resources::new(1, 1024)).with_policy(Policy::Spread);
//! let decisions = place_all(&nodes, &vec![replica; 4]);
//! let on_a = decisions.iter().filter(|d| d.node() == Some("a")).count();
//! assert_eq!(on_a, 2);
//! assert!(matches!(&decisions[0], Decision::Place(node) if node == "a"));
//! ```

mod constraint;
mod node;
mod place;
mod quorum;
mod resources;

pub use constraint::Constraint;
pub use node::NodeView;
pub use place::{Decision, Policy, Request, place, place_all};
pub use quorum::{fnv1a64, majority, rendezvous_weight, succession_order, successor};
pub use resources::Resources;

/// What went wrong reading a placement setting; each message names the text and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An empty constraint.
    #[error(r#"empty constraint: write "key=value", "key!=value", "key" or "!key""#)]
    EmptyConstraint,
    /// A constraint whose label key is empty or has a character keys may not have.
    #[error(
        r#"constraint "{text}": label key "{key}" is not valid: a key is one or more of A-Z a-z 0-9 . _ / - (write "key=value", "key!=value", "key" or "!key")"#
    )]
    InvalidKey {
        /// The constraint as written.
        text: String,
        /// The key found in it.
        key: String,
    },
    /// A constraint whose label value is empty or has a character values may not have.
    #[error(
        r#"constraint "{text}": label value "{value}" is not valid: a value is one or more characters, without spaces or "=" (write "key" to ask only that the label exists)"#
    )]
    InvalidValue {
        /// The constraint as written.
        text: String,
        /// The value found in it.
        value: String,
    },
    /// An `sdPlacement` that is neither policy.
    #[error(r#"placement policy "{text}" is not known: use "spread" or "binpack""#)]
    UnknownPolicy {
        /// The policy as written.
        text: String,
    },
}

/// The result of reading a placement setting.
pub type Result<T, E = Error> = std::result::Result<T, E>;
