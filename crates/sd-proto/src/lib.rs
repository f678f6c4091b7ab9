//! `sd-proto`: the types that cross a process boundary: the HTTP/JSON API between the CLI
//! (or the console) and an agent, and the lifecycle states that the store records.
//!
//! It owns their shapes and their JSON form, nothing else: no I/O, no behaviour. Fields
//! added later carry `#[serde(default)]`, and unknown fields are ignored, so an older CLI
//! talks to a newer agent and the other way round.
//!
//! The API (served by every agent, under `/v1`, bearer token) is described in docs/api.md.
//! [`peer`] holds what nodes ask each other over the cluster transport.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod peer;

/// The largest API request body an agent accepts (a description is sent whole).
pub const MAX_REQUEST_BYTES: usize = 8 << 20;

/// The API's version prefix.
pub const API_PREFIX: &str = "/v1";

/// Where a deployment is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Its components are being deployed and started.
    Deploying,
    /// Every component was started.
    Running,
    /// Its components are being terminated.
    Terminating,
    /// Every component has terminated.
    Terminated,
    /// It failed and was (or is being) undone.
    Failed {
        /// Why, naming the component that failed.
        reason: String,
    },
}

impl DeploymentState {
    /// The state's name: `deploying`, `running`, `terminating`, `terminated`, `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            DeploymentState::Deploying => "deploying",
            DeploymentState::Running => "running",
            DeploymentState::Terminating => "terminating",
            DeploymentState::Terminated => "terminated",
            DeploymentState::Failed { .. } => "failed",
        }
    }
}

/// Where a component is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    /// Being deployed.
    Deploying,
    /// Deployed, not started.
    Deployed,
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Finished its work (a process that exited with code 0, a finished sequence).
    Finished,
    /// Failed; its supervisor decides what follows.
    Failed,
    /// Being restarted by its supervisor.
    Restarting,
    /// Being terminated.
    Terminating,
    /// Terminated.
    Terminated,
}

impl ComponentState {
    /// The state's name as JSON and `sd status` show it.
    pub fn name(self) -> &'static str {
        match self {
            ComponentState::Deploying => "deploying",
            ComponentState::Deployed => "deployed",
            ComponentState::Starting => "starting",
            ComponentState::Running => "running",
            ComponentState::Finished => "finished",
            ComponentState::Failed => "failed",
            ComponentState::Restarting => "restarting",
            ComponentState::Terminating => "terminating",
            ComponentState::Terminated => "terminated",
        }
    }
}

/// `POST /v1/deployments`: deploy a description under a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRequest {
    /// The deployment's name (1 to 128 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit).
    pub name: String,
    /// The description text. The CLI sends the `sfConfig` it resolved (with its `-I`
    /// directories and environment), in SmartFrog notation; the console sends what was
    /// pasted. The agent resolves it again (includes from its embedded library only).
    pub description: String,
    /// Where it came from (a file name), for messages and `sd status`.
    #[serde(default)]
    pub source: String,
}

/// One deployment, as `GET /v1/deployments` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSummary {
    /// Its name.
    pub name: String,
    /// Where it is in its life.
    pub state: DeploymentState,
    /// The file it came from.
    #[serde(default)]
    pub source: String,
    /// The node holding its root.
    pub root_node: String,
    /// When it was deployed (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// How many components it has now.
    pub components: usize,
    /// How many of them are running.
    pub running: usize,
    /// The epoch of its placement: one more each time another node takes it over.
    #[serde(default)]
    pub epoch: u64,
}

/// One component, as `sd status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// Its path, e.g. `sfConfig:pool:r1`.
    pub path: String,
    /// Its kind, e.g. `ProcessDomain`.
    pub kind: String,
    /// Where it is in its life.
    pub state: ComponentState,
    /// The node it runs on.
    pub node: String,
    /// Its process id (a process domain that runs).
    #[serde(default)]
    pub pid: Option<u32>,
    /// How many times its supervisor restarted it.
    #[serde(default)]
    pub restarts: u32,
    /// When it last started running (milliseconds since the Unix epoch).
    #[serde(default)]
    pub started_unix_ms: Option<u64>,
    /// Its last failure.
    #[serde(default)]
    pub last_error: Option<String>,
    /// How it supervises its children, for a component that has some.
    #[serde(default)]
    pub supervision: Option<Supervision>,
    /// The attributes that can be changed while it runs (`sd set`), with their values now.
    #[serde(default)]
    pub settings: Vec<Setting>,
}

impl ComponentStatus {
    /// The value now of one of its live [`Setting`]s.
    pub fn setting(&self, attribute: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|setting| setting.attribute == attribute)
            .map(|setting| setting.value.as_str())
    }
}

/// An attribute of a running component that `sd set` (or the console) can change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    /// The attribute, e.g. `sfLivenessDelay`.
    pub attribute: String,
    /// Its value now, in SmartFrog notation (`5`, `2.5`, `true`).
    pub value: String,
}

/// `POST /v1/deployments/{name}/reconfigure`: change one attribute of a running component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconfigureRequest {
    /// The component, e.g. `sfConfig:pool:r1`.
    pub path: String,
    /// The attribute (one of the component's [`Setting`]s).
    pub attribute: String,
    /// The new value, in SmartFrog notation.
    pub value: String,
}

/// A live change made to a deployment (`sd set`): the attribute `attribute` of the component
/// at `path` has `value` (SmartFrog notation) instead of what its description says. A
/// deployment's changes are kept with its record and applied, in order, each time it is
/// planned (a restart, a takeover), so they last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The component, e.g. `sfConfig:pool:r1`.
    pub path: String,
    /// The attribute.
    pub attribute: String,
    /// The value, in SmartFrog notation.
    pub value: String,
}

/// The answer to a reconfiguration that was validated and committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconfiguration {
    /// The deployment.
    pub deployment: String,
    /// The component.
    pub path: String,
    /// The attribute.
    pub attribute: String,
    /// Its value before.
    pub previous: String,
    /// Its value now.
    pub value: String,
    /// The nodes that validated and committed it.
    pub nodes: Vec<String>,
}

/// `POST /v1/validate`: check a description without deploying it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateRequest {
    /// The description text.
    pub description: String,
    /// Where it came from (a file name), for messages.
    #[serde(default)]
    pub source: String,
}

/// The answer to a valid description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    /// Always true (an invalid description is a 400 error).
    pub ok: bool,
    /// How many components would run.
    pub components: usize,
}

/// A parent's declared supervision: what INV-5 holds its restarts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervision {
    /// `sdRestartStrategy`: `one_for_one`, `one_for_all`, `rest_for_one` or `none`.
    pub strategy: String,
    /// `sdMaxRestarts`: restarts of its children allowed within the window.
    pub max_restarts: u32,
    /// `sdRestartWindow`, in milliseconds.
    pub window_ms: u64,
}

/// `GET /v1/deployments/{name}`: a deployment and its component tree, parents first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentStatus {
    /// The deployment.
    pub deployment: DeploymentSummary,
    /// Its components in tree order (a parent before its children, children in order).
    pub components: Vec<ComponentStatus>,
}

impl DeploymentStatus {
    /// The component at `path` (`sfConfig:a:b`).
    pub fn component(&self, path: &str) -> Option<&ComponentStatus> {
        self.components
            .iter()
            .find(|component| component.path == path)
    }
}

/// A lifecycle event: a component (or a deployment, with `path` empty) changed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its number on the node it happened on (from 1, one more per event of that node's
    /// agent run); with `node`, it names the event.
    #[serde(default)]
    pub seq: u64,
    /// The deployment.
    pub deployment: String,
    /// The component's path; empty for the deployment itself.
    pub path: String,
    /// The new state's name (a [`ComponentState`] or [`DeploymentState`] name).
    pub state: String,
    /// The node it happened on.
    pub node: String,
    /// When (milliseconds since the Unix epoch).
    pub unix_ms: u64,
    /// What happened, for failures and restarts.
    #[serde(default)]
    pub detail: Option<String>,
}

/// The body of every API error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What is wrong, in one sentence.
    pub error: String,
    /// More lines, e.g. each description error with its file:line:column and caret.
    #[serde(default)]
    pub details: Vec<String>,
    /// Where an invalid description is wrong: one entry per error that has a place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<Diagnostic>,
}

/// One error of a description, at its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// The file (the deploy's `source`, or an included file).
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// What is wrong.
    pub message: String,
}

/// `GET /v1/node`: the agent answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its node name.
    pub name: String,
    /// Its generation: one more at every agent start.
    pub generation: u64,
    /// Its version of sd.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// Its VM driver: `qemu: kvm (...)`, `qemu: tcg (why)`, or why it has none.
    #[serde(default)]
    pub vm_driver: String,
}

/// `GET /v1/nodes`: one member of the cluster as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its node name.
    pub name: String,
    /// `alive` or `dead`.
    pub state: String,
    /// Its generation (one more at every agent start).
    pub generation: u64,
    /// Where its peers reach it (QUIC).
    pub peer_addr: String,
    /// Its API, if it published one.
    #[serde(default)]
    pub api_url: Option<String>,
    /// vCPUs it offers.
    pub vcpus: u32,
    /// vCPUs not reserved by running domains.
    pub free_vcpus: u32,
    /// Memory it offers, in MiB.
    pub memory_mib: u64,
    /// Memory not reserved by running domains, in MiB.
    pub free_memory_mib: u64,
    /// Its labels (`sdConstraints` match them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its version of sd.
    pub version: String,
    /// The accelerator its VMs get (`kvm`, `tcg`, or why none).
    pub accelerator: String,
    /// Whether this is the node answering.
    #[serde(default)]
    pub is_self: bool,
}

/// `GET /v1/cluster`: the counters of this node's gossip and peer transport.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStats {
    /// Gossip packets sent.
    pub gossip_sent_packets: u64,
    /// Gossip bytes sent.
    pub gossip_sent_bytes: u64,
    /// Gossip packets received.
    pub gossip_received_packets: u64,
    /// Gossip bytes received.
    pub gossip_received_bytes: u64,
    /// Gossip packets dropped: wrong key or cluster, or tampered with.
    pub gossip_dropped_bad_auth: u64,
    /// Gossip packets dropped: replayed or stale.
    pub gossip_dropped_replay: u64,
    /// Gossip packets dropped: malformed.
    pub gossip_dropped_malformed: u64,
    /// Peer requests this node made that were answered.
    pub rpc_sent: u64,
    /// Peer requests this node made that failed.
    pub rpc_failed: u64,
    /// Peer requests this node served.
    pub rpc_served: u64,
    /// Handshakes refused: a certificate from another CA, or not naming the node dialled.
    pub rpc_refused_handshakes: u64,
    /// Peer messages that could not be decoded.
    pub rpc_decode_errors: u64,
    /// Peer connections open now.
    pub rpc_open_connections: u64,
    /// Median peer request round trip, in microseconds (an upper bound within 2x).
    #[serde(default)]
    pub rpc_p50_us: Option<u64>,
    /// 99th percentile peer request round trip, in microseconds (an upper bound within 2x).
    #[serde(default)]
    pub rpc_p99_us: Option<u64>,
    /// Peer request round trips: entry `i` counts the answered requests that took
    /// `[2^i, 2^(i+1))` microseconds.
    #[serde(default)]
    pub rpc_latency_buckets: Vec<u64>,
    /// Peer transport bytes sent (requests and replies).
    #[serde(default)]
    pub rpc_bytes_sent: u64,
    /// Peer transport bytes received.
    #[serde(default)]
    pub rpc_bytes_received: u64,
}

/// Faults injected into one kind of link of a node: what it sends is lost, delayed or
/// duplicated. Only for chaos runs: an agent accepts them only when started with `--chaos`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFaults {
    /// Probability (0..=1) that an outgoing packet is dropped.
    #[serde(default)]
    pub loss: f64,
    /// Delay added to every outgoing packet, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// Probability (0..=1) that an outgoing packet is sent twice.
    #[serde(default)]
    pub duplicate: f64,
}

impl LinkFaults {
    /// What is wrong with these settings, if anything.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [("loss", self.loss), ("duplicate", self.duplicate)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!(
                    "{name} must be a probability in 0..=1, not {value}"
                ));
            }
        }
        if self.delay_ms > 10_000 {
            return Err(format!(
                "delay_ms must be at most 10000, not {}",
                self.delay_ms
            ));
        }
        Ok(())
    }
}

/// `PUT /v1/chaos/faults`: the faults a node injects into what it sends from now on (the
/// default: none). Served only by agents started with `--chaos`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    /// Into its gossip (UDP) packets.
    #[serde(default)]
    pub gossip: LinkFaults,
    /// Into its peer transport's (QUIC) datagrams.
    #[serde(default)]
    pub quic: LinkFaults,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_snake_case_json() {
        assert_eq!(
            serde_json::to_string(&ComponentState::Restarting).unwrap(),
            r#""restarting""#
        );
        assert_eq!(
            serde_json::to_string(&DeploymentState::Failed {
                reason: "vm1 did not start".into()
            })
            .unwrap(),
            r#"{"failed":{"reason":"vm1 did not start"}}"#
        );
        assert_eq!(ComponentState::Finished.name(), "finished");
    }

    #[test]
    fn optional_fields_default_and_unknown_ones_are_ignored() {
        let status: ComponentStatus = serde_json::from_str(
            r#"{"path":"sfConfig","kind":"Compound","state":"running","node":"n1","new":1}"#,
        )
        .unwrap();
        assert_eq!(status.pid, None);
        assert_eq!(status.restarts, 0);
    }
}
