//! `sd logs`: a domain's output, as the agent keeps it; `--follow` goes on printing what it
//! appends until the deployment is gone.

use std::process::ExitCode;

use clap::Args;

use crate::client::{Client, ConnectArgs, segment};

/// Arguments of `sd logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The deployment's name.
    pub name: String,
    /// The component's path, as `sd status` shows it (`sfConfig:` may be left out).
    pub path: String,
    /// Go on printing what the domain writes, until the deployment is gone (or Ctrl-C).
    #[arg(long, short = 'f')]
    pub follow: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `sd logs`.
pub fn logs(args: &LogsArgs) -> ExitCode {
    let client = match Client::connect(&args.connect) {
        Ok(client) => client,
        Err(error) => return error.report(),
    };
    let path = format!("/deployments/{}/logs", segment(&args.name));
    let follow = if args.follow { "true" } else { "false" };
    let query = [("path", args.path.as_str()), ("follow", follow)];
    match client.copy_to(&path, &query, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}
