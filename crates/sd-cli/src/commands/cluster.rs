//! `sd cluster init` and `sd cluster issue`: the cluster's certificate authority, gossip key
//! and node certificates, in one directory that every node's agent reads (`--cluster-dir`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::EXIT_FAILED;

/// `sd cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster: its CA, its gossip key and a first node's certificate, in DIR.
    Init(InitArgs),
    /// Issue a certificate for another node of the cluster in DIR.
    Issue(IssueArgs),
}

/// Arguments of `sd cluster init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where the cluster's files go (created; an existing CA is never overwritten).
    pub dir: PathBuf,
    /// The cluster's name: gossip is bound to it.
    #[arg(long, default_value = "sd")]
    pub name: String,
    /// The first node's name.
    #[arg(long)]
    pub node: String,
}

/// Arguments of `sd cluster issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The node's name (as `sd agent --name` gives it).
    pub node: String,
    /// The cluster's directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// Runs `sd cluster ...`.
pub fn cluster(command: &ClusterCommand) -> ExitCode {
    let outcome = match command {
        ClusterCommand::Init(args) => sd_net::pki::init(&args.dir, &args.name, &args.node)
            .map(|_| {
                format!(
                    "cluster \"{}\" created in {} with node {}; issue more with `sd cluster issue NAME --dir {}`",
                    args.name,
                    args.dir.display(),
                    args.node,
                    args.dir.display()
                )
            }),
        ClusterCommand::Issue(args) => sd_net::pki::issue(&args.dir, &args.node).map(|_| {
            format!(
                "node {} issued in {}",
                args.node,
                args.dir.display()
            )
        }),
    };
    match outcome {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
