//! A component that runs on another node. Its parent's node holds this proxy in its place:
//! the parent deploys, starts, pings and terminates it exactly as a local child, and the proxy
//! carries each step to the node that runs the component (a *fragment* there). The fragment
//! reports its own end back ([`PeerRequest::Ended`]), which the proxy passes on as its own.
//! A node that is lost ends its proxies abnormally, so their parents' strategies restart them,
//! on a node that placement chooses again.

use std::time::Duration;

use sd_proto::peer::{FragmentKey, FragmentSpec, PeerRequest, PeerResponse};

use super::{Deployment, Failure, Outcome};
use crate::cluster::STEP_DEADLINE;

/// The proxy's state: where the component runs and under which key.
pub(crate) struct Remote {
    /// The node that runs it.
    pub node: String,
    key: FragmentKey,
    /// Whether the other node holds the fragment (so terminate has something to undo).
    deployed: bool,
}

impl Remote {
    pub fn new(deployment: &Deployment, index: usize, incarnation: u64, node: String) -> Remote {
        Remote {
            node,
            key: FragmentKey {
                deployment: deployment.name.clone(),
                epoch: deployment.epoch(),
                index: u32::try_from(index).unwrap_or(u32::MAX),
                incarnation,
            },
            deployed: false,
        }
    }

    /// Sends a lifecycle request to the fragment's node. A request the transport lost (a
    /// connection reset, a datagram dropped) is sent again while the node is not gone and the
    /// deadline allows: each is idempotent for its key (a deploy again replaces what the
    /// first made), and failing a whole deployment for one lost packet is not an option (the
    /// chaos runs caught a takeover failed by a reset connection under packet loss).
    async fn call(
        &self,
        deployment: &Deployment,
        request: PeerRequest,
        deadline: Duration,
    ) -> Result<PeerResponse, String> {
        let Some(peers) = &deployment.services.peers else {
            return Err(format!(
                "it is placed on node \"{}\", but this node is not in a cluster",
                self.node
            ));
        };
        let started = tokio::time::Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            let answer = peers.call(&self.node, request.clone(), left).await;
            let pause = RETRY_PAUSE * (attempt + 1);
            let again = answer.is_err()
                && attempt < RETRIES
                && started.elapsed() + pause < deadline
                && !peers.is_gone(&self.node);
            if !again {
                return answer;
            }
            attempt += 1;
            tokio::time::sleep(pause).await;
        }
    }

    /// Deploys the fragment on its node (or, recovering, takes over the one running there).
    pub async fn deploy(&mut self, deployment: &Deployment, path: &str, adopt: bool) -> Outcome {
        let spec = FragmentSpec {
            key: self.key.clone(),
            parent_node: deployment.services.node.clone(),
            root_node: deployment.root_node(),
            description: deployment.description.clone(),
            source: deployment.source.clone(),
            adopt,
            overrides: deployment.overrides(),
        };
        let answer = self
            .call(deployment, PeerRequest::Deploy(spec), STEP_DEADLINE)
            .await;
        let outcome = outcome(&self.node, path, answer);
        self.deployed = outcome.is_ok();
        outcome
    }

    /// Starts the deployed fragment.
    pub async fn start(&self, deployment: &Deployment, path: &str) -> Outcome {
        let answer = self
            .call(
                deployment,
                PeerRequest::Start(self.key.clone()),
                STEP_DEADLINE,
            )
            .await;
        outcome(&self.node, path, answer)
    }

    /// A ping of the fragment through its node, to run away from the actor (the network may
    /// be slow; the parent's own timeout bounds the wait).
    pub fn pinger(
        &self,
        deployment: &Deployment,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let peers = deployment.services.peers.clone();
        let node = self.node.clone();
        let request = PeerRequest::Ping(self.key.clone());
        async move {
            let Some(peers) = peers else {
                return Err("this node is not in a cluster".into());
            };
            match peers.call(&node, request, PING_DEADLINE).await {
                Ok(PeerResponse::Alive(alive)) => alive,
                Ok(PeerResponse::Refused(why)) => Err(format!("node \"{node}\": {why}")),
                Ok(other) => Err(unexpected(&node, &other)),
                Err(error) => Err(error),
            }
        }
    }

    /// Terminates the fragment; a node that cannot be reached has nothing left to undo here
    /// (if it comes back, it finds its fragment fenced and cleans it itself).
    pub async fn terminate(&mut self, deployment: &Deployment) {
        if !self.deployed {
            return;
        }
        self.deployed = false;
        let _ = self
            .call(
                deployment,
                PeerRequest::Terminate(self.key.clone()),
                STEP_DEADLINE,
            )
            .await;
    }

    /// The fragment ended on its own: it is gone from its node already.
    pub fn ended(&mut self) {
        self.deployed = false;
    }
}

/// How many times a lifecycle request the transport lost is sent again.
const RETRIES: u32 = 4;
/// The pause before the first resend (then twice, three times as long ...).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How long a remote ping may wait for its answer.
const PING_DEADLINE: Duration = Duration::from_secs(2);

fn unexpected(node: &str, answer: &PeerResponse) -> String {
    format!("node \"{node}\" answered something unexpected: {answer:?}")
}

fn outcome(node: &str, path: &str, answer: Result<PeerResponse, String>) -> Outcome {
    let failure = |reason: String| Failure {
        path: path.to_string(),
        reason,
    };
    match answer {
        Ok(PeerResponse::Outcome(Ok(()))) => Ok(()),
        Ok(PeerResponse::Outcome(Err(text))) => Err(Failure {
            path: text.path,
            reason: text.reason,
        }),
        Ok(PeerResponse::Refused(why)) => Err(failure(format!("node \"{node}\" refused: {why}"))),
        Ok(other) => Err(failure(unexpected(node, &other))),
        Err(error) => Err(failure(format!("on node \"{node}\": {error}"))),
    }
}
