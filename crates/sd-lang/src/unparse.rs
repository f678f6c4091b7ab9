//! Prints a resolved tree back in SmartFrog notation. Parsing and resolving the output
//! gives back the same tree (checked by a property test).

use std::fmt::Write;

use crate::lexer::{is_word_char, is_word_start};
use crate::value::{Component, Value};

/// `sfConfig extends { ... }` for a resolved `sfConfig`.
pub fn unparse_config(config: &Component) -> String {
    let mut out = String::new();
    write_component(&mut out, "sfConfig", config, 0);
    out
}

fn write_component(out: &mut String, name: &str, component: &Component, depth: usize) {
    let indent = "  ".repeat(depth);
    let name = name_text(name);
    let lazy = if component.eager { "" } else { "LAZY " };
    if component.attrs.is_empty() {
        let _ = writeln!(out, "{indent}{name} extends {lazy}{{}}");
        return;
    }
    let _ = writeln!(out, "{indent}{name} extends {lazy}{{");
    for (attr, value) in &component.attrs {
        match value {
            Value::Component(child) => write_component(out, attr, child, depth + 1),
            other => {
                let _ = writeln!(out, "{indent}  {} {};", name_text(attr), value_text(other));
            }
        }
    }
    let _ = writeln!(out, "{indent}}}");
}

/// A value as written in a description. Components appear only as attributes (the
/// resolver keeps them out of vectors), where [`unparse_config`] writes them.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Long(n) => format!("{n}L"),
        Value::Float(x) => format!("{}f", float_text(f64::from(*x), &format!("{x:?}"))),
        Value::Double(x) => float_text(*x, &format!("{x:?}")),
        Value::Str(s) => quote(s),
        Value::Vector(items) if items.is_empty() => "[| |]".into(),
        Value::Vector(items) => {
            let items: Vec<String> = items.iter().map(value_text).collect();
            format!("[| {} |]", items.join(", "))
        }
        Value::Component(c) => {
            let mut out = String::new();
            write_component(&mut out, "--", c, 0);
            out
        }
        Value::Lazy(reference) => format!("LAZY {reference}"),
    }
}

/// Rust's shortest round-trip form, made to lex as a floating literal.
fn float_text(x: f64, debug: &str) -> String {
    if debug.contains(['.', 'e', 'E']) || !x.is_finite() {
        debug.to_string()
    } else {
        format!("{debug}.0")
    }
}

/// A string literal with the escapes the lexer reads back.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether `name` can be written as a bare word (else it is written quoted).
pub fn is_plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(is_word_start)
        && chars.all(is_word_char)
        && !crate::parser::RESERVED.contains(&name)
}

/// An attribute name as written: bare when it can be, quoted otherwise.
pub fn name_text(name: &str) -> String {
    if is_plain_name(name) {
        name.to_string()
    } else {
        quote(name)
    }
}
