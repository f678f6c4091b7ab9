//! What the runtime needs from the cluster, and nothing more: a way to ask another node
//! something, and who the members are. The agent implements [`Peers`] over QUIC and gossip
//! (`sd-cluster`); tests implement it in process. A node without peers runs everything
//! locally, as a single-node cluster.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sd_placement::NodeView;
use sd_proto::peer::{PeerRequest, PeerResponse};

/// The other nodes, as the runtime sees them.
pub trait Peers: Send + Sync + 'static {
    /// Sends `request` to `node` and waits at most `deadline` for the answer. The error says
    /// why the node could not answer (unknown, unreachable, timed out, refused the request).
    fn call(
        &self,
        node: &str,
        request: PeerRequest,
        deadline: Duration,
    ) -> BoxFuture<'static, Result<PeerResponse, String>>;

    /// Every known member, this node included, dead ones too (they count for majorities).
    fn members(&self) -> Vec<NodeView>;

    /// Whether this node is on a side that may replace what it lost: it has heard lately from
    /// a strict majority of the known members (itself included). The default trusts the
    /// membership view; the cluster layer confirms it by contact.
    fn has_quorum(&self) -> bool {
        let members = self.members();
        let alive = members.iter().filter(|m| m.alive).count();
        sd_placement::majority(members.len(), alive)
    }

    /// Whether `node` is gone: not alive and silent long enough that a stalled node is not
    /// taken for a lost one. The default trusts the membership view.
    fn is_gone(&self, node: &str) -> bool {
        !self.members().iter().any(|m| m.name == node && m.alive)
    }

    /// The counters of the gossip and the transport, if there are any.
    fn stats(&self) -> Option<sd_proto::ClusterStats> {
        None
    }

    /// Tells the other nodes how much this node has left for domains.
    fn publish_free(&self, _free: sd_placement::Resources) {}

    /// Every known member as `sd nodes` shows it.
    fn describe(&self) -> Vec<sd_proto::MemberInfo> {
        self.members()
            .into_iter()
            .map(|view| sd_proto::MemberInfo {
                name: view.name,
                state: if view.alive { "alive" } else { "dead" }.to_string(),
                generation: 0,
                peer_addr: String::new(),
                api_url: None,
                vcpus: view.capacity.vcpus,
                free_vcpus: view.free.vcpus,
                memory_mib: view.capacity.memory_mib,
                free_memory_mib: view.free.memory_mib,
                labels: view.labels,
                version: String::new(),
                accelerator: String::new(),
                is_self: false,
            })
            .collect()
    }
}

/// The members alive now, and whether they are a strict majority of the known members: only a
/// side of a partition that sees a majority replaces what it lost (split brain).
pub(crate) fn has_majority(peers: &Arc<dyn Peers>) -> bool {
    peers.has_quorum()
}

/// Whether `node` is known and alive.
pub(crate) fn is_alive(peers: &Arc<dyn Peers>, node: &str) -> bool {
    peers.members().iter().any(|m| m.name == node && m.alive)
}

/// How long a fragment's deploy or start may take on the other node: VMs boot slowly under
/// emulation, and the parent waits for it as it would for a local child.
pub(crate) const STEP_DEADLINE: Duration = Duration::from_secs(600);

/// How long a short request (status, terminate bookkeeping, replication) may take.
pub(crate) const SHORT_DEADLINE: Duration = Duration::from_secs(5);
