//! Link resolution and evaluation: references, properties, `OPTIONAL`, operators,
//! function components, and the export of the resolved tree.

use crate::ast::{BinaryOp, Expr, ExprKind, Literal, PropertyKind, UnaryOp};
use crate::error::{Diagnostic, Error};
use crate::reference::{RefPart, Reference};
use crate::source::Span;
use crate::value::{Component, Value};

use super::functions;
use super::tree::{Eval, Name, NodeId, Slot};
use super::{ROOT, Resolver};

/// A value during resolution: like [`Value`], but a component is a node of the arena.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    /// `NULL`.
    Null,
    /// A boolean.
    Bool(bool),
    /// 32-bit integer.
    Int(i32),
    /// 64-bit integer.
    Long(i64),
    /// 32-bit float.
    Float(f32),
    /// 64-bit float.
    Double(f64),
    /// A string.
    Str(String),
    /// A vector.
    Vector(Vec<Val<'a>>),
    /// A component of the arena (a reference to it copies it).
    Node(NodeId),
    /// A `LAZY` reference, as written in the description.
    Lazy(&'a Reference),
    /// A checked assertion: left out of the resolved tree.
    Absent,
}

impl Val<'_> {
    /// The type's name in messages, with its article ("an integer", "a string").
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Null => "NULL",
            Val::Bool(_) => "a boolean",
            Val::Int(_) => "an integer",
            Val::Long(_) => "a long",
            Val::Float(_) => "a float",
            Val::Double(_) => "a double",
            Val::Str(_) => "a string",
            Val::Vector(_) => "a vector",
            Val::Node(_) => "a component",
            Val::Lazy(_) => "a LAZY reference",
            Val::Absent => "an assertion",
        }
    }
}

fn literal(literal: &Literal) -> Val<'static> {
    match literal {
        Literal::Null => Val::Null,
        Literal::Bool(b) => Val::Bool(*b),
        Literal::Int(n) => Val::Int(*n),
        Literal::Long(n) => Val::Long(*n),
        Literal::Float(x) => Val::Float(*x),
        Literal::Double(x) => Val::Double(*x),
        Literal::Str(s) => Val::Str(s.clone()),
    }
}

/// Whether a failure means "nothing there" (which `OPTIONAL` turns into its default, and
/// which makes `ATTRIB` try the next enclosing component).
fn is_not_found(diagnostic: &Diagnostic) -> bool {
    matches!(
        diagnostic.error,
        Error::UnresolvedReference { .. } | Error::MissingProperty { .. } | Error::Tbd(_)
    )
}

/// Where a reference step stands: a component, or a value that is not one.
enum Here<'a> {
    Node(NodeId),
    Value(Val<'a>),
}

impl<'a> Resolver<'a> {
    /// The value of attribute `name` of `node`, evaluated on first use.
    pub(super) fn value_of(
        &mut self,
        node: NodeId,
        name: &str,
        span: Span,
    ) -> Result<Val<'a>, Diagnostic> {
        let Some(index) = self.nodes[node].attrs.get_index_of(name) else {
            let error = Error::UnresolvedReference {
                reference: name.into(),
                from: self.path(node),
                reason: "no such attribute".into(),
            };
            return Err(error.at(span));
        };
        self.value_at(node, index, span)
    }

    /// The value of the attribute at `index` in `node`, evaluated on first use.
    fn value_at(&mut self, node: NodeId, index: usize, span: Span) -> Result<Val<'a>, Diagnostic> {
        let (name, slot) = self.nodes[node]
            .attrs
            .get_index_mut(index)
            .expect("the caller found the index");
        let name = name.clone();
        let expr = match slot {
            Slot::Expr(expr, state) => match state {
                Eval::Done(value) => return Ok(value.clone()),
                Eval::Failed(diagnostic) => return Err((**diagnostic).clone()),
                Eval::Running => {
                    let what =
                        format!("`{}` depends on its own value", self.attr_path(node, &name));
                    return Err(Error::ReferenceCycle(what).at(span));
                }
                Eval::Todo => {
                    *state = Eval::Running;
                    *expr
                }
            },
            Slot::Node(child) => {
                let child = *child;
                return self.component_value(child, span);
            }
            Slot::Pending { .. } | Slot::Resolving(_) => {
                let child = self.resolve_type(node, &name).map_err(|d| {
                    if d.span.is_none() {
                        Diagnostic {
                            span: Some(span),
                            ..d
                        }
                    } else {
                        d
                    }
                })?;
                return self.component_value(child, span);
            }
        };
        let result = self.enter(expr.span).and_then(|()| {
            let value = self.eval(expr, node, &name);
            self.leave();
            value
        });
        let state = match &result {
            Ok(value) => Eval::Done(value.clone()),
            Err(diagnostic) => Eval::Failed(Box::new(diagnostic.clone())),
        };
        if let Some((_, Slot::Expr(_, slot_state))) = self.nodes[node].attrs.get_index_mut(index) {
            *slot_state = state;
        }
        result
    }

    /// A component's value: itself, or its result if it is a function component.
    fn component_value(&mut self, node: NodeId, span: Span) -> Result<Val<'a>, Diagnostic> {
        if !self.nodes[node]
            .attrs
            .contains_key(functions::CLASS_ATTRIBUTE)
        {
            return Ok(Val::Node(node));
        }
        match &self.nodes[node].result {
            Some(Eval::Done(value)) => return Ok(value.clone()),
            Some(Eval::Failed(diagnostic)) => return Err((**diagnostic).clone()),
            Some(Eval::Running) => {
                let what = format!("function `{}` depends on its own result", self.path(node));
                return Err(Error::ReferenceCycle(what).at(span));
            }
            Some(Eval::Todo) | None => {}
        }
        self.nodes[node].result = Some(Eval::Running);
        let result = self.enter(span).and_then(|()| {
            let value = self.call_function(node, span);
            self.leave();
            value
        });
        let result = if self.nodes[node].assert {
            result.and_then(|value| self.check_assertion(node, value))
        } else {
            result
        };
        self.nodes[node].result = Some(match &result {
            Ok(value) => Eval::Done(value.clone()),
            Err(diagnostic) => Eval::Failed(Box::new(diagnostic.clone())),
        });
        result
    }

    /// An assertion holds when its value is `true`; it then leaves the tree.
    fn check_assertion(&self, node: NodeId, value: Val<'a>) -> Result<Val<'a>, Diagnostic> {
        let span = self.nodes[node].span;
        match value {
            Val::Bool(true) => Ok(Val::Absent),
            Val::Bool(false) => Err(Error::AssertFailed {
                path: self.path(node),
                detail: "the assertion is false".into(),
            }
            .at(span)),
            other => {
                let detail = format!("the assertion gave {}, not a boolean", other.type_name());
                Err(Error::AssertFailed {
                    path: self.path(node),
                    detail,
                }
                .at(span))
            }
        }
    }

    fn call_function(&mut self, node: NodeId, span: Span) -> Result<Val<'a>, Diagnostic> {
        let class = match self.value_of(node, functions::CLASS_ATTRIBUTE, span)? {
            Val::Str(class) => class,
            other => {
                let what = format!(
                    "`{}` must be a string, not {}",
                    self.attr_path(node, functions::CLASS_ATTRIBUTE),
                    other.type_name()
                );
                return Err(Error::Type(what).at(self.nodes[node].span));
            }
        };
        let names: Vec<Name> = self.nodes[node]
            .attrs
            .keys()
            .filter(|n| !n.starts_with("sf"))
            .cloned()
            .collect();
        let mut args = Vec::with_capacity(names.len());
        for name in names {
            let value = self.value_of(node, &name, span)?;
            if value != Val::Absent {
                args.push((name.to_string(), value));
            }
        }
        let at = self.nodes[node].span;
        // Equality of components is structural, as for `==`: it needs the resolver.
        let short_class = class.rsplit('.').next().unwrap_or(&class);
        let named = |wanted: &str| args.iter().find(|(n, _)| n == wanted).map(|(_, v)| v);
        if let ("EQ" | "NE", Some(left), Some(right)) = (short_class, named("left"), named("right"))
        {
            let equal = self.equal(left, right).map_err(|error| error.at(at))?;
            return Ok(Val::Bool(equal == (short_class == "EQ")));
        }
        functions::call(&class, args, &self.path(node)).map_err(|error| error.at(at))
    }

    /// Evaluates an expression written in attribute `name` of `node`.
    fn eval(&mut self, expr: &'a Expr, node: NodeId, name: &str) -> Result<Val<'a>, Diagnostic> {
        crate::with_stack(|| self.eval_inner(expr, node, name))
    }

    fn eval_inner(
        &mut self,
        expr: &'a Expr,
        node: NodeId,
        name: &str,
    ) -> Result<Val<'a>, Diagnostic> {
        match &expr.kind {
            ExprKind::Literal(value) => Ok(literal(value)),
            ExprKind::Vector(items) => {
                let mut values = Vec::with_capacity(items.len());
                for item in items {
                    let value = self.eval(item, node, name)?;
                    if let Val::Node(component) = value {
                        let what = format!(
                            "a vector holds values and LAZY references, not components (`{}`): refer to it with `LAZY`",
                            self.path(component)
                        );
                        return Err(Error::Type(what).at(item.span));
                    }
                    if value != Val::Absent {
                        values.push(value);
                    }
                }
                Ok(Val::Vector(values))
            }
            ExprKind::Component(_) => Err(Error::Unsupported(
                "a component description cannot be used inside an expression".into(),
            )
            .at(expr.span)),
            ExprKind::Reference {
                lazy: true,
                reference,
            } => Ok(Val::Lazy(reference)),
            ExprKind::Reference {
                lazy: false,
                reference,
            } => self.follow(reference, node, expr.span),
            ExprKind::Tbd => Err(Error::Tbd(self.attr_path(node, name)).at(expr.span)),
            ExprKind::Assert(condition) => match self.eval(condition, node, name)? {
                Val::Bool(true) => Ok(Val::Absent),
                other => {
                    let detail = match other {
                        Val::Bool(false) => "the assertion is false".to_string(),
                        other => {
                            format!("the assertion gave {}, not a boolean", other.type_name())
                        }
                    };
                    Err(Error::AssertFailed {
                        path: self.attr_path(node, name),
                        detail,
                    }
                    .at(expr.span))
                }
            },
            ExprKind::Unary(op, operand) => {
                let value = self.eval(operand, node, name)?;
                self.unary(*op, value).map_err(|error| error.at(expr.span))
            }
            ExprKind::Binary(op, lhs, rhs) => {
                let left = self.eval(lhs, node, name)?;
                // `&&`, `||` and `->` do not evaluate the right side when the left decides.
                let short = match (op, &left) {
                    (BinaryOp::And, Val::Bool(false)) => Some(false),
                    (BinaryOp::Or, Val::Bool(true)) => Some(true),
                    (BinaryOp::Implies, Val::Bool(false)) => Some(true),
                    _ => None,
                };
                if let Some(decided) = short {
                    return Ok(Val::Bool(decided));
                }
                let right = self.eval(rhs, node, name)?;
                self.binary(*op, left, right)
                    .map_err(|error| error.at(expr.span))
            }
            ExprKind::If(condition, then, otherwise) => match self.eval(condition, node, name)? {
                Val::Bool(true) => self.eval(then, node, name),
                Val::Bool(false) => self.eval(otherwise, node, name),
                other => Err(Error::Type(format!(
                    "IF needs a boolean condition, not {}",
                    other.type_name()
                ))
                .at(condition.span)),
            },
        }
    }

    /// Follows a non-`LAZY` reference from `node`. A reference that reaches a `LAZY` value
    /// becomes lazy itself (the runtime follows it); an `OPTIONAL` one that finds nothing
    /// gives its default.
    fn follow(
        &mut self,
        reference: &'a Reference,
        node: NodeId,
        span: Span,
    ) -> Result<Val<'a>, Diagnostic> {
        if reference.needs_runtime() {
            let what = format!(
                "reference `{reference}` (in `{}`) names another process (HOST/PROCESS); only the runtime can follow it: write it `LAZY {reference}`",
                self.path(node)
            );
            return Err(Error::Unsupported(what).at(span));
        }
        match self.walk(reference, 0, Here::Node(node), node, span) {
            Err(diagnostic) if reference.optional && is_not_found(&diagnostic) => {
                Ok(reference.default.as_deref().map_or(Val::Null, from_value))
            }
            other => other,
        }
    }

    /// Resolves `reference.parts[index..]` from `here`.
    fn walk(
        &mut self,
        reference: &'a Reference,
        index: usize,
        here: Here<'a>,
        origin: NodeId,
        span: Span,
    ) -> Result<Val<'a>, Diagnostic> {
        let unresolved = |resolver: &Self, reason: String| {
            Error::UnresolvedReference {
                reference: reference.to_string(),
                from: resolver.path(origin),
                reason,
            }
            .at(span)
        };
        let Some(part) = reference.parts.get(index) else {
            return match here {
                Here::Node(found) => self.component_value(found, span),
                Here::Value(Val::Absent) => Err(unresolved(
                    self,
                    "it names an assertion, which has no value".into(),
                )),
                // Reaching a LAZY value makes this reference lazy too: the runtime follows it
                // from where it is written, so it finds what this path names.
                Here::Value(Val::Lazy(_)) => Ok(Val::Lazy(reference)),
                Here::Value(value) => Ok(value),
            };
        };
        let current = match here {
            Here::Node(current) | Here::Value(Val::Node(current)) => current,
            // What the runtime binds, the runtime follows: the whole reference becomes lazy.
            Here::Value(Val::Lazy(_)) => return Ok(Val::Lazy(reference)),
            Here::Value(value) => {
                return Err(unresolved(
                    self,
                    format!(
                        "cannot look inside {} for `{}`",
                        value.type_name(),
                        part_text(part)
                    ),
                ));
            }
        };
        let next = |resolver: &mut Self, here: Here<'a>| {
            resolver.walk(reference, index + 1, here, origin, span)
        };
        match part {
            RefPart::Attrib { name, .. } => {
                // The closest `name` whose value lets the rest resolve (SmartFrog's ATTRIB
                // retries the rest from each enclosing component).
                let mut search = Some(current);
                let mut first_failure = None;
                while let Some(start) = search {
                    let Some(holder) = self.find_up(start, name) else {
                        break;
                    };
                    let result = self
                        .value_of(holder, name, span)
                        .and_then(|value| next(self, Here::Value(value)));
                    match result {
                        Err(diagnostic)
                            if index + 1 < reference.parts.len() && is_not_found(&diagnostic) =>
                        {
                            first_failure.get_or_insert(diagnostic);
                            search = self.nodes[holder].parent;
                        }
                        other => return other,
                    }
                }
                Err(first_failure.unwrap_or_else(|| {
                    unresolved(
                        self,
                        format!(
                            "no attribute `{name}` in `{}` or any component enclosing it",
                            self.path(current)
                        ),
                    )
                }))
            }
            RefPart::Here(name) => {
                if !self.nodes[current].attrs.contains_key(name.as_str()) {
                    return Err(unresolved(
                        self,
                        format!("no attribute `{name}` in `{}`", self.path(current)),
                    ));
                }
                let value = self.value_of(current, name, span)?;
                next(self, Here::Value(value))
            }
            RefPart::Parent => match self.nodes[current].parent {
                Some(parent) => next(self, Here::Node(parent)),
                None => Err(unresolved(self, "the top level has no PARENT".into())),
            },
            RefPart::Root => next(self, Here::Node(ROOT)),
            RefPart::This => next(self, Here::Node(current)),
            RefPart::Property(kind, property) => self.property(*kind, property, span),
            RefPart::Host(_) | RefPart::Process => unreachable!("refused by follow before walking"),
        }
    }

    fn property(
        &self,
        kind: PropertyKind,
        property: &str,
        span: Span,
    ) -> Result<Val<'a>, Diagnostic> {
        let source = if kind.from_env() {
            &self.properties.env
        } else {
            &self.properties.properties
        };
        let Some(text) = source.get(property) else {
            return Err(Error::MissingProperty {
                kind: kind.keyword(),
                name: property.to_string(),
            }
            .at(span));
        };
        let not_a = |what: &str| {
            Error::Type(format!(
                "{} `{property}` is `{text}`, not {what}",
                kind.keyword()
            ))
            .at(span)
        };
        match kind {
            PropertyKind::Property | PropertyKind::EnvProperty => Ok(Val::Str(text.clone())),
            PropertyKind::IProperty => text
                .trim()
                .parse::<i32>()
                .map(Val::Int)
                .map_err(|_| not_a("an integer")),
            // As in SmartFrog, IENVPROPERTY reads any constant: `5`, `"text"`, `true`, `[| 1 |]`.
            PropertyKind::IEnvProperty => crate::parser::parse_constant(text)
                .map(|value| from_value(&value))
                .ok_or_else(|| not_a("a constant")),
        }
    }

    fn unary(&mut self, op: UnaryOp, value: Val<'a>) -> Result<Val<'a>, Error> {
        refuse_lazy(&value)?;
        functions::unary(op, value)
    }

    fn binary(&mut self, op: BinaryOp, left: Val<'a>, right: Val<'a>) -> Result<Val<'a>, Error> {
        refuse_lazy(&left)?;
        refuse_lazy(&right)?;
        if matches!(op, BinaryOp::Eq | BinaryOp::Ne) {
            let equal = self.equal(&left, &right)?;
            return Ok(Val::Bool(equal == (op == BinaryOp::Eq)));
        }
        functions::binary(op, left, right)
    }

    /// Structural equality; components compare by their exported attributes.
    fn equal(&mut self, left: &Val<'a>, right: &Val<'a>) -> Result<bool, Error> {
        match (left, right) {
            (Val::Node(a), Val::Node(b)) => {
                let a = self.export(*a);
                let b = self.export(*b);
                Ok(a.is_some() && a == b)
            }
            (Val::Vector(a), Val::Vector(b)) => {
                if a.len() != b.len() {
                    return Ok(false);
                }
                for (x, y) in a.iter().zip(b) {
                    if !self.equal(x, y)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            _ => Ok(functions::scalar_equal(left, right)),
        }
    }

    // ----- export ------------------------------------------------------------------

    /// The resolved form of a component, or `None` after reporting errors.
    pub(super) fn export(&mut self, node: NodeId) -> Option<Component> {
        let mut on_stack = Vec::new();
        self.export_node(node, &mut on_stack)
    }

    fn export_node(&mut self, node: NodeId, on_stack: &mut Vec<NodeId>) -> Option<Component> {
        crate::with_stack(|| self.export_node_inner(node, on_stack))
    }

    fn export_node_inner(&mut self, node: NodeId, on_stack: &mut Vec<NodeId>) -> Option<Component> {
        if on_stack.contains(&node) {
            let what = format!(
                "`{}` contains a reference to itself or to a component enclosing it",
                self.path(node)
            );
            let span = self.nodes[node].span;
            self.errors.push(Error::ReferenceCycle(what).at(span));
            return None;
        }
        on_stack.push(node);
        let size = self.nodes[node].attrs.len();
        let mut component = Component {
            eager: self.nodes[node].eager,
            attrs: crate::value::Attrs::with_capacity_and_hasher(size, Default::default()),
        };
        let mut ok = true;
        let span = self.nodes[node].span;
        for index in 0..size {
            let name = self.nodes[node]
                .attrs
                .get_index(index)
                .map(|(name, _)| name.clone());
            let Some(name) = name else { break };
            let value = match self.value_at(node, index, span) {
                Ok(value) => value,
                Err(diagnostic) => {
                    self.errors.push(diagnostic);
                    ok = false;
                    continue;
                }
            };
            match self.export_value(value, on_stack) {
                Some(Some(value)) => {
                    component.attrs.insert(name, value);
                }
                Some(None) => {}
                None => ok = false,
            }
        }
        on_stack.pop();
        ok.then_some(component)
    }

    /// `Some(None)` for an absent value, `None` after an error.
    fn export_value(
        &mut self,
        value: Val<'a>,
        on_stack: &mut Vec<NodeId>,
    ) -> Option<Option<Value>> {
        Some(Some(match value {
            Val::Absent => return Some(None),
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(b),
            Val::Int(n) => Value::Int(n),
            Val::Long(n) => Value::Long(n),
            Val::Float(x) => Value::Float(x),
            Val::Double(x) => Value::Double(x),
            Val::Str(s) => Value::Str(s),
            Val::Lazy(reference) => Value::Lazy(reference.clone()),
            Val::Node(node) => Value::Component(self.export_node(node, on_stack)?),
            Val::Vector(items) => {
                let mut values = Vec::with_capacity(items.len());
                for item in items {
                    if let Some(value) = self.export_value(item, on_stack)? {
                        values.push(value);
                    }
                }
                Value::Vector(values)
            }
        }))
    }
}

/// Operators need values now; a LAZY reference has one only at run time.
fn refuse_lazy(value: &Val<'_>) -> Result<(), Error> {
    match value {
        Val::Lazy(reference) => Err(Error::Type(format!(
            "an operator cannot use `LAZY {reference}`: a LAZY value exists only at run time"
        ))),
        _ => Ok(()),
    }
}

/// One step as written in a path (`x`, not `HERE x`, for a later step).
fn part_text(part: &RefPart) -> String {
    match part {
        RefPart::Here(name) => crate::unparse::name_text(name),
        other => Reference::new(vec![other.clone()]).to_string(),
    }
}

/// A resolved constant as a working value.
fn from_value(value: &Value) -> Val<'static> {
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Int(n) => Val::Int(*n),
        Value::Long(n) => Val::Long(*n),
        Value::Float(x) => Val::Float(*x),
        Value::Double(x) => Val::Double(*x),
        Value::Str(s) => Val::Str(s.clone()),
        Value::Vector(items) => Val::Vector(items.iter().map(from_value).collect()),
        // Constants (OPTIONAL defaults, IENVPROPERTY values) hold no references.
        Value::Lazy(_) => Val::Null,
        // Constants never hold components.
        Value::Component(_) => Val::Null,
    }
}
