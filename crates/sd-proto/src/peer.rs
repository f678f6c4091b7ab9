//! What nodes ask each other over the cluster transport (QUIC with mutual TLS).
//!
//! A component that runs on another node than its parent is a *fragment* there: the parent's
//! node keeps a proxy for it and drives it with these requests; the fragment reports its end
//! back the same way. Every fragment request carries the deployment's epoch and the proxy's
//! incarnation, so a node acting on stale ownership is recognised and refused. Before a node
//! records a deploy, it claims the deployment's name on the other members
//! ([`PeerRequest::Claim`]): at most one of two concurrent deploys of a name gets a majority.
//!
//! These types are encoded with bincode (no self-describing format): add new requests at the
//! end of the enums, and bump the transport's protocol version when a field changes.

use serde::{Deserialize, Serialize};

use crate::{DeploymentStatus, DeploymentSummary, Event, NodeInfo, Override};

/// Which fragment a request is about: one component of a deployment, run for one incarnation
/// of its parent's proxy under one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FragmentKey {
    /// The deployment.
    pub deployment: String,
    /// The epoch of the deployment's placement the request is made under.
    pub epoch: u64,
    /// The component's index in the deployment's plan (parents first, the same on every node).
    pub index: u32,
    /// The incarnation of the proxy that owns it.
    pub incarnation: u64,
}

/// Run a component (and the subtree that runs with it) on the receiving node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragmentSpec {
    /// Which fragment.
    pub key: FragmentKey,
    /// The node of its parent, where its end is reported.
    pub parent_node: String,
    /// The node holding the deployment's root.
    pub root_node: String,
    /// The resolved `sfConfig` in SmartFrog notation (every node plans the same tree).
    pub description: String,
    /// The file it came from, for display.
    pub source: String,
    /// Take over a fragment already running here under an older epoch instead of starting it.
    pub adopt: bool,
    /// The live changes made to the deployment so far, applied to the description in order.
    pub overrides: Vec<Override>,
}

/// A deployment record as its root replicates it to peers, so that another node can take the
/// deployment over if the root is lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The deployment as `sd ls` shows it.
    pub summary: DeploymentSummary,
    /// The resolved `sfConfig` in SmartFrog notation.
    pub description: String,
    /// The epoch of its placement.
    pub epoch: u64,
    /// Where each fragment runs: (plan index, node).
    pub placements: Vec<(u32, String)>,
    /// The live changes made to the deployment so far.
    pub overrides: Vec<Override>,
}

/// Which phase of a live reconfiguration a [`PeerRequest::Reconfigure`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Check that the change can be made here; change nothing.
    Validate,
    /// Make it: record it durably, then apply it to the running components.
    Commit,
}

/// Who claims a deployment name: one deploy through one node. A retry of the same deploy
/// is the same claimant (same node, generation and nonce), so it is granted again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimId {
    /// The node the deploy came through.
    pub node: String,
    /// That node's generation (new at every agent start).
    pub generation: u64,
    /// Random, drawn once per deploy request.
    pub nonce: u64,
}

/// Why a node does not grant a claim on a deployment name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimRefusal {
    /// The node holds a deployment of that name (its record or a replica) whose root is
    /// `root`.
    Deployed {
        /// The deployment's root node.
        root: String,
    },
    /// Another deploy of that name, through `node`, holds an unexpired claim on it.
    Claimed {
        /// The node that deploy came through.
        node: String,
    },
}

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Who are you?
    Info,
    /// Deploy a fragment here; answered with [`PeerResponse::Outcome`].
    Deploy(FragmentSpec),
    /// Start a deployed fragment; answered with [`PeerResponse::Outcome`].
    Start(FragmentKey),
    /// Is the fragment (and its workload) alive? Answered with [`PeerResponse::Alive`].
    Ping(FragmentKey),
    /// Terminate a fragment and clean it away; answered with [`PeerResponse::Done`] once done.
    Terminate(FragmentKey),
    /// A fragment ended on its own (sent to its parent's node).
    Ended {
        /// Which fragment.
        key: FragmentKey,
        /// It finished normally (else it failed).
        normal: bool,
        /// Why, for a failure.
        reason: Option<String>,
    },
    /// The records of a deployment this node holds (its root's or its fragments').
    Status {
        /// The deployment.
        deployment: String,
    },
    /// The deployments whose root is the receiving node.
    Deployments,
    /// Terminate a deployment whose root is the receiving node.
    TerminateDeployment {
        /// The deployment.
        deployment: String,
    },
    /// Keep (or update) a replica of a deployment record.
    Replicate(Replica),
    /// Drop the replica of a terminated deployment.
    Forget {
        /// The deployment.
        deployment: String,
        /// The epoch it was terminated under.
        epoch: u64,
    },
    /// Part of a domain's log.
    ReadLog {
        /// The deployment.
        deployment: String,
        /// The component's path.
        path: String,
        /// From which byte.
        offset: u64,
        /// At most this many bytes.
        max: u32,
    },
    /// The fragments of a deployment this node runs (a new root looks for what to adopt).
    Fragments {
        /// The deployment.
        deployment: String,
    },
    /// Do the receiver's components still own these fragments? (Their node asks their
    /// parents' node, all at once; answered with [`PeerResponse::Owned`].)
    Owns(Vec<FragmentKey>),
    /// Grant `claimant` the deployment name `name` (before a deploy is recorded, its node
    /// needs grants from a strict majority of the known members). Answered with
    /// [`PeerResponse::Granted`] or [`PeerResponse::NotGranted`].
    Claim {
        /// The deployment name.
        name: String,
        /// Who claims it.
        claimant: ClaimId,
    },
    /// Drop `claimant`'s claim on `name` (its deploy did not go ahead); answered with
    /// [`PeerResponse::Done`].
    Release {
        /// The deployment name.
        name: String,
        /// Whose claim.
        claimant: ClaimId,
    },
    /// One phase of a live reconfiguration of a deployment the receiver holds part of:
    /// `overrides` is the deployment's whole list of changes with the new one (`change`)
    /// last. Answered with [`PeerResponse::Done`] or [`PeerResponse::Refused`] (why).
    Reconfigure {
        /// The deployment.
        deployment: String,
        /// The epoch the coordinator saw it under.
        epoch: u64,
        /// Every change, the new one last.
        overrides: Vec<Override>,
        /// Validate or commit.
        phase: Phase,
    },
    /// The lifecycle events this node's agent recorded after its event number `after` in its
    /// run `generation` (all it keeps if that is not its run now; at most a few thousand,
    /// oldest first). Answered with [`PeerResponse::Events`].
    Events {
        /// The agent run the asker's number is from.
        generation: u64,
        /// The last event number the asker has.
        after: u64,
    },
}

/// A component's failure, as it crosses the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureText {
    /// The component that failed first.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// An answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Done.
    Done,
    /// Who the node is.
    Info(NodeInfo),
    /// The outcome of a deploy or start.
    Outcome(Result<(), FailureText>),
    /// The answer to a ping.
    Alive(Result<(), String>),
    /// A deployment as one node holds it (`None`: it holds nothing of it).
    Status(Option<DeploymentStatus>),
    /// Deployments.
    Deployments(Vec<DeploymentSummary>),
    /// Part of a log: the bytes and whether the end was reached.
    Log {
        /// The bytes read.
        bytes: Vec<u8>,
        /// The offset after them.
        next: u64,
    },
    /// The request was refused: stale epoch, unknown fragment, not the root, ...
    Refused(String),
    /// The fragments a node runs: each one's key and the node its parent runs on.
    Fragments(Vec<(FragmentKey, String)>),
    /// For each key asked about, whether the proxy of that incarnation still runs here.
    Owned(Vec<bool>),
    /// The claim on a deployment name is granted (for about 10 s, or until the claimant's
    /// replica arrives or it releases the claim).
    Granted,
    /// The claim on a deployment name is not granted, and why.
    NotGranted(ClaimRefusal),
    /// Lifecycle events, oldest first, of the answering agent's run `generation`.
    Events {
        /// The answering agent's generation (its events are numbered anew in each).
        generation: u64,
        /// The events.
        events: Vec<Event>,
    },
    /// A reconfiguration was committed here (recorded durably, the plan replaced), but the
    /// running component could not apply it (it applies when the component next starts).
    NotApplied(String),
}
