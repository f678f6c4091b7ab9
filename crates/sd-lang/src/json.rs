//! The JSON form of a resolved tree (documented in docs/language.md, "JSON output").
//!
//! A component is an object of its attributes in declaration order; a `LAZY` reference is
//! `{"$lazy": "<reference>"}`; an `extends LAZY` component carries `"$eager": false`.
//! Numbers, strings, booleans, `NULL` and vectors map to their JSON equivalents.

use serde_json::{Map, Number, Value as Json};

use crate::value::{Component, Value};

/// The JSON form of a component.
pub fn component_to_json(component: &Component) -> Json {
    let mut map = Map::new();
    if !component.eager {
        map.insert("$eager".into(), Json::Bool(false));
    }
    for (name, value) in &component.attrs {
        map.insert(name.to_string(), to_json(value));
    }
    Json::Object(map)
}

/// The JSON form of a value.
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(n) => Json::from(*n),
        Value::Long(n) => Json::from(*n),
        // Finite by construction: the resolver refuses non-finite arithmetic results.
        Value::Float(x) => Number::from_f64(f64::from(*x)).map_or(Json::Null, Json::Number),
        Value::Double(x) => Number::from_f64(*x).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(s.clone()),
        Value::Vector(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Component(c) => component_to_json(c),
        Value::Lazy(reference) => {
            let mut map = Map::new();
            map.insert("$lazy".into(), Json::String(reference.to_string()));
            Json::Object(map)
        }
    }
}
