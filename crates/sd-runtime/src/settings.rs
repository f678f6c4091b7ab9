//! Live settings: the attributes of a running component that can be changed without
//! restarting it (`sd set`, the console), how a new value is read, and which actor applies it.
//!
//! A change is an [`Override`] kept with the deployment's record. Planning applies every
//! override, in order, to the tree with its pools expanded (so a replica can be changed on its
//! own), before the planner reads the tree: a changed value is checked exactly like a written
//! one, and a component restarted later starts with it.

use sd_lang::{Component, Value};
use sd_proto::{Override, Setting};

use crate::plan::{Kind, Plan};
use crate::{Error, Result};

/// Which actor applies a change of an attribute to the running tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppliedBy {
    /// The component itself (its supervisor, its VM, its storage).
    Itself,
    /// Its parent, which checks its liveness.
    Parent,
}

/// One attribute that can change while its component runs.
struct LiveAttribute {
    name: &'static str,
    applied_by: AppliedBy,
    /// Whether a component of this kind (with a parent or not) has it.
    applies: fn(Kind, bool) -> bool,
}

fn storage(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::DirStorageBackend
            | Kind::QcowStorageBackend
            | Kind::LoopbackStorageBackend
            | Kind::LvmStorageBackend
    )
}

/// Every live attribute (docs/prelude.md marks them "(live)").
const LIVE: [LiveAttribute; 6] = [
    LiveAttribute {
        name: "sfLivenessDelay",
        applied_by: AppliedBy::Parent,
        applies: |_, has_parent| has_parent,
    },
    LiveAttribute {
        name: "sfLivenessFactor",
        applied_by: AppliedBy::Parent,
        applies: |_, has_parent| has_parent,
    },
    LiveAttribute {
        name: "sdMaxRestarts",
        applied_by: AppliedBy::Itself,
        applies: |kind, _| kind.is_container(),
    },
    LiveAttribute {
        name: "sdRestartWindow",
        applied_by: AppliedBy::Itself,
        applies: |kind, _| kind.is_container(),
    },
    LiveAttribute {
        name: "memory",
        applied_by: AppliedBy::Itself,
        applies: |kind, _| kind == Kind::QemuDomain,
    },
    LiveAttribute {
        name: "saveImage",
        applied_by: AppliedBy::Itself,
        applies: |kind, _| storage(kind),
    },
];

/// Reads a value written in SmartFrog notation: `true`/`false`, an integer, a number with a
/// fraction, or a double-quoted string.
pub fn parse_value(text: &str) -> std::result::Result<Value, String> {
    let text = text.trim();
    match text {
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if let Some(inner) = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        if inner.contains(['"', '\\', '\n']) {
            return Err(format!(
                "`{text}`: a string value may not hold quotes, backslashes or newlines"
            ));
        }
        return Ok(Value::Str(inner.to_string()));
    }
    if let Ok(n) = text.parse::<i32>() {
        return Ok(Value::Int(n));
    }
    if let Ok(n) = text.parse::<i64>() {
        return Ok(Value::Long(n));
    }
    if text.contains(['.', 'e', 'E'])
        && let Ok(x) = text.parse::<f64>()
        && x.is_finite()
    {
        return Ok(Value::Double(x));
    }
    Err(format!(
        "`{text}` is not a value: write a number (`5`, `2.5`), `true`, `false` or a quoted string"
    ))
}

/// Sets each override's attribute in `config` (an expanded tree), in order; every override
/// that names no component is an error.
pub(crate) fn apply(config: &mut Component, overrides: &[Override]) -> Vec<Error> {
    let mut errors = Vec::new();
    for change in overrides {
        if let Err(reason) = apply_one(config, change) {
            errors.push(Error::Setting {
                path: change.path.clone(),
                attribute: change.attribute.clone(),
                reason,
            });
        }
    }
    errors
}

fn apply_one(config: &mut Component, change: &Override) -> std::result::Result<(), String> {
    let value = parse_value(&change.value)?;
    let mut names = change.path.split(':');
    if names.next() != Some("sfConfig") {
        return Err("a component path starts with `sfConfig`".into());
    }
    let mut component = config;
    for name in names {
        match component.attrs.get_mut(name) {
            Some(Value::Component(child)) => component = child,
            _ => return Err(format!("there is no component `{}`", change.path)),
        }
    }
    component
        .attrs
        .insert(change.attribute.as_str().into(), value);
    Ok(())
}

/// The index of the component at `path` (`sfConfig:a:b`) in `plan`, and who applies a change
/// of `attribute` to it; refused with a reason when the attribute cannot change live there.
pub(crate) fn target(plan: &Plan, path: &str, attribute: &str) -> Result<(usize, AppliedBy)> {
    let index = plan
        .components
        .iter()
        .position(|c| c.path_text() == path)
        .ok_or_else(|| Error::Setting {
            path: path.to_string(),
            attribute: attribute.to_string(),
            reason: "there is no running component at that path".into(),
        })?;
    let planned = &plan.components[index];
    let has_parent = planned.parent.is_some();
    let live: Vec<&str> = LIVE
        .iter()
        .filter(|live| (live.applies)(planned.kind, has_parent))
        .map(|live| live.name)
        .collect();
    match LIVE
        .iter()
        .find(|live| live.name == attribute && (live.applies)(planned.kind, has_parent))
    {
        Some(live) => Ok((index, live.applied_by)),
        None => Err(Error::Setting {
            path: path.to_string(),
            attribute: attribute.to_string(),
            reason: if live.is_empty() {
                format!(
                    "a {:?} component has no attribute that can change while it runs",
                    planned.kind
                )
            } else {
                format!("cannot change while it runs; what can: {}", live.join(", "))
            },
        }),
    }
}

/// The live attributes of the component at `index`, with their values now.
pub(crate) fn settings_of(plan: &Plan, index: usize) -> Vec<Setting> {
    let Some(planned) = plan.components.get(index) else {
        return Vec::new();
    };
    let description = plan.component(index);
    LIVE.iter()
        .filter(|live| (live.applies)(planned.kind, planned.parent.is_some()))
        .map(|live| Setting {
            attribute: live.name.to_string(),
            value: current(plan, index, live.name, description),
        })
        .collect()
}

/// An attribute's value as the runtime uses it (the planner's defaults included).
fn current(plan: &Plan, index: usize, attribute: &str, description: &Component) -> String {
    let planned = &plan.components[index];
    let seconds = |d: std::time::Duration| d.as_secs_f64().to_string();
    match attribute {
        "sfLivenessDelay" => seconds(planned.liveness.delay),
        "sfLivenessFactor" => planned.liveness.factor.to_string(),
        "sdMaxRestarts" => planned
            .supervisor
            .map(|spec| spec.max_restarts.to_string())
            .unwrap_or_default(),
        "sdRestartWindow" => planned
            .supervisor
            .map(|spec| seconds(spec.window))
            .unwrap_or_default(),
        _ => description
            .get(attribute)
            .map(sd_lang::unparse::value_text)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_in_smartfrog_notation() {
        assert_eq!(parse_value("true"), Ok(Value::Bool(true)));
        assert_eq!(parse_value(" 12 "), Ok(Value::Int(12)));
        assert_eq!(parse_value("-3"), Ok(Value::Int(-3)));
        assert_eq!(parse_value("5000000000"), Ok(Value::Long(5_000_000_000)));
        assert_eq!(parse_value("2.5"), Ok(Value::Double(2.5)));
        assert_eq!(parse_value("\"x y\""), Ok(Value::Str("x y".into())));
        for bad in ["", "yes", "1.2.3", "inf", "NaN", "\"a\"b\"", "12abc"] {
            assert!(parse_value(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
