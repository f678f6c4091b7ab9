//! Names and keys: what a deployment may be called, and how component keys are built so that
//! one deployment's components are one contiguous range of the `components` table.
//!
//! A component's key is `"{deployment}\0{path}"`. A deployment name never contains NUL, so
//! the keys of deployment `web` are exactly those in `["web\0", "web\x01")`: `web2`'s keys
//! (`"web2\0..."`) sort after that range, since `'2' > '\x01'`.

use crate::{Error, Result};

/// The longest deployment name, in bytes (names are ASCII).
pub const MAX_NAME_LEN: usize = 128;

/// The rule every deployment name follows, as error messages state it.
pub const NAME_RULE: &str = "a deployment name is 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or a digit";

/// Checks a deployment name against [`NAME_RULE`].
pub fn validate_deployment_name(name: &str) -> Result<()> {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-');
    let valid = name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|first| first.is_ascii_alphanumeric())
        && name.bytes().all(allowed);
    if !valid {
        return Err(Error::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Checks a component path: not empty, and no NUL (which separates a component key's parts).
pub fn validate_path(path: &str) -> Result<()> {
    if path.is_empty() || path.contains('\0') {
        return Err(Error::InvalidPath {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The key of component `path` of `deployment`. Both must have been validated.
pub(crate) fn component_key(deployment: &str, path: &str) -> String {
    debug_assert!(!deployment.contains('\0') && !path.contains('\0'));
    format!("{deployment}\0{path}")
}

/// The half-open key range `[start, end)` holding exactly the components of `deployment`.
pub(crate) fn component_range(deployment: &str) -> (String, String) {
    debug_assert!(!deployment.contains('\0'));
    (format!("{deployment}\0"), format!("{deployment}\u{1}"))
}

/// A key as error messages show it (a NUL is shown as `\0`).
pub(crate) fn display_key(key: &str) -> String {
    key.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_range(range: &(String, String), key: &str) -> bool {
        range.0.as_str() <= key && key < range.1.as_str()
    }

    #[test]
    fn valid_names() {
        for name in ["web", "w", "0", "web-2", "a.b_c-d", "9lives", "A.", "x-"] {
            assert!(validate_deployment_name(name).is_ok(), "{name}");
        }
        assert!(validate_deployment_name(&"a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn invalid_names() {
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        for name in [
            "",
            ".hidden",
            "-x",
            "_x",
            "a/b",
            "a b",
            "a\0b",
            "caf\u{e9}",
            "a:b",
            too_long.as_str(),
        ] {
            let error = validate_deployment_name(name).unwrap_err();
            assert!(matches!(error, Error::InvalidName { .. }), "{name:?}");
            assert!(error.to_string().contains(NAME_RULE), "{error}");
        }
    }

    #[test]
    fn paths() {
        assert!(validate_path("sfConfig:pool:vm1").is_ok());
        assert!(validate_path("sfConfig").is_ok());
        for path in ["", "a\0b", "\0"] {
            let error = validate_path(path).unwrap_err();
            assert!(matches!(error, Error::InvalidPath { .. }), "{path:?}");
            assert!(error.to_string().contains("NUL"), "{error}");
        }
    }

    #[test]
    fn keys_are_deployment_nul_path() {
        assert_eq!(component_key("web", "sfConfig:a"), "web\0sfConfig:a");
        assert_eq!(
            component_range("web"),
            ("web\0".to_owned(), "web\u{1}".to_owned())
        );
        assert_eq!(display_key("web\0sfConfig:a"), "web\\0sfConfig:a");
    }

    #[test]
    fn a_range_holds_exactly_its_deployment() {
        let web = component_range("web");
        assert!(in_range(&web, &component_key("web", "sfConfig")));
        assert!(in_range(
            &web,
            &component_key("web", "sfConfig:z:\u{10ffff}")
        ));
        assert!(in_range(&web, &component_key("web", "\u{1}")));
        assert!(!in_range(&web, &component_key("web2", "sfConfig")));
        assert!(!in_range(&web, &component_key("web-2", "sfConfig")));
        assert!(!in_range(&web, &component_key("we", "sfConfig")));
        assert!(!in_range(&web, &component_key("weba", "sfConfig")));
        assert!(!in_range(
            &component_range("web2"),
            &component_key("web", "2")
        ));
    }
}
