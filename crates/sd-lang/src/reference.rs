//! References: paths through the component tree (`ATTRIB x`, `PARENT:y`, `a:b:c`, `LAZY ...`).

use std::fmt;

use crate::ast::PropertyKind;
use crate::unparse::name_text;
use crate::value::Value;

/// One step of a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefPart {
    /// Look `name` up here, then in each enclosing component. The first step of a plain
    /// path is an `ATTRIB`; `keyword` tells whether `ATTRIB` was written.
    Attrib {
        /// The attribute name.
        name: String,
        /// Whether the `ATTRIB` keyword was written.
        keyword: bool,
    },
    /// `name` in the current component only (`HERE x`, or any later step of a path).
    Here(String),
    /// The enclosing component.
    Parent,
    /// The outermost component.
    Root,
    /// The current component.
    This,
    /// The root of the named node's process (bound by the runtime).
    Host(String),
    /// The root of this node's process (bound by the runtime).
    Process,
    /// `PROPERTY x` and friends: a value from the resolve options or the environment.
    /// Ends the reference.
    Property(PropertyKind, String),
}

/// A reference as written, minus the `LAZY` keyword (held by the value that holds it).
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// The steps, first to last.
    pub parts: Vec<RefPart>,
    /// `OPTIONAL`: a reference that does not resolve gives `default` (`NULL` if none).
    pub optional: bool,
    /// The `OPTIONAL (default)` value.
    pub default: Option<Box<Value>>,
}

impl Reference {
    /// A plain (not optional) reference.
    pub fn new(parts: Vec<RefPart>) -> Self {
        Reference {
            parts,
            optional: false,
            default: None,
        }
    }

    /// Whether the reference needs the runtime to be followed (`HOST` or `PROCESS` steps).
    pub fn needs_runtime(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, RefPart::Host(_) | RefPart::Process))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.optional {
            f.write_str("OPTIONAL ")?;
            if let Some(default) = &self.default {
                write!(f, "({}) ", crate::unparse::value_text(default))?;
            }
        }
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            match part {
                RefPart::Attrib {
                    name,
                    keyword: true,
                } => write!(f, "ATTRIB {}", name_text(name))?,
                RefPart::Attrib {
                    name,
                    keyword: false,
                } => f.write_str(&name_text(name))?,
                RefPart::Here(name) if i == 0 => write!(f, "HERE {}", name_text(name))?,
                RefPart::Here(name) => f.write_str(&name_text(name))?,
                RefPart::Parent => f.write_str("PARENT")?,
                RefPart::Root => f.write_str("ROOT")?,
                RefPart::This => f.write_str("THIS")?,
                RefPart::Host(host) => write!(f, "HOST {}", crate::unparse::quote(host))?,
                RefPart::Process => f.write_str("PROCESS")?,
                RefPart::Property(kind, name) => {
                    write!(f, "{} {}", kind.keyword(), name_text(name))?
                }
            }
        }
        Ok(())
    }
}
