//! Resolution: from the parsed body to the resolved `sfConfig`, in SmartFrog's phases.
//!
//! 1. *Type resolution*: each `extends A, B { body }` becomes a copy of its prototypes,
//!    merged left to right, with the body on top (the rightmost wins). Components of the
//!    same name merge deeply (SmartFrog replaces them; see docs/language.md); anything else
//!    is replaced, keeping its first position. A prototype is looked up from the component
//!    being defined, resolved once, and copied.
//! 2. *Placement*: `a:b:c value;` puts `c` into the nested component `a:b`.
//! 3. *Link resolution*: non-`LAZY` references are replaced by copies of what they name,
//!    looked up from where the attribute ended up (so a template's `ATTRIB memory` finds the
//!    user's value). Done on demand with cycle detection, so order never matters.
//! 4. *Functions and operators* are evaluated as their values are needed; `TBD` left in
//!    `sfConfig` and failed `ASSERT`s are errors.
//!
//! Only `sfConfig` is resolved to the end: templates outside it may keep their `TBD`s.

mod eval;
mod functions;
mod tree;

use std::collections::BTreeMap;

use crate::ast::{AttrName, Attribute, Body, ComponentRole, ExprKind, Item, TypeItem};
use crate::error::{Diagnostic, Error};
use crate::reference::{RefPart, Reference};
use crate::source::Span;
use crate::value::Component;

use tree::{Eval, Name, Node, NodeId, Slot};

/// Deepest component tree accepted (after prototypes are copied in).
pub const MAX_DEPTH: usize = 128;
/// Most components in the working tree (templates and copies included).
pub const MAX_NODES: usize = 200_000;
/// Deepest chain of prototypes or references followed while resolving one attribute.
pub const MAX_CHAIN: usize = 256;

/// Values that `PROPERTY` and `ENVPROPERTY` read. The language crate reads no environment
/// itself: the caller passes what it wants visible.
#[derive(Debug, Clone, Default)]
pub struct Properties {
    /// `PROPERTY` / `IPROPERTY` values (`sd resolve -D name=value`).
    pub properties: BTreeMap<String, String>,
    /// `ENVPROPERTY` / `IENVPROPERTY` values (the process environment, as the caller allows).
    pub env: BTreeMap<String, String>,
}

const ROOT: NodeId = 0;

/// Resolves a loaded body to its `sfConfig`, or every error found.
pub fn resolve(body: &Body, properties: &Properties) -> Result<Component, Vec<Diagnostic>> {
    let mut resolver = Resolver::new(properties);
    resolver.apply_body(ROOT, body);
    let config = resolver.config();
    // An error met through several paths is reported once; after a size limit, the
    // further limit errors it causes are noise.
    // A set: one bad template copied many times gives many errors.
    let mut seen: std::collections::HashSet<Diagnostic> = std::collections::HashSet::new();
    let mut limit_seen = false;
    resolver.errors.retain(|d| {
        let is_limit = matches!(d.error, Error::Limit(_));
        let fresh = !seen.contains(d) && (!is_limit || !limit_seen);
        limit_seen |= is_limit;
        if fresh {
            seen.insert(d.clone());
        }
        fresh
    });
    match config {
        Some(config) if resolver.errors.is_empty() => Ok(config),
        _ => Err(resolver.errors),
    }
}

/// The resolver's state: the arena and the errors found so far.
pub(crate) struct Resolver<'a> {
    nodes: Vec<Node<'a>>,
    errors: Vec<Diagnostic>,
    properties: &'a Properties,
    /// Current depth of nested prototype / reference resolution.
    chain: usize,
    /// Whether a size limit has been reported (reported once).
    limit_reported: bool,
    /// Counter for `--` names (`unique0`, `unique1` ...), in the order they are met.
    anonymous: usize,
}

impl<'a> Resolver<'a> {
    fn new(properties: &'a Properties) -> Self {
        let root = Node {
            name: Name::from(""),
            parent: None,
            depth: 0,
            span: Span::default(),
            eager: true,
            assert: false,
            complete: false,
            attrs: Default::default(),
            result: None,
        };
        Resolver {
            nodes: vec![root],
            errors: Vec::new(),
            properties,
            chain: 0,
            limit_reported: false,
            anonymous: 0,
        }
    }

    /// The `:`-path of a component (`sfConfig:computer1:loop`), `ROOT` for the top level.
    pub(crate) fn path(&self, mut node: NodeId) -> String {
        let mut names = Vec::new();
        while let Some(parent) = self.nodes[node].parent {
            names.push(&*self.nodes[node].name);
            node = parent;
        }
        if names.is_empty() {
            return "ROOT".into();
        }
        names.reverse();
        names.join(":")
    }

    fn attr_path(&self, node: NodeId, name: &str) -> String {
        if node == ROOT {
            name.to_string()
        } else {
            format!("{}:{name}", self.path(node))
        }
    }

    fn limit(&mut self, what: String, span: Span) {
        if !self.limit_reported {
            self.limit_reported = true;
            self.errors.push(Error::Limit(what).at(span));
        }
    }

    /// Enters one more level of nested resolution, refusing runaway chains.
    fn enter(&mut self, span: Span) -> Result<(), Diagnostic> {
        if self.chain >= MAX_CHAIN {
            return Err(Error::Limit(format!(
                "a chain of more than {MAX_CHAIN} prototypes or references"
            ))
            .at(span));
        }
        self.chain += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.chain -= 1;
    }

    fn new_node(&mut self, name: Name, parent: NodeId, span: Span, eager: bool) -> Option<NodeId> {
        let depth = self.nodes[parent].depth + 1;
        if depth > MAX_DEPTH || self.nodes.len() >= MAX_NODES {
            let what = format!(
                "a component tree deeper than {MAX_DEPTH} or larger than {MAX_NODES} components"
            );
            self.limit(what, span);
            return None;
        }
        self.nodes.push(Node {
            name,
            parent: Some(parent),
            depth,
            span,
            eager,
            assert: false,
            complete: false,
            attrs: Default::default(),
            result: None,
        });
        Some(self.nodes.len() - 1)
    }

    // ----- type resolution -----------------------------------------------------------

    /// Adds a body's attributes to `node`, over what its prototypes gave it. Placements
    /// (`a:b:c value;`) go last, so they can reach anything the body defines.
    fn apply_body(&mut self, node: NodeId, body: &'a Body) {
        let is_placement = |attribute: &Attribute| matches!(&attribute.name, AttrName::Path(path) if path.len() > 1);
        for placements in [false, true] {
            for item in body {
                match item {
                    Item::Attribute(attribute) if is_placement(attribute) == placements => {
                        self.apply_attribute(node, attribute)
                    }
                    Item::Attribute(_) => {}
                    Item::Include(include) if !placements => {
                        // The loader splices includes; one left here was not expanded.
                        let what = format!("#include \"{}\" was not expanded", include.name);
                        self.errors.push(Error::Unsupported(what).at(include.span));
                    }
                    Item::Include(_) => {}
                }
            }
        }
    }

    fn apply_attribute(&mut self, node: NodeId, attribute: &'a Attribute) {
        match &attribute.name {
            AttrName::Anonymous => {
                let name = self.fresh_name(node);
                self.set(node, name, attribute);
            }
            AttrName::Path(path) => self.place(node, path, attribute),
        }
    }

    /// Puts `attribute` at `path` below `node`. A step still pending (not built yet) keeps
    /// the placement until it is built, so a placement lands before anything copies its
    /// target, whatever the order it is written in.
    fn place(&mut self, node: NodeId, path: &'a [String], attribute: &'a Attribute) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        if rest.is_empty() {
            self.set(node, Name::from(first.as_str()), attribute);
            return;
        }
        match self.nodes[node].attrs.get_mut(first.as_str()) {
            Some(Slot::Pending { placed, .. }) => placed.push((rest, attribute)),
            Some(Slot::Node(child)) => {
                let child = *child;
                self.place(child, rest, attribute);
            }
            _ => {
                let AttrName::Path(full) = &attribute.name else {
                    return;
                };
                let error = Error::UnresolvedReference {
                    reference: full.join(":"),
                    from: self.path(node),
                    reason: format!(
                        "cannot place the attribute: `{first}` is not a component in `{}`",
                        self.path(node)
                    ),
                };
                self.errors.push(error.at(attribute.name_span));
            }
        }
    }

    /// A name for a `--` attribute (`uniqueN`, as SmartFrog names them), unused in `node`.
    fn fresh_name(&mut self, node: NodeId) -> Name {
        loop {
            let name = format!("unique{}", self.anonymous);
            self.anonymous += 1;
            if !self.nodes[node].attrs.contains_key(name.as_str()) {
                return Name::from(name);
            }
        }
    }

    /// The type-resolved child component `name` of `node`, if it is one.
    fn child_component(&mut self, node: NodeId, name: &str) -> Option<NodeId> {
        match self.nodes[node].attrs.get(name)? {
            Slot::Node(child) => Some(*child),
            Slot::Pending { .. } => self.resolve_type(node, name).ok(),
            _ => None,
        }
    }

    fn set(&mut self, node: NodeId, name: Name, attribute: &'a Attribute) {
        let value = &attribute.value;
        let slot = match &value.kind {
            ExprKind::Component(expr) => {
                let base = self.child_component(node, &name);
                Slot::Pending {
                    expr,
                    span: value.span,
                    base,
                    placed: Vec::new(),
                }
            }
            _ => Slot::Expr(value, Eval::Todo),
        };
        if matches!(slot, Slot::Pending { .. }) {
            self.mark_incomplete(node);
        }
        self.nodes[node].attrs.insert(name, slot);
    }

    /// Merges the prototypes and body of the pending component `node:name`.
    fn resolve_type(&mut self, node: NodeId, name: &str) -> Result<NodeId, Diagnostic> {
        crate::with_stack(|| self.resolve_type_inner(node, name))
    }

    fn resolve_type_inner(&mut self, node: NodeId, name: &str) -> Result<NodeId, Diagnostic> {
        // Slots are never removed, so the index stays valid while prototypes are merged.
        let (index, key, slot) = self.nodes[node]
            .attrs
            .get_full_mut(name)
            .expect("the caller found the slot");
        let key = key.clone();
        let (expr, span, base, placed) = match slot {
            Slot::Node(child) => return Ok(*child),
            Slot::Pending {
                expr,
                span,
                base,
                placed,
            } => (*expr, *span, *base, std::mem::take(placed)),
            Slot::Resolving(at) => {
                let at = *at;
                let what = format!(
                    "`{}` extends itself (through its prototypes or an enclosing component)",
                    self.attr_path(node, name)
                );
                return Err(Error::ReferenceCycle(what).at(at));
            }
            Slot::Expr(expr, _) => {
                let reason = "it is a value, not a component".to_string();
                return Err(Error::Unsupported(reason).at(expr.span));
            }
        };
        *slot = Slot::Resolving(span);
        let child = match base {
            Some(base) => Some(base),
            None => self.new_node(key, node, span, !expr.lazy),
        };
        let Some(child) = child else {
            // Over a size limit (already reported): leave an empty value in its place.
            let diagnostic = Error::Limit("component tree too large".into()).at(span);
            self.nodes[node].attrs[index] =
                Slot::Expr(&DROPPED, Eval::Failed(Box::new(diagnostic.clone())));
            return Err(diagnostic);
        };
        self.nodes[child].eager = !expr.lazy;
        self.nodes[child].assert = expr.role == ComponentRole::Assert;
        for item in &expr.types {
            let (prototype, proto_span) = match item {
                TypeItem::Body(body) => {
                    self.apply_body(child, body);
                    continue;
                }
                TypeItem::Prototype(prototype, proto_span) => (prototype, *proto_span),
            };
            let found = self.enter(proto_span).and_then(|()| {
                let found = self.lookup_prototype(prototype, child, proto_span);
                self.leave();
                found
            });
            match found {
                Ok(source) if self.encloses(source, child) => {
                    let what = format!(
                        "`{}` extends `{}`, which encloses it",
                        self.path(child),
                        self.path(source)
                    );
                    self.errors.push(Error::ReferenceCycle(what).at(proto_span));
                }
                Ok(source) => {
                    self.ensure_deep(source);
                    self.merge_copy(source, child);
                }
                Err(mut diagnostic) => {
                    if diagnostic.span.is_none() {
                        diagnostic.span = Some(proto_span);
                    }
                    self.errors.push(diagnostic);
                }
            }
        }
        for (path, attribute) in placed {
            self.place(child, path, attribute);
        }
        self.nodes[node].attrs[index] = Slot::Node(child);
        Ok(child)
    }

    /// Follows a prototype reference from the component being defined (a plain first name
    /// searches it, then each enclosing component).
    fn lookup_prototype(
        &mut self,
        reference: &Reference,
        context: NodeId,
        span: Span,
    ) -> Result<NodeId, Diagnostic> {
        let bad = |resolver: &Self, reason: String| {
            Error::BadPrototype {
                reference: reference.to_string(),
                from: resolver.path(context),
                reason,
            }
            .at(span)
        };
        let mut current = context;
        for (index, part) in reference.parts.iter().enumerate() {
            let last = index + 1 == reference.parts.len();
            let (holder, name) = match part {
                RefPart::Attrib { name, .. } => match self.find_up(current, name) {
                    Some(holder) => (holder, name),
                    None => {
                        return Err(bad(
                            self,
                            format!(
                                "no attribute `{name}` in `{}` or any component enclosing it",
                                self.path(current)
                            ),
                        ));
                    }
                },
                RefPart::Here(name) => {
                    if !self.nodes[current].attrs.contains_key(name.as_str()) {
                        return Err(bad(
                            self,
                            format!("no attribute `{name}` in `{}`", self.path(current)),
                        ));
                    }
                    (current, name)
                }
                RefPart::Parent => match self.nodes[current].parent {
                    Some(parent) => {
                        current = parent;
                        continue;
                    }
                    None => return Err(bad(self, "the top level has no PARENT".into())),
                },
                RefPart::Root => {
                    current = ROOT;
                    continue;
                }
                RefPart::This => continue,
                RefPart::Host(_) | RefPart::Process | RefPart::Property(..) => {
                    return Err(bad(self, "a prototype must be a component of this description, not HOST, PROCESS or a PROPERTY".into()));
                }
            };
            current = match &self.nodes[holder].attrs[name.as_str()] {
                Slot::Expr(expr, _) => match &expr.kind {
                    // `Alias ATTRIB Real;` then `extends Alias`: follow the alias.
                    ExprKind::Reference {
                        lazy: false,
                        reference: alias,
                    } if last => {
                        let alias_span = expr.span;
                        self.enter(alias_span)?;
                        let found = self.lookup_prototype(alias, holder, alias_span);
                        self.leave();
                        return found;
                    }
                    _ => {
                        return Err(bad(
                            self,
                            format!(
                                "`{}` is a value, not a component description",
                                self.attr_path(holder, name)
                            ),
                        ));
                    }
                },
                _ => match self.resolve_type(holder, name) {
                    Ok(node) => node,
                    Err(diagnostic) if matches!(diagnostic.error, Error::ReferenceCycle(_)) => {
                        return Err(diagnostic);
                    }
                    Err(diagnostic) => return Err(bad(self, diagnostic.error.to_string())),
                },
            };
        }
        Ok(current)
    }

    /// `node` and the components enclosing it hold something not built yet.
    fn mark_incomplete(&mut self, mut node: NodeId) {
        while self.nodes[node].complete {
            self.nodes[node].complete = false;
            match self.nodes[node].parent {
                Some(parent) => node = parent,
                None => return,
            }
        }
    }

    /// Whether `outer` is `node` or one of the components enclosing it.
    fn encloses(&self, outer: NodeId, mut node: NodeId) -> bool {
        loop {
            if node == outer {
                return true;
            }
            match self.nodes[node].parent {
                Some(parent) => node = parent,
                None => return false,
            }
        }
    }

    /// The component holding `name`: `node` or the nearest enclosing one that has it.
    fn find_up(&self, mut node: NodeId, name: &str) -> Option<NodeId> {
        loop {
            if self.nodes[node].attrs.contains_key(name) {
                return Some(node);
            }
            node = self.nodes[node].parent?;
        }
    }

    /// Type-resolves every pending component below `node`.
    fn ensure_deep(&mut self, node: NodeId) {
        // A template used as a prototype thousands of times is walked once.
        if self.nodes[node].complete {
            return;
        }
        let mut stack = vec![node];
        while let Some(current) = stack.pop() {
            for index in 0..self.nodes[current].attrs.len() {
                let Some((name, slot)) = self.nodes[current].attrs.get_index(index) else {
                    break;
                };
                match slot {
                    Slot::Node(child) => stack.push(*child),
                    Slot::Pending { .. } => {
                        let name = name.clone();
                        match self.resolve_type(current, &name) {
                            Ok(child) => stack.push(child),
                            Err(diagnostic) => self.errors.push(diagnostic),
                        }
                    }
                    Slot::Expr(..) | Slot::Resolving(_) => {}
                }
            }
        }
        self.nodes[node].complete = true;
    }

    /// Copies `source`'s attributes into `target`, merging components of the same name.
    fn merge_copy(&mut self, source: NodeId, target: NodeId) {
        crate::with_stack(|| self.merge_copy_inner(source, target));
    }

    fn merge_copy_inner(&mut self, source: NodeId, target: NodeId) {
        // By index, so no list of the source's attributes is built for every copy.
        for index in 0..self.nodes[source].attrs.len() {
            let Some((name, slot)) = self.nodes[source].attrs.get_index(index) else {
                break;
            };
            let name = name.clone();
            match *slot {
                Slot::Node(from) => match self.child_component(target, &name) {
                    Some(into) => self.merge_copy(from, into),
                    None => {
                        if let Some(copy) = self.deep_copy(from, target) {
                            self.nodes[target].attrs.insert(name, Slot::Node(copy));
                        }
                    }
                },
                Slot::Expr(expr, _) => {
                    self.nodes[target]
                        .attrs
                        .insert(name, Slot::Expr(expr, Eval::Todo));
                }
                // Left unresolved by an error already reported.
                Slot::Pending { .. } | Slot::Resolving(_) => {}
            }
        }
    }

    fn deep_copy(&mut self, source: NodeId, parent: NodeId) -> Option<NodeId> {
        let (name, span, eager, assert) = {
            let node = &self.nodes[source];
            (node.name.clone(), node.span, node.eager, node.assert)
        };
        let copy = self.new_node(name, parent, span, eager)?;
        self.nodes[copy].assert = assert;
        let size = self.nodes[source].attrs.len();
        self.nodes[copy].attrs.reserve(size);
        self.merge_copy(source, copy);
        Some(copy)
    }

    /// Resolves `sfConfig` to the end.
    fn config(&mut self) -> Option<Component> {
        if !self.nodes[ROOT].attrs.contains_key("sfConfig") {
            self.errors.push(Error::NoSfConfig.nowhere());
            return None;
        }
        if let Some(Slot::Expr(expr, _)) = self.nodes[ROOT].attrs.get("sfConfig") {
            let what = "`sfConfig` must be a component description (`sfConfig extends { ... }`), not a value";
            self.errors.push(Error::Type(what.into()).at(expr.span));
            return None;
        }
        let config = match self.resolve_type(ROOT, "sfConfig") {
            Ok(config) => config,
            Err(diagnostic) => {
                self.errors.push(diagnostic);
                return None;
            }
        };
        self.ensure_deep(config);
        self.export(config)
    }
}

/// Stands in for a slot dropped by a size limit.
static DROPPED: crate::ast::Expr = crate::ast::Expr {
    kind: ExprKind::Tbd,
    span: Span {
        file: crate::source::FileId(0),
        start: 0,
        end: 0,
    },
};
