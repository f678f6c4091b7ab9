//! The cluster's lifecycle events: each node keeps its own latest ones, numbered; a node
//! gathers everyone's by asking each member for those after the last number it has from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use sd_proto::Event;
use sd_proto::peer::{PeerRequest, PeerResponse};

use super::Node;

/// How long a member has to answer for its events (a slow one is asked again next time).
const EVENTS_DEADLINE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Where a reader of the cluster's events is: the last event number it has from each node.
#[derive(Debug, Clone, Default)]
pub struct EventCursor {
    after: BTreeMap<String, u64>,
}

impl Node {
    /// This node's own events after number `after`, oldest first.
    pub fn events_after(&self, after: u64) -> Vec<Event> {
        self.records().events_after(after)
    }

    /// The events of every reachable member (this one included) that `cursor` has not seen,
    /// oldest first by time, and moves the cursor past them. A member that does not answer
    /// is asked again next time, from where it was.
    pub async fn cluster_events(&self, cursor: &mut EventCursor) -> Vec<Event> {
        let me = self.inner.config.name.clone();
        let mut events = self.events_after(cursor.after.get(&me).copied().unwrap_or(0));
        if let Some(peers) = self.inner.services.peers.clone() {
            let others: Vec<String> = peers
                .describe()
                .into_iter()
                .filter(|member| member.state == "alive" && member.name != me)
                .map(|member| member.name)
                .collect();
            let calls = others.into_iter().map(|node| {
                let peers = Arc::clone(&peers);
                let after = cursor.after.get(&node).copied().unwrap_or(0);
                async move {
                    let answer = peers
                        .call(&node, PeerRequest::Events { after }, EVENTS_DEADLINE)
                        .await;
                    match answer {
                        Ok(PeerResponse::Events(events)) => events,
                        _ => Vec::new(),
                    }
                }
            });
            for answer in futures::future::join_all(calls).await {
                events.extend(answer);
            }
        }
        // The newest number of each node in this batch: a restarted agent numbers from 1
        // again, and its journal then answered everything it has.
        let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
        for event in &events {
            let seq = newest.entry(&event.node).or_default();
            *seq = (*seq).max(event.seq);
        }
        for (node, seq) in newest {
            cursor.after.insert(node.to_string(), seq);
        }
        events.sort_by_key(|event| (event.unix_ms, event.seq));
        events
    }
}
