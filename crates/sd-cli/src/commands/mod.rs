//! The subcommands: `resolve` and `validate` work on a description alone; `agent` runs a
//! node; `deploy`, `terminate`, `status`, `ls`, `logs`, `set`, `events` and `console` talk to
//! an agent through
//! [`crate::client`]; `demo` shows them at work on a throwaway agent.

mod agent;
mod chaos;
mod cluster;
mod console;
mod demo;
mod deploy;
mod describe;
mod events;
mod logs;
mod ls;
mod nodes;
mod set;
mod status;
mod terminate;

use std::process::ExitCode;

use clap::Subcommand;

/// Every subcommand of `sd`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Resolve a description and print its sfConfig (JSON or SmartFrog notation).
    Resolve(describe::ResolveArgs),
    /// Check a description: prints `ok` or the errors.
    Validate(describe::DescriptionArgs),
    /// Run this node's agent: its runtime and its API, until SIGTERM or SIGINT.
    Agent(agent::AgentArgs),
    /// Create a cluster's certificate authority and keys, or issue a node's certificate.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// List the cluster's nodes: state, capacity, free capacity, accelerator, labels.
    Nodes(nodes::NodesArgs),
    /// Resolve a description here and deploy it on the agent under a name.
    Deploy(deploy::DeployArgs),
    /// Terminate a deployment: every component, in reverse order, leaving nothing behind.
    Terminate(terminate::TerminateArgs),
    /// Show a deployment's components (every deployment's without a name).
    Status(status::StatusArgs),
    /// List the deployments.
    Ls(ls::LsArgs),
    /// Print a domain's output (`--follow` to go on printing it).
    Logs(logs::LogsArgs),
    /// Change an attribute of a running component without restarting it (validated on every
    /// node involved, then committed, durably).
    Set(set::SetArgs),
    /// Print the cluster's lifecycle events (`--follow` to go on printing them).
    Events(events::EventsArgs),
    /// Print the address of the agent's web console (with the token, for this machine's user).
    Console(console::ConsoleArgs),
    /// Chaos testing: run a seeded fault scenario against a local cluster and check the
    /// invariants.
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
    /// Show sd at work, with nothing to set up: a throwaway agent deploys a pool of
    /// processes, heals one killed behind its back, then takes it all down without a trace.
    Demo,
}

/// Exit status when the description is wrong, or the agent refused or failed the request.
pub const EXIT_FAILED: u8 = 1;
/// Exit status for a usage error.
pub const EXIT_USAGE: u8 = 2;
/// Exit status when the agent cannot be reached or refuses the token.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Runs a subcommand.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Resolve(args) => describe::resolve(&args),
        Command::Validate(args) => describe::validate(&args),
        Command::Agent(args) => agent::agent(&args),
        Command::Cluster(command) => cluster::cluster(&command),
        Command::Nodes(args) => nodes::nodes(&args),
        Command::Deploy(args) => deploy::deploy(&args),
        Command::Terminate(args) => terminate::terminate(&args),
        Command::Status(args) => status::status(&args),
        Command::Ls(args) => ls::ls(&args),
        Command::Logs(args) => logs::logs(&args),
        Command::Set(args) => set::set(&args),
        Command::Events(args) => events::events(&args),
        Command::Console(args) => console::console(&args),
        Command::Chaos(command) => chaos::chaos(&command),
        Command::Demo => demo::demo(),
    }
}
