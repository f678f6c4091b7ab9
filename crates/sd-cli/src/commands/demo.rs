//! `sd demo`: starts a throwaway agent in a temporary data dir, deploys the pool example on
//! it, kills a worker behind its back to show the restart, terminates the deployment, shows
//! that nothing is left, then stops the agent and removes the data dir.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use sd_proto::{ComponentState, ComponentStatus, DeploymentStatus, DeploymentSummary};
use tokio::runtime::Builder;

use super::EXIT_FAILED;
use super::deploy::{DeployArgs, deploy_from};
use super::describe::DescriptionArgs;
use super::status::{StatusArgs, status};
use super::terminate::{TerminateArgs, terminate};
use crate::client::{Client, ConnectArgs};
use crate::output::{ListFormat, say};

/// The example deployed, embedded so that the demo runs from any directory.
const POOL: &str = include_str!("../../../../configs/examples/pool.sf");
/// Where the example comes from, as `sd status` shows it.
const POOL_SOURCE: &str = "configs/examples/pool.sf";
/// The deployment's name.
const NAME: &str = "web";
/// The worker that is killed.
const WORKER: &str = "sfConfig:pool:r2:worker";
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

/// The temporary data dir and the agent running on it; [`Demo::stop`] cleans both away.
struct Demo {
    dir: PathBuf,
    agent: Mutex<Option<Child>>,
}

/// `sd demo`.
pub fn demo() -> ExitCode {
    let demo = match tempfile::Builder::new().prefix("sd-demo-").tempdir() {
        Ok(dir) => Arc::new(Demo {
            dir: dir.keep(),
            agent: Mutex::default(),
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
            eprintln!("\ninterrupted: terminating the deployment and stopping the agent");
            let _ = interrupted.stop();
            std::process::exit(130);
        }
    });
    let outcome = demo.run().and_then(|()| {
        let dir = demo.dir.display();
        tell!("7. stopping the agent (SIGTERM) and removing {dir}");
        demo.stop()
    });
    if let Err(error) = outcome {
        eprintln!("error: {error}");
        match demo.stop() {
            Ok(()) => eprintln!("the demo failed; its agent is stopped and its data dir removed"),
            Err(error) => eprintln!("error: {error}"),
        }
        return ExitCode::from(EXIT_FAILED);
    }
    say("done: a pool deployed, healed after a kill -9 and taken down without a trace.");
    ExitCode::SUCCESS
}

impl Demo {
    /// How the client commands reach the agent, once it has written its URL.
    fn connect(&self) -> Result<ConnectArgs, String> {
        let url = std::fs::read_to_string(self.dir.join(sd_api::URL_FILE))
            .map_err(|error| format!("cannot read the agent's api.url: {error}"))?;
        Ok(ConnectArgs {
            agent: Some(url.trim().to_string()),
            token_file: Some(self.dir.join(sd_api::TOKEN_FILE)),
        })
    }

    /// `sd status web`.
    fn show_status(&self) -> Result<(), String> {
        let args = StatusArgs {
            name: Some(NAME.into()),
            format: ListFormat::Table,
            connect: self.connect()?,
        };
        succeed(status(&args), "no status")
    }

    fn run(&self) -> Result<(), String> {
        let (log, dir) = (self.dir.join("agent.log"), self.dir.display());
        tell!("1. starting an agent (data dir {dir}, its output in {dir}/agent.log)");
        let output = File::create(&log).map_err(text)?;
        let child = Command::new(std::env::current_exe().map_err(text)?)
            .args(["agent", "--name", "demo", "--data-dir"])
            .arg(&self.dir)
            .args(["--api-listen", "127.0.0.1:0"])
            // The demo boots no VM: no accelerator probe.
            .args(["--vm-accelerator", "tcg"])
            .stdin(Stdio::null())
            .stdout(output.try_clone().map_err(text)?)
            .stderr(output)
            // Its own process group: Ctrl-C reaches the demo only, which stops it in order.
            .process_group(0)
            .spawn()
            .map_err(|error| format!("cannot start the agent: {error}"))?;
        *self.agent.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
        let connect = poll("the agent's api.url", || {
            let mut agent = self.agent.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(Ok(Some(exit))) = agent.as_mut().map(Child::try_wait) {
                let output = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("the agent exited ({exit}):\n{output}"));
            }
            Ok(self.connect().ok())
        })?;
        let url = connect.agent.clone().unwrap_or_default();
        tell!("   it serves its API on {url}");

        tell!(
            "\n2. deploying {POOL_SOURCE} as `{NAME}`: a Pool of 3 processes, each in a directory prepared through the host's shell, restarted one_for_one"
        );
        let file = self.dir.join("pool.sf");
        std::fs::write(&file, POOL).map_err(text)?;
        let args = DeployArgs {
            name: NAME.into(),
            description: DescriptionArgs {
                file,
                include_dirs: Vec::new(),
                definitions: Vec::new(),
            },
            wait: true,
            timeout: STEP_TIMEOUT.as_secs(),
            connect,
        };
        succeed(deploy_from(&args, POOL_SOURCE), "no deployment")?;
        say("\n3. its status: every component, each worker with its process");
        self.show_status()?;

        tell!("\n4. the last 3 lines of {WORKER}'s log:");
        let client = Client::connect(&self.connect()?).map_err(text)?;
        let lines = poll("3 lines in the worker's log", || {
            let (mut log, query) = (Vec::new(), [("path", WORKER), ("follow", "false")]);
            let path = format!("/deployments/{NAME}/logs");
            client.copy_to(&path, &query, &mut log).map_err(text)?;
            let text = String::from_utf8_lossy(&log).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            Ok((lines.len() >= 3).then(|| lines[lines.len() - 3..].join("\n   ")))
        })?;
        tell!("   {lines}");

        let components = || {
            let status = client.get::<DeploymentStatus>(&format!("/deployments/{NAME}"));
            status.map(|status| status.components).map_err(text)
        };
        let worker = |all: Vec<ComponentStatus>| all.into_iter().find(|c| c.path == WORKER);
        let before = components()?;
        let mut pids: Vec<u32> = before.iter().filter_map(|c| c.pid).collect();
        let old = worker(before)
            .and_then(|c| c.pid)
            .ok_or(format!("{WORKER} has no process"))?;
        tell!(
            "\n5. killing its process {old} with SIGKILL, behind the agent's back: its pool restarts it"
        );
        let pid = Pid::from_raw(old as i32).ok_or("bad pid")?;
        kill_process(pid, Signal::KILL).map_err(|error| format!("cannot kill {old}: {error}"))?;
        let killed = Instant::now();
        let again = poll("the worker to run again", || {
            Ok(worker(components()?).filter(|c| {
                let new_pid = c.pid.is_some_and(|pid| pid != old);
                c.state == ComponentState::Running && new_pid && c.restarts >= 1
            }))
        })?;
        let (new, ms) = (again.pid.unwrap_or(0), killed.elapsed().as_millis());
        let restarts = again.restarts;
        tell!("   it runs again as process {new} (restarts {restarts}), {ms} ms after the kill:");
        pids.push(new);
        self.show_status()?;

        tell!("\n6. terminating `{NAME}`, then checking that nothing is left");
        let args = TerminateArgs {
            name: NAME.into(),
            wait: true,
            connect: self.connect()?,
        };
        succeed(terminate(&args), "no terminate")?;
        pids.sort_unstable();
        if let Some(pid) = pids.iter().find(|pid| alive(**pid)) {
            return Err(format!("process {pid} still runs"));
        }
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        tell!("   processes {}: all gone", pids.join(", "));
        let web_dir = self.dir.join("deployments").join(NAME);
        let listed: Vec<DeploymentSummary> = client.get("/deployments").map_err(text)?;
        let shown = web_dir.display();
        if web_dir.exists() || !listed.is_empty() {
            return Err(format!("{shown} or a deployment is left"));
        }
        tell!("   {shown}: gone\n   sd ls: no deployment listed\n");
        Ok(())
    }

    /// Terminates the deployment if it is still there, stops the agent and removes the data
    /// dir. Holds the agent's lock throughout, so that Ctrl-C waits for a stop under way.
    fn stop(&self) -> Result<(), String> {
        let mut agent = self.agent.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut child) = agent.take() {
            if let Ok(Ok(client)) = self.connect().map(|connect| Client::connect(&connect)) {
                let (path, started) = (format!("/deployments/{NAME}"), Instant::now());
                // 409: it is being deployed or terminated right now; ask again.
                while let Err(error) =
                    client.delete::<DeploymentSummary>(&path, &[("wait", "true")])
                    && !error.is_not_found()
                    && started.elapsed() < STEP_TIMEOUT
                {
                    std::thread::sleep(POLL);
                }
            }
            // SIGTERM, unless it has exited already; SIGKILL if it does not exit in time.
            let stopped = match child.try_wait() {
                Ok(Some(_)) => Ok(()),
                _ => kill_process(Pid::from_child(&child), Signal::TERM).map_err(text),
            };
            let exited = stopped.and_then(|()| poll("its exit", || child.try_wait().map_err(text)));
            if let Err(error) = exited {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the agent ignored SIGTERM ({error}); it was killed"
                ));
            }
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("cannot remove {}: {error}", self.dir.display()))
            }
            _ => Ok(()),
        }
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

/// Whether a process runs: `/proc/PID` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    // `PID (COMM) STATE ...`: the state follows the last `)`.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}
