//! `sd ls`: the agent's deployments, one line each.

use std::process::ExitCode;

use clap::Args;
use sd_proto::DeploymentSummary;

use crate::client::{Client, ConnectArgs};
use crate::output::{ListFormat, print_json, print_out, since, table};

/// Arguments of `sd ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ListFormat,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `sd ls`.
pub fn ls(args: &LsArgs) -> ExitCode {
    let client = match Client::connect(&args.connect) {
        Ok(client) => client,
        Err(error) => return error.report(),
    };
    let deployments: Vec<DeploymentSummary> = match client.get("/deployments") {
        Ok(deployments) => deployments,
        Err(error) => return error.report(),
    };
    match args.format {
        ListFormat::Json => print_json(&deployments),
        ListFormat::Table => print_out(&ls_table(&deployments)),
    }
}

fn ls_table(deployments: &[DeploymentSummary]) -> String {
    let rows: Vec<Vec<String>> = deployments
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.state.name().to_string(),
                d.components.to_string(),
                d.running.to_string(),
                d.root_node.clone(),
                since(d.created_unix_ms),
                d.source.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "COMPONENTS",
            "RUNNING",
            "ROOT",
            "AGE",
            "SOURCE",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use sd_proto::DeploymentState;

    use super::*;
    use crate::output::now_unix_ms;

    #[test]
    fn one_line_per_deployment() {
        let web = DeploymentSummary {
            name: "web".into(),
            state: DeploymentState::Running,
            source: "web.sf".into(),
            root_node: "n1".into(),
            created_unix_ms: now_unix_ms() - 65_000,
            components: 3,
            running: 2,
            epoch: 1,
        };
        let text = ls_table(&[web]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME  STATE    COMPONENTS  RUNNING  ROOT  AGE    SOURCE"
        );
        assert_eq!(
            lines[1],
            "web   running  3           2        n1    1m05s  web.sf"
        );
    }
}
