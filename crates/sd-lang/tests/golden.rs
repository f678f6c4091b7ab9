//! Golden tests of the description language.
//!
//! - Every `tests/golden/*.sf` resolves (include path: `tests/golden/include/`, properties and
//!   environment from [`properties`], never the real environment), and its JSON
//!   (`sd_lang::json::component_to_json`) equals the `.json` file beside it: the same values
//!   *and* the same key order at every level (the order of attributes is part of the
//!   language). On a mismatch both are printed.
//! - Every `tests/errors/*.sf` fails to resolve. The `.err` file beside it lists the expected
//!   errors, in order, one per line:
//!
//!   ```text
//!   CLASS @ LINE:COL [~ substring of the message]
//!   CLASS @ FILE:LINE:COL [~ ...]     (FILE: the end of the file name, for included files)
//!   CLASS @ -                          (an error without a place, such as no-sfconfig)
//!   ...                                (last line only: more errors may follow, unchecked)
//!   ```
//!
//!   `CLASS` is an [`sd_lang::Error::class`] name. Blank lines and lines starting with `#`
//!   are ignored. `...` is for errors that follow from the first one (after an unterminated
//!   string, say), which are the parser's guesses rather than facts about the text. The
//!   rendered diagnostics must show `file:line:col`, the source line and a `^` caret for
//!   every error that has a place.
//!
//! `SD_BLESS=1 cargo test -p sd-lang --test golden` (re)writes the `.json` files of the
//! golden cases. Read every rewritten file before committing it: a golden file that records
//! a bug is worse than none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use sd_lang::{Diagnostics, Options, Properties};

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// The fixed properties and environment every case sees.
fn properties() -> Properties {
    let properties = BTreeMap::from([
        ("sd.test.name".to_string(), "golden".to_string()),
        ("sd.test.count".to_string(), "42".to_string()),
        ("sd.test.word".to_string(), "forty-two".to_string()),
    ]);
    let env = BTreeMap::from([
        ("SD_TEST_HOME".to_string(), "/home/test".to_string()),
        ("SD_TEST_PORT".to_string(), "8080".to_string()),
        (
            "SD_TEST_LIST".to_string(),
            r#"[| "a", 2L, true |]"#.to_string(),
        ),
        ("SD_TEST_TEXT".to_string(), r#""quoted""#.to_string()),
    ]);
    Properties { properties, env }
}

fn options(dir: &Path) -> Options {
    Options {
        include_dirs: vec![dir.join("include")],
        properties: properties(),
    }
}

/// The `.sf` files directly in `dir`, sorted.
fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|e| e == "sf"))
        .collect();
    files.sort();
    files
}

fn pretty(json: &Json) -> String {
    serde_json::to_string_pretty(json).expect("JSON prints")
}

/// The first place where the key order of two equal values differs.
fn order_difference(expected: &Json, actual: &Json, path: &str) -> Option<String> {
    match (expected, actual) {
        (Json::Object(e), Json::Object(a)) => {
            let ek: Vec<&String> = e.keys().collect();
            let ak: Vec<&String> = a.keys().collect();
            if ek != ak {
                return Some(format!(
                    "key order at `{path}`: expected {ek:?}, got {ak:?}"
                ));
            }
            e.iter()
                .find_map(|(k, v)| order_difference(v, &a[k.as_str()], &format!("{path}:{k}")))
        }
        (Json::Array(e), Json::Array(a)) => e
            .iter()
            .zip(a)
            .enumerate()
            .find_map(|(i, (x, y))| order_difference(x, y, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Resolves one golden case; `Err` describes the failure.
fn check_golden(sf: &Path, bless: bool) -> Result<(), String> {
    let dir = sf.parent().expect("in a directory");
    let expected_path = sf.with_extension("json");
    let resolved = sd_lang::resolve_file(sf, &options(dir))
        .map_err(|diagnostics| format!("does not resolve:\n{diagnostics}"))?;
    let actual = sd_lang::json::component_to_json(&resolved.config);
    if bless {
        let text = pretty(&actual) + "\n";
        let old = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if old != text {
            std::fs::write(&expected_path, text).map_err(|e| format!("cannot bless: {e}"))?;
            eprintln!("blessed {}", expected_path.display());
        }
        return Ok(());
    }
    let text = std::fs::read_to_string(&expected_path).map_err(|e| {
        format!(
            "no expected output {} ({e}); run with SD_BLESS=1 and check it by hand\nactual:\n{}",
            expected_path.display(),
            pretty(&actual)
        )
    })?;
    let expected: Json = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not JSON: {e}", expected_path.display()))?;
    let difference = if expected != actual {
        Some("values differ".to_string())
    } else {
        order_difference(&expected, &actual, "sfConfig")
    };
    match difference {
        None => Ok(()),
        Some(what) => Err(format!(
            "{what}\n--- expected ({}):\n{}\n--- actual:\n{}",
            name(&expected_path),
            pretty(&expected),
            pretty(&actual)
        )),
    }
}

/// One line of a `.err` file.
#[derive(Debug)]
struct Expected {
    class: String,
    /// `None` for `@ -`; else (file suffix, line, column).
    place: Option<(Option<String>, usize, usize)>,
    message: Option<String>,
}

fn parse_err_line(line: &str) -> Result<Expected, String> {
    let (head, message) = match line.split_once(" ~ ") {
        Some((head, message)) => (head, Some(message.trim().to_string())),
        None => (line, None),
    };
    let (class, place) = head
        .split_once(" @ ")
        .ok_or_else(|| format!("`{line}`: expected `CLASS @ LINE:COL [~ text]`"))?;
    let place = place.trim();
    let place = if place == "-" {
        None
    } else {
        let mut parts: Vec<&str> = place.rsplitn(3, ':').collect();
        parts.reverse();
        let (file, line_no, col) = match parts.as_slice() {
            [file, l, c] => (Some(file.to_string()), l, c),
            [l, c] => (None, l, c),
            _ => return Err(format!("`{line}`: bad place `{place}`")),
        };
        let number = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| format!("`{line}`: bad number `{s}`"))
        };
        Some((file, number(line_no)?, number(col)?))
    };
    Ok(Expected {
        class: class.trim().to_string(),
        place,
        message,
    })
}

/// Resolves one error case; `Err` describes how it differs from its `.err` file.
fn check_error(sf: &Path) -> Result<(), String> {
    let dir = sf.parent().expect("in a directory");
    let err_path = sf.with_extension("err");
    let err_text = std::fs::read_to_string(&err_path)
        .map_err(|e| format!("no {} ({e})", err_path.display()))?;
    let mut lines: Vec<&str> = err_text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let more_allowed = lines.last() == Some(&"...");
    if more_allowed {
        lines.pop();
    }
    let expected: Vec<Expected> = lines
        .into_iter()
        .map(parse_err_line)
        .collect::<Result<_, _>>()?;
    if expected.is_empty() {
        return Err(format!("{} lists no error", err_path.display()));
    }
    let diagnostics: Diagnostics = match sd_lang::resolve_file(sf, &options(dir)) {
        Ok(resolved) => {
            return Err(format!(
                "resolved, but should fail:\n{}",
                pretty(&sd_lang::json::component_to_json(&resolved.config))
            ));
        }
        Err(diagnostics) => diagnostics,
    };
    let rendered = diagnostics.to_string();
    let mut problems: Vec<String> = Vec::new();
    let count = diagnostics.errors.len();
    if count < expected.len() || (count > expected.len() && !more_allowed) {
        problems.push(format!("expected {} error(s), got {count}", expected.len()));
    }
    for (i, (want, got)) in expected.iter().zip(&diagnostics.errors).enumerate() {
        let n = i + 1;
        let class = got.error.class();
        if class != want.class {
            problems.push(format!(
                "error {n}: class `{class}`, expected `{}`",
                want.class
            ));
        }
        match (&want.place, got.span) {
            (None, None) => {}
            (None, Some(span)) => {
                let location = diagnostics.sources.location(span);
                problems.push(format!("error {n}: at {location}, expected no place"));
            }
            (Some(_), None) => problems.push(format!("error {n}: has no place")),
            (Some((file, line, column)), Some(span)) => {
                let location = diagnostics.sources.location(span);
                let file_ok = match file {
                    Some(suffix) => location.file.ends_with(suffix.as_str()),
                    None => location.file == sf.display().to_string(),
                };
                if !file_ok || location.line != *line || location.column != *column {
                    let wanted = match file {
                        Some(suffix) => format!("{suffix}:{line}:{column}"),
                        None => format!("{}:{line}:{column}", name(sf)),
                    };
                    problems.push(format!("error {n}: at {location}, expected {wanted}"));
                }
                // The rendering shows the place, the line and a caret under it.
                let text = got.render(&diagnostics.sources);
                let source_line = diagnostics.sources.file(span.file).line_text(location.line);
                let shows_line = text.contains(&format!("{} | {source_line}", location.line));
                let shows_caret = text
                    .lines()
                    .any(|l| l.contains(" | ") && l.trim_end().ends_with('^'));
                if !text.contains(&location.to_string()) || !shows_line || !shows_caret {
                    problems.push(format!(
                        "error {n}: rendering lacks file:line:col, the line or a caret"
                    ));
                }
                if !rendered.contains(&text) {
                    problems.push(format!("error {n}: not in the Display output"));
                }
            }
        }
        if let Some(message) = &want.message
            && !got.error.to_string().contains(message.as_str())
        {
            problems.push(format!(
                "error {n}: message `{}` lacks `{message}`",
                got.error
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}\n--- rendered:\n{rendered}",
            problems.join("\n")
        ))
    }
}

fn report(kind: &str, failures: &[(PathBuf, String)], total: usize) {
    if failures.is_empty() {
        return;
    }
    let text: String = failures
        .iter()
        .map(|(path, failure)| format!("==== {kind} {}: {failure}\n\n", name(path)))
        .collect();
    panic!("{text}{} of {total} {kind} cases failed", failures.len());
}

#[test]
fn golden_cases_resolve_to_their_json() {
    let dir = tests_dir().join("golden");
    let bless = std::env::var_os("SD_BLESS").is_some_and(|v| v == "1");
    let files = cases(&dir);
    assert!(!files.is_empty(), "no golden cases in {}", dir.display());
    let failures: Vec<(PathBuf, String)> = files
        .iter()
        .filter_map(|sf| check_golden(sf, bless).err().map(|e| (sf.clone(), e)))
        .collect();
    report("golden", &failures, files.len());
}

#[test]
fn error_cases_fail_as_listed() {
    let dir = tests_dir().join("errors");
    let files = cases(&dir);
    assert!(!files.is_empty(), "no error cases in {}", dir.display());
    let failures: Vec<(PathBuf, String)> = files
        .iter()
        .filter_map(|sf| check_error(sf).err().map(|e| (sf.clone(), e)))
        .collect();
    report("error", &failures, files.len());
}

#[test]
fn every_error_class_has_a_negative_case() {
    let dir = tests_dir().join("errors");
    let listed: String = cases(&dir)
        .iter()
        .filter_map(|sf| std::fs::read_to_string(sf.with_extension("err")).ok())
        .collect();
    let classes: Vec<String> = listed
        .lines()
        .filter_map(|l| parse_err_line(l.trim()).ok())
        .map(|e| e.class)
        .collect();
    let missing: Vec<&str> = [
        "syntax",
        "include-missing",
        "include-cycle",
        "unresolved-reference",
        "bad-prototype",
        "reference-cycle",
        "tbd",
        "missing-property",
        "type",
        "assert",
        "unsupported",
        "no-sfconfig",
        "limit",
    ]
    .into_iter()
    .filter(|class| !classes.iter().any(|c| c == class))
    .collect();
    assert!(missing.is_empty(), "no negative case for {missing:?}");
}
