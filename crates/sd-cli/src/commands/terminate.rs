//! `sd terminate`: asks the agent to take a deployment down and forget it.

use std::process::ExitCode;

use clap::Args;
use sd_proto::DeploymentSummary;

use crate::client::{Client, ConnectArgs, segment};
use crate::output::say;

/// Arguments of `sd terminate`.
#[derive(Debug, Args)]
pub struct TerminateArgs {
    /// The deployment's name.
    pub name: String,
    /// Return only once every component is terminated and cleaned away.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `sd terminate`.
pub fn terminate(args: &TerminateArgs) -> ExitCode {
    let client = match Client::connect(&args.connect) {
        Ok(client) => client,
        Err(error) => return error.report(),
    };
    let wait = if args.wait { "true" } else { "false" };
    let path = format!("/deployments/{}", segment(&args.name));
    match client.delete::<DeploymentSummary>(&path, &[("wait", wait)]) {
        Ok(_) if args.wait => say(&format!("terminated {}", args.name)),
        Ok(_) => say(&format!(
            "terminating {} (`sd ls` shows when it is gone)",
            args.name
        )),
        Err(error) => return error.report(),
    }
    ExitCode::SUCCESS
}
