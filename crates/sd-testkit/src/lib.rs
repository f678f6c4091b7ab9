//! `sd-testkit`: a cluster of real `sd agent` processes on loopback, started the way users
//! start them (`sd cluster init`, `sd cluster issue`, `sd agent --cluster-dir --join`), and
//! the faults a test or a chaos run inflicts on it: an agent killed (its workloads left
//! running, as after a crash of the agent alone), a whole machine lost (the agent and every
//! process it started), a pause, a restart, and partitions made of nftables rules between
//! the agents' UDP ports (gossip and QUIC are both UDP).
//!
//! It owns nothing of sd's behaviour: it only starts the binary and reads the agents' API.
//! Everything it starts is stopped when the [`LocalCluster`] is dropped, and its nftables
//! table is removed.

mod api;
mod browser;
mod disk;
mod partition;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use api::Probe;
pub use browser::Browser;
use disk::SmallDisk;
pub use partition::Partition;
use sd_proto::{DeploymentStatus, DeploymentSummary, MemberInfo};

/// What went wrong driving a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command could not be run or failed.
    #[error("{command}: {reason}")]
    Command {
        /// The command.
        command: String,
        /// What happened.
        reason: String,
    },
    /// An agent's API answered with an error or not at all.
    #[error("node {node}: {reason}")]
    Api {
        /// The node.
        node: String,
        /// What happened.
        reason: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        seconds: u64,
    },
    /// No node of that name in the cluster.
    #[error("no node named {0} in this cluster")]
    UnknownNode(String),
    /// The browser of a browser test (WebDriver) failed or answered with an error.
    #[error("browser: {reason}")]
    Browser {
        /// What happened.
        reason: String,
    },
    /// A file of the cluster could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// One node of a local cluster.
#[derive(Debug)]
pub struct LocalNode {
    /// Its name.
    pub name: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its API port.
    pub api_port: u16,
    /// Its gossip (UDP) port.
    pub gossip_port: u16,
    /// Its peer (QUIC, UDP) port.
    pub peer_port: u16,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    child: Option<Child>,
}

impl LocalNode {
    /// The API's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// A handle that reads this node's API from any thread, with a deadline of its own.
    pub fn probe(&self) -> Probe {
        Probe {
            name: self.name.clone(),
            url: self.url(),
            data_dir: self.data_dir.clone(),
        }
    }

    /// The process id of its agent, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The domain processes it started that still run (its workloads, by the data dir
    /// they carry in their environment).
    pub fn workloads(&self) -> Vec<Workload> {
        workloads_of(&self.name, &self.data_dir)
    }
}

/// A cluster of `sd agent` processes on loopback.
pub struct LocalCluster {
    binary: PathBuf,
    dir: PathBuf,
    nodes: Vec<LocalNode>,
    /// Extra arguments every agent gets (`--vm-accelerator tcg` ...).
    agent_args: Vec<String>,
    partition: Option<Partition>,
    /// Data dirs on tmpfs mounts of their own, unmounted when the cluster is dropped.
    small_disks: Vec<SmallDisk>,
}

/// How a [`LocalCluster`] is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra arguments every agent gets (`--chaos`, `--vm-accelerator tcg` ...).
    pub agent_args: Vec<String>,
    /// Nodes whose data dir is a tmpfs of that many MiB, to be filled up
    /// ([`LocalCluster::fill_disk`]).
    pub small_disks: Vec<(String, u64)>,
}

/// How long an agent may take to come up.
const START_WITHIN: Duration = Duration::from_secs(30);

impl LocalCluster {
    /// Creates a cluster named `cluster` in `dir` (its PKI and every node's data dir) and starts
    /// an agent for each name; all join through the first. Returns once every node sees every
    /// other alive.
    pub fn start(binary: &Path, dir: &Path, names: &[&str]) -> Result<LocalCluster> {
        Self::start_with(binary, dir, names, &[])
    }

    /// [`LocalCluster::start`] with extra arguments for every agent.
    pub fn start_with(
        binary: &Path,
        dir: &Path,
        names: &[&str],
        agent_args: &[&str],
    ) -> Result<LocalCluster> {
        let options = Options {
            agent_args: agent_args.iter().map(ToString::to_string).collect(),
            ..Options::default()
        };
        Self::start_opts(binary, dir, names, &options)
    }

    /// [`LocalCluster::start`] with [`Options`].
    pub fn start_opts(
        binary: &Path,
        dir: &Path,
        names: &[&str],
        options: &Options,
    ) -> Result<LocalCluster> {
        let pki = dir.join("pki");
        let first = names
            .first()
            .ok_or_else(|| Error::UnknownNode("(none)".into()))?;
        run(Command::new(binary)
            .args(["cluster", "init"])
            .arg(&pki)
            .args(["--name", "local", "--node", first]))?;
        for name in &names[1..] {
            run(Command::new(binary)
                .args(["cluster", "issue", name, "--dir"])
                .arg(&pki))?;
        }
        let mut nodes = Vec::new();
        let all_ports = free_ports(3 * names.len())?;
        for (i, name) in names.iter().enumerate() {
            let ports = &all_ports[3 * i..3 * i + 3];
            nodes.push(LocalNode {
                name: name.to_string(),
                data_dir: dir.join(name),
                api_port: ports[0],
                gossip_port: ports[1],
                peer_port: ports[2],
                labels: BTreeMap::from([("index".to_string(), i.to_string())]),
                child: None,
            });
        }
        let mut cluster = LocalCluster {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes,
            agent_args: options.agent_args.clone(),
            partition: None,
            small_disks: Vec::new(),
        };
        for (name, mib) in &options.small_disks {
            let data_dir = cluster.node(name)?.data_dir.clone();
            cluster.small_disks.push(SmallDisk::mount(&data_dir, *mib)?);
        }
        for name in names {
            cluster.launch(name)?;
        }
        cluster.wait_converged(names.len(), START_WITHIN)?;
        Ok(cluster)
    }

    /// The cluster's directory (PKI and data dirs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The nodes.
    pub fn nodes(&self) -> &[LocalNode] {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, name: &str) -> Result<&LocalNode> {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .ok_or_else(|| Error::UnknownNode(name.to_string()))
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut LocalNode> {
        self.nodes
            .iter_mut()
            .find(|node| node.name == name)
            .ok_or_else(|| Error::UnknownNode(name.to_string()))
    }

    /// Starts (or starts again) a node's agent and waits until its API answers.
    pub fn launch(&mut self, name: &str) -> Result<()> {
        let seed = self.nodes[0].gossip_port;
        let binary = self.binary.clone();
        let agent_args = self.agent_args.clone();
        let pki = self.dir.join("pki");
        let node = self.node_mut(name)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.with_extension("log"))
            .map_err(|source| Error::Io {
                path: node.data_dir.with_extension("log"),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| Error::Io {
            path: node.data_dir.with_extension("log"),
            source,
        })?;
        let mut command = Command::new(&binary);
        command
            .args(["agent", "--name", &node.name])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--cluster-dir")
            .arg(&pki)
            .args(["--api-listen", &format!("127.0.0.1:{}", node.api_port)])
            .args([
                "--gossip-listen",
                &format!("127.0.0.1:{}", node.gossip_port),
            ])
            .args(["--peer-listen", &format!("127.0.0.1:{}", node.peer_port)])
            .args(["--join", &format!("127.0.0.1:{seed}")])
            .args(&agent_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for (key, value) in &node.labels {
            command.args(["--label", &format!("{key}={value}")]);
        }
        let child = command.spawn().map_err(|error| Error::Command {
            command: format!("{} agent", binary.display()),
            reason: error.to_string(),
        })?;
        node.child = Some(child);
        let name = node.name.clone();
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if self.api_get::<sd_proto::NodeInfo>(&name, "/node").is_ok() {
                return Ok(());
            }
            let exited = self
                .node_mut(&name)?
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                let log = std::fs::read_to_string(self.node(&name)?.data_dir.with_extension("log"))
                    .unwrap_or_default();
                return Err(Error::Command {
                    command: format!("sd agent --name {name}"),
                    reason: format!("exited with {status}: {log}"),
                });
            }
            if Instant::now() > deadline {
                let log = self
                    .node(&name)
                    .ok()
                    .and_then(|node| {
                        std::fs::read_to_string(node.data_dir.with_extension("log")).ok()
                    })
                    .unwrap_or_default();
                return Err(Error::Timeout {
                    what: format!("agent {name} to serve its API (its output: {log})"),
                    seconds: START_WITHIN.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running agent sees `count` members alive.
    pub fn wait_converged(&self, count: usize, within: Duration) -> Result<()> {
        let running: Vec<String> = self
            .nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.name.clone())
            .collect();
        self.wait_until(&format!("{count} alive members"), within, || {
            running.iter().all(|name| {
                self.members(name).is_ok_and(|members| {
                    members.iter().filter(|m| m.state == "alive").count() == count
                })
            })
        })
    }

    /// Polls `check` every 50 ms until it holds or `within` has passed.
    pub fn wait_until(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        while !check() {
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    seconds: within.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGKILLs a node's agent; its workloads keep running (an agent crash).
    pub fn kill_agent(&mut self, name: &str) -> Result<()> {
        let node = self.node_mut(name)?;
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Stops a node's agent the way an operator does (SIGTERM) and waits for it to exit
    /// (SIGKILL after 20 s). Its workloads keep running, for the next agent to adopt.
    pub fn stop_agent(&mut self, name: &str) -> Result<()> {
        let node = self.node_mut(name)?;
        let Some(mut child) = node.child.take() else {
            return Ok(());
        };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(Error::Timeout {
            what: format!("agent {name} to stop on SIGTERM"),
            seconds: 20,
        })
    }

    /// Loses a whole machine: SIGKILLs its agent and every workload it started.
    pub fn kill_machine(&mut self, name: &str) -> Result<()> {
        self.kill_agent(name)?;
        let node = self.node(name)?;
        for workload in node.workloads() {
            signal(workload.pid, "KILL");
        }
        Ok(())
    }

    /// Pauses a node's agent (SIGSTOP) or lets it go on (SIGCONT).
    pub fn pause(&self, name: &str, paused: bool) -> Result<()> {
        let node = self.node(name)?;
        if let Some(pid) = node.agent_pid() {
            signal(pid, if paused { "STOP" } else { "CONT" });
        }
        Ok(())
    }

    /// Cuts the cluster in two: nothing passes between a node of `one` and a node of `other`
    /// (both ways), until [`LocalCluster::heal`].
    pub fn partition(&mut self, one: &[&str], other: &[&str]) -> Result<()> {
        let (one, other) = (self.ports(one)?, self.ports(other)?);
        self.heal();
        self.partition = Some(Partition::cut(&one, &other)?);
        Ok(())
    }

    /// Cuts one direction only: nothing `from` sends reaches `to`; what `to` sends still
    /// arrives. Replaces any partition in force, until [`LocalCluster::heal`].
    pub fn partition_one_way(&mut self, from: &[&str], to: &[&str]) -> Result<()> {
        let (from, to) = (self.ports(from)?, self.ports(to)?);
        self.heal();
        self.partition = Some(Partition::cut_one_way(&from, &to)?);
        Ok(())
    }

    fn ports(&self, names: &[&str]) -> Result<Vec<u16>> {
        let mut ports = Vec::new();
        for name in names {
            let node = self.node(name)?;
            ports.extend([node.gossip_port, node.peer_port]);
        }
        Ok(ports)
    }

    /// Removes the partition, if any.
    pub fn heal(&mut self) {
        self.partition = None;
    }

    /// Sets the faults node `name` injects into its gossip and QUIC traffic from now on (its
    /// agent must run with `--chaos`); [`sd_proto::FaultSettings::default`] removes them.
    pub fn set_faults(&self, name: &str, faults: &sd_proto::FaultSettings) -> Result<()> {
        api::put(self.node(name)?, "/chaos/faults", faults)
    }

    /// Fills node `name`'s data dir, which must be a small disk ([`Options::small_disks`]),
    /// until no byte is left. Returns how many bytes it wrote.
    pub fn fill_disk(&self, name: &str) -> Result<u64> {
        let data_dir = &self.node(name)?.data_dir;
        let disk = self
            .small_disks
            .iter()
            .find(|disk| disk.path() == data_dir)
            .ok_or_else(|| Error::Command {
                command: format!("fill the disk of {name}"),
                reason: "its data dir is not a small disk of this cluster".into(),
            })?;
        disk.fill()
    }

    /// Frees what [`LocalCluster::fill_disk`] took.
    pub fn free_disk(&self, name: &str) -> Result<()> {
        let data_dir = &self.node(name)?.data_dir;
        match self.small_disks.iter().find(|disk| disk.path() == data_dir) {
            Some(disk) => disk.free(),
            None => Ok(()),
        }
    }

    /// GET on a node's API (`path` below `/v1`).
    pub fn api_get<T: serde::de::DeserializeOwned>(&self, name: &str, path: &str) -> Result<T> {
        api::get(self.node(name)?, path)
    }

    /// The members `name` sees.
    pub fn members(&self, name: &str) -> Result<Vec<MemberInfo>> {
        self.api_get(name, "/nodes")
    }

    /// A deployment's status as `name` sees it.
    pub fn status(&self, name: &str, deployment: &str) -> Result<DeploymentStatus> {
        self.api_get(name, &format!("/deployments/{deployment}"))
    }

    /// Waits until `name` sees the deployment pass `check` (polled every 50 ms); the error
    /// carries the last status seen.
    pub fn wait_status(
        &self,
        name: &str,
        deployment: &str,
        within: Duration,
        check: impl Fn(&DeploymentStatus) -> bool,
    ) -> Result<DeploymentStatus> {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status(name, deployment);
            if let Ok(status) = &status
                && check(status)
            {
                return Ok(status.clone());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("{deployment} as {name} sees it; last: {status:#?}"),
                    seconds: within.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The deployments as `name` sees them.
    pub fn deployments(&self, name: &str) -> Result<Vec<DeploymentSummary>> {
        self.api_get(name, "/deployments")
    }

    /// The gossip and transport counters of `name`.
    pub fn stats(&self, name: &str) -> Result<Option<sd_proto::ClusterStats>> {
        self.api_get(name, "/cluster")
    }

    /// Deploys `description` (text) as `deployment` from `name`.
    pub fn deploy(&self, name: &str, deployment: &str, description: &str) -> Result<()> {
        self.deploy_from_source(name, deployment, description, &format!("{deployment}.sf"))
    }

    /// [`LocalCluster::deploy`], naming the description's source (what `sd status` shows).
    pub fn deploy_from_source(
        &self,
        name: &str,
        deployment: &str,
        description: &str,
        source: &str,
    ) -> Result<()> {
        let request = sd_proto::DeployRequest {
            name: deployment.to_string(),
            description: description.to_string(),
            source: source.to_string(),
        };
        api::post(self.node(name)?, "/deployments", &request)
    }

    /// The agents that exited although nobody stopped them, with how they ended (each
    /// reported once: the node counts as down from then on).
    pub fn exited_agents(&mut self) -> Vec<(String, String)> {
        let mut exited = Vec::new();
        for node in &mut self.nodes {
            let status = node
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = status {
                node.child = None;
                exited.push((node.name.clone(), status.to_string()));
            }
        }
        exited
    }

    /// Terminates `deployment` from `name` and waits until it is gone.
    pub fn terminate(&self, name: &str, deployment: &str) -> Result<()> {
        api::delete(
            self.node(name)?,
            &format!("/deployments/{deployment}?wait=true"),
        )
    }

    /// Runs the `sd` command line against node `name` (`SD_DATA_DIR` set to its data dir).
    pub fn sd(&self, name: &str, args: &[&str]) -> Result<Output> {
        let node = self.node(name)?;
        Command::new(&self.binary)
            .args(args)
            .env("SD_DATA_DIR", &node.data_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|error| Error::Command {
                command: format!("sd {}", args.join(" ")),
                reason: error.to_string(),
            })
    }

    /// Every workload process of every node.
    pub fn all_workloads(&self) -> Vec<Workload> {
        self.nodes.iter().flat_map(LocalNode::workloads).collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.heal();
        let names: Vec<String> = self.nodes.iter().map(|node| node.name.clone()).collect();
        for name in names {
            let _ = self.kill_machine(&name);
        }
        // The small disks unmount when dropped, after every process on them is gone.
        self.small_disks.clear();
    }
}

/// Runs a command to its end; a failure carries its stderr.
fn run(command: &mut Command) -> Result<Output> {
    let output = command.output().map_err(|error| Error::Command {
        command: format!("{command:?}"),
        reason: error.to_string(),
    })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("{command:?}"),
            reason: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// Ports free on loopback now, for TCP and UDP alike, below the kernel's ephemeral range
/// (32768 and up here): an agent restarted on its old port must not find it taken by some
/// outgoing connection meanwhile.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    // Spread start points by process so that parallel test binaries rarely collide.
    let mut candidate = 20_000 + (std::process::id() % 400) as u16 * 30 + fastish_jitter();
    while ports.len() < count {
        candidate = if candidate >= 32_000 {
            20_000
        } else {
            candidate + 1
        };
        let Ok(udp) = std::net::UdpSocket::bind(("127.0.0.1", candidate)) else {
            continue;
        };
        let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", candidate)) else {
            continue;
        };
        held.push((udp, tcp));
        ports.push(candidate);
    }
    Ok(ports)
}

/// A few bits that differ between clusters started by one process.
fn fastish_jitter() -> u16 {
    static STARTED: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8 * 400
}

/// Sends `signal` (`KILL`, `STOP`, ...) to a process; one that is gone already is fine.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The resident set of a process, in KiB (`None` once it is gone).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A domain process (or VM) an agent started, found by the marks in its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The node whose agent started it.
    pub node: String,
    /// Its process id.
    pub pid: u32,
    /// Its deployment (`SD_DEPLOYMENT`).
    pub deployment: String,
    /// Its component's path (`SD_COMPONENT`).
    pub component: String,
    /// Whether its parent is a workload of the same component (a process the domain's own
    /// process started): one instance of a domain may be several processes.
    pub child_of_workload: bool,
}

/// The processes that carry `SD_DATA_DIR=<data_dir>` in their environment: what the agent of
/// node `node` on that data dir started.
pub fn workloads_of(node: &str, data_dir: &Path) -> Vec<Workload> {
    let marker = format!("SD_DATA_DIR={}", data_dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let found: Vec<(Workload, u32)> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the command's name: the state, then the parent's pid.
            let (_, rest) = stat.rsplit_once(") ")?;
            let mut fields = rest.split_whitespace();
            // A zombie has ended already.
            if fields.next()? == "Z" {
                return None;
            }
            let ppid: u32 = fields.next()?.parse().ok()?;
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let mut marked = false;
            let mut workload = Workload {
                node: node.to_string(),
                pid,
                deployment: String::new(),
                component: String::new(),
                child_of_workload: false,
            };
            for entry in environ.split(|&byte| byte == 0) {
                if entry == marker.as_bytes() {
                    marked = true;
                }
                if let Some(value) = entry.strip_prefix(b"SD_COMPONENT=") {
                    workload.component = String::from_utf8_lossy(value).into_owned();
                }
                if let Some(value) = entry.strip_prefix(b"SD_DEPLOYMENT=") {
                    workload.deployment = String::from_utf8_lossy(value).into_owned();
                }
            }
            marked.then_some((workload, ppid))
        })
        .collect();
    let roots: std::collections::HashMap<u32, (String, String)> = found
        .iter()
        .map(|(w, _)| (w.pid, (w.deployment.clone(), w.component.clone())))
        .collect();
    found
        .into_iter()
        .map(|(mut workload, ppid)| {
            workload.child_of_workload = roots.get(&ppid).is_some_and(|(deployment, component)| {
                *deployment == workload.deployment && *component == workload.component
            });
            workload
        })
        .collect()
}
