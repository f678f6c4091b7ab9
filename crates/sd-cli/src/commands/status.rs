//! `sd status`: a deployment's component tree with each component's state, process,
//! restarts and last error; every deployment's without a name.

use std::process::ExitCode;

use clap::Args;
use sd_proto::{ComponentState, DeploymentState, DeploymentStatus, DeploymentSummary};

use crate::client::{Client, ClientError, ConnectArgs, segment};
use crate::output::{ListFormat, one_line, print_json, print_out, since, table};

/// Arguments of `sd status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The deployment's name; every deployment without it.
    pub name: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ListFormat,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `sd status`.
pub fn status(args: &StatusArgs) -> ExitCode {
    let client = match Client::connect(&args.connect) {
        Ok(client) => client,
        Err(error) => return error.report(),
    };
    if let Some(name) = &args.name {
        let status: DeploymentStatus = match client.get(&status_path(name)) {
            Ok(status) => status,
            Err(error) => return error.report(),
        };
        return match args.format {
            ListFormat::Json => print_json(&status),
            ListFormat::Table => print_out(&status_text(&status)),
        };
    }
    let statuses = match every_status(&client) {
        Ok(statuses) => statuses,
        Err(error) => return error.report(),
    };
    match args.format {
        ListFormat::Json => print_json(&statuses),
        ListFormat::Table => {
            let texts: Vec<String> = statuses.iter().map(status_text).collect();
            print_out(&texts.join("\n"))
        }
    }
}

fn status_path(name: &str) -> String {
    format!("/deployments/{}", segment(name))
}

/// Every deployment's status; one terminated between the listing and its turn is left out.
fn every_status(client: &Client) -> Result<Vec<DeploymentStatus>, ClientError> {
    let deployments: Vec<DeploymentSummary> = client.get("/deployments")?;
    let mut statuses = Vec::with_capacity(deployments.len());
    for deployment in deployments {
        match client.get(&status_path(&deployment.name)) {
            Ok(status) => statuses.push(status),
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(error),
        }
    }
    Ok(statuses)
}

/// A heading line for the deployment, then its components, indented by depth.
fn status_text(status: &DeploymentStatus) -> String {
    let d = &status.deployment;
    let mut text = format!(
        "{}: {} ({} of {} components running, root {}, age {}, from {})\n",
        d.name,
        d.state.name(),
        d.running,
        d.components,
        d.root_node,
        since(d.created_unix_ms),
        if d.source.is_empty() { "-" } else { &d.source },
    );
    if let DeploymentState::Failed { reason } = &d.state {
        text.push_str(&format!("reason: {}\n", one_line(reason)));
    }
    let rows: Vec<Vec<String>> = status
        .components
        .iter()
        .map(|c| {
            let depth = c.path.matches(':').count();
            let uptime = match (c.state, c.started_unix_ms) {
                (ComponentState::Running, Some(started)) => since(started),
                _ => "-".into(),
            };
            vec![
                format!("{}{}", "  ".repeat(depth), c.path),
                c.kind.clone(),
                c.state.name().to_string(),
                c.node.clone(),
                c.pid.map_or_else(|| "-".into(), |pid| pid.to_string()),
                c.restarts.to_string(),
                uptime,
                c.last_error.as_deref().map_or_else(|| "-".into(), one_line),
            ]
        })
        .collect();
    text.push_str(&table(
        &[
            "PATH",
            "KIND",
            "STATE",
            "NODE",
            "PID",
            "RESTARTS",
            "UPTIME",
            "LAST-ERROR",
        ],
        &rows,
    ));
    text
}

#[cfg(test)]
mod tests {
    use sd_proto::ComponentStatus;

    use super::*;
    use crate::output::now_unix_ms;

    #[test]
    fn components_are_indented_by_depth_with_their_process_and_errors() {
        let now = now_unix_ms();
        let component = |path: &str, kind: &str, state, pid, error: Option<&str>| ComponentStatus {
            path: path.into(),
            kind: kind.into(),
            state,
            node: "n1".into(),
            pid,
            restarts: 0,
            started_unix_ms: Some(now - 5_000),
            last_error: error.map(str::to_string),
            supervision: None,
            settings: Vec::new(),
        };
        let status = DeploymentStatus {
            deployment: DeploymentSummary {
                name: "web".into(),
                state: DeploymentState::Failed {
                    reason: "sfConfig:a\nexited".into(),
                },
                source: "web.sf".into(),
                root_node: "n1".into(),
                created_unix_ms: now - 7_000,
                components: 2,
                running: 1,
                epoch: 1,
            },
            components: vec![
                component("sfConfig", "Compound", ComponentState::Running, None, None),
                component(
                    "sfConfig:a",
                    "ProcessDomain",
                    ComponentState::Failed,
                    Some(42),
                    Some("exited with\ncode 1"),
                ),
            ],
        };
        let text = status_text(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "web: failed (1 of 2 components running, root n1, age 7s, from web.sf)"
        );
        assert_eq!(lines[1], "reason: sfConfig:a exited");
        assert!(lines[2].starts_with("PATH          KIND"), "{text}");
        assert!(lines[3].starts_with("sfConfig      Compound"), "{text}");
        assert!(
            lines[3].contains("running  n1    -    0         5s"),
            "{text}"
        );
        assert!(
            lines[4].starts_with("  sfConfig:a  ProcessDomain  failed"),
            "{text}"
        );
        assert!(
            lines[4].ends_with("42   0         -       exited with code 1"),
            "{text}"
        );
    }
}
