//! The resolved tree: what `sd resolve` prints and what the runtime deploys.

use indexmap::IndexMap;

use crate::reference::Reference;

/// An attribute name. Shared: copying a prototype or exporting a tree copies every name.
pub type Name = std::sync::Arc<str>;

/// A component's attributes in declaration order. The hasher is fast and randomly seeded
/// (names come from untrusted descriptions).
pub type Attrs = IndexMap<Name, Value, foldhash::fast::RandomState>;

/// A resolved value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `NULL`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 32-bit integer.
    Int(i32),
    /// A 64-bit integer.
    Long(i64),
    /// A 32-bit float.
    Float(f32),
    /// A 64-bit float.
    Double(f64),
    /// A string.
    Str(String),
    /// A vector.
    Vector(Vec<Value>),
    /// A component description.
    Component(Component),
    /// A `LAZY` reference, bound at run time to the live component.
    Lazy(Reference),
}

impl Value {
    /// The type's name in messages, with its article ("an integer", "a string", "NULL").
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Long(_) => "a long",
            Value::Float(_) => "a float",
            Value::Double(_) => "a double",
            Value::Str(_) => "a string",
            Value::Vector(_) => "a vector",
            Value::Component(_) => "a component",
            Value::Lazy(_) => "a LAZY reference",
        }
    }

    /// The component, if this is one.
    pub fn as_component(&self) -> Option<&Component> {
        match self {
            Value::Component(c) => Some(c),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A resolved component description: its attributes in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    /// False for `extends LAZY` descriptions: data for the runtime, not a child to deploy.
    pub eager: bool,
    /// The attributes, in order.
    pub attrs: Attrs,
}

impl Default for Component {
    fn default() -> Self {
        Component::new()
    }
}

impl Component {
    /// An empty eager component.
    pub fn new() -> Self {
        Component {
            eager: true,
            attrs: Attrs::default(),
        }
    }

    /// An attribute's value.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.attrs.get(name)
    }

    /// The value at a `:`-separated path below this component (`"computer1:domain1:ip"`).
    pub fn at_path(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split(':');
        let mut value = self.get(parts.next()?)?;
        for part in parts {
            value = value.as_component()?.get(part)?;
        }
        Some(value)
    }

    /// The runtime kind named by `sfClass`, if any.
    pub fn class(&self) -> Option<&str> {
        self.get("sfClass").and_then(Value::as_str)
    }

    /// Child components (eager ones are deployed; lazy ones are data).
    pub fn children(&self) -> impl Iterator<Item = (&str, &Component)> {
        self.attrs
            .iter()
            .filter_map(|(name, value)| Some((&**name, value.as_component()?)))
    }
}
