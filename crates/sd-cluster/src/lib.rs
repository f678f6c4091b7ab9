//! `sd-cluster`: one node joined to its cluster. It owns the wiring, nothing else: the gossip
//! membership (`sd-gossip`) says who is there and alive, the QUIC transport (`sd-net`)
//! carries the runtime's peer requests ([`sd_proto::peer`]) with mutual TLS, and this crate
//! turns both into the [`Peers`] the runtime uses and serves the requests of other nodes to
//! the local [`Node`].
//!
//! Guarantees:
//! - A peer is called only at the address its gossip published, and its certificate must name
//!   it (the transport refuses any other).
//! - A node declared dead is reported lost to the runtime (which restarts its components
//!   elsewhere) only while this node sees a strict majority of the known members; on a
//!   minority side nothing is replaced, so a partition cannot double what runs (split brain).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use sd_gossip::{ClusterChange, Member, Membership, MembershipConfig, NodeMeta};
use sd_net::{Endpoint, Identity, PeerName, Service};
use sd_placement::NodeView;
use sd_proto::MemberInfo;
use sd_proto::peer::{PeerRequest, PeerResponse};
use sd_runtime::{Node, Peers};

/// What went wrong joining or running the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The QUIC transport could not start.
    #[error("cannot start the peer transport: {0}")]
    Transport(#[from] sd_net::Error),
    /// The gossip membership could not start.
    #[error("cannot start the gossip membership: {0}")]
    Gossip(#[from] sd_gossip::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// How a node joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The node's certificate, key, CA and the cluster's gossip key.
    pub identity: Identity,
    /// Where peers reach this node over QUIC (port 0 picks one).
    pub peer_listen: SocketAddr,
    /// Where this node gossips (UDP; port 0 picks one).
    pub gossip_listen: SocketAddr,
    /// Gossip addresses of nodes to join through (`sd agent --join`).
    pub seeds: Vec<SocketAddr>,
    /// The node's API, published for the console and `sd nodes`.
    pub api_url: Option<String>,
    /// The node's labels (`sdConstraints` match them).
    pub labels: BTreeMap<String, String>,
    /// What the node offers domains.
    pub capacity: sd_gossip::Resources,
    /// The generation of this agent start.
    pub generation: u64,
    /// The accelerator VMs get here (`kvm`, `tcg`, or why none).
    pub accelerator: String,
}

/// The node's end of the cluster: membership and transport. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    membership: Membership,
    endpoint: Endpoint<NodeService>,
    service: Arc<NodeService>,
    peers: Arc<dyn Peers>,
    quorum: Arc<Quorum>,
    contact: Arc<tokio::task::JoinHandle<()>>,
}

/// Serves peers' requests to the node once it is open; before that, refuses them.
struct NodeService {
    node: OnceLock<Node>,
}

impl Service for NodeService {
    type Request = PeerRequest;
    type Response = PeerResponse;

    fn handle(&self, peer: PeerName, request: PeerRequest) -> BoxFuture<'static, PeerResponse> {
        let node = self.node.get().cloned();
        Box::pin(async move {
            match node {
                Some(node) => node.serve_peer(peer.as_str(), request).await,
                None => PeerResponse::Refused("the node is still starting".into()),
            }
        })
    }
}

/// The cluster as the runtime sees it.
struct ClusterPeers {
    membership: Membership,
    endpoint: Endpoint<NodeService>,
    quorum: Arc<Quorum>,
}

/// Whom this node has heard from lately over the transport, by direct contact: gossip says
/// who is alive, but after a partition it declares the other side dead one node at a time,
/// and a side that counted on the gossip alone could believe for a moment that it still had
/// a majority. A side acts on a loss only with a majority it has just reached.
#[derive(Default)]
struct Quorum {
    /// When each member last answered.
    answered: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// How often every member is contacted.
const CONTACT_PERIOD: Duration = Duration::from_millis(250);
/// How recent an answer must be to count.
const CONTACT_FRESHNESS: Duration = Duration::from_millis(1000);
/// How long a member declared dead must also have been silent over QUIC to be lost: a node
/// stalled for a moment (a busy host) misses gossip rounds but is not replaced.
const LOSS_SILENCE: Duration = Duration::from_millis(1500);

impl Quorum {
    fn heard(&self, node: &str) {
        self.answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node.to_string(), std::time::Instant::now());
    }

    /// Whether `node` has been silent for at least `silence` (never heard: silent).
    fn silent_for(&self, node: &str, silence: Duration) -> bool {
        let answered = self
            .answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        answered.get(node).is_none_or(|at| at.elapsed() >= silence)
    }

    /// Whether `node` answered lately, or has not been asked yet (it joined a moment ago).
    fn answers(&self, node: &str) -> bool {
        let answered = self
            .answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        answered
            .get(node)
            .is_none_or(|at| at.elapsed() <= CONTACT_FRESHNESS)
    }

    /// A strict majority of `known` members answered lately (this node counts itself).
    fn holds(&self, me: &str, known: &[String]) -> bool {
        let answered = self
            .answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let reached = known
            .iter()
            .filter(|name| {
                *name == me
                    || answered
                        .get(*name)
                        .is_some_and(|at| at.elapsed() <= CONTACT_FRESHNESS)
            })
            .count();
        sd_placement::majority(known.len(), reached)
    }
}

/// Contacts every known member, all the time: each one every [`CONTACT_PERIOD`], on its own
/// (a silent member's timeout does not delay the others), the dead too (one declared dead by
/// gossip that still answers is stalled, not lost).
async fn keep_contact(
    membership: Membership,
    endpoint: Endpoint<NodeService>,
    quorum: Arc<Quorum>,
) {
    let me = membership.local().name;
    let in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
    let mut tick = tokio::time::interval(CONTACT_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for member in membership.members() {
            let name = member.name().to_string();
            if member.state == sd_gossip::MemberState::Left || name == me {
                continue;
            }
            let started = in_flight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.clone());
            if !started {
                continue;
            }
            let (endpoint, quorum, in_flight) = (
                endpoint.clone(),
                Arc::clone(&quorum),
                Arc::clone(&in_flight),
            );
            tokio::spawn(async move {
                let answer = endpoint
                    .call(
                        &name,
                        member.meta.quic_addr,
                        &PeerRequest::Info,
                        CONTACT_PERIOD * 2,
                    )
                    .await;
                if answer.is_ok() {
                    quorum.heard(&name);
                }
                in_flight
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&name);
            });
        }
    }
}

impl Peers for ClusterPeers {
    fn call(
        &self,
        node: &str,
        request: PeerRequest,
        deadline: Duration,
    ) -> BoxFuture<'static, std::result::Result<PeerResponse, String>> {
        let address = self
            .membership
            .members()
            .into_iter()
            .find(|member| member.name() == node)
            .map(|member| (member.is_alive(), member.meta.quic_addr));
        let endpoint = self.endpoint.clone();
        let node = node.to_string();
        Box::pin(async move {
            let Some((alive, addr)) = address else {
                return Err(format!("node \"{node}\" is not a member of the cluster"));
            };
            if !alive {
                return Err(format!("node \"{node}\" is down"));
            }
            endpoint
                .call(&node, addr, &request, deadline)
                .await
                .map_err(|error| error.to_string())
        })
    }

    fn members(&self) -> Vec<NodeView> {
        // Alive: the gossip says so and, lately, it answered: a node whose gossip has not
        // timed out yet but that no longer answers gets no new work.
        let me = self.membership.local().name;
        self.membership
            .members()
            .iter()
            .map(|member| {
                let mut view = node_view(member);
                view.alive = view.alive && (view.name == me || self.quorum.answers(&view.name));
                view
            })
            .collect()
    }

    fn is_gone(&self, node: &str) -> bool {
        let gossip_alive = self
            .membership
            .members()
            .iter()
            .any(|member| member.name() == node && member.is_alive());
        !gossip_alive && self.quorum.silent_for(node, LOSS_SILENCE)
    }

    fn has_quorum(&self) -> bool {
        let me = self.membership.local().name;
        let known: Vec<String> = self
            .membership
            .members()
            .iter()
            .map(|member| member.name().to_string())
            .collect();
        self.quorum.holds(&me, &known)
    }

    fn stats(&self) -> Option<sd_proto::ClusterStats> {
        let gossip = self.membership.stats();
        let rpc = self.endpoint.stats();
        let micros = |q: f64| {
            rpc.latency_quantile(q)
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        };
        Some(sd_proto::ClusterStats {
            gossip_sent_packets: gossip.sent_packets,
            gossip_sent_bytes: gossip.sent_bytes,
            gossip_received_packets: gossip.received_packets,
            gossip_received_bytes: gossip.received_bytes,
            gossip_dropped_bad_auth: gossip.dropped_bad_auth,
            gossip_dropped_replay: gossip.dropped_replay,
            gossip_dropped_malformed: gossip.dropped_malformed,
            rpc_sent: rpc.requests_sent,
            rpc_failed: rpc.requests_failed,
            rpc_served: rpc.requests_served,
            rpc_refused_handshakes: rpc.refused_handshakes,
            rpc_decode_errors: rpc.decode_errors,
            rpc_open_connections: rpc.open_connections,
            rpc_p50_us: micros(0.5),
            rpc_p99_us: micros(0.99),
            rpc_latency_buckets: rpc.latency_buckets.to_vec(),
            rpc_bytes_sent: rpc.bytes_sent,
            rpc_bytes_received: rpc.bytes_received,
        })
    }

    fn publish_free(&self, reserved: sd_placement::Resources) {
        // What the node offers less what its domains reserve; published only on a change.
        let local = self.membership.local();
        let free = sd_gossip::Resources {
            vcpus: local.capacity.vcpus.saturating_sub(reserved.vcpus),
            memory_mib: local
                .capacity
                .memory_mib
                .saturating_sub(reserved.memory_mib),
        };
        if free != local.free {
            let membership = self.membership.clone();
            tokio::spawn(async move { membership.update_free(free).await });
        }
    }

    fn describe(&self) -> Vec<MemberInfo> {
        let me = self.membership.local().name;
        self.membership
            .members()
            .iter()
            .map(|member| member_info(member, member.name() == me))
            .collect()
    }
}

fn node_view(member: &Member) -> NodeView {
    let meta = &member.meta;
    let resources = |r: sd_gossip::Resources| sd_placement::Resources::new(r.vcpus, r.memory_mib);
    NodeView {
        name: meta.name.clone(),
        alive: member.is_alive(),
        capacity: resources(meta.capacity),
        free: resources(meta.free),
        labels: meta.labels.clone(),
    }
}

fn member_info(member: &Member, is_self: bool) -> MemberInfo {
    let meta = &member.meta;
    MemberInfo {
        name: meta.name.clone(),
        state: match member.state {
            sd_gossip::MemberState::Alive => "alive",
            sd_gossip::MemberState::Dead => "dead",
            sd_gossip::MemberState::Left => "left",
        }
        .to_string(),
        generation: meta.generation,
        peer_addr: meta.quic_addr.to_string(),
        api_url: meta.api_url.clone(),
        vcpus: meta.capacity.vcpus,
        free_vcpus: meta.free.vcpus,
        memory_mib: meta.capacity.memory_mib,
        free_memory_mib: meta.free.memory_mib,
        labels: meta.labels.clone(),
        version: meta.version.clone(),
        accelerator: meta.accelerator.clone(),
        is_self,
    }
}

impl Cluster {
    /// Starts the transport, then joins the gossip (publishing the transport's address).
    /// Returns the cluster and the [`Peers`] to open the node with; call [`Cluster::attach`]
    /// once the node is open.
    pub async fn start(config: ClusterConfig) -> Result<(Cluster, Arc<dyn Peers>)> {
        let service = Arc::new(NodeService {
            node: OnceLock::new(),
        });
        let name = config.identity.node_name().to_string();
        let cluster_name = config.identity.cluster_name().to_string();
        let gossip_key = *config.identity.gossip_key();
        let endpoint =
            Endpoint::bind(config.identity, config.peer_listen, Arc::clone(&service)).await?;
        let mut peer_addr = endpoint.local_addr();
        if peer_addr.ip().is_unspecified() {
            peer_addr.set_ip(config.gossip_listen.ip());
        }
        let meta = NodeMeta {
            name,
            generation: config.generation,
            quic_addr: peer_addr,
            api_url: config.api_url,
            capacity: config.capacity,
            free: config.capacity,
            labels: config.labels,
            version: env!("CARGO_PKG_VERSION").to_string(),
            accelerator: config.accelerator,
        };
        let mut gossip = MembershipConfig::new(&cluster_name, gossip_key, config.gossip_listen);
        gossip.seeds = config.seeds;
        let membership = Membership::start(gossip, meta).await?;
        let quorum = Arc::new(Quorum::default());
        let peers: Arc<dyn Peers> = Arc::new(ClusterPeers {
            membership: membership.clone(),
            endpoint: endpoint.clone(),
            quorum: Arc::clone(&quorum),
        });
        let contact = tokio::spawn(keep_contact(
            membership.clone(),
            endpoint.clone(),
            Arc::clone(&quorum),
        ));
        Ok((
            Cluster {
                membership,
                endpoint,
                service,
                peers: Arc::clone(&peers),
                quorum,
                contact: Arc::new(contact),
            },
            peers,
        ))
    }

    /// Hands the open node its peers' requests and its lost peers.
    pub fn attach(&self, node: Node) {
        let _ = self.service.node.set(node.clone());
        tokio::spawn(watch_losses(
            self.membership.clone(),
            Arc::clone(&self.peers),
            Arc::clone(&self.quorum),
            node,
        ));
    }

    /// Publishes the VM accelerator this node offers, once known (`kvm`, `tcg`, or why none).
    pub async fn publish_accelerator(&self, accelerator: &str) {
        self.membership.update_accelerator(accelerator).await;
    }

    /// Where this node gossips.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.membership.gossip_addr()
    }

    /// Where peers reach this node over QUIC.
    pub fn peer_addr(&self) -> SocketAddr {
        self.membership.local().quic_addr
    }

    /// The transport's counters (refused handshakes among them).
    pub fn transport_stats(&self) -> sd_net::Stats {
        self.endpoint.stats()
    }

    /// The gossip's counters (packets dropped for a bad key or a replay among them).
    pub fn gossip_stats(&self) -> sd_gossip::GossipStats {
        self.membership.stats()
    }

    /// Injects faults into what this node sends from now on, gossip and QUIC alike (chaos
    /// runs only: `sd agent --chaos`). The default settings inject none.
    pub fn set_faults(&self, settings: sd_proto::FaultSettings) {
        let delay = |ms: u64| std::time::Duration::from_millis(ms);
        self.membership.set_faults(sd_gossip::Faults {
            loss: settings.gossip.loss,
            delay: delay(settings.gossip.delay_ms),
            duplicate: settings.gossip.duplicate,
        });
        self.endpoint.set_faults(sd_net::Faults {
            loss: settings.quic.loss,
            delay: delay(settings.quic.delay_ms),
            duplicate: settings.quic.duplicate,
        });
    }

    /// Leaves the cluster: announces it to the peers and closes the transport.
    pub async fn shutdown(&self) {
        self.contact.abort();
        self.membership.clone().shutdown().await;
        self.endpoint.close().await;
    }
}

/// Reports every member declared dead to the node once this node has a majority by
/// contact ([`Quorum`]); a loss seen on a minority side waits (and is dropped if the node
/// comes back first), so a partition heals without components doubled.
async fn watch_losses(
    membership: Membership,
    peers: Arc<dyn Peers>,
    quorum: Arc<Quorum>,
    node: Node,
) {
    let mut changes = membership.changes();
    // (name, generation) of the members declared dead and not yet reported.
    let mut pending: Vec<(String, u64)> = Vec::new();
    let mut tick = tokio::time::interval(CONTACT_PERIOD);
    // Since when this node has had a majority. A side cut off notes the other side's deaths
    // but cannot act on them; once healed, it regains its majority a moment before every
    // member of the other side answered again, and those deaths must not then be acted on:
    // a member is lost only if it stayed silent through a whole silence period *with* a
    // majority (the chaos runs caught a healed minority restarting the majority's work).
    let mut majority_since: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(ClusterChange::Died(member)) | Ok(ClusterChange::Left(member)) => {
                    pending.push((member.name().to_string(), member.meta.generation));
                }
                Ok(ClusterChange::Joined(member)) => {
                    // The same agent back before its loss was acted on: it was not lost. A
                    // new generation (the agent restarted) ran nothing of the old one's: the
                    // old generation is still reported lost.
                    pending.retain(|(name, generation)| {
                        name != member.name() || *generation != member.meta.generation
                    });
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {}
        }
        if !peers.has_quorum() {
            majority_since = None;
            continue;
        }
        let since = *majority_since.get_or_insert_with(std::time::Instant::now);
        if pending.is_empty() || since.elapsed() < LOSS_SILENCE {
            continue;
        }
        let alive: Vec<(String, u64)> = membership
            .alive_members()
            .iter()
            .map(|member| (member.name().to_string(), member.meta.generation))
            .collect();
        let mut waiting = Vec::new();
        for lost in pending.drain(..) {
            if alive.contains(&lost) {
                continue;
            }
            if !quorum.silent_for(&lost.0, LOSS_SILENCE) {
                // Still answering: stalled, not lost (yet).
                waiting.push(lost);
                continue;
            }
            node.peer_lost(&lost.0);
        }
        pending = waiting;
    }
}
