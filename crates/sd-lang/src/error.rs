//! Errors of the description language. Every error carries the span it is about, and
//! [`Diagnostics`] renders them as `file:line:col: error: ...` with the line and a caret.

use std::fmt;

use crate::source::{SourceMap, Span};

/// What went wrong. The messages are written for the person who wrote the description.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// The text does not follow the grammar.
    #[error("syntax error: expected {expected}, found {found}")]
    Syntax {
        /// What the parser could accept here.
        expected: String,
        /// What it found instead.
        found: String,
    },
    /// A token could not be read (bad character, unterminated string, bad number ...).
    #[error("syntax error: {0}")]
    Lexical(String),
    /// An `#include` names a file found nowhere on the include path.
    #[error("include \"{name}\" not found (looked in: {searched})")]
    IncludeMissing {
        /// The name as written.
        name: String,
        /// The places that were searched.
        searched: String,
    },
    /// A file includes itself, directly or through others.
    #[error("include cycle: {0}")]
    IncludeCycle(String),
    /// A file could not be read.
    #[error("cannot read \"{name}\": {reason}")]
    IncludeUnreadable {
        /// The name as written.
        name: String,
        /// Why reading failed.
        reason: String,
    },
    /// A reference names nothing that exists.
    #[error("reference `{reference}` from `{from}` does not resolve: {reason}")]
    UnresolvedReference {
        /// The reference as written.
        reference: String,
        /// The path of the component it was resolved from.
        from: String,
        /// The step that failed.
        reason: String,
    },
    /// The prototype after `extends` is not a component description.
    #[error("`extends {reference}` in `{from}`: {reason}")]
    BadPrototype {
        /// The prototype reference as written.
        reference: String,
        /// The component being defined.
        from: String,
        /// Why the target cannot be a prototype.
        reason: String,
    },
    /// Resolution went around in a circle (references or prototypes).
    #[error("reference cycle: {0}")]
    ReferenceCycle(String),
    /// An attribute was declared `TBD` and never supplied.
    #[error("attribute `{0}` is TBD: it must be supplied by the description that uses it")]
    Tbd(String),
    /// A `PROPERTY`/`ENVPROPERTY` that is not set (and not `OPTIONAL`).
    #[error("{kind} `{name}` is not set")]
    MissingProperty {
        /// `PROPERTY`, `ENVPROPERTY`, `IPROPERTY` or `IENVPROPERTY`.
        kind: &'static str,
        /// The property or variable name.
        name: String,
    },
    /// An operator or function got values of the wrong type.
    #[error("type error: {0}")]
    Type(String),
    /// An `ASSERT` evaluated to false.
    #[error("assertion failed in `{path}`: {detail}")]
    AssertFailed {
        /// The component holding the assertion.
        path: String,
        /// The assertion as written.
        detail: String,
    },
    /// Something the language allows but this stage cannot do yet.
    #[error("{0}")]
    Unsupported(String),
    /// The description has no `sfConfig` component.
    #[error("the description has no `sfConfig` component (sfConfig is what gets deployed)")]
    NoSfConfig,
    /// A safety limit (size, depth, count) was exceeded.
    #[error("limit exceeded: {0}")]
    Limit(String),
}

impl Error {
    /// Attaches a span.
    pub fn at(self, span: Span) -> Diagnostic {
        Diagnostic {
            error: self,
            span: Some(span),
            notes: Vec::new(),
        }
    }

    /// A diagnostic without a position.
    pub fn nowhere(self) -> Diagnostic {
        Diagnostic {
            error: self,
            span: None,
            notes: Vec::new(),
        }
    }

    /// A short name of the error class, stable for tests and tools.
    pub fn class(&self) -> &'static str {
        match self {
            Error::Syntax { .. } | Error::Lexical(_) => "syntax",
            Error::IncludeMissing { .. } | Error::IncludeUnreadable { .. } => "include-missing",
            Error::IncludeCycle(_) => "include-cycle",
            Error::UnresolvedReference { .. } => "unresolved-reference",
            Error::BadPrototype { .. } => "bad-prototype",
            Error::ReferenceCycle(_) => "reference-cycle",
            Error::Tbd(_) => "tbd",
            Error::MissingProperty { .. } => "missing-property",
            Error::Type(_) => "type",
            Error::AssertFailed { .. } => "assert",
            Error::Unsupported(_) => "unsupported",
            Error::NoSfConfig => "no-sfconfig",
            Error::Limit(_) => "limit",
        }
    }
}

/// An [`Error`] at a place in the sources, with optional notes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    /// What went wrong.
    pub error: Error,
    /// Where, when known.
    pub span: Option<Span>,
    /// Extra lines shown after the snippet (for example where an include came from).
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Renders this diagnostic against the sources it came from.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        let Some(span) = self.span else {
            out.push_str(&format!("error: {}\n", self.error));
            for note in &self.notes {
                out.push_str(&format!("  = note: {note}\n"));
            }
            return out;
        };
        let location = sources.location(span);
        let file = sources.file(span.file);
        let line = file.line_text(location.line);
        let gutter = location.line.to_string().len();
        let indent: String = line
            .chars()
            .take(location.column - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let width = sources
            .slice(span)
            .chars()
            .take_while(|&c| c != '\n')
            .count()
            .max(1);
        out.push_str(&format!("{location}: error: {}\n", self.error));
        out.push_str(&format!("{:gutter$} |\n", ""));
        out.push_str(&format!("{} | {line}\n", location.line));
        out.push_str(&format!("{:gutter$} | {indent}{}\n", "", "^".repeat(width)));
        for note in &self.notes {
            out.push_str(&format!("{:gutter$} = note: {note}\n", ""));
        }
        out
    }
}

/// All the errors found in one description, with the sources needed to show them.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    /// The errors, in the order they were found.
    pub errors: Vec<Diagnostic>,
    /// The files they refer to.
    pub sources: SourceMap,
}

impl Diagnostics {
    /// The error classes, in order (see [`Error::class`]).
    pub fn classes(&self) -> Vec<&'static str> {
        self.errors.iter().map(|d| d.error.class()).collect()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", diagnostic.render(&self.sources))?;
        }
        let count = self.errors.len();
        write!(f, "{count} error{}", if count == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_location_line_and_caret() {
        let mut sources = SourceMap::default();
        let file = sources.add("x.sf", "sfConfig extends {\n  a ATTRIB nope;\n}\n");
        let diagnostic = Error::Tbd("sfConfig:a".into()).at(Span::new(file, 23, 34));
        let text = diagnostic.render(&sources);
        assert!(
            text.starts_with("x.sf:2:5: error: attribute `sfConfig:a` is TBD"),
            "{text}"
        );
        assert!(text.contains("2 |   a ATTRIB nope;\n"), "{text}");
        assert!(text.contains("  |     ^^^^^^^^^^^\n"), "{text}");
    }
}
