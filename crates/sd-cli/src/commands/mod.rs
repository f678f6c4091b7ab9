//! The subcommands.

mod describe;

use std::process::ExitCode;

use clap::Subcommand;

/// Every subcommand of `sd`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Resolve a description and print its sfConfig (JSON or SmartFrog notation).
    Resolve(describe::ResolveArgs),
    /// Check a description: prints `ok` or the errors.
    Validate(describe::DescriptionArgs),
}

/// Exit status for a wrong description.
pub const EXIT_INVALID: u8 = 1;
/// Exit status for a usage error.
pub const EXIT_USAGE: u8 = 2;

/// Runs a subcommand.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Resolve(args) => describe::resolve(&args),
        Command::Validate(args) => describe::validate(&args),
    }
}
