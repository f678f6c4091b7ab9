//! The cluster's lifecycle events: each node keeps its own latest ones, numbered anew in each
//! agent run (generation); a node gathers everyone's by asking each member for those after
//! the last number it has from that member's run.

use std::collections::BTreeMap;
use std::sync::Arc;

use sd_proto::Event;
use sd_proto::peer::{PeerRequest, PeerResponse};

use super::Node;

/// How long a member has to answer for its events (a slow one is asked again next time).
const EVENTS_DEADLINE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Where a reader of the cluster's events is: per node, the agent run (generation) and the
/// last event number it has from it.
#[derive(Debug, Clone, Default)]
pub struct EventCursor {
    after: BTreeMap<String, (u64, u64)>,
}

impl EventCursor {
    fn of(&self, node: &str) -> (u64, u64) {
        self.after.get(node).copied().unwrap_or_default()
    }

    /// Moves past `events`, numbered in run `generation` of `node`.
    fn advance(&mut self, node: &str, generation: u64, events: &[Event]) {
        let (known, last) = self.of(node);
        let last = if known == generation { last } else { 0 };
        let newest = events.iter().map(|e| e.seq).max().unwrap_or(last);
        self.after
            .insert(node.to_string(), (generation, newest.max(last)));
    }
}

impl Node {
    /// This node's own events after number `after` of its run `generation` (all it keeps if
    /// that is another run), oldest first; with its generation.
    pub fn events_after(&self, generation: u64, after: u64) -> (u64, Vec<Event>) {
        let mine = self.inner.generation;
        let after = if generation == mine { after } else { 0 };
        (mine, self.records().events_after(after))
    }

    /// The events that `cursor` has not seen, this node's and (with `peers`) every reachable
    /// member's, oldest first by time, and moves the cursor past them. A member that does not
    /// answer is asked again next time, from where it was.
    pub async fn cluster_events(&self, cursor: &mut EventCursor, peers: bool) -> Vec<Event> {
        let me = self.inner.config.name.clone();
        let (generation, after) = cursor.of(&me);
        let (generation, mut events) = self.events_after(generation, after);
        cursor.advance(&me, generation, &events);
        if let Some(transport) = self.inner.services.peers.clone().filter(|_| peers) {
            let calls = self.gossip_alive_peers().into_iter().map(|node| {
                let transport = Arc::clone(&transport);
                let (generation, after) = cursor.of(&node);
                async move {
                    let request = PeerRequest::Events { generation, after };
                    match transport.call(&node, request, EVENTS_DEADLINE).await {
                        Ok(PeerResponse::Events { generation, events }) => {
                            Some((node, generation, events))
                        }
                        _ => None,
                    }
                }
            });
            for (node, generation, answer) in
                futures::future::join_all(calls).await.into_iter().flatten()
            {
                cursor.advance(&node, generation, &answer);
                events.extend(answer);
            }
        }
        events.sort_by_key(|event| (event.unix_ms, event.seq));
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Event {
        Event {
            seq,
            deployment: "d".into(),
            path: String::new(),
            state: "running".into(),
            node: "n2".into(),
            unix_ms: 0,
            detail: None,
        }
    }

    #[test]
    fn a_cursor_follows_a_run_and_starts_over_with_the_next() {
        let mut cursor = EventCursor::default();
        assert_eq!(cursor.of("n2"), (0, 0));
        cursor.advance("n2", 7, &[event(1), event(2)]);
        assert_eq!(cursor.of("n2"), (7, 2));
        cursor.advance("n2", 7, &[]);
        assert_eq!(cursor.of("n2"), (7, 2), "nothing new keeps the place");
        // The agent restarted: its numbers start again, whatever the old cursor said.
        cursor.advance("n2", 8, &[event(1)]);
        assert_eq!(cursor.of("n2"), (8, 1));
        cursor.advance("n2", 9, &[]);
        assert_eq!(cursor.of("n2"), (9, 0));
    }
}
