//! `sd set`: changes an attribute of a running component without restarting it (live
//! reconfiguration: validated on every node involved, then committed, durably).

use std::process::ExitCode;

use clap::Args;
use sd_proto::{Reconfiguration, ReconfigureRequest};

use crate::client::{Client, ConnectArgs, segment};
use crate::output::say;

/// Arguments of `sd set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The deployment's name.
    pub name: String,
    /// The component's path, as `sd status` shows it (`sfConfig:` may be left out).
    pub path: String,
    /// The attribute: `sfLivenessDelay`, `sfLivenessFactor`, `sdMaxRestarts`,
    /// `sdRestartWindow`, `memory` (a QEMU domain's, through its balloon) or `saveImage`.
    pub attribute: String,
    /// The new value in SmartFrog notation: `5`, `2.5`, `true`, `"text"`.
    #[arg(allow_hyphen_values = true)]
    pub value: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `sd set`.
pub fn set(args: &SetArgs) -> ExitCode {
    let client = match Client::connect(&args.connect) {
        Ok(client) => client,
        Err(error) => return error.report(),
    };
    let request = ReconfigureRequest {
        path: args.path.clone(),
        attribute: args.attribute.clone(),
        value: args.value.clone(),
    };
    let path = format!("/deployments/{}/reconfigure", segment(&args.name));
    match client.post::<_, Reconfiguration>(&path, &request) {
        Ok(done) => {
            say(&format!(
                "{} {}: {} -> {} (validated and committed on {})",
                done.path,
                done.attribute,
                done.previous,
                done.value,
                done.nodes.join(", ")
            ));
            ExitCode::SUCCESS
        }
        Err(error) => error.report(),
    }
}
