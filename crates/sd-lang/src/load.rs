//! Reads a description and everything it includes into one body, with includes spliced
//! where they stand. Detects include cycles and bounds the total size.

use crate::ast::{Body, ExprKind, Item, TypeItem};
use crate::error::{Diagnostic, Error};
use crate::include::{LoadError, Loaded, Loader};
use crate::parser::parse;
use crate::source::SourceMap;

/// Most source bytes read for one description, includes counted each time they are read.
pub const MAX_TOTAL_BYTES: usize = 64 << 20;
/// Most include directives expanded for one description.
pub const MAX_INCLUDES: usize = 10_000;

/// Everything read for one description.
pub struct LoadedDescription {
    /// The top file's body with includes spliced in.
    pub body: Body,
    /// The files read.
    pub sources: SourceMap,
    /// Errors found while reading and parsing.
    pub errors: Vec<Diagnostic>,
}

/// Parses `root` and splices in what it includes.
pub fn load(root: Loaded, loader: &dyn Loader) -> LoadedDescription {
    let mut state = State {
        loader,
        sources: SourceMap::default(),
        errors: Vec::new(),
        stack: Vec::new(),
        bytes: 0,
        includes: 0,
    };
    let body = state.file(root);
    LoadedDescription {
        body,
        sources: state.sources,
        errors: state.errors,
    }
}

struct State<'l> {
    loader: &'l dyn Loader,
    sources: SourceMap,
    errors: Vec<Diagnostic>,
    /// Keys of the files being expanded, outermost first, with their display names.
    stack: Vec<(String, String)>,
    bytes: usize,
    includes: usize,
}

impl State<'_> {
    fn file(&mut self, loaded: Loaded) -> Body {
        self.bytes += loaded.text.len();
        let id = self.sources.add(loaded.display.clone(), loaded.text);
        let (body, errors) = parse(id, &self.sources.file(id).text);
        self.errors.extend(errors);
        self.stack.push((loaded.key.clone(), loaded.display));
        let body = self.expand(body);
        self.stack.pop();
        body
    }

    fn expand(&mut self, body: Body) -> Body {
        crate::with_stack(|| self.expand_here(body))
    }

    fn expand_here(&mut self, body: Body) -> Body {
        let mut out = Vec::with_capacity(body.len());
        for item in body {
            match item {
                Item::Include(include) => {
                    self.includes += 1;
                    if self.includes > MAX_INCLUDES || self.bytes > MAX_TOTAL_BYTES {
                        let what = format!(
                            "more than {MAX_INCLUDES} includes or {} MiB of source",
                            MAX_TOTAL_BYTES >> 20
                        );
                        self.errors.push(Error::Limit(what).at(include.span));
                        return out;
                    }
                    let from = self
                        .stack
                        .last()
                        .map(|(key, _)| key.clone())
                        .unwrap_or_default();
                    match self.loader.load(&include.name, &from) {
                        Ok(loaded) => {
                            if let Some(start) =
                                self.stack.iter().position(|(key, _)| *key == loaded.key)
                            {
                                let mut chain: Vec<&str> = self.stack[start..]
                                    .iter()
                                    .map(|(_, d)| d.as_str())
                                    .collect();
                                chain.push(&loaded.display);
                                self.errors
                                    .push(Error::IncludeCycle(chain.join(" -> ")).at(include.span));
                                continue;
                            }
                            out.extend(self.file(loaded));
                        }
                        Err(LoadError::NotFound(_)) if include.optional => {}
                        Err(LoadError::NotFound(searched)) => {
                            let error = Error::IncludeMissing {
                                name: include.name,
                                searched: searched.join(", "),
                            };
                            self.errors.push(error.at(include.span));
                        }
                        Err(LoadError::Unreadable(reason)) => {
                            self.errors.push(
                                Error::IncludeUnreadable {
                                    name: include.name,
                                    reason,
                                }
                                .at(include.span),
                            );
                        }
                    }
                }
                Item::Attribute(mut attribute) => {
                    if let ExprKind::Component(component) = &mut attribute.value.kind {
                        for item in &mut component.types {
                            if let TypeItem::Body(body) = item {
                                let inner = std::mem::take(body);
                                *body = self.expand(inner);
                            }
                        }
                    }
                    out.push(Item::Attribute(attribute));
                }
            }
        }
        out
    }
}
