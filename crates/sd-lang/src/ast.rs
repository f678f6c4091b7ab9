//! The parsed form of a description, before includes are spliced and prototypes resolved.

use crate::reference::Reference;
use crate::source::Span;

/// The attributes of a file or of a component body, in order.
pub type Body = Vec<Item>;

/// One entry of a body.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `name value;` or `name extends ...`.
    Attribute(Attribute),
    /// `#include "file"` / `#include? "file"`; its attributes go where it stands.
    Include(Include),
}

/// An include directive.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    /// The file name as written.
    pub name: String,
    /// `#include?`: a missing file is not an error.
    pub optional: bool,
    /// Where it is written.
    pub span: Span,
}

/// Where an attribute goes.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrName {
    /// A plain name, or a path `a:b:c` that places the attribute inside a nested component.
    Path(Vec<String>),
    /// `--`: a fresh name is generated.
    Anonymous,
}

/// `name value;`
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    /// The name (or placement path).
    pub name: AttrName,
    /// The value.
    pub value: Expr,
    /// The name's span.
    pub name_span: Span,
}

/// A value expression with its place.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it is.
    pub span: Span,
}

/// Literal values.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `NULL`.
    Null,
    /// `true`, `false`.
    Bool(bool),
    /// 32-bit integer.
    Int(i32),
    /// 64-bit integer (`L` suffix).
    Long(i64),
    /// 32-bit float (`f` suffix).
    Float(f32),
    /// 64-bit float.
    Double(f64),
    /// A string.
    Str(String),
}

/// Which property source a property reference reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyKind {
    /// `PROPERTY name`: a string from the resolve options (`-D name=value`).
    Property,
    /// `IPROPERTY name`: the same, as an integer.
    IProperty,
    /// `ENVPROPERTY name`: a string from the environment.
    EnvProperty,
    /// `IENVPROPERTY name`: the same, as an integer.
    IEnvProperty,
}

impl PropertyKind {
    /// The keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            PropertyKind::Property => "PROPERTY",
            PropertyKind::IProperty => "IPROPERTY",
            PropertyKind::EnvProperty => "ENVPROPERTY",
            PropertyKind::IEnvProperty => "IENVPROPERTY",
        }
    }

    /// Whether the value is parsed as an integer.
    pub fn integer(self) -> bool {
        matches!(self, PropertyKind::IProperty | PropertyKind::IEnvProperty)
    }

    /// Whether the value comes from the environment.
    pub fn from_env(self) -> bool {
        matches!(self, PropertyKind::EnvProperty | PropertyKind::IEnvProperty)
    }
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// `!`
    Not,
    /// `-`
    Neg,
}

/// Binary operators, loosest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BinaryOp {
    Implies,
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    Add,
    Sub,
    Concat,
    Append,
    Mul,
    Div,
    Mod,
}

impl BinaryOp {
    /// The operator as written.
    pub fn text(self) -> &'static str {
        match self {
            BinaryOp::Implies => "->",
            BinaryOp::Or => "||",
            BinaryOp::And => "&&",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Gt => ">",
            BinaryOp::Le => "<=",
            BinaryOp::Ge => ">=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Concat => "++",
            BinaryOp::Append => "<>",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
        }
    }
}

/// One entry of the list after `extends`.
#[derive(Debug, Clone, PartialEq)]
pub enum TypeItem {
    /// A prototype to copy.
    Prototype(Reference, Span),
    /// An inline `{ ... }` body.
    Body(Body),
}

/// What a component description is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentRole {
    /// `name extends ...` (or `name APPLY {...}`, a function application).
    Plain,
    /// `name ASSERT { sfFunctionClass ...; }`: a function whose result must be `true`.
    Assert,
}

/// A component description: `extends [LAZY] A, { ... }, B { body }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentExpr {
    /// `extends LAZY` / `extends DATA`: a description for the runtime, not a child to deploy.
    pub lazy: bool,
    /// Prototypes and bodies, merged left to right (the rightmost wins).
    pub types: Vec<TypeItem>,
    /// Plain component or assertion.
    pub role: ComponentRole,
}

/// The kinds of value expressions.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A literal.
    Literal(Literal),
    /// `[| a, b |]`.
    Vector(Vec<Expr>),
    /// A component description.
    Component(Box<ComponentExpr>),
    /// A reference; `lazy` keeps it a reference in the resolved tree.
    Reference {
        /// `LAZY` (or `DATA`).
        lazy: bool,
        /// The path.
        reference: Reference,
    },
    /// `TBD`: to be supplied.
    Tbd,
    /// `ASSERT expr`: must evaluate to `true`; the attribute is then dropped.
    Assert(Box<Expr>),
    /// A unary operator.
    Unary(UnaryOp, Box<Expr>),
    /// A binary operator.
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `IF c THEN a ELSE b FI`.
    If(Box<Expr>, Box<Expr>, Box<Expr>),
}
