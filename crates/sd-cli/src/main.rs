//! `sd`: the command line of sd.
//!
//! Exit codes: 0 success, 1 the description is wrong, 2 usage error (bad flags, unreadable
//! arguments).

mod commands;

use std::process::ExitCode;

use clap::Parser;

/// sd deploys, watches and tears down pools of virtual machines and processes described in
/// SmartFrog notation.
#[derive(Debug, Parser)]
#[command(name = "sd", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    commands::run(cli.command)
}
