//! Shared pieces of the `sd-lang` fuzz targets (see docs/fuzzing.md): the in-memory files
//! a fuzzed description can `#include`, the properties it can read, and a strict tree
//! comparison.

use std::sync::LazyLock;

use sd_lang::{Component, Loaded, MemoryLoader, Properties, Value};

/// The name of the fuzzed root file.
pub const ROOT: &str = "fuzz.sf";

/// Two small include files: `inc.sf` defines templates (with a reference, an operator, a
/// LAZY reference and a LAZY component); `cycle.sf` includes `inc.sf` and then itself, so
/// nested includes and include-cycle detection are reached. The embedded library
/// (`prelude.sf`, `org/smartfrog/functions.sf`, ...) is found through the loader too.
pub static LOADER: LazyLock<MemoryLoader> = LazyLock::new(|| MemoryLoader {
    files: vec![
        (
            "inc.sf".into(),
            "T extends { a 1; b (ATTRIB a + 1); c LAZY PARENT:x; s \"t\"; }\n\
             U extends T { a 2; d extends LAZY { e ATTRIB b; } }\n"
                .into(),
        ),
        (
            "cycle.sf".into(),
            "#include \"inc.sf\"\nV extends U;\n#include \"cycle.sf\"\n".into(),
        ),
    ],
});

/// What `PROPERTY` / `ENVPROPERTY` (and the `I` forms) can read.
pub static PROPERTIES: LazyLock<Properties> = LazyLock::new(|| {
    let mut properties = Properties::default();
    properties.properties.insert("p".into(), "v".into());
    properties.properties.insert("n".into(), "42".into());
    properties.env.insert("HOME".into(), "/root".into());
    properties.env.insert("N".into(), "[| 1, \"x\" |]".into());
    properties
});

/// The fuzz input as the root file; `None` when it is not UTF-8 (descriptions are text).
pub fn root(data: &[u8]) -> Option<Loaded> {
    let text = std::str::from_utf8(data).ok()?;
    Some(Loaded {
        key: ROOT.into(),
        display: ROOT.into(),
        text: text.into(),
    })
}

/// Resolves `root` with [`LOADER`] and [`PROPERTIES`].
pub fn resolve(root: Loaded) -> Result<sd_lang::Resolved, sd_lang::Diagnostics> {
    sd_lang::resolve_loaded(root, &*LOADER, &PROPERTIES)
}

/// Whether two trees are the same: attributes in the same order, floats bit for bit.
pub fn same_component(a: &Component, b: &Component) -> bool {
    a.eager == b.eager
        && a.attrs.len() == b.attrs.len()
        && a.attrs
            .iter()
            .zip(&b.attrs)
            .all(|((na, va), (nb, vb))| na == nb && same_value(va, vb))
}

/// Whether two values are the same (floats bit for bit).
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Double(x), Value::Double(y)) => x.to_bits() == y.to_bits(),
        (Value::Vector(xs), Value::Vector(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same_value(x, y))
        }
        (Value::Component(x), Value::Component(y)) => same_component(x, y),
        (Value::Lazy(x), Value::Lazy(y)) => {
            x.parts == y.parts
                && x.optional == y.optional
                && match (&x.default, &y.default) {
                    (None, None) => true,
                    (Some(x), Some(y)) => same_value(x, y),
                    _ => false,
                }
        }
        _ => a == b,
    }
}
