//! `sd agent`: runs this node: its runtime and its API, until SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sd_runtime::{Accelerator, Node, NodeConfig, TestBreaks};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{Instrument, info, warn};

use super::{EXIT_FAILED, EXIT_USAGE};
use crate::logging::{self, LogFormat};
use crate::output::say;

/// Where the API listens when neither a flag nor the config file says.
const DEFAULT_API_LISTEN: &str = "127.0.0.1:4680";
/// Where the node gossips by default.
const DEFAULT_GOSSIP_LISTEN: &str = "127.0.0.1:4681";
/// Where peers reach the node by default.
const DEFAULT_PEER_LISTEN: &str = "127.0.0.1:4682";

/// How long the runtime's last tasks get once the agent has stopped serving.
const RUNTIME_GRACE: Duration = Duration::from_secs(2);

/// Arguments of `sd agent`: each flag overrides the config file's key of the same name.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This node's name (config key `name`).
    #[arg(long)]
    pub name: Option<String>,
    /// Where the node keeps its state, logs and working directories (config key `data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A TOML file with the keys of these flags: `name`, `data_dir`, `api_listen`,
    /// `vm_accelerator`, `log_format`, `log_level` and the cluster's keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The address the API listens on; port 0 picks a free port [config key `api_listen`;
    /// default 127.0.0.1:4680].
    #[arg(long, value_name = "ADDR")]
    pub api_listen: Option<String>,
    /// The accelerator of VMs that say `accelerator "auto"`: `auto` probes whether KVM boots a
    /// guest here (once; the result is kept in the data dir), `kvm` or `tcg` skip the probe
    /// [config key `vm_accelerator`; default auto].
    #[arg(long, value_name = "auto|kvm|tcg")]
    pub vm_accelerator: Option<String>,
    /// The cluster's directory (`sd cluster init`): its CA, its gossip key and this node's
    /// certificate. Without it the node runs alone [config key `cluster_dir`].
    #[arg(long, value_name = "DIR")]
    pub cluster_dir: Option<PathBuf>,
    /// Where this node gossips (UDP) [config key `gossip_listen`; default 127.0.0.1:4681].
    #[arg(long, value_name = "ADDR")]
    pub gossip_listen: Option<String>,
    /// Where peers reach this node (QUIC) [config key `peer_listen`; default 127.0.0.1:4682].
    #[arg(long, value_name = "ADDR")]
    pub peer_listen: Option<String>,
    /// The gossip address of a node to join through; repeat for several [config key `join`].
    #[arg(long, value_name = "ADDR")]
    pub join: Vec<String>,
    /// A label of this node, `KEY=VALUE`, that `sdConstraints` match; repeatable
    /// [config key `labels`, a table].
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// How the log on stderr is written: `text`, one line per event for people, or `json`,
    /// one JSON object per line [config key `log_format`; default text].
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<String>,
    /// Which events are logged: an EnvFilter directive list such as `info`, `debug` or
    /// `warn,sd=debug,sd_runtime=debug` [config key `log_level`; default info].
    #[arg(long, env = "SD_LOG", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Chaos runs only: accept faults to inject into this node's gossip and QUIC traffic
    /// through `PUT /v1/chaos/faults` (what `sd chaos run` starts its agents with).
    #[arg(long, hide = true)]
    pub chaos: bool,
    /// Tests of the chaos checker only: switch a safety mechanism off (`owner-checks`,
    /// `restart-intensity`), so that the invariant it protects can be seen to break.
    #[arg(long, hide = true, value_name = "MECHANISM")]
    pub unsafe_test_break: Vec<String>,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentConfig {
    name: Option<String>,
    data_dir: Option<PathBuf>,
    api_listen: Option<String>,
    vm_accelerator: Option<String>,
    cluster_dir: Option<PathBuf>,
    gossip_listen: Option<String>,
    peer_listen: Option<String>,
    #[serde(default)]
    join: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    log_format: Option<String>,
    log_level: Option<String>,
}

/// How the node joins its cluster.
#[derive(Debug)]
struct ClusterSettings {
    dir: PathBuf,
    gossip_listen: SocketAddr,
    peer_listen: SocketAddr,
    join: Vec<SocketAddr>,
    labels: BTreeMap<String, String>,
}

/// The settings once flags and config file are merged.
#[derive(Debug)]
struct Settings {
    name: String,
    data_dir: PathBuf,
    api_listen: String,
    vm_accelerator: Option<Accelerator>,
    cluster: Option<ClusterSettings>,
    /// Whether faults may be injected through the API.
    chaos: bool,
    test_breaks: TestBreaks,
    log_format: LogFormat,
    /// The log filter's directives, checked: [`logging::filter`] accepts them.
    log_filter: String,
}

fn address(flag: &str, text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{flag} \"{text}\" is not an address such as 127.0.0.1:4681"))
}

fn read_config(path: &Path) -> Result<AgentConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read the config file `{}`: {error}", path.display()))?;
    toml::from_str(&text).map_err(|error| {
        format!(
            "the config file `{}` is not valid: {}",
            path.display(),
            error.to_string().trim_end()
        )
    })
}

fn settings(args: &AgentArgs) -> Result<Settings, String> {
    let config = match &args.config {
        Some(path) => read_config(path)?,
        None => AgentConfig::default(),
    };
    let name = args
        .name
        .clone()
        .or(config.name)
        .ok_or("the node needs a name: --name, or `name` in the config file")?;
    let data_dir = args
        .data_dir
        .clone()
        .or(config.data_dir)
        .ok_or("the node needs a data dir: --data-dir, or `data_dir` in the config file")?;
    // The runtime hands the data dir's paths to workloads, which may run elsewhere.
    let data_dir = std::path::absolute(&data_dir)
        .map_err(|error| format!("data dir `{}`: {error}", data_dir.display()))?;
    let api_listen = args
        .api_listen
        .clone()
        .or(config.api_listen)
        .unwrap_or_else(|| DEFAULT_API_LISTEN.to_string());
    let vm_accelerator = match args
        .vm_accelerator
        .clone()
        .or(config.vm_accelerator)
        .as_deref()
    {
        None | Some("auto") => None,
        Some("kvm") => Some(Accelerator::Kvm),
        Some("tcg") => Some(Accelerator::Tcg),
        Some(other) => {
            return Err(format!(
                "--vm-accelerator (or `vm_accelerator`) is \"{other}\": use auto, kvm or tcg"
            ));
        }
    };
    let cluster = match args.cluster_dir.clone().or(config.cluster_dir) {
        None => None,
        Some(dir) => {
            let gossip_listen = args
                .gossip_listen
                .clone()
                .or(config.gossip_listen)
                .unwrap_or_else(|| DEFAULT_GOSSIP_LISTEN.to_string());
            let peer_listen = args
                .peer_listen
                .clone()
                .or(config.peer_listen)
                .unwrap_or_else(|| DEFAULT_PEER_LISTEN.to_string());
            let joins = if args.join.is_empty() {
                config.join
            } else {
                args.join.clone()
            };
            let mut labels = config.labels;
            for label in &args.label {
                let (key, value) = label
                    .split_once('=')
                    .ok_or_else(|| format!("--label \"{label}\" must be KEY=VALUE"))?;
                labels.insert(key.to_string(), value.to_string());
            }
            Some(ClusterSettings {
                dir,
                gossip_listen: address("--gossip-listen", &gossip_listen)?,
                peer_listen: address("--peer-listen", &peer_listen)?,
                join: joins
                    .iter()
                    .map(|text| address("--join", text))
                    .collect::<Result<_, _>>()?,
                labels,
            })
        }
    };
    if args.chaos && cluster.is_none() {
        return Err(
            "--chaos needs a cluster (--cluster-dir): faults are injected into its traffic".into(),
        );
    }
    let log_format = match args.log_format.clone().or(config.log_format) {
        None => LogFormat::default(),
        Some(text) => text
            .parse()
            .map_err(|error| format!("--log-format (or `log_format`) is {error}"))?,
    };
    let log_filter = args
        .log_level
        .clone()
        .or(config.log_level)
        .unwrap_or_else(|| logging::DEFAULT_FILTER.to_string());
    logging::filter(&log_filter)
        .map_err(|error| format!("--log-level (or SD_LOG, or `log_level`): {error}"))?;
    let mut test_breaks = TestBreaks::default();
    for mechanism in &args.unsafe_test_break {
        match mechanism.as_str() {
            "owner-checks" => test_breaks.no_owner_checks = true,
            "restart-intensity" => test_breaks.no_restart_intensity = true,
            other => {
                return Err(format!(
                    "--unsafe-test-break \"{other}\": use owner-checks or restart-intensity"
                ));
            }
        }
    }
    Ok(Settings {
        name,
        data_dir,
        api_listen,
        vm_accelerator,
        cluster,
        chaos: args.chaos,
        test_breaks,
        log_format,
        log_filter,
    })
}

/// `sd agent`.
pub fn agent(args: &AgentArgs) -> ExitCode {
    let settings = match settings(args) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let log_format = settings.log_format;
    // The filter was checked with the other settings; only a second subscriber could fail.
    if let Err(message) =
        logging::filter(&settings.log_filter).and_then(|filter| logging::init(log_format, filter))
    {
        eprintln!("error: {message}");
        return ExitCode::from(EXIT_FAILED);
    }
    // Every event of the agent's own tasks carries the node's name.
    let span = tracing::info_span!("agent", node = %settings.name);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            span.in_scope(|| {
                fatal(
                    log_format,
                    &format!("cannot start the async runtime: {error}"),
                );
            });
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let outcome = runtime.block_on(run(settings).instrument(span.clone()));
    // Workloads do not depend on the agent's tasks; what is left of those may just stop.
    runtime.shutdown_timeout(RUNTIME_GRACE);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            span.in_scope(|| fatal(log_format, &message(&error)));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Reports the error that ends the agent. In text the line is `error: MESSAGE`, as every
/// `sd` command ends on an error; in JSON it is an `ERROR` event (message `agent failed`,
/// field `error`), so that every line on stderr stays a JSON object, unless the filter
/// leaves that event out: an agent must not die without a word.
fn fatal(format: LogFormat, message: &str) {
    match format {
        LogFormat::Json if tracing::enabled!(tracing::Level::ERROR) => {
            tracing::error!(error = message, "agent failed");
        }
        LogFormat::Text | LogFormat::Json => eprintln!("error: {message}"),
    }
}

/// The error and its causes in one line, each cause once: an error whose message already
/// quotes its source (`node state: {0}`) would otherwise print it twice.
fn message(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let Settings {
        name,
        data_dir,
        api_listen,
        vm_accelerator,
        cluster,
        chaos,
        test_breaks,
        log_format: _,
        log_filter: _,
    } = settings;
    // Before anything starts, so that a signal sent as soon as the agent is up is not lost.
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    // The API's address is published in gossip, so it is bound first.
    let listener = TcpListener::bind(&api_listen)
        .await
        .with_context(|| format!("cannot listen on {api_listen}"))?;
    let api_address = listener
        .local_addr()
        .context("the listener has no address")?;
    let joined = match &cluster {
        None => None,
        Some(cluster) => Some(join(&name, cluster, api_address, vm_accelerator).await?),
    };
    let node = Node::open(NodeConfig {
        name: name.clone(),
        data_dir: data_dir.clone(),
        vm_accelerator,
        peers: joined.as_ref().map(|(_, peers)| Arc::clone(peers)),
        test_breaks,
    })
    .await
    .with_context(|| format!("cannot open node {name} on `{}`", data_dir.display()))?;
    let joins = cluster
        .as_ref()
        .filter(|settings| !settings.join.is_empty())
        .map(|settings| {
            let joins: Vec<String> = settings.join.iter().map(ToString::to_string).collect();
            joins.join(",")
        });
    if let Some((started, _)) = &joined {
        started.attach(node.clone());
        info!(
            peers = %started.peer_addr(),
            gossip = %started.gossip_addr(),
            join = joins.as_deref(),
            "cluster started: peers over QUIC with mutual TLS, sealed gossip"
        );
    }
    let served = async {
        let token = sd_api::load_or_create_token(&data_dir)?;
        let address = api_address;
        sd_api::write_url_file(&data_dir, address)?;
        // Tools wait for this line on stdout: it stays as it is, whatever the log's format.
        say(&format!(
            "sd agent {name}: api on http://{address}, data in {}",
            data_dir.display()
        ));
        info!(
            node = %name,
            api = %format_args!("http://{address}"),
            data_dir = %data_dir.display(),
            "agent ready"
        );
        // A node without QEMU says so at once; with QEMU, once the accelerator is probed.
        let prober = node.clone();
        let cluster = joined.as_ref().map(|(cluster, _)| cluster.clone());
        tokio::spawn(
            async move {
                let driver = prober.vm_driver().await;
                info!(driver = driver.as_str(), "vm driver chosen");
                if let Some(cluster) = cluster {
                    // `qemu: tcg (why)` -> `tcg`; no QEMU: what is missing.
                    let accelerator = driver
                        .strip_prefix("qemu: ")
                        .and_then(|rest| rest.split_whitespace().next())
                        .unwrap_or(&driver);
                    cluster.publish_accelerator(accelerator).await;
                }
            }
            .in_current_span(),
        );
        let stop = async move {
            let signal = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            info!(
                signal = %signal,
                "stopping: the API takes no new requests, the workloads keep running"
            );
        }
        .in_current_span();
        let mut extras = sd_api::Extras::default();
        if chaos && let Some((cluster, _)) = &joined {
            let cluster = cluster.clone();
            extras.fault_hook = Some(Arc::new(move |faults| cluster.set_faults(faults)));
            warn!("chaos: faults may be injected through the API");
        }
        if test_breaks != TestBreaks::default() {
            warn!(breaks = ?test_breaks, "UNSAFE, for tests only: safety mechanisms are off");
        }
        sd_api::serve(node.clone(), listener, token, extras, stop).await?;
        anyhow::Ok(())
    }
    .await;
    // Whatever happened, make the records durable; the workloads keep running by design,
    // and the next agent on this data dir adopts them.
    node.shutdown().await;
    if let Some((cluster, _)) = &joined {
        cluster.shutdown().await;
    }
    // The store is still ours (locked), so the URL file is this agent's or a dead one's.
    let removed = sd_api::remove_url_file(&data_dir);
    served?;
    removed?;
    info!("agent stopped");
    Ok(())
}

/// Joins the cluster: loads this node's identity, starts the transport and the gossip.
async fn join(
    name: &str,
    settings: &ClusterSettings,
    api_address: SocketAddr,
    vm_accelerator: Option<Accelerator>,
) -> anyhow::Result<(sd_cluster::Cluster, Arc<dyn sd_runtime::Peers>)> {
    let identity = sd_net::Identity::load(&settings.dir, name).with_context(|| {
        format!(
            "cannot load node {name}'s identity from `{}` (make one with `sd cluster issue {name} --dir {}`)",
            settings.dir.display(),
            settings.dir.display()
        )
    })?;
    let config = sd_cluster::ClusterConfig {
        identity,
        peer_listen: settings.peer_listen,
        gossip_listen: settings.gossip_listen,
        seeds: settings.join.clone(),
        api_url: Some(format!("http://{api_address}")),
        labels: settings.labels.clone(),
        capacity: host_capacity(),
        generation: sd_store::unix_ms_now(),
        accelerator: match vm_accelerator {
            Some(Accelerator::Kvm) => "kvm".into(),
            Some(Accelerator::Tcg) => "tcg".into(),
            // Published once probed.
            None => "probing".into(),
        },
    };
    sd_cluster::Cluster::start(config)
        .await
        .context("cannot join the cluster")
}

/// What this host offers domains, as the gossip publishes it.
fn host_capacity() -> sd_gossip::Resources {
    let capacity = sd_runtime::vm_host::host_capacity();
    sd_gossip::Resources {
        vcpus: capacity.vcpus,
        memory_mib: capacity.memory_mib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: Option<&str>, data_dir: Option<&str>, config: Option<PathBuf>) -> AgentArgs {
        AgentArgs {
            name: name.map(str::to_string),
            data_dir: data_dir.map(PathBuf::from),
            config,
            api_listen: None,
            vm_accelerator: None,
            cluster_dir: None,
            gossip_listen: None,
            peer_listen: None,
            join: Vec::new(),
            label: Vec::new(),
            log_format: None,
            log_level: None,
            chaos: false,
            unsafe_test_break: Vec::new(),
        }
    }

    #[test]
    fn the_log_format_and_filter_come_from_flags_or_the_config_file() {
        let flags = args(Some("n"), Some("/d"), None);
        let defaults = settings(&flags).unwrap();
        assert_eq!(defaults.log_format, LogFormat::Text);
        assert_eq!(defaults.log_filter, "info");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "name = \"n1\"\ndata_dir = \"/d\"\nlog_format = \"json\"\nlog_level = \"warn\"\n",
        )
        .unwrap();
        let mut flags = args(None, None, Some(file.clone()));
        let from_file = settings(&flags).unwrap();
        assert_eq!(from_file.log_format, LogFormat::Json);
        assert_eq!(from_file.log_filter, "warn");
        flags.log_format = Some("text".into());
        flags.log_level = Some("debug,sd=trace".into());
        let overridden = settings(&flags).unwrap();
        assert_eq!(overridden.log_format, LogFormat::Text);
        assert_eq!(overridden.log_filter, "debug,sd=trace");

        flags.log_format = Some("yaml".into());
        let error = settings(&flags).unwrap_err();
        assert_eq!(
            error,
            "--log-format (or `log_format`) is \"yaml\": use text or json"
        );
        flags.log_format = None;
        flags.log_level = Some("sd=loud".into());
        let error = settings(&flags).unwrap_err();
        assert!(
            error.starts_with("--log-level (or SD_LOG, or `log_level`): \"sd=loud\""),
            "{error}"
        );
        std::fs::write(
            &file,
            "name = \"n1\"\ndata_dir = \"/d\"\nlog_format = \"xml\"\n",
        )
        .unwrap();
        let error = settings(&args(None, None, Some(file))).unwrap_err();
        assert!(
            error.contains("`log_format`") && error.contains("\"xml\""),
            "{error}"
        );
    }

    #[test]
    fn the_vm_accelerator_is_auto_kvm_or_tcg() {
        let mut flags = args(Some("n"), Some("/d"), None);
        assert_eq!(settings(&flags).unwrap().vm_accelerator, None);
        flags.vm_accelerator = Some("tcg".into());
        assert_eq!(
            settings(&flags).unwrap().vm_accelerator,
            Some(Accelerator::Tcg)
        );
        flags.vm_accelerator = Some("fast".into());
        assert!(
            settings(&flags)
                .unwrap_err()
                .contains("use auto, kvm or tcg")
        );
    }

    #[test]
    fn chaos_needs_a_cluster_and_test_breaks_are_named() {
        let mut flags = args(Some("n"), Some("/d"), None);
        flags.chaos = true;
        assert!(
            settings(&flags)
                .unwrap_err()
                .contains("--chaos needs a cluster")
        );
        flags.chaos = false;
        flags.unsafe_test_break = vec!["owner-checks".into(), "restart-intensity".into()];
        let breaks = settings(&flags).unwrap().test_breaks;
        assert!(breaks.no_owner_checks && breaks.no_restart_intensity);
        flags.unsafe_test_break = vec!["fencing".into()];
        assert!(settings(&flags).unwrap_err().contains("\"fencing\""));
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "name = \"n1\"\ndata_dir = \"/srv/sd\"\napi_listen = \"0.0.0.0:9000\"\n",
        )
        .unwrap();
        let from_file = settings(&args(None, None, Some(file.clone()))).unwrap();
        assert_eq!(from_file.name, "n1");
        assert_eq!(from_file.data_dir, PathBuf::from("/srv/sd"));
        assert_eq!(from_file.api_listen, "0.0.0.0:9000");
        let overridden = settings(&args(Some("n2"), Some("/tmp/x"), Some(file))).unwrap();
        assert_eq!(overridden.name, "n2");
        assert_eq!(overridden.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(overridden.api_listen, "0.0.0.0:9000");
    }

    #[test]
    fn name_and_data_dir_are_required_and_the_listen_address_has_a_default() {
        let error = settings(&args(None, Some("/d"), None)).unwrap_err();
        assert!(error.contains("--name"), "{error}");
        let error = settings(&args(Some("n"), None, None)).unwrap_err();
        assert!(error.contains("--data-dir"), "{error}");
        let ok = settings(&args(Some("n"), Some("rel"), None)).unwrap();
        assert_eq!(ok.api_listen, DEFAULT_API_LISTEN);
        assert!(ok.data_dir.is_absolute());
    }

    #[test]
    fn an_error_message_names_each_cause_once() {
        /// Quotes its source in its message, as `sd_runtime::Error::Store` does.
        #[derive(Debug)]
        struct Quoting(std::io::Error);
        impl std::fmt::Display for Quoting {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "node state: {}", self.0)
            }
        }
        impl std::error::Error for Quoting {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let quoting = anyhow::Error::new(Quoting(std::io::Error::other("locked")))
            .context("cannot open node n1");
        assert_eq!(message(&quoting), "cannot open node n1: node state: locked");
        let plain = anyhow::Error::new(std::io::Error::other("in use")).context("cannot listen");
        assert_eq!(message(&plain), "cannot listen: in use");
    }

    #[test]
    fn a_config_file_with_unknown_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "name = \"n1\"\nlisten = \"x\"\n").unwrap();
        let error = settings(&args(None, None, Some(file))).unwrap_err();
        assert!(
            error.contains("agent.toml") && error.contains("listen"),
            "{error}"
        );
    }
}
