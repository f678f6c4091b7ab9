//! The working tree of the resolver: an arena of components whose attribute slots move
//! from written (`Pending`, `Expr`) to resolved (`Node`, evaluated values).

use indexmap::IndexMap;

use crate::ast::{Attribute, ComponentExpr, Expr};
use crate::error::Diagnostic;
use crate::source::Span;

use super::eval::Val;

/// Index of a component in the arena.
pub type NodeId = usize;

pub use crate::value::Name;

/// A component's attributes, in order. The hasher is fast and randomly seeded (names come
/// from untrusted descriptions).
pub type Attrs<'a> = IndexMap<Name, Slot<'a>, foldhash::fast::RandomState>;

/// The state of an expression slot in the link phase.
#[derive(Debug, Clone)]
pub enum Eval<'a> {
    /// Not evaluated yet.
    Todo,
    /// Being evaluated (seen again: a reference cycle).
    Running,
    /// The value (`Val::Absent` for an `OPTIONAL` that found nothing).
    Done(Val<'a>),
    /// Evaluation failed with this error (reported once, wherever it is met).
    Failed(Box<Diagnostic>),
}

/// One attribute's slot.
#[derive(Debug, Clone)]
pub enum Slot<'a> {
    /// A component whose prototypes are not merged yet; `base` is what it deep-merges into.
    Pending {
        /// The description as written.
        expr: &'a ComponentExpr,
        /// Its span.
        span: Span,
        /// An inherited component of the same name it is merged into.
        base: Option<NodeId>,
        /// Placements (`a:b:c v;`) waiting for it to be built: the rest of the path and
        /// the attribute.
        placed: Vec<(&'a [String], &'a Attribute)>,
    },
    /// A component being type-resolved (seen again: a prototype cycle); where it is written.
    Resolving(Span),
    /// A type-resolved component.
    Node(NodeId),
    /// A value expression and its evaluation state.
    Expr(&'a Expr, Eval<'a>),
}

/// A component in the arena.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    /// The attribute name it has in its parent.
    pub name: Name,
    /// The enclosing component (`None` for the top level).
    pub parent: Option<NodeId>,
    /// Depth below the top level.
    pub depth: usize,
    /// Where it was written.
    pub span: Span,
    /// False for `extends LAZY`.
    pub eager: bool,
    /// An `ASSERT { ... }`: a function whose result must be `true`.
    pub assert: bool,
    /// Every component below it is built (no `Pending` slot): set by `ensure_deep`,
    /// cleared when a pending component is added below it.
    pub complete: bool,
    /// The attributes.
    pub attrs: Attrs<'a>,
    /// A function component's result, once evaluated.
    pub result: Option<Eval<'a>>,
}
