//! Name claims: two deploys of one name through two nodes are never both acknowledged (INV-2).
//!
//! Before it records a deployment, the node it is deployed through claims the name on itself
//! and on every known member ([`PeerRequest::Claim`]), and goes ahead only with grants from a
//! strict majority of the known members, dead ones counted (as for every quorum of the
//! cluster). Two majorities share a member, and a member grants a name to one claimant at a
//! time, so at most one of two concurrent deploys of a name gets its majority.
//!
//! The grant rule ([`Claims::claim`]): a node grants a name if it holds no deployment of it
//! (no record, no replica) and no unexpired claim of another claimant on it. A claim lasts
//! [`CLAIM_LIFETIME`]; it is dropped earlier when the claimant's replica arrives (the replica
//! refuses later claims itself) or when the claimant releases it. A later claim through the
//! same node (same or newer generation) replaces that node's earlier one: a node runs one
//! deploy of a name at a time (`reserve`), so the earlier one has ended.
//!
//! Without a majority the claimant releases what it was granted and tries again after a
//! short random pause ([`CLAIM_ATTEMPTS`] in all, so that in an even split one of the two
//! usually wins), then refuses the deploy. A node without peers claims nothing.
//!
//! The claims are kept in memory only: an agent that restarts forgets the claims it granted
//! (the deploys that hold them finish within a few seconds, and their replicas then refuse).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_proto::peer::{ClaimId, ClaimRefusal, PeerRequest, PeerResponse};

use super::{Node, lock};
use crate::cluster::Peers;
use crate::{Error, Result};

/// How long a granted claim holds a name, unless released or replaced by the claimant's
/// replica first.
pub(super) const CLAIM_LIFETIME: Duration = Duration::from_secs(10);

/// How many times a deploy tries to gather a majority of grants before it is refused.
const CLAIM_ATTEMPTS: u32 = 3;

/// How long a node waits for each member's answer to a claim.
const CLAIM_DEADLINE: Duration = Duration::from_secs(2);

/// A granted claim.
#[derive(Debug, Clone)]
struct Claim {
    claimant: ClaimId,
    expires: Instant,
}

/// The claims a node has granted, by deployment name.
#[derive(Debug, Default)]
pub(super) struct Claims {
    by_name: HashMap<String, Claim>,
}

impl Claims {
    /// The grant rule. `deployed`: the root of the deployment of that name this node holds
    /// (its record or a replica), if any. Grants (and holds the name for `claimant` until
    /// `now + CLAIM_LIFETIME`) unless the name is deployed or another claimant holds an
    /// unexpired claim on it; a claim of the same claimant is renewed, and a claim through
    /// the same node under the same or an older generation is replaced.
    pub(super) fn claim(
        &mut self,
        name: &str,
        claimant: &ClaimId,
        deployed: Option<String>,
        now: Instant,
    ) -> std::result::Result<(), ClaimRefusal> {
        self.by_name.retain(|_, claim| claim.expires > now);
        if let Some(root) = deployed {
            return Err(ClaimRefusal::Deployed { root });
        }
        if let Some(held) = self.by_name.get(name) {
            let superseded = held.claimant.node == claimant.node
                && held.claimant.generation <= claimant.generation;
            if !superseded {
                return Err(ClaimRefusal::Claimed {
                    node: held.claimant.node.clone(),
                });
            }
        }
        self.by_name.insert(
            name.to_string(),
            Claim {
                claimant: claimant.clone(),
                expires: now + CLAIM_LIFETIME,
            },
        );
        Ok(())
    }

    /// Drops `claimant`'s claim on `name` (another's stays).
    pub(super) fn release(&mut self, name: &str, claimant: &ClaimId) {
        if self
            .by_name
            .get(name)
            .is_some_and(|held| held.claimant == *claimant)
        {
            self.by_name.remove(name);
        }
    }

    /// The replica of `name` from its root `root` arrived: a claim through that node is done
    /// with (the replica refuses later claims itself).
    pub(super) fn replica_arrived(&mut self, name: &str, root: &str) {
        if self
            .by_name
            .get(name)
            .is_some_and(|held| held.claimant.node == root)
        {
            self.by_name.remove(name);
        }
    }
}

/// A majority of grants on a name: what the deploy holds until it is recorded.
pub(super) struct NameClaim {
    /// Who holds it.
    pub claimant: ClaimId,
    /// The members that granted it (this node included).
    pub granted: Vec<String>,
}

/// The answers to one round of claims.
#[derive(Debug, Default)]
struct Tally {
    /// Every known member, this node included.
    known: usize,
    /// The members that granted the claim.
    granted: Vec<String>,
    /// The members that refused it, and why.
    refused: Vec<(String, ClaimRefusal)>,
    /// The members that did not answer with a grant or a refusal, and why.
    silent: Vec<(String, String)>,
}

impl Tally {
    fn has_majority(&self) -> bool {
        sd_placement::majority(self.known, self.granted.len())
    }

    /// The root of a deployment of that name some member holds.
    fn deployed(&self) -> Option<&str> {
        self.refused.iter().find_map(|(_, refusal)| match refusal {
            ClaimRefusal::Deployed { root } => Some(root.as_str()),
            ClaimRefusal::Claimed { .. } => None,
        })
    }

    /// Why the deploy is refused: a deployment of that name exists, or another deploy of it
    /// holds claims, or too few members could be asked.
    fn refusal(&self, name: &str, me: &str) -> Error {
        if let Some(root) = self.deployed() {
            return Error::Exists {
                name: name.to_string(),
                state: format!("its root is node \"{root}\""),
            };
        }
        let claimed = self.refused.iter().find_map(|(_, refusal)| match refusal {
            ClaimRefusal::Claimed { node } => Some(node.as_str()),
            ClaimRefusal::Deployed { .. } => None,
        });
        if let Some(node) = claimed {
            return Error::Exists {
                name: name.to_string(),
                state: format!("being deployed through node \"{node}\" right now"),
            };
        }
        let (node, why) = self
            .silent
            .first()
            .map_or((me, "no answer"), |(node, why)| {
                (node.as_str(), why.as_str())
            });
        Error::Remote {
            node: node.to_string(),
            reason: format!(
                "cannot grant the name of deployment \"{name}\" ({why}): a deploy needs grants \
                 from a majority of the {} known nodes, {} granted",
                self.known,
                self.granted.len()
            ),
        }
    }
}

impl Node {
    /// The root of the deployment of that name this node holds (its record or a replica).
    fn deployed_root(&self, name: &str) -> Option<String> {
        if let Some(record) = self.records().deployment_record(name) {
            return Some(record.root_node);
        }
        lock(&self.inner.replicas)
            .get(name)
            .map(|replica| replica.summary.root_node.clone())
    }

    /// Applies the grant rule to a claim on this node (its own, or a peer's).
    fn grant(&self, name: &str, claimant: &ClaimId) -> std::result::Result<(), ClaimRefusal> {
        let deployed = self.deployed_root(name);
        lock(&self.inner.claims).claim(name, claimant, deployed, Instant::now())
    }

    /// Answers a peer's claim. The claimant is named by the caller's certificate (`from`).
    pub(super) fn answer_claim(&self, from: &str, name: &str, claimant: ClaimId) -> PeerResponse {
        if sd_store::validate_deployment_name(name).is_err() {
            return PeerResponse::Refused(format!("invalid deployment name \"{name}\""));
        }
        let claimant = ClaimId {
            node: from.to_string(),
            ..claimant
        };
        match self.grant(name, &claimant) {
            Ok(()) => PeerResponse::Granted,
            Err(refusal) => PeerResponse::NotGranted(refusal),
        }
    }

    /// Drops a peer's claim (named by the caller's certificate, `from`).
    pub(super) fn answer_release(&self, from: &str, name: &str, claimant: ClaimId) -> PeerResponse {
        let claimant = ClaimId {
            node: from.to_string(),
            ..claimant
        };
        lock(&self.inner.claims).release(name, &claimant);
        PeerResponse::Done
    }

    /// Gathers grants on `name` from a majority of the known members (trying a few times),
    /// or says why it cannot. `None` without peers: a single node needs no claim.
    pub(super) async fn claim_name(&self, name: &str) -> Result<Option<NameClaim>> {
        let Some(peers) = self.inner.services.peers.clone() else {
            return Ok(None);
        };
        let me = self.inner.config.name.clone();
        let claimant = ClaimId {
            node: me.clone(),
            generation: self.inner.generation,
            nonce: fastrand::u64(..),
        };
        let mut tally = Tally::default();
        for attempt in 0..CLAIM_ATTEMPTS {
            if attempt > 0 {
                let pause = fastrand::u64(20..=120) * u64::from(attempt);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            tally = self.claim_once(&peers, name, &claimant).await;
            if tally.has_majority() {
                return Ok(Some(NameClaim {
                    claimant,
                    granted: tally.granted,
                }));
            }
            self.release_claim(&peers, name, &claimant, &tally.granted)
                .await;
            if tally.deployed().is_some() {
                // It exists: trying again changes nothing.
                break;
            }
        }
        Err(tally.refusal(name, &me))
    }

    /// Claims `name` here, then on every other known member at once.
    async fn claim_once(&self, peers: &Arc<dyn Peers>, name: &str, claimant: &ClaimId) -> Tally {
        let me = self.inner.config.name.clone();
        let mut others: Vec<String> = peers
            .members()
            .into_iter()
            .map(|member| member.name)
            .filter(|member| *member != me)
            .collect();
        others.sort();
        others.dedup();
        let mut tally = Tally {
            known: others.len() + 1,
            ..Tally::default()
        };
        if let Err(refusal) = self.grant(name, claimant) {
            // Refused here already: no majority can include this node.
            tally.refused.push((me, refusal));
            return tally;
        }
        tally.granted.push(me);
        let calls = others.into_iter().map(|node| {
            let peers = Arc::clone(peers);
            let request = PeerRequest::Claim {
                name: name.to_string(),
                claimant: claimant.clone(),
            };
            async move {
                let answer = peers.call(&node, request, CLAIM_DEADLINE).await;
                (node, answer)
            }
        });
        for (node, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(PeerResponse::Granted) => tally.granted.push(node),
                Ok(PeerResponse::NotGranted(refusal)) => tally.refused.push((node, refusal)),
                Ok(PeerResponse::Refused(why)) | Err(why) => tally.silent.push((node, why)),
                Ok(other) => tally
                    .silent
                    .push((node, format!("unexpected answer {other:?}"))),
            }
        }
        tally
    }

    /// Releases the claim on `name` where it was granted (`granted`, this node among them).
    pub(super) async fn release_claim(
        &self,
        peers: &Arc<dyn Peers>,
        name: &str,
        claimant: &ClaimId,
        granted: &[String],
    ) {
        let me = &self.inner.config.name;
        lock(&self.inner.claims).release(name, claimant);
        let calls = granted.iter().filter(|node| *node != me).map(|node| {
            let request = PeerRequest::Release {
                name: name.to_string(),
                claimant: claimant.clone(),
            };
            peers.call(node, request, CLAIM_DEADLINE)
        });
        let _ = futures::future::join_all(calls).await;
    }

    /// The deploy holding `claim` is recorded: this node's own claim is done with (the record
    /// refuses later claims itself). The other members' claims go when the replica arrives.
    pub(super) fn recorded(&self, name: &str, claim: &NameClaim) {
        lock(&self.inner.claims).release(name, &claim.claimant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimant(node: &str, generation: u64, nonce: u64) -> ClaimId {
        ClaimId {
            node: node.into(),
            generation,
            nonce,
        }
    }

    #[test]
    fn a_free_name_is_granted_and_then_refused_to_another_claimant() {
        let mut claims = Claims::default();
        let now = Instant::now();
        let a = claimant("node-a", 1, 7);
        let b = claimant("node-b", 1, 9);
        assert_eq!(claims.claim("web", &a, None, now), Ok(()));
        assert_eq!(
            claims.claim("web", &b, None, now),
            Err(ClaimRefusal::Claimed {
                node: "node-a".into()
            })
        );
        // Another name is free.
        assert_eq!(claims.claim("db", &b, None, now), Ok(()));
    }

    #[test]
    fn the_same_claimant_is_granted_again() {
        let mut claims = Claims::default();
        let now = Instant::now();
        let a = claimant("node-a", 1, 7);
        assert_eq!(claims.claim("web", &a, None, now), Ok(()));
        assert_eq!(
            claims.claim("web", &a, None, now + Duration::from_secs(5)),
            Ok(())
        );
        // Renewed: still held 9 s after the second grant.
        let b = claimant("node-b", 1, 9);
        assert!(
            claims
                .claim("web", &b, None, now + Duration::from_secs(14))
                .is_err()
        );
    }

    #[test]
    fn a_later_deploy_through_the_same_node_replaces_its_earlier_claim() {
        let mut claims = Claims::default();
        let now = Instant::now();
        assert_eq!(
            claims.claim("web", &claimant("node-a", 1, 7), None, now),
            Ok(())
        );
        assert_eq!(
            claims.claim("web", &claimant("node-a", 1, 8), None, now),
            Ok(())
        );
        assert_eq!(
            claims.claim("web", &claimant("node-a", 2, 3), None, now),
            Ok(())
        );
        // An older generation does not take it back.
        assert!(
            claims
                .claim("web", &claimant("node-a", 1, 9), None, now)
                .is_err()
        );
    }

    #[test]
    fn a_deployed_name_is_refused_naming_its_root() {
        let mut claims = Claims::default();
        let now = Instant::now();
        assert_eq!(
            claims.claim("web", &claimant("node-b", 1, 1), Some("node-c".into()), now),
            Err(ClaimRefusal::Deployed {
                root: "node-c".into()
            })
        );
        // Nothing was held for the refused claimant.
        assert_eq!(
            claims.claim("web", &claimant("node-a", 1, 1), None, now),
            Ok(())
        );
    }

    #[test]
    fn a_claim_expires() {
        let mut claims = Claims::default();
        let now = Instant::now();
        let a = claimant("node-a", 1, 7);
        let b = claimant("node-b", 1, 9);
        assert_eq!(claims.claim("web", &a, None, now), Ok(()));
        let almost = now + CLAIM_LIFETIME - Duration::from_millis(1);
        assert!(claims.claim("web", &b, None, almost).is_err());
        assert_eq!(claims.claim("web", &b, None, now + CLAIM_LIFETIME), Ok(()));
    }

    #[test]
    fn a_release_drops_only_the_claimants_own_claim() {
        let mut claims = Claims::default();
        let now = Instant::now();
        let a = claimant("node-a", 1, 7);
        let b = claimant("node-b", 1, 9);
        assert_eq!(claims.claim("web", &a, None, now), Ok(()));
        claims.release("web", &b);
        assert!(claims.claim("web", &b, None, now).is_err());
        claims.release("web", &a);
        assert_eq!(claims.claim("web", &b, None, now), Ok(()));
    }

    #[test]
    fn the_claimants_replica_drops_its_claim() {
        let mut claims = Claims::default();
        let now = Instant::now();
        let a = claimant("node-a", 1, 7);
        assert_eq!(claims.claim("web", &a, None, now), Ok(()));
        // Another root's replica leaves the claim alone.
        claims.replica_arrived("web", "node-c");
        assert!(
            claims
                .claim("web", &claimant("node-b", 1, 1), None, now)
                .is_err()
        );
        claims.replica_arrived("web", "node-a");
        assert!(claims.by_name.is_empty());
    }

    #[test]
    fn a_refusal_names_the_root_first_then_the_other_deploys_node() {
        let tally = Tally {
            known: 3,
            granted: vec!["node-a".into()],
            refused: vec![(
                "node-b".into(),
                ClaimRefusal::Claimed {
                    node: "node-b".into(),
                },
            )],
            silent: vec![("node-c".into(), "unreachable".into())],
        };
        assert!(!tally.has_majority());
        assert_eq!(
            tally.refusal("web", "node-a").to_string(),
            "a deployment named \"web\" exists already (being deployed through node \"node-b\" \
             right now); terminate it first or choose another name"
        );
        let deployed = Tally {
            refused: vec![(
                "node-c".into(),
                ClaimRefusal::Deployed {
                    root: "node-c".into(),
                },
            )],
            ..tally
        };
        assert!(
            deployed
                .refusal("web", "node-a")
                .to_string()
                .contains("its root is node \"node-c\"")
        );
        let silent = Tally {
            known: 3,
            granted: vec!["node-a".into()],
            refused: Vec::new(),
            silent: vec![("node-c".into(), "node \"node-c\" is down".into())],
        };
        let text = silent.refusal("web", "node-a").to_string();
        assert!(text.contains("node \"node-c\""), "{text}");
        assert!(
            text.contains("majority of the 3 known nodes, 1 granted"),
            "{text}"
        );
    }

    #[test]
    fn a_majority_counts_every_known_member() {
        let tally = |known: usize, granted: usize| Tally {
            known,
            granted: (0..granted).map(|n| format!("node-{n}")).collect(),
            ..Tally::default()
        };
        assert!(tally(3, 2).has_majority());
        assert!(!tally(4, 2).has_majority());
        assert!(tally(1, 1).has_majority());
        assert!(!tally(2, 1).has_majority());
    }
}
