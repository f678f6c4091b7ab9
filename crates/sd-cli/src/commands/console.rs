//! `sd console`: prints the address of the agent's web console, with the token in the
//! fragment (`#token=`), which a browser never sends to the server; the page keeps it for the
//! tab's session only.

use std::process::ExitCode;

use clap::Args;

use crate::client::{Client, ConnectArgs};
use crate::output::say;

/// Arguments of `sd console`.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `sd console`.
pub fn console(args: &ConsoleArgs) -> ExitCode {
    match Client::connect(&args.connect) {
        Ok(client) => {
            say(&format!("{}/#token={}", client.base(), client.token()));
            ExitCode::SUCCESS
        }
        Err(error) => error.report(),
    }
}
