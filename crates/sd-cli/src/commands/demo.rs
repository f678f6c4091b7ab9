//! `sd demo`: a three-node cluster on this machine (three `sd agent` processes on loopback,
//! joined with gossip and mutual-TLS QUIC under a throwaway CA), an HA pool deployed from one
//! of them and spread over all three, a node lost (its agent and every process it started
//! SIGKILLed) and its workers coming back on the other two, then the deployment terminated
//! from yet another node and every host checked clean. The agents are then stopped and the
//! temporary directory removed, also on Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sd_proto::{ComponentState, DeploymentStatus};
use sd_testkit::LocalCluster;
use tokio::runtime::Builder;

use super::EXIT_FAILED;
use super::deploy::{DeployArgs, deploy_from};
use super::describe::DescriptionArgs;
use super::nodes::{NodesArgs, nodes};
use super::set::{SetArgs, set};
use super::status::{StatusArgs, status};
use super::terminate::{TerminateArgs, terminate};
use crate::client::ConnectArgs;
use crate::output::{ListFormat, say};

/// The example deployed, embedded so that the demo runs from any directory.
const HA_POOL: &str = include_str!("../../../../configs/examples/ha-pool.sf");
/// Where the example comes from, as `sd status` shows it.
const HA_POOL_SOURCE: &str = "configs/examples/ha-pool.sf";
/// The deployment's name.
const NAME: &str = "web";
/// The nodes.
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// The node that is lost.
const LOST: &str = "node-c";
/// How long any one step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a step looks again.
const POLL: Duration = Duration::from_millis(20);

/// Prints one line of the story (with [`say`]: a closed stdout does not stop the demo).
macro_rules! tell {
    ($($arg:tt)*) => {
        say(&format!($($arg)*))
    };
}

/// The temporary directory and the cluster running in it; [`Demo::stop`] cleans both away.
struct Demo {
    dir: PathBuf,
    cluster: Mutex<Option<LocalCluster>>,
}

/// `sd demo`.
pub fn demo() -> ExitCode {
    let demo = match tempfile::Builder::new().prefix("sd-demo-").tempdir() {
        Ok(dir) => Arc::new(Demo {
            dir: dir.keep(),
            cluster: Mutex::default(),
        }),
        Err(error) => {
            eprintln!("error: cannot create a temporary directory: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let interrupted = Arc::clone(&demo);
    std::thread::spawn(move || {
        let runtime = Builder::new_current_thread().enable_all().build();
        if runtime.is_ok_and(|runtime| runtime.block_on(tokio::signal::ctrl_c()).is_ok()) {
            eprintln!("\ninterrupted: terminating the deployment and stopping the agents");
            let _ = interrupted.stop();
            std::process::exit(130);
        }
    });
    let outcome = demo.run().and_then(|()| {
        let dir = demo.dir.display();
        tell!("6. stopping the agents (SIGTERM) and removing {dir}");
        demo.stop()
    });
    if let Err(error) = outcome {
        eprintln!("error: {error}");
        match demo.stop() {
            Ok(()) => {
                eprintln!("the demo failed; its agents are stopped and its directory removed")
            }
            Err(error) => eprintln!("error: {error}"),
        }
        return ExitCode::from(EXIT_FAILED);
    }
    say(
        "done: a pool spread over three nodes, healed after a node was lost and taken down without a trace.",
    );
    ExitCode::SUCCESS
}

/// How the client commands reach a node.
fn connect(cluster: &LocalCluster, node: &str) -> Result<ConnectArgs, String> {
    let node = cluster.node(node).map_err(text)?;
    Ok(ConnectArgs {
        agent: Some(node.url()),
        token_file: Some(node.data_dir.join(sd_api::TOKEN_FILE)),
    })
}

fn workers(status: &DeploymentStatus) -> Vec<&sd_proto::ComponentStatus> {
    status
        .components
        .iter()
        .filter(|c| c.path.ends_with(":worker"))
        .collect()
}

impl Demo {
    fn with_cluster<T>(
        &self,
        work: impl FnOnce(&mut LocalCluster) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut cluster = self.cluster.lock().unwrap_or_else(PoisonError::into_inner);
        let cluster = cluster.as_mut().ok_or("the cluster is stopped")?;
        work(cluster)
    }

    fn show_status(&self, from: &str) -> Result<(), String> {
        let args = StatusArgs {
            name: Some(NAME.into()),
            format: ListFormat::Table,
            connect: self.with_cluster(|cluster| connect(cluster, from))?,
        };
        succeed(status(&args), "no status")
    }

    fn run(&self) -> Result<(), String> {
        let dir = self.dir.display();
        tell!(
            "1. starting a cluster of three agents on this machine ({}), in {dir}:",
            NODES.join(", ")
        );
        tell!(
            "   `sd cluster init` makes a throwaway CA and gossip key; each agent has a certificate naming it"
        );
        let binary = std::env::current_exe().map_err(text)?;
        let cluster = LocalCluster::start_with(
            &binary,
            &self.dir,
            &NODES,
            // The demo boots no VM: no accelerator probe.
            &["--vm-accelerator", "tcg"],
        )
        .map_err(|error| format!("the cluster did not start: {error}"))?;
        *self.cluster.lock().unwrap_or_else(PoisonError::into_inner) = Some(cluster);
        tell!("   `sd nodes` on {}:", NODES[0]);
        let args = NodesArgs {
            format: ListFormat::Table,
            connect: self.with_cluster(|cluster| connect(cluster, NODES[0]))?,
        };
        succeed(nodes(&args), "no nodes")?;

        let root = NODES[1];
        tell!(
            "\n2. deploying {HA_POOL_SOURCE} as `{NAME}` from {root} (it becomes the root): a Pool of 6 processes spread by a Scheduler"
        );
        let file = self.dir.join("ha-pool.sf");
        std::fs::write(&file, HA_POOL).map_err(text)?;
        let args = DeployArgs {
            name: NAME.into(),
            description: DescriptionArgs {
                file,
                include_dirs: Vec::new(),
                definitions: Vec::new(),
            },
            wait: true,
            timeout: STEP_TIMEOUT.as_secs(),
            connect: self.with_cluster(|cluster| connect(cluster, root))?,
        };
        succeed(deploy_from(&args, HA_POOL_SOURCE), "no deployment")?;
        tell!("   `sd status {NAME}` on {}:", NODES[0]);
        self.show_status(NODES[0])?;
        let console = self.with_cluster(|cluster| {
            let node = cluster.node(NODES[0]).map_err(text)?;
            let token =
                std::fs::read_to_string(node.data_dir.join(sd_api::TOKEN_FILE)).map_err(text)?;
            Ok(format!("{}/#token={}", node.url(), token.trim()))
        })?;
        tell!("   the web console shows it live at {console} (while the demo runs)");
        let from = NODES[2];
        tell!(
            "   `sd set {NAME} pool sdMaxRestarts 30` on {from}: a live change, nothing restarts"
        );
        let args = SetArgs {
            name: NAME.into(),
            path: "pool".into(),
            attribute: "sdMaxRestarts".into(),
            value: "30".into(),
            connect: self.with_cluster(|cluster| connect(cluster, from))?,
        };
        succeed(set(&args), "no change")?;

        let before = self.with_cluster(|cluster| cluster.status(NODES[0], NAME).map_err(text))?;
        let lost_workers: Vec<String> = workers(&before)
            .iter()
            .filter(|c| c.node == LOST)
            .map(|c| c.path.clone())
            .collect();
        tell!(
            "\n3. losing {LOST}: its agent and its {} workers are SIGKILLed, as if the machine died",
            lost_workers.len()
        );
        self.with_cluster(|cluster| cluster.kill_machine(LOST).map_err(text))?;
        let lost_at = sd_store::unix_ms_now();
        let healed = poll("the workers to run on the other nodes", || {
            let status =
                self.with_cluster(|cluster| cluster.status(NODES[0], NAME).map_err(text))?;
            let running = workers(&status);
            let back = running.len() == workers(&before).len()
                && running
                    .iter()
                    .all(|c| c.state == ComponentState::Running && c.node != LOST);
            Ok(back.then_some(status))
        })?;
        // From the loss to the last moved worker running again, by the agents. own clocks.
        let elapsed = workers(&healed)
            .iter()
            .filter(|c| lost_workers.contains(&c.path))
            .filter_map(|c| c.started_unix_ms)
            .max()
            .unwrap_or(lost_at)
            .saturating_sub(lost_at);
        for path in &lost_workers {
            if let Some(worker) = workers(&healed).iter().find(|c| c.path == *path) {
                tell!(
                    "   {path} runs again on {} as process {}",
                    worker.node,
                    worker.pid.unwrap_or(0)
                );
            }
        }
        tell!("   every worker runs again, {elapsed} ms after the loss (detection included):");
        self.show_status(NODES[0])?;

        let from = NODES[0];
        tell!("\n4. terminating `{NAME}` from {from}");
        let args = TerminateArgs {
            name: NAME.into(),
            wait: true,
            connect: self.with_cluster(|cluster| connect(cluster, from))?,
        };
        succeed(terminate(&args), "no terminate")?;

        tell!("\n5. {LOST} comes back (its agent restarts on its data dir) and joins again");
        self.with_cluster(|cluster| {
            cluster.launch(LOST).map_err(text)?;
            cluster
                .wait_converged(NODES.len(), STEP_TIMEOUT)
                .map_err(text)
        })?;
        tell!("   checking every node: no process, no directory, no deployment left");
        self.with_cluster(|cluster| {
            poll("clean hosts", || {
                let processes = cluster.all_workloads();
                Ok(processes.is_empty().then_some(()))
            })?;
            for node in cluster.nodes() {
                let dir = node.data_dir.join("deployments").join(NAME);
                poll(&format!("{} to go", dir.display()), || {
                    Ok((!dir.exists()).then_some(()))
                })?;
                if node.agent_pid().is_some() {
                    let listed = cluster.deployments(&node.name).map_err(text)?;
                    if !listed.is_empty() {
                        return Err(format!("{} still lists {listed:?}", node.name));
                    }
                }
            }
            Ok(())
        })?;
        tell!("   processes: none; directories: none; sd ls on every node: no deployment listed\n");
        Ok(())
    }

    /// Terminates the deployment if it is still there, stops the agents and removes the
    /// directory. Holds the cluster's lock throughout, so that Ctrl-C waits for a stop
    /// under way.
    fn stop(&self) -> Result<(), String> {
        let mut cluster = self.cluster.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut cluster) = cluster.take() {
            let alive: Vec<String> = cluster
                .nodes()
                .iter()
                .filter(|node| node.agent_pid().is_some())
                .map(|node| node.name.clone())
                .collect();
            if let Some(first) = alive.first()
                && cluster
                    .deployments(first)
                    .is_ok_and(|list| !list.is_empty())
            {
                let _ = cluster.terminate(first, NAME);
            }
            for name in &alive {
                let _ = cluster.stop_agent(name);
            }
            // Whatever is left (a node lost mid-demo) goes with the cluster.
            drop(cluster);
        }
        remove_dir(&self.dir)
    }
}

fn remove_dir(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("cannot remove {}: {error}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Calls `check` until it gives a value, for at most [`STEP_TIMEOUT`].
fn poll<T>(what: &str, mut check: impl FnMut() -> Result<Option<T>, String>) -> Result<T, String> {
    let started = Instant::now();
    while started.elapsed() < STEP_TIMEOUT {
        if let Some(value) = check()? {
            return Ok(value);
        }
        std::thread::sleep(POLL);
    }
    Err(format!("gave up waiting for {what} after {STEP_TIMEOUT:?}"))
}

/// An error's message.
fn text(error: impl ToString) -> String {
    error.to_string()
}

/// A command's exit code as a result (the command printed its error already).
fn succeed(code: ExitCode, error: &str) -> Result<(), String> {
    (code == ExitCode::SUCCESS)
        .then_some(())
        .ok_or_else(|| error.to_string())
}
