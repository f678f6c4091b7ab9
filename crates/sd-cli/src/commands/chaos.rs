//! `sd chaos run SCENARIO`: a seeded fault scenario against a local cluster of real agents,
//! with invariant checks (sd-chaos). Prints the run as it goes (stderr), then a summary or
//! JSON; exits 1 when an invariant failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Subcommand};
use sd_chaos::{Aggregate, RunOptions, Scenario};

use super::{EXIT_FAILED, EXIT_USAGE};

/// `sd chaos ...`.
#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    /// Run a scenario: start a local cluster, deploy, inject its faults, check invariants.
    Run(RunArgs),
}

/// Arguments of `sd chaos run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The scenario file (`chaos/*.toml`).
    pub scenario: PathBuf,
    /// The seed of the fault schedule [default: the scenario's `seed`, else 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run this many seeds, from the seed on, and print the figures over all of them.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub seeds: u64,
    /// `human` (a summary) or `json` (the report; one per line with --seeds).
    #[arg(long, default_value = "human", value_name = "human|json")]
    pub format: String,
    /// Also write the JSON report (an array with --seeds) to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Where the clusters' files go [default: a new directory under /tmp].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the cluster's files after a run that passed (a failed run keeps them anyway).
    #[arg(long)]
    pub keep: bool,
}

/// `sd chaos`.
pub fn chaos(command: &ChaosCommand) -> ExitCode {
    match command {
        ChaosCommand::Run(args) => run(args),
    }
}

/// Sets `interrupted` on the first SIGINT or SIGTERM.
fn watch_signals(interrupted: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut terminate) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("\ninterrupted: stopping the cluster");
            interrupted.store(true, Ordering::SeqCst);
        });
    });
}

fn run(args: &RunArgs) -> ExitCode {
    if !matches!(args.format.as_str(), "human" | "json") {
        eprintln!("error: --format is \"{}\": use human or json", args.format);
        return ExitCode::from(EXIT_USAGE);
    }
    if args.seeds == 0 {
        eprintln!("error: --seeds must be at least 1");
        return ExitCode::from(EXIT_USAGE);
    }
    let scenario = match Scenario::load(&args.scenario) {
        Ok(scenario) => scenario,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let binary = match std::env::current_exe() {
        Ok(binary) => binary,
        Err(error) => {
            eprintln!("error: cannot find the sd binary to start agents with: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let scenario_dir = args
        .scenario
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("sd-chaos-{}", std::process::id())),
    };
    // SIGINT or SIGTERM stops the run at its next step; the cluster is then torn down.
    let interrupted = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&interrupted));
    let first = args.seed.unwrap_or(scenario.seed);
    let mut reports = Vec::new();
    for seed in first..first + args.seeds {
        let progress = |line: &str| eprintln!("[{} seed {seed}] {line}", scenario.name);
        let options = RunOptions {
            binary: binary.clone(),
            seed,
            dir: base.join(format!("{}-{seed}", scenario.name)),
            keep: args.keep,
            progress: &progress,
            interrupted: &interrupted,
        };
        match sd_chaos::run(&scenario, &scenario_dir, &options) {
            Ok(report) => {
                if args.format == "json" {
                    println!("{}", serde_json::to_string(&report).unwrap_or_default());
                } else {
                    println!("{}", report.human());
                }
                reports.push(report);
            }
            Err(error) => {
                eprintln!("error: seed {seed}: {error}");
                return ExitCode::from(EXIT_FAILED);
            }
        }
    }
    if args.dir.is_none() && reports.iter().all(|report| report.kept.is_none()) {
        let _ = std::fs::remove_dir_all(&base);
    }
    if args.seeds > 1 {
        let aggregate = Aggregate::of(&reports);
        if args.format == "json" {
            println!("{}", serde_json::to_string(&aggregate).unwrap_or_default());
        } else {
            print!("{}", aggregate.human());
        }
    }
    if let Some(path) = &args.report {
        let json = if reports.len() == 1 {
            serde_json::to_string_pretty(&reports[0])
        } else {
            serde_json::to_string_pretty(&reports)
        };
        if let Err(error) = json
            .map_err(|e| e.to_string())
            .and_then(|json| std::fs::write(path, json).map_err(|e| e.to_string()))
        {
            eprintln!(
                "error: cannot write the report to `{}`: {error}",
                path.display()
            );
            return ExitCode::from(EXIT_FAILED);
        }
    }
    if reports.iter().all(|report| report.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}
