//! `sd`: the command line of sd.
//!
//! `sd agent` runs a node; `sd deploy`, `terminate`, `status`, `ls` and `logs` talk to an
//! agent over its HTTP API (docs/api.md); `sd resolve` and `validate` work on a description
//! alone.
//!
//! Finding the agent: `--agent URL` (or `SD_AGENT`), else the URL in `<data dir>/api.url`
//! (which the agent writes while it runs), else `http://127.0.0.1:4680`; the token is read
//! from `--token-file PATH` (or `SD_TOKEN_FILE`), else `<data dir>/token`. The data dir is
//! `SD_DATA_DIR`, else `/var/lib/sd`.
//!
//! Exit codes:
//! - 0: success.
//! - 1: the description is wrong, or the agent refused or failed the request (a name that
//!   exists, no such deployment, a deployment that failed while `--wait`ed for ...).
//! - 2: usage error (bad flags, unreadable arguments or config file).
//! - 3: the agent cannot be reached, or its token cannot be read or is refused.

mod client;
mod commands;
mod logging;
mod output;

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
