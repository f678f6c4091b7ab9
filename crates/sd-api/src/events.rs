//! `GET /v1/events`: the cluster's lifecycle events, as a JSON list or followed as
//! Server-Sent Events. A follower hears this node's own events at once and the other
//! members' within [`POLL`], each once.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use sd_proto::Event;
use sd_runtime::{EventCursor, Node};
use tokio::sync::{broadcast, watch};

/// How often a follower asks the other members for their new events.
const POLL: Duration = Duration::from_millis(200);

/// Every event the members keep (a few thousand each), oldest first.
pub(crate) async fn recent(node: &Node) -> Vec<Event> {
    node.cluster_events(&mut EventCursor::default(), true).await
}

/// The events from now on (with `history`, those kept first), until the server shuts down.
pub(crate) async fn follow(
    node: Node,
    history: bool,
    closing: watch::Receiver<bool>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let mut cursor = EventCursor::default();
    let local = node.events();
    // Without history, what the members hold now is skipped.
    let first = node.cluster_events(&mut cursor, true).await;
    let backlog = if history { first } else { Vec::new() };
    let state = Follower {
        node,
        cursor,
        local,
        closing,
        pending: backlog.into(),
        poll: tokio::time::interval(POLL),
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.pending.pop_front() {
                let frame = SseEvent::default()
                    .event("lifecycle")
                    .json_data(&event)
                    .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"));
                return Some((Ok(frame), state));
            }
            if *state.closing.borrow() {
                return None;
            }
            // This node's own events at once (without waiting for the others); the other
            // members' at each poll.
            let peers = tokio::select! {
                heard = state.local.recv() => {
                    if matches!(heard, Err(broadcast::error::RecvError::Closed)) {
                        return None;
                    }
                    // What else has arrived is read from the journal with it.
                    while state.local.try_recv().is_ok() {}
                    false
                }
                _ = state.poll.tick() => true,
                _ = state.closing.changed() => return None,
            };
            let batch = state.node.cluster_events(&mut state.cursor, peers).await;
            state.pending.extend(batch);
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

struct Follower {
    node: Node,
    cursor: EventCursor,
    local: broadcast::Receiver<Event>,
    closing: watch::Receiver<bool>,
    pending: std::collections::VecDeque<Event>,
    poll: tokio::time::Interval,
}
