//! Binding a `LAZY` reference at run time, against the deployed tree.
//!
//! The runtime calls [`bind`] when a component needs what one of its `LAZY` attributes names
//! (a domain's `storageBackend LAZY ATTRIB loop`, a backend's `shell LAZY ATTRIB myShell`).
//! The rules are those of resolve time: `ATTRIB x` finds the closest `x` (retrying the rest
//! of the path from each enclosing component), later steps look only inside, `PARENT`,
//! `THIS`, and `ROOT`, which at run time is the deployment's root (`sfConfig`). A `LAZY`
//! value met on the way is followed from the component that holds it. `HOST` and `PROCESS`
//! name other processes: the cluster layer binds those.

use crate::error::Error;
use crate::reference::{RefPart, Reference};
use crate::resolve::{MAX_CHAIN, Properties};
use crate::value::{Component, Value};

/// What a reference names.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    /// A component of the deployment, by its path below the root (`["computer1", "loop"]`).
    Component(Vec<String>),
    /// A value.
    Value(Value),
}

/// Binds `reference`, written in the component at `from` (a path below `root`).
/// `properties` serves `PROPERTY` / `ENVPROPERTY` steps (the node's own, at run time).
pub fn bind(
    root: &Component,
    from: &[String],
    reference: &Reference,
    properties: &Properties,
) -> Result<Bound, Error> {
    Binder { root, properties }.bind(from, reference, 0)
}

struct Binder<'t> {
    root: &'t Component,
    properties: &'t Properties,
}

/// Where a step stands.
enum At<'t> {
    Component(Vec<String>),
    Value(&'t Value),
}

/// A component's path as errors and `sd status` show it: `sfConfig`, `sfConfig:a:b`.
pub fn path_text(path: &[String]) -> String {
    if path.is_empty() {
        "sfConfig".into()
    } else {
        format!("sfConfig:{}", path.join(":"))
    }
}

fn is_not_found(error: &Error) -> bool {
    matches!(
        error,
        Error::UnresolvedReference { .. } | Error::MissingProperty { .. }
    )
}

impl<'t> Binder<'t> {
    fn component(&self, path: &[String]) -> Option<&'t Component> {
        path.iter().try_fold(self.root, |component, name| {
            component.get(name)?.as_component()
        })
    }

    fn bind(&self, from: &[String], reference: &Reference, depth: usize) -> Result<Bound, Error> {
        if depth > MAX_CHAIN {
            return Err(Error::Limit(format!(
                "a chain of more than {MAX_CHAIN} LAZY references"
            )));
        }
        match self.walk(from, reference, 0, At::Component(from.to_vec()), depth) {
            Err(error) if reference.optional && is_not_found(&error) => Ok(Bound::Value(
                reference.default.as_deref().cloned().unwrap_or(Value::Null),
            )),
            other => other,
        }
    }

    fn walk(
        &self,
        from: &[String],
        reference: &Reference,
        index: usize,
        at: At<'t>,
        depth: usize,
    ) -> Result<Bound, Error> {
        let unresolved = |reason: String| Error::UnresolvedReference {
            reference: reference.to_string(),
            from: path_text(from),
            reason,
        };
        let path = match at {
            At::Component(path) => path,
            At::Value(Value::Component(_)) => unreachable!("components are walked by path"),
            At::Value(value) if index == reference.parts.len() => {
                return Ok(Bound::Value(value.clone()));
            }
            At::Value(value) => {
                return Err(unresolved(format!(
                    "cannot look inside {}",
                    value.type_name()
                )));
            }
        };
        let Some(part) = reference.parts.get(index) else {
            return Ok(Bound::Component(path));
        };
        let Some(component) = self.component(&path) else {
            return Err(unresolved(format!(
                "`{}` is not a component",
                path_text(&path)
            )));
        };
        match part {
            RefPart::Attrib { name, .. } => {
                let mut holder = path;
                let mut first_failure = None;
                loop {
                    if let Some(found) = self
                        .component(&holder)
                        .and_then(|c| c.get(name))
                        .map(|_| holder.clone())
                    {
                        match self.step_into(from, reference, index, found.clone(), name, depth) {
                            Err(error)
                                if index + 1 < reference.parts.len() && is_not_found(&error) =>
                            {
                                first_failure.get_or_insert(error);
                            }
                            other => return other,
                        }
                    }
                    if holder.pop().is_none() {
                        break;
                    }
                }
                Err(first_failure.unwrap_or_else(|| {
                    unresolved(format!(
                        "no attribute `{name}` in `{}` or any component enclosing it",
                        path_text(from)
                    ))
                }))
            }
            RefPart::Here(name) => {
                if component.get(name).is_none() {
                    return Err(unresolved(format!(
                        "no attribute `{name}` in `{}`",
                        path_text(&path)
                    )));
                }
                self.step_into(from, reference, index, path, name, depth)
            }
            RefPart::Parent => {
                let mut parent = path;
                if parent.pop().is_none() {
                    return Err(unresolved("the deployment's root has no PARENT".into()));
                }
                self.walk(from, reference, index + 1, At::Component(parent), depth)
            }
            RefPart::Root => {
                self.walk(from, reference, index + 1, At::Component(Vec::new()), depth)
            }
            RefPart::This => self.walk(from, reference, index + 1, At::Component(path), depth),
            RefPart::Property(kind, name) => {
                let source = if kind.from_env() {
                    &self.properties.env
                } else {
                    &self.properties.properties
                };
                match source.get(name) {
                    Some(text) => Ok(Bound::Value(Value::Str(text.clone()))),
                    None => Err(Error::MissingProperty {
                        kind: kind.keyword(),
                        name: name.clone(),
                    }),
                }
            }
            RefPart::Host(_) | RefPart::Process => Err(Error::Unsupported(format!(
                "`{reference}` names another process: the cluster layer binds HOST and PROCESS references"
            ))),
        }
    }

    /// Continues from attribute `name` of the component at `holder`.
    fn step_into(
        &self,
        from: &[String],
        reference: &Reference,
        index: usize,
        holder: Vec<String>,
        name: &str,
        depth: usize,
    ) -> Result<Bound, Error> {
        let component = self
            .component(&holder)
            .expect("the caller found the holder");
        match component.get(name) {
            Some(Value::Component(_)) => {
                let mut child = holder;
                child.push(name.to_string());
                self.walk(from, reference, index + 1, At::Component(child), depth)
            }
            // A LAZY value is followed from the component that holds it.
            Some(Value::Lazy(inner)) => match self.bind(&holder, inner, depth + 1)? {
                Bound::Component(target) => {
                    self.walk(from, reference, index + 1, At::Component(target), depth)
                }
                Bound::Value(value) if index + 1 == reference.parts.len() => {
                    Ok(Bound::Value(value))
                }
                Bound::Value(value) => Err(Error::UnresolvedReference {
                    reference: reference.to_string(),
                    from: path_text(from),
                    reason: format!("`{name}` is {}, not a component", value.type_name()),
                }),
            },
            Some(value) => self.walk(from, reference, index + 1, At::Value(value), depth),
            None => unreachable!("the caller checked that `{name}` exists"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Component {
        crate::resolve_str("t.sf", text, &crate::Options::default())
            .expect("resolves")
            .config
    }

    fn lazy(root: &Component, path: &[&str]) -> Reference {
        match root.at_path(&path.join(":")) {
            Some(Value::Lazy(reference)) => reference.clone(),
            other => panic!("{path:?} is {other:?}"),
        }
    }

    fn path(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn figure1_storage_and_shell_bind_to_their_components() {
        let root = tree(
            "#include \"prelude.sf\"\nsfConfig extends Compound { computer1 extends PhysicalHost { loop extends DirStorageBackend; domain1 extends ProcessDomain { command [| \"true\" |]; storageBackend LAZY ATTRIB loop; } } }",
        );
        let none = Properties::default();
        let storage = lazy(&root, &["computer1", "domain1", "storageBackend"]);
        assert_eq!(
            bind(&root, &path(&["computer1", "domain1"]), &storage, &none),
            Ok(Bound::Component(path(&["computer1", "loop"])))
        );
        let shell = lazy(&root, &["computer1", "loop", "shell"]);
        assert_eq!(
            bind(&root, &path(&["computer1", "loop"]), &shell, &none),
            Ok(Bound::Component(path(&["computer1", "myShell"])))
        );
    }

    #[test]
    fn paths_values_root_parent_and_chains() {
        let root = tree(
            "sfConfig extends { port 80; a extends { net extends { ip \"10.0.0.1\"; } x LAZY net:ip; up LAZY PARENT:port; top LAZY ROOT:a:net; via LAZY y; y LAZY ATTRIB net; missing LAZY OPTIONAL (7) nothing; env LAZY ENVPROPERTY NODE; far LAZY HOST \"n2\":a; } }",
        );
        let mut properties = Properties::default();
        properties.env.insert("NODE".into(), "node-1".into());
        let at = path(&["a"]);
        let bound = |name: &str| bind(&root, &at, &lazy(&root, &["a", name]), &properties);
        assert_eq!(bound("x"), Ok(Bound::Value(Value::Str("10.0.0.1".into()))));
        assert_eq!(bound("up"), Ok(Bound::Value(Value::Int(80))));
        assert_eq!(bound("top"), Ok(Bound::Component(path(&["a", "net"]))));
        assert_eq!(
            bound("via"),
            Ok(Bound::Component(path(&["a", "net"]))),
            "a LAZY value is followed"
        );
        assert_eq!(bound("missing"), Ok(Bound::Value(Value::Int(7))));
        assert_eq!(bound("env"), Ok(Bound::Value(Value::Str("node-1".into()))));
        assert!(matches!(bound("far"), Err(Error::Unsupported(_))));
    }

    #[test]
    fn attrib_retries_from_enclosing_components() {
        let root = tree(
            "sfConfig extends { net extends { gw extends { ip 1; } } a extends { net extends { dns 2; } r LAZY net:gw:ip; } }",
        );
        let reference = lazy(&root, &["a", "r"]);
        assert_eq!(
            bind(&root, &path(&["a"]), &reference, &Properties::default()),
            Ok(Bound::Value(Value::Int(1)))
        );
    }

    #[test]
    fn failures_name_the_reference_and_cycles_stop() {
        let root =
            tree("sfConfig extends { a extends { r LAZY ATTRIB nowhere; p LAZY q; q LAZY p; } }");
        let error = bind(
            &root,
            &path(&["a"]),
            &lazy(&root, &["a", "r"]),
            &Properties::default(),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "reference `ATTRIB nowhere` from `sfConfig:a` does not resolve: no attribute `nowhere` in `sfConfig:a` or any component enclosing it"
        );
        let cycle = bind(
            &root,
            &path(&["a"]),
            &lazy(&root, &["a", "p"]),
            &Properties::default(),
        );
        assert!(matches!(cycle, Err(Error::Limit(_))), "{cycle:?}");
    }
}
