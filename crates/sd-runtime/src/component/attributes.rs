//! Reading a component's attributes once the plan has checked them (so a wrong type here
//! means the attribute is absent, and the default applies).

use sd_lang::{Component, Value};

/// A vector of strings (`command`, `interpreter`); anything else is empty.
pub(super) fn strings(component: &Component, attribute: &str) -> Vec<String> {
    match component.get(attribute) {
        Some(Value::Vector(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// `env`-like `"NAME=value"` entries as pairs; entries without `=` are left out.
pub(super) fn environment(component: &Component, attribute: &str) -> Vec<(String, String)> {
    strings(component, attribute)
        .into_iter()
        .filter_map(|entry| {
            let (name, value) = entry.split_once('=')?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

/// A number of any kind, as a float.
pub(super) fn number(component: &Component, attribute: &str) -> Option<f64> {
    match component.get(attribute)? {
        Value::Int(n) => Some(f64::from(*n)),
        #[allow(clippy::cast_precision_loss)]
        Value::Long(n) => Some(*n as f64),
        Value::Float(x) => Some(f64::from(*x)),
        Value::Double(x) => Some(*x),
        _ => None,
    }
}

/// A string; anything else is empty.
pub(super) fn text(component: &Component, attribute: &str) -> String {
    match component.get(attribute) {
        Some(Value::Str(s)) => s.clone(),
        _ => String::new(),
    }
}

/// A number of seconds as a duration, or `default` when absent or not a valid duration.
pub(super) fn seconds(
    component: &Component,
    attribute: &str,
    default: std::time::Duration,
) -> std::time::Duration {
    number(component, attribute)
        .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_entries_split_at_the_first_equals_sign() {
        let mut component = Component::new();
        component.attrs.insert(
            "env".into(),
            Value::Vector(vec![
                Value::Str("A=1=2".into()),
                Value::Str("bad".into()),
                Value::Int(3),
            ]),
        );
        assert_eq!(
            environment(&component, "env"),
            vec![("A".to_string(), "1=2".to_string())]
        );
        assert_eq!(number(&component, "missing"), None);
    }
}
