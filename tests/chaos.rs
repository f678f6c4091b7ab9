//! End-to-end tests of `sd chaos run`: the mixed scenario CI runs passes every invariant, and
//! the checker is seen to catch violations, on clusters whose agents had a safety mechanism
//! switched off on purpose (`--unsafe-test-break`, through the scenarios in chaos/broken/).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `sd chaos run SCENARIO --format json` with its JSON report in a temp dir; returns the
/// report and the command's output (the progress is on stderr).
fn chaos_run(scenario: &str, extra: &[&str]) -> (Value, Output) {
    // One cluster at a time: the runs measure timings on a 2-core machine.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_sd"))
        .args(["chaos", "run"])
        .arg(repository().join(scenario))
        .args(["--format", "human", "--report"])
        .arg(&report)
        .arg("--dir")
        .arg(dir.path().join("runs"))
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("sd chaos run starts");
    // What a person reading the CI log sees: the summary of the run.
    println!("{}", String::from_utf8_lossy(&output.stdout));
    let text = std::fs::read_to_string(&report).unwrap_or_else(|error| {
        panic!(
            "no report ({error}); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (
        serde_json::from_str(&text).expect("the report is JSON"),
        output,
    )
}

fn outcome<'r>(report: &'r Value, invariant: &str) -> &'r str {
    report["invariants"]
        .as_array()
        .expect("invariants")
        .iter()
        .find(|verdict| verdict["invariant"] == invariant)
        .and_then(|verdict| verdict["outcome"].as_str())
        .unwrap_or("missing")
}

#[test]
fn the_mixed_scenario_holds_every_invariant() {
    let (report, output) = chaos_run("chaos/mixed.toml", &[]);
    assert!(
        output.status.success(),
        "stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(report["passed"], true);
    for invariant in ["INV-1", "INV-2", "INV-3", "INV-4", "INV-5"] {
        assert_eq!(outcome(&report, invariant), "pass", "{invariant}");
    }
    let faults = report["faults"].as_array().expect("faults");
    assert!(faults.len() >= 4, "the schedule ran: {faults:?}");
}

#[test]
fn the_same_seed_replays_the_same_schedule() {
    // The schedule is drawn before anything starts; a run of the cheapest scenario twice.
    let kinds = |report: &Value| -> Vec<(String, Value)> {
        report["faults"]
            .as_array()
            .expect("faults")
            .iter()
            .map(|fault| (fault["kind"].to_string(), fault["count"].clone()))
            .collect()
    };
    let (first, _) = chaos_run("chaos/concurrent-deploy.toml", &["--seed", "5"]);
    let (second, _) = chaos_run("chaos/concurrent-deploy.toml", &["--seed", "5"]);
    let through = |report: &Value| -> Vec<Value> {
        report["faults"]
            .as_array()
            .expect("faults")
            .iter()
            .map(|fault| fault["through"].clone())
            .collect()
    };
    assert_eq!(kinds(&first), kinds(&second));
    assert_eq!(through(&first), through(&second));
    // Never two acknowledged deploys of one name (INV-2 checks it too).
    assert_eq!(outcome(&first, "INV-2"), "pass");
    assert_eq!(outcome(&second, "INV-2"), "pass");
}

#[test]
fn the_checker_catches_duplicates_left_by_switched_off_owner_checks() {
    let (report, output) = chaos_run("chaos/broken/owner-checks.toml", &[]);
    assert!(!output.status.success(), "a violation fails the command");
    assert_eq!(report["passed"], false);
    assert_eq!(outcome(&report, "INV-1"), "fail");
    let evidence = report["invariants"][0]["evidence"].to_string();
    assert!(evidence.contains("2 instances"), "{evidence}");
}

#[test]
fn the_checker_catches_restarts_beyond_the_declared_intensity() {
    let (report, _) = chaos_run("chaos/broken/restart-intensity.toml", &[]);
    assert_eq!(outcome(&report, "INV-5"), "fail");
    let evidence = report["invariants"][4]["evidence"].to_string();
    assert!(evidence.contains("more than sdMaxRestarts 2"), "{evidence}");
}
