//! Membership: a node's metadata published as chitchat key-values, and the members every node
//! learns by gossip, with their liveness.
//!
//! Key layout in each node's chitchat state:
//! - `meta`: the node's [`NodeMeta`] as JSON (rewritten whole when free resources or labels
//!   change: it is a few hundred bytes);
//! - `left`: present once the node announced a graceful shutdown;
//! - `hint.<key>`: free-form hints other crates gossip ([`Membership::set_key`]).
//!
//! A member is reported once its `meta` arrived. A name is reported once, with its newest
//! generation: an older generation of a restarted node is never reported, alive or not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chitchat::transport::Transport;
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::sealed::{Faults, GossipStats, PacketKey, SealedTransport, TransportControl};
use crate::{Error, Result};

const META_KEY: &str = "meta";
const LEFT_KEY: &str = "left";
const HINT_PREFIX: &str = "hint.";
const CHANGES_CAPACITY: usize = 1024;

/// Resources of a node: what it has, or what is still free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// What a node tells the cluster about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// The node's name, unique in the cluster.
    pub name: String,
    /// The generation of this agent start: higher at every restart of the same node.
    pub generation: u64,
    /// Where peers reach the node over QUIC.
    pub quic_addr: SocketAddr,
    /// The node's HTTP API, if it serves one.
    #[serde(default)]
    pub api_url: Option<String>,
    /// What the node has.
    pub capacity: Resources,
    /// What is still free.
    pub free: Resources,
    /// Free-form labels (placement constraints match them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The agent's version.
    #[serde(default)]
    pub version: String,
    /// The VM accelerator the node offers (`kvm`, `tcg`, or empty for none).
    #[serde(default)]
    pub accelerator: String,
}

/// Where a member stands, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Gossip from it arrives.
    Alive,
    /// Its gossip stopped: the failure detector declared it dead.
    Dead,
    /// It announced that it was shutting down.
    Left,
}

/// A known node: alive, dead or gone, until it is forgotten after the grace period.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// What it published.
    pub meta: NodeMeta,
    /// Where it gossips.
    pub gossip_addr: SocketAddr,
    /// Alive, dead or left.
    pub state: MemberState,
    /// Since when it has been in this state (for this generation), as seen here.
    pub since: Instant,
    /// The hints it published with [`Membership::set_key`].
    pub hints: BTreeMap<String, String>,
}

impl Member {
    /// Whether the member is alive.
    pub fn is_alive(&self) -> bool {
        self.state == MemberState::Alive
    }

    /// The member's name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }
}

/// A change in the membership, as seen by this node.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterChange {
    /// A node (or a new generation of one) became alive.
    Joined(Member),
    /// An alive node's metadata or hints changed.
    Updated(Member),
    /// A node was declared dead, or was replaced by a newer generation.
    Died(Member),
    /// A node announced its shutdown.
    Left(Member),
    /// A dead or departed node was forgotten after the grace period.
    Forgotten(String),
}

/// How a node joins and watches the cluster.
///
/// Failure detection defaults, and why: chitchat's detector declares a node dead when the time
/// since its last heartbeat exceeds `phi_threshold` times the mean interval between the
/// heartbeats this node observed from it. Every node gossips with up to 3 peers per round and
/// digests carry everyone's heartbeat, so with a 100 ms round the observed mean is
/// 20–60 ms (measured: smaller in larger clusters). A threshold of 20 puts the detection
/// timeout at 0.4–1.2 s, to which up to one round is added before the check runs: under 2 s.
/// An idle node misses no round on a healthy host, so silence long enough for a false death
/// (10 or more rounds in a row, with every peer's digest also stale) takes a stall of the
/// process or host of that length. Intervals longer than `max_heartbeat_interval` are left out
/// of the mean, so one stall does not slow detection afterwards.
#[derive(Clone)]
pub struct MembershipConfig {
    /// The cluster's name; nodes of other clusters cannot read or forge its gossip.
    pub cluster_name: String,
    /// The cluster's shared gossip key.
    pub gossip_key: [u8; 32],
    /// Where to bind the gossip socket (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where peers reach this node's gossip, if not `listen`'s bound address.
    pub advertise: Option<SocketAddr>,
    /// Gossip addresses of nodes to join through.
    pub seeds: Vec<SocketAddr>,
    /// Time between gossip rounds.
    pub gossip_interval: Duration,
    /// Phi accrual threshold above which a silent node is declared dead.
    pub phi_threshold: f64,
    /// Heartbeat intervals longer than this are not used to estimate the mean interval.
    pub max_heartbeat_interval: Duration,
    /// How long dead nodes stay listed (for majority counting) before they are forgotten.
    pub dead_node_grace_period: Duration,
}

impl MembershipConfig {
    /// Default gossip interval.
    pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(100);
    /// Default phi threshold.
    pub const DEFAULT_PHI_THRESHOLD: f64 = 20.0;
    /// Default upper bound of a heartbeat interval sample.
    pub const DEFAULT_MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
    /// Default time dead nodes stay listed.
    pub const DEFAULT_DEAD_NODE_GRACE_PERIOD: Duration = Duration::from_secs(3600);

    /// A configuration with the default gossip and failure detection settings.
    pub fn new(cluster_name: &str, gossip_key: [u8; 32], listen: SocketAddr) -> MembershipConfig {
        MembershipConfig {
            cluster_name: cluster_name.to_string(),
            gossip_key,
            listen,
            advertise: None,
            seeds: Vec::new(),
            gossip_interval: Self::DEFAULT_GOSSIP_INTERVAL,
            phi_threshold: Self::DEFAULT_PHI_THRESHOLD,
            max_heartbeat_interval: Self::DEFAULT_MAX_HEARTBEAT_INTERVAL,
            dead_node_grace_period: Self::DEFAULT_DEAD_NODE_GRACE_PERIOD,
        }
    }
}

impl std::fmt::Debug for MembershipConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipConfig")
            .field("cluster_name", &self.cluster_name)
            .field("gossip_key", &"<redacted>")
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("seeds", &self.seeds)
            .field("gossip_interval", &self.gossip_interval)
            .field("phi_threshold", &self.phi_threshold)
            .field("max_heartbeat_interval", &self.max_heartbeat_interval)
            .field("dead_node_grace_period", &self.dead_node_grace_period)
            .finish()
    }
}

/// This node's membership of the cluster. Cheap to clone; gossip stops at
/// [`Membership::shutdown`], or when the last clone is dropped.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

struct Inner {
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    handle: Mutex<Option<ChitchatHandle>>,
    observer: JoinHandle<()>,
    local: Mutex<NodeMeta>,
    gossip_addr: SocketAddr,
    gossip_interval: Duration,
    members: watch::Receiver<Vec<Member>>,
    changes: broadcast::Sender<ClusterChange>,
    transport: TransportControl,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.observer.abort();
        if let Some(handle) = lock(&self.handle).take() {
            handle.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Membership {
    /// Binds the gossip socket, publishes `meta` and starts gossiping with the seeds.
    pub async fn start(config: MembershipConfig, meta: NodeMeta) -> Result<Membership> {
        if config.cluster_name.is_empty() {
            return Err(Error::EmptyClusterName);
        }
        if meta.name.is_empty() {
            return Err(Error::EmptyNodeName);
        }
        let socket = tokio::net::UdpSocket::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let bound = socket.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let gossip_addr = match config.advertise {
            Some(advertise) => advertise,
            None if bound.ip().is_unspecified() => return Err(Error::NoAdvertiseAddress(bound)),
            None => bound,
        };
        let key = PacketKey::new(&config.gossip_key, &config.cluster_name);
        let chitchat_id = ChitchatId::new(meta.name.as_str(), meta.generation, gossip_addr);
        let transport = SealedTransport::with_socket(key, socket).for_node(chitchat_id.clone());
        let control = transport.control();
        let chitchat_config = ChitchatConfig {
            chitchat_id,
            cluster_id: config.cluster_name.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: bound,
            seed_nodes: config.seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                sampling_window_size: 1_000,
                max_interval: config.max_heartbeat_interval,
                initial_interval: config.gossip_interval,
                dead_node_grace_period: config.dead_node_grace_period,
            },
            marked_for_deletion_grace_period: config.dead_node_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
            // Every sd node runs the same chitchat; V0 stays readable by any of them.
            protocol_version: ProtocolVersion::V0,
        };
        let initial = vec![(META_KEY.to_string(), serde_json::to_string(&meta)?)];
        let handle = spawn_chitchat(chitchat_config, initial, &transport as &dyn Transport)
            .await
            .map_err(|error| Error::Start(format!("{error:#}")))?;
        let chitchat = handle.chitchat();
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let first = {
            let guard = chitchat.lock().await;
            control.reset_digest(digest_ids(&guard));
            merge(&[], observe(&guard), Instant::now(), &changes)
        };
        let (members_tx, members) = watch::channel(first);
        let observer = tokio::spawn(observe_forever(
            chitchat.clone(),
            config.gossip_interval,
            members_tx,
            changes.clone(),
            control.clone(),
        ));
        Ok(Membership {
            inner: Arc::new(Inner {
                chitchat,
                handle: Mutex::new(Some(handle)),
                observer,
                local: Mutex::new(meta),
                gossip_addr,
                gossip_interval: config.gossip_interval,
                members,
                changes,
                transport: control,
            }),
        })
    }

    /// This node's metadata as last published.
    pub fn local(&self) -> NodeMeta {
        lock(&self.inner.local).clone()
    }

    /// Where this node gossips.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.inner.gossip_addr
    }

    /// Every known node, this one included, sorted by name: the alive, and the dead and
    /// departed until they are forgotten, so callers can count known members.
    pub fn members(&self) -> Vec<Member> {
        self.inner.members.borrow().clone()
    }

    /// The alive members, this one included.
    pub fn alive_members(&self) -> Vec<Member> {
        let members = self.inner.members.borrow();
        members
            .iter()
            .filter(|member| member.is_alive())
            .cloned()
            .collect()
    }

    /// The member list, notified at every change.
    pub fn watch(&self) -> watch::Receiver<Vec<Member>> {
        self.inner.members.clone()
    }

    /// The changes from now on, one by one. A receiver that falls behind by more than 1024
    /// changes loses the oldest (and is told so); [`Membership::members`] is always whole.
    pub fn changes(&self) -> broadcast::Receiver<ClusterChange> {
        self.inner.changes.subscribe()
    }

    /// Publishes this node's free resources.
    pub async fn update_free(&self, free: Resources) {
        self.update_meta(|meta| meta.free = free).await;
    }

    /// Publishes the VM accelerator this node offers (known once it is probed).
    pub async fn update_accelerator(&self, accelerator: &str) {
        let accelerator = accelerator.to_string();
        self.update_meta(|meta| meta.accelerator = accelerator)
            .await;
    }

    /// Publishes a label of this node (an empty value removes it).
    pub async fn set_label(&self, key: &str, value: &str) {
        self.update_meta(|meta| {
            if value.is_empty() {
                meta.labels.remove(key);
            } else {
                meta.labels.insert(key.to_string(), value.to_string());
            }
        })
        .await;
    }

    async fn update_meta(&self, change: impl FnOnce(&mut NodeMeta)) {
        let mut chitchat = self.inner.chitchat.lock().await;
        let encoded = {
            let mut local = lock(&self.inner.local);
            change(&mut local);
            serde_json::to_string(&*local)
        };
        // NodeMeta holds strings, numbers and maps with string keys: encoding cannot fail.
        if let Ok(encoded) = encoded {
            chitchat.self_node_state().set(META_KEY, encoded);
        }
    }

    /// Publishes a free-form hint `key = value` (for instance a deployment epoch).
    pub async fn set_key(&self, key: &str, value: &str) {
        let mut chitchat = self.inner.chitchat.lock().await;
        chitchat
            .self_node_state()
            .set(format!("{HINT_PREFIX}{key}"), value);
    }

    /// Withdraws a hint published with [`Membership::set_key`].
    pub async fn remove_key(&self, key: &str) {
        let mut chitchat = self.inner.chitchat.lock().await;
        chitchat
            .self_node_state()
            .delete(&format!("{HINT_PREFIX}{key}"));
    }

    /// The hint `key` published by `node`, as last seen here.
    pub fn key_of(&self, node: &str, key: &str) -> Option<String> {
        let members = self.inner.members.borrow();
        let member = members.iter().find(|member| member.meta.name == node)?;
        member.hints.get(key).cloned()
    }

    /// How long `node` may stay silent before it is declared dead, as currently estimated
    /// from its heartbeats (without the up to one gossip round before the check runs).
    pub async fn failure_detection_timeout(&self, node: &str) -> Option<Duration> {
        let chitchat = self.inner.chitchat.lock().await;
        let id = newest_generation(&chitchat, node)?;
        chitchat.failure_detection_timeout(&id)
    }

    /// What the transport sent, received and dropped so far.
    pub fn stats(&self) -> GossipStats {
        self.inner.transport.stats()
    }

    /// Sets the faults injected into this node's outgoing gossip (chaos tests).
    pub fn set_faults(&self, faults: Faults) {
        self.inner.transport.set_faults(faults);
    }

    /// Announces the shutdown to the peers (they report this node as left within a few gossip
    /// rounds instead of waiting for the failure detector), then stops gossiping.
    pub async fn shutdown(self) {
        {
            let mut chitchat = self.inner.chitchat.lock().await;
            chitchat.self_node_state().set(LEFT_KEY, "true");
        }
        // Three rounds: each reaches up to three peers, who spread it further.
        tokio::time::sleep(self.inner.gossip_interval * 3).await;
        self.stop().await;
    }

    /// Stops gossiping at once without telling anyone, as a crash would: the peers find out
    /// through their failure detectors. For tests and chaos scenarios.
    pub async fn kill(self) {
        self.stop().await;
    }

    async fn stop(self) {
        self.inner.observer.abort();
        let handle = lock(&self.inner.handle).take();
        if let Some(handle) = handle {
            // An error here means the gossip loop had already failed: it is stopped either way.
            let _ = handle.shutdown().await;
        }
    }
}

/// One node as read from chitchat's state, before liveness history is merged in.
struct Observed {
    meta: NodeMeta,
    gossip_addr: SocketAddr,
    state: MemberState,
    hints: BTreeMap<String, String>,
}

fn newest_generation(chitchat: &Chitchat, node: &str) -> Option<ChitchatId> {
    chitchat
        .node_states()
        .keys()
        .filter(|id| &*id.node_id == node)
        .max_by_key(|id| id.generation_id)
        .cloned()
}

/// The ids chitchat puts in its own digest: its nodes not scheduled for deletion.
fn digest_ids(chitchat: &Chitchat) -> Vec<ChitchatId> {
    let leaving: std::collections::HashSet<&ChitchatId> =
        chitchat.scheduled_for_deletion_nodes().collect();
    chitchat
        .node_states()
        .keys()
        .filter(|id| !leaving.contains(id))
        .cloned()
        .collect()
}

/// Reads every node's newest generation that published its metadata.
fn observe(chitchat: &Chitchat) -> BTreeMap<String, Observed> {
    let live: std::collections::HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let mut observed: BTreeMap<String, Observed> = BTreeMap::new();
    for (id, node_state) in chitchat.node_states() {
        let Some(meta_json) = node_state.get(META_KEY) else {
            continue;
        };
        // A peer of another version may publish what this one cannot read: skip it.
        let Ok(mut meta) = serde_json::from_str::<NodeMeta>(meta_json) else {
            continue;
        };
        if let Some(known) = observed.get(&*id.node_id)
            && known.meta.generation >= id.generation_id
        {
            continue;
        }
        // chitchat's identity is authoritative over what the metadata claims.
        meta.name = id.node_id.to_string();
        meta.generation = id.generation_id;
        let state = if node_state.get(LEFT_KEY).is_some() {
            MemberState::Left
        } else if live.contains(id) {
            MemberState::Alive
        } else {
            MemberState::Dead
        };
        let hints = node_state
            .key_values()
            .filter_map(|(key, value)| {
                let hint = key.strip_prefix(HINT_PREFIX)?;
                Some((hint.to_string(), value.to_string()))
            })
            .collect();
        observed.insert(
            meta.name.clone(),
            Observed {
                meta,
                gossip_addr: id.gossip_advertise_addr,
                state,
                hints,
            },
        );
    }
    observed
}

/// Builds the new member list from the previous one and what was observed, and sends the
/// changes between them.
fn merge(
    previous: &[Member],
    observed: BTreeMap<String, Observed>,
    now: Instant,
    changes: &broadcast::Sender<ClusterChange>,
) -> Vec<Member> {
    let mut members = Vec::with_capacity(observed.len());
    // Sending fails only when nobody listens, which is fine.
    let send = |change: ClusterChange| {
        let _ = changes.send(change);
    };
    for (name, seen) in observed {
        let before = previous.iter().find(|member| member.meta.name == name);
        let same_generation = before.is_some_and(|b| b.meta.generation == seen.meta.generation);
        let since = match before {
            Some(before) if same_generation && before.state == seen.state => before.since,
            _ => now,
        };
        let member = Member {
            meta: seen.meta,
            gossip_addr: seen.gossip_addr,
            state: seen.state,
            since,
            hints: seen.hints,
        };
        match before {
            None => {
                if member.is_alive() {
                    send(ClusterChange::Joined(member.clone()));
                }
            }
            Some(before) if !same_generation => {
                if before.is_alive() {
                    send(ClusterChange::Died(before.clone()));
                }
                match member.state {
                    MemberState::Alive => send(ClusterChange::Joined(member.clone())),
                    MemberState::Left => send(ClusterChange::Left(member.clone())),
                    MemberState::Dead => {}
                }
            }
            Some(before) => match (before.state, member.state) {
                (MemberState::Alive, MemberState::Alive) => {
                    if before.meta != member.meta || before.hints != member.hints {
                        send(ClusterChange::Updated(member.clone()));
                    }
                }
                (_, MemberState::Alive) => send(ClusterChange::Joined(member.clone())),
                (MemberState::Alive, MemberState::Dead) => {
                    send(ClusterChange::Died(member.clone()));
                }
                (MemberState::Left, MemberState::Left) | (MemberState::Dead, MemberState::Dead) => {
                }
                (_, MemberState::Left) => send(ClusterChange::Left(member.clone())),
                // A departed node that also went silent stays departed.
                (MemberState::Left, MemberState::Dead) => {}
            },
        }
        members.push(member);
    }
    for gone in previous {
        if !members
            .iter()
            .any(|member| member.meta.name == gone.meta.name)
        {
            send(ClusterChange::Forgotten(gone.meta.name.clone()));
        }
    }
    members
}

/// Re-reads chitchat's state whenever its live set changes and at every gossip round (dead
/// nodes' and hint changes are not notified), and publishes the differences. Also tells the
/// transport which ids chitchat's digest holds ([`crate::sealed::DigestBudget`]).
async fn observe_forever(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    interval: Duration,
    members_tx: watch::Sender<Vec<Member>>,
    changes: broadcast::Sender<ClusterChange>,
    transport: TransportControl,
) {
    let mut live_watcher = chitchat.lock().await.live_nodes_watcher();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = live_watcher.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = ticker.tick() => {}
        }
        let observed = {
            let guard = chitchat.lock().await;
            transport.reset_digest(digest_ids(&guard));
            observe(&guard)
        };
        let previous = members_tx.borrow().clone();
        let members = merge(&previous, observed, Instant::now(), &changes);
        members_tx.send_if_modified(|current| {
            if *current == members {
                return false;
            }
            *current = members;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, generation: u64) -> NodeMeta {
        NodeMeta {
            name: name.to_string(),
            generation,
            quic_addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
            api_url: None,
            capacity: Resources {
                vcpus: 4,
                memory_mib: 8192,
            },
            free: Resources {
                vcpus: 4,
                memory_mib: 8192,
            },
            labels: BTreeMap::new(),
            version: "0.1.0".to_string(),
            accelerator: "tcg".to_string(),
        }
    }

    fn observed(name: &str, generation: u64, state: MemberState) -> (String, Observed) {
        (
            name.to_string(),
            Observed {
                meta: meta(name, generation),
                gossip_addr: SocketAddr::from(([127, 0, 0, 1], 9000)),
                state,
                hints: BTreeMap::new(),
            },
        )
    }

    fn drain(receiver: &mut broadcast::Receiver<ClusterChange>) -> Vec<ClusterChange> {
        std::iter::from_fn(|| receiver.try_recv().ok()).collect()
    }

    #[test]
    fn node_meta_round_trips_through_json() {
        let mut original = meta("a", 3);
        original.labels.insert("rack".into(), "r1".into());
        original.api_url = Some("http://127.0.0.1:8080".into());
        let json = serde_json::to_string(&original).expect("encode");
        let decoded: NodeMeta = serde_json::from_str(&json).expect("decode");
        assert_eq!(decoded, original);
    }

    #[test]
    fn merge_reports_joins_deaths_and_restarts() {
        let (changes, mut receiver) = broadcast::channel(16);
        let start = Instant::now();
        let first = merge(
            &[],
            BTreeMap::from([observed("a", 1, MemberState::Alive)]),
            start,
            &changes,
        );
        assert!(
            matches!(drain(&mut receiver).as_slice(), [ClusterChange::Joined(m)] if m.name() == "a")
        );

        let later = start + Duration::from_secs(1);
        let dead = merge(
            &first,
            BTreeMap::from([observed("a", 1, MemberState::Dead)]),
            later,
            &changes,
        );
        assert!(matches!(
            drain(&mut receiver).as_slice(),
            [ClusterChange::Died(_)]
        ));
        assert_eq!(dead[0].since, later);

        let still_dead = merge(
            &dead,
            BTreeMap::from([observed("a", 1, MemberState::Dead)]),
            later + Duration::from_secs(1),
            &changes,
        );
        assert!(drain(&mut receiver).is_empty());
        assert_eq!(still_dead[0].since, later);

        let restarted = merge(
            &still_dead,
            BTreeMap::from([observed("a", 2, MemberState::Alive)]),
            later,
            &changes,
        );
        assert!(
            matches!(drain(&mut receiver).as_slice(), [ClusterChange::Joined(m)] if m.meta.generation == 2)
        );
        assert!(restarted[0].is_alive());

        merge(&restarted, BTreeMap::new(), later, &changes);
        assert!(
            matches!(drain(&mut receiver).as_slice(), [ClusterChange::Forgotten(name)] if name == "a")
        );
    }

    #[test]
    fn merge_reports_updates_and_departures() {
        let (changes, mut receiver) = broadcast::channel(16);
        let now = Instant::now();
        let first = merge(
            &[],
            BTreeMap::from([observed("a", 1, MemberState::Alive)]),
            now,
            &changes,
        );
        drain(&mut receiver);
        let mut updated = observed("a", 1, MemberState::Alive);
        updated.1.meta.free.vcpus = 1;
        let second = merge(&first, BTreeMap::from([updated]), now, &changes);
        assert!(
            matches!(drain(&mut receiver).as_slice(), [ClusterChange::Updated(m)] if m.meta.free.vcpus == 1)
        );
        merge(
            &second,
            BTreeMap::from([observed("a", 1, MemberState::Left)]),
            now,
            &changes,
        );
        assert!(matches!(
            drain(&mut receiver).as_slice(),
            [ClusterChange::Left(_)]
        ));
    }

    #[test]
    fn merge_replaces_a_live_old_generation() {
        let (changes, mut receiver) = broadcast::channel(16);
        let now = Instant::now();
        let first = merge(
            &[],
            BTreeMap::from([observed("a", 1, MemberState::Alive)]),
            now,
            &changes,
        );
        drain(&mut receiver);
        merge(
            &first,
            BTreeMap::from([observed("a", 2, MemberState::Alive)]),
            now,
            &changes,
        );
        let seen = drain(&mut receiver);
        assert!(
            matches!(seen.as_slice(), [ClusterChange::Died(old), ClusterChange::Joined(new)]
            if old.meta.generation == 1 && new.meta.generation == 2)
        );
    }

    #[test]
    fn the_config_debug_hides_the_key() {
        let config =
            MembershipConfig::new("lab", [0xAB; 32], SocketAddr::from(([127, 0, 0, 1], 0)));
        let printed = format!("{config:?}");
        assert!(printed.contains("redacted"));
        assert!(!printed.contains("171"));
    }
}
