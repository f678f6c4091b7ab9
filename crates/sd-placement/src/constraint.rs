//! Constraints: which node labels a placement must match (`sdConstraints`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One entry of `sdConstraints`: a condition on a node's labels.
///
/// Written `"key=value"`, `"key!=value"`, `"key"` or `"!key"`; keys are one or more of
/// `A-Z a-z 0-9 . _ / -`, values one or more characters without spaces or `=`. It reads and
/// writes (serde, [`Display`](fmt::Display)) as that text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Constraint {
    /// `key=value`: the node has label `key` with that value.
    Equals(String, String),
    /// `key!=value`: the node does not have label `key` with that value (a node without the
    /// label matches).
    NotEquals(String, String),
    /// `key`: the node has label `key`, with any value.
    Has(String),
    /// `!key`: the node does not have label `key`.
    HasNot(String),
}

impl Constraint {
    /// Reads a constraint from its text: `"key=value"`, `"key!=value"`, `"key"` or `"!key"`.
    ///
    /// ```
    /// use sd_placement::Constraint;
    /// assert_eq!(
    ///     Constraint::parse("zone!=eu").unwrap(),
    ///     Constraint::NotEquals("zone".into(), "eu".into())
    /// );
    /// assert!(Constraint::parse("zone = eu").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Constraint> {
        if text.is_empty() {
            return Err(Error::EmptyConstraint);
        }
        if let Some((key, value)) = text.split_once("!=") {
            check_key(text, key)?;
            check_value(text, value)?;
            return Ok(Constraint::NotEquals(key.to_owned(), value.to_owned()));
        }
        if let Some((key, value)) = text.split_once('=') {
            check_key(text, key)?;
            check_value(text, value)?;
            return Ok(Constraint::Equals(key.to_owned(), value.to_owned()));
        }
        if let Some(key) = text.strip_prefix('!') {
            check_key(text, key)?;
            return Ok(Constraint::HasNot(key.to_owned()));
        }
        check_key(text, text)?;
        Ok(Constraint::Has(text.to_owned()))
    }

    /// Reads every entry of an `sdConstraints` vector, stopping at the first that is not valid.
    pub fn parse_all<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Vec<Constraint>> {
        texts.into_iter().map(Constraint::parse).collect()
    }

    /// The label key the constraint is about.
    pub fn key(&self) -> &str {
        match self {
            Constraint::Equals(key, _)
            | Constraint::NotEquals(key, _)
            | Constraint::Has(key)
            | Constraint::HasNot(key) => key,
        }
    }

    /// Whether a node with these labels matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.mismatch(labels).is_none()
    }

    /// Why a node with these labels does not match, as "has zone=us" or "has no zone";
    /// `None` when it matches.
    pub fn mismatch(&self, labels: &BTreeMap<String, String>) -> Option<String> {
        let found = labels.get(self.key());
        match (self, found) {
            (Constraint::Equals(_, wanted), Some(value)) if value == wanted => None,
            (Constraint::NotEquals(_, unwanted), Some(value)) if value != unwanted => None,
            (Constraint::NotEquals(..), None) => None,
            (Constraint::Has(_), Some(_)) => None,
            (Constraint::HasNot(_), None) => None,
            (_, Some(value)) => Some(format!("has {}={value}", self.key())),
            (_, None) => Some(format!("has no {}", self.key())),
        }
    }
}

fn check_key(text: &str, key: &str) -> Result<()> {
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidKey {
            text: text.to_owned(),
            key: key.to_owned(),
        })
    }
}

fn check_value(text: &str, value: &str) -> Result<()> {
    let valid = !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c == '=');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidValue {
            text: text.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// The constraint as written: `key=value`, `key!=value`, `key` or `!key`.
impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::Equals(key, value) => write!(f, "{key}={value}"),
            Constraint::NotEquals(key, value) => write!(f, "{key}!={value}"),
            Constraint::Has(key) => write!(f, "{key}"),
            Constraint::HasNot(key) => write!(f, "!{key}"),
        }
    }
}

impl FromStr for Constraint {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Constraint::parse(text)
    }
}

impl TryFrom<String> for Constraint {
    type Error = Error;

    fn try_from(text: String) -> Result<Self> {
        Constraint::parse(&text)
    }
}

impl From<Constraint> for String {
    fn from(constraint: Constraint) -> String {
        constraint.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(text: &str) -> Constraint {
        Constraint::parse(text).unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[test]
    fn parses_the_four_forms() {
        assert_eq!(
            parse("zone=eu"),
            Constraint::Equals("zone".into(), "eu".into())
        );
        assert_eq!(
            parse("zone!=eu"),
            Constraint::NotEquals("zone".into(), "eu".into())
        );
        assert_eq!(parse("accel"), Constraint::Has("accel".into()));
        assert_eq!(parse("!accel"), Constraint::HasNot("accel".into()));
        assert_eq!(
            parse("sd.io/rack-1_a=r:1!x"),
            Constraint::Equals("sd.io/rack-1_a".into(), "r:1!x".into())
        );
    }

    #[test]
    fn round_trips_through_text() {
        for text in ["zone=eu", "zone!=eu", "accel", "!accel", "a/b.c-d_e=x!y"] {
            assert_eq!(parse(text).to_string(), text);
        }
    }

    #[test]
    fn errors_name_the_text_and_what_is_allowed() {
        assert_eq!(Constraint::parse(""), Err(Error::EmptyConstraint));
        let cases = [
            ("zone = eu", "label key \"zone \" is not valid"),
            ("=eu", "label key \"\" is not valid"),
            ("!", "label key \"\" is not valid"),
            ("!!a", "label key \"!a\" is not valid"),
            ("a=b!=c", "label key \"a=b\" is not valid"),
            ("zone=", "label value \"\" is not valid"),
            ("zone!=", "label value \"\" is not valid"),
            ("zone=e u", "label value \"e u\" is not valid"),
            ("zone==eu", "label value \"=eu\" is not valid"),
            ("zöne", "label key \"zöne\" is not valid"),
        ];
        for (text, expected) in cases {
            let message = match Constraint::parse(text) {
                Ok(constraint) => panic!("{text} was accepted as {constraint:?}"),
                Err(error) => error.to_string(),
            };
            assert!(
                message.contains(&format!("constraint \"{text}\"")),
                "{message}"
            );
            assert!(message.contains(expected), "{message}");
        }
        let message = Constraint::parse("a b").map_err(|e| e.to_string());
        assert!(
            message
                .as_ref()
                .is_err_and(|m| m.contains("A-Z a-z 0-9 . _ / -")),
            "{message:?}"
        );
    }

    #[test]
    fn matching_and_explanations() {
        let us = labels(&[("zone", "us"), ("accel", "kvm")]);
        let bare = labels(&[]);
        assert!(parse("zone=us").matches(&us));
        assert_eq!(
            parse("zone=eu").mismatch(&us).as_deref(),
            Some("has zone=us")
        );
        assert_eq!(
            parse("zone=eu").mismatch(&bare).as_deref(),
            Some("has no zone")
        );
        assert!(parse("zone!=eu").matches(&us));
        assert!(parse("zone!=eu").matches(&bare));
        assert_eq!(
            parse("zone!=us").mismatch(&us).as_deref(),
            Some("has zone=us")
        );
        assert!(parse("accel").matches(&us));
        assert_eq!(
            parse("accel").mismatch(&bare).as_deref(),
            Some("has no accel")
        );
        assert!(parse("!accel").matches(&bare));
        assert_eq!(
            parse("!accel").mismatch(&us).as_deref(),
            Some("has accel=kvm")
        );
    }

    #[test]
    fn parse_all_stops_at_the_first_error() {
        assert_eq!(
            Constraint::parse_all(["a", "!b"]),
            Ok(vec![
                Constraint::Has("a".into()),
                Constraint::HasNot("b".into())
            ])
        );
        assert!(Constraint::parse_all(["a", "b=", "c"]).is_err());
    }
}
