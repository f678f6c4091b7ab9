//! `sd-lang`: the description language of sd, SmartFrog's notation.
//!
//! It owns the path from text to a resolved component tree: lexing, parsing (with error
//! recovery), `#include` expansion, prototype inheritance (`extends`), placement,
//! reference resolution (`ATTRIB`, `PARENT:`, `ROOT:`, `HERE`, `THIS`; `LAZY` ones are kept for
//! the runtime), `TBD`, `OPTIONAL`, properties, operators, `IF`, the functions of SmartFrog's
//! `functions.sf` and `ASSERT`; and the way back: JSON and SmartFrog text.
//!
//! Guarantees:
//! - No input panics or overflows the stack: sizes, nesting and chains are bounded and
//!   exceeding a bound is an [`Error::Limit`].
//! - Every error names file:line:column and renders with the line and a caret
//!   ([`Diagnostics`]); the parser recovers at `;` and `}` to report several errors at once.
//! - Resolution is pure: the only I/O is reading includes through a [`Loader`], and
//!   properties and environment variables come from the caller ([`Properties`]).
//! - `unparse` then resolve gives back the same tree.
//!
//! ```
//! let resolved = sd_lang::resolve_str(
//!     "pool.sf",
//!     r#"Vm extends { memory 256; name TBD; }
//!        sfConfig extends { vm1 extends Vm { name "a"; } total (ATTRIB vm1:memory * 2); }"#,
//!     &sd_lang::Options::default(),
//! )
//! .unwrap();
//! assert_eq!(resolved.config.at_path("total"), Some(&sd_lang::Value::Int(512)));
//! ```

pub mod ast;
pub mod bind;
pub mod error;
pub mod include;
pub mod json;
pub mod lexer;
pub mod load;
pub mod parser;
pub mod reference;
mod resolve;
pub mod source;
pub mod unparse;
pub mod value;

use std::path::{Path, PathBuf};

/// Runs `f`, first moving to a fresh stack segment when little stack is left: the parser
/// and resolver recurse (within their bounds) and must not overflow a small caller stack.
pub(crate) fn with_stack<R>(f: impl FnOnce() -> R) -> R {
    const RED_ZONE: usize = 256 << 10;
    const SEGMENT: usize = 4 << 20;
    stacker::maybe_grow(RED_ZONE, SEGMENT, f)
}

pub use error::{Diagnostic, Diagnostics, Error};
pub use include::{FsLoader, LoadError, Loaded, Loader, MemoryLoader};
pub use reference::{RefPart, Reference};
pub use resolve::{MAX_CHAIN, MAX_DEPTH, MAX_NODES, Properties};
pub use source::SourceMap;
pub use value::{Component, Value};

/// How to resolve a description.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-I` directories, searched after the including file's own directory.
    pub include_dirs: Vec<PathBuf>,
    /// What `PROPERTY` and `ENVPROPERTY` read.
    pub properties: Properties,
}

/// A resolved description.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The resolved `sfConfig`.
    pub config: Component,
    /// The files that were read.
    pub sources: SourceMap,
}

/// Resolves the description in file `path`.
pub fn resolve_file(path: &Path, options: &Options) -> Result<Resolved, Diagnostics> {
    let loader = FsLoader::new(options.include_dirs.clone());
    let root = loader.read_root(path).map_err(|error| {
        let error = match error {
            LoadError::NotFound(_) => Error::IncludeMissing {
                name: path.display().to_string(),
                searched: "the given path".into(),
            },
            LoadError::Unreadable(reason) => Error::IncludeUnreadable {
                name: path.display().to_string(),
                reason,
            },
        };
        Diagnostics {
            errors: vec![error.nowhere()],
            sources: SourceMap::default(),
        }
    })?;
    resolve_loaded(root, &loader, &options.properties)
}

/// Resolves description text named `name`; includes are searched relative to `name`'s
/// directory, then the include path, then the embedded library.
pub fn resolve_str(name: &str, text: &str, options: &Options) -> Result<Resolved, Diagnostics> {
    let loader = FsLoader::new(options.include_dirs.clone());
    let root = Loaded {
        key: name.to_string(),
        display: name.to_string(),
        text: text.to_string(),
    };
    resolve_loaded(root, &loader, &options.properties)
}

/// Resolves a loaded root file with any loader. Runs on a stack segment of its own, so
/// callers on small stacks (async tasks, test threads) are safe.
pub fn resolve_loaded(
    root: Loaded,
    loader: &dyn Loader,
    properties: &Properties,
) -> Result<Resolved, Diagnostics> {
    const RESOLVE_STACK: usize = 16 << 20;
    stacker::grow(RESOLVE_STACK, || {
        resolve_on_this_stack(root, loader, properties)
    })
}

fn resolve_on_this_stack(
    root: Loaded,
    loader: &dyn Loader,
    properties: &Properties,
) -> Result<Resolved, Diagnostics> {
    let loaded = load::load(root, loader);
    if !loaded.errors.is_empty() {
        let mut errors = loaded.errors;
        // Lexer and parser errors come in two batches: show them in source order.
        errors.sort_by_key(|d| d.span.map_or((u32::MAX, 0), |s| (s.file.0, s.start)));
        return Err(Diagnostics {
            errors,
            sources: loaded.sources,
        });
    }
    match resolve::resolve(&loaded.body, properties) {
        Ok(config) => Ok(Resolved {
            config,
            sources: loaded.sources,
        }),
        Err(errors) => Err(Diagnostics {
            errors,
            sources: loaded.sources,
        }),
    }
}
