//! `sd deploy`: resolves a description here (with its `-I` directories, `-D` properties and
//! this environment) and asks the agent to deploy the result; `--wait` follows it until it
//! runs.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use sd_proto::{
    ComponentState, DeployRequest, DeploymentState, DeploymentStatus, DeploymentSummary,
};

use super::EXIT_FAILED;
use super::describe::{DescriptionArgs, report};
use crate::client::{Client, ConnectArgs, segment};
use crate::output::say;

/// How often `--wait` asks for the deployment's status.
const POLL: Duration = Duration::from_millis(100);

/// Arguments of `sd deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The deployment's name (letters, digits, `.`, `_`, `-`; starting with a letter or digit).
    pub name: String,
    #[command(flatten)]
    pub description: DescriptionArgs,
    /// Wait until every component runs, printing each component's changes of state; exit 1
    /// if the deployment fails.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up (exit 1) after this many seconds; the deployment goes on.
    #[arg(long, value_name = "SECS", default_value_t = 120, requires = "wait")]
    pub timeout: u64,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `sd deploy`.
pub fn deploy(args: &DeployArgs) -> ExitCode {
    deploy_from(args, &args.description.file.display().to_string())
}

/// `sd deploy`, naming `source` as where the description came from (`sd status` shows it):
/// `sd demo` deploys a copy of an example under the example's own name.
pub(super) fn deploy_from(args: &DeployArgs, source: &str) -> ExitCode {
    let started = Instant::now();
    // A wrong description is reported from here, before any agent is contacted.
    let resolved = match args.description.resolve() {
        Ok(Ok(resolved)) => resolved,
        Ok(Err(diagnostics)) => return report(&diagnostics),
        Err(code) => return code,
    };
    let request = DeployRequest {
        name: args.name.clone(),
        description: sd_lang::unparse::unparse_config(&resolved.config),
        source: source.to_string(),
    };
    let client = match Client::connect(&args.connect) {
        Ok(client) => client,
        Err(error) => return error.report(),
    };
    if let Err(error) = client.post::<_, DeploymentSummary>("/deployments", &request) {
        return error.report();
    }
    if !args.wait {
        say(&format!("deployed {}", args.name));
        return ExitCode::SUCCESS;
    }
    wait(
        &client,
        &args.name,
        started,
        Duration::from_secs(args.timeout),
    )
}

/// Polls the deployment until it runs, fails or `timeout` passes.
fn wait(client: &Client, name: &str, started: Instant, timeout: Duration) -> ExitCode {
    let path = format!("/deployments/{}", segment(name));
    let mut seen: HashMap<String, ComponentState> = HashMap::new();
    loop {
        let status: DeploymentStatus = match client.get(&path) {
            Ok(status) => status,
            Err(error) if error.is_not_found() => {
                eprintln!("error: deployment {name} was terminated while it was deploying");
                return ExitCode::from(EXIT_FAILED);
            }
            Err(error) => return error.report(),
        };
        let elapsed = started.elapsed().as_secs_f64();
        for component in &status.components {
            if seen.get(&component.path) == Some(&component.state) {
                continue;
            }
            seen.insert(component.path.clone(), component.state);
            let error = match (&component.last_error, component.state) {
                (Some(error), ComponentState::Failed | ComponentState::Restarting) => {
                    format!(": {error}")
                }
                _ => String::new(),
            };
            say(&format!(
                "{elapsed:6.2} s  {} ({}) {}{error}",
                component.path,
                component.kind,
                component.state.name()
            ));
        }
        match &status.deployment.state {
            DeploymentState::Running => {
                let running = status.deployment.running;
                let plural = if running == 1 { "" } else { "s" };
                say(&format!(
                    "{name}: {running} component{plural} running in {elapsed:.2} s"
                ));
                return ExitCode::SUCCESS;
            }
            // Every component finished its work (a sequence of jobs, say): done, and fine.
            DeploymentState::Terminated => {
                say(&format!(
                    "{name}: every component finished in {elapsed:.2} s"
                ));
                return ExitCode::SUCCESS;
            }
            DeploymentState::Failed { reason } => {
                eprintln!("error: deployment {name} failed: {reason}");
                return ExitCode::from(EXIT_FAILED);
            }
            DeploymentState::Terminating => {
                eprintln!("error: deployment {name} is being terminated");
                return ExitCode::from(EXIT_FAILED);
            }
            DeploymentState::Deploying => {}
        }
        if started.elapsed() >= timeout {
            eprintln!(
                "error: deployment {name} is still deploying after {} s; it goes on (see `sd status {name}`)",
                timeout.as_secs()
            );
            return ExitCode::from(EXIT_FAILED);
        }
        std::thread::sleep(POLL);
    }
}
