//! Succession: how a deployment outlives its root node.
//!
//! The root replicates the deployment's record (description, epoch, where each of its remote
//! children runs) to every other alive node, at deploy time and on every change. When the
//! root is lost (on a side of a partition that sees a majority), the replica holders agree
//! without talking on one successor (rendezvous hashing over the alive members,
//! `sd_placement::successor`), which takes the deployment over under the next epoch: it
//! plans the tree again, adopts the children still running on other nodes instead of
//! starting them again, and starts the rest (those that ran on the lost root).
//!
//! Fencing: every fragment request carries the epoch, and a node refuses requests under an
//! epoch older than the newest it has seen. An old root that comes back (after a partition
//! heals, or an agent restart) learns the newer epoch from a replica or from its peers and
//! steps down: it terminates its own tree, whose requests to adopted fragments are refused,
//! so exactly one instance of each component remains.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sd_proto::peer::{FragmentKey, PeerRequest, PeerResponse, Replica};
use sd_proto::{DeploymentState, DeploymentSummary};
use sd_store::{DeploymentRecord, unix_ms_now};

use super::{Node, lock};
use crate::cluster::SHORT_DEADLINE;
use crate::records::DeploymentEntry;

/// How often the root looks for changes to replicate.
const REPLICATION_PERIOD: Duration = Duration::from_millis(300);

/// Every how many replication rounds fragments ask their parents whether they still own
/// them, and replicas their roots whether the deployment still exists (about 2 s).
const OWNER_CHECK_ROUNDS: u64 = 7;

/// How long a restarted root waits for the membership to settle before it asks its peers
/// whether another node took its deployments over.
const SETTLE_BEFORE_RECOVERY: Duration = Duration::from_secs(2);

fn replicas_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("replicas")
}

/// The replicas a previous agent on this data dir kept.
pub(super) fn load_replicas(data_dir: &Path) -> HashMap<String, Replica> {
    let Ok(entries) = std::fs::read_dir(replicas_dir(data_dir)) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let bytes = std::fs::read(entry.path()).ok()?;
            let replica: Replica = serde_json::from_slice(&bytes).ok()?;
            Some((replica.summary.name.clone(), replica))
        })
        .collect()
}

/// Writes a replica durably (temporary file, fsync, rename), or removes it.
fn store_replica(data_dir: &Path, name: &str, replica: Option<&Replica>) {
    let dir = replicas_dir(data_dir);
    let path = dir.join(format!("{name}.json"));
    let Some(replica) = replica else {
        let _ = std::fs::remove_file(path);
        return;
    };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let staging = dir.join(format!(".{name}.json.tmp"));
        let bytes = serde_json::to_vec(replica).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&staging)?;
            file.write_all(&bytes)?;
            file.sync_data()?;
        }
        std::fs::rename(staging, path)
    };
    let _ = write();
}

impl Node {
    /// This node's replica of a deployment whose root it is.
    fn replica_of(&self, entry: &DeploymentEntry) -> Replica {
        let me = &self.inner.config.name;
        let mut summary = super::summary(entry);
        // Counts change all the time and are not needed to take over.
        summary.components = 0;
        summary.running = 0;
        Replica {
            summary,
            description: entry.record.description.clone(),
            overrides: entry.record.overrides.clone(),
            epoch: entry.record.epoch,
            placements: entry
                .components
                .iter()
                .filter(|(_, record)| record.node != *me)
                .map(|(&index, record)| {
                    (
                        u32::try_from(index).unwrap_or(u32::MAX),
                        record.node.clone(),
                    )
                })
                .collect(),
        }
    }

    /// The other members the gossip says are alive: replicas go to all of them (one that has
    /// not answered a contact ping lately may still take a replica).
    pub(super) fn gossip_alive_peers(&self) -> Vec<String> {
        let Some(peers) = &self.inner.services.peers else {
            return Vec::new();
        };
        peers
            .describe()
            .into_iter()
            .filter(|member| member.state == "alive" && member.name != self.inner.config.name)
            .map(|member| member.name)
            .collect()
    }

    /// Sends the replica of a deployment just recorded to every alive peer, waiting a moment
    /// for them: a deploy is replicated when it is acknowledged, not a round of the
    /// replication loop later. Those that do not answer get it from the loop.
    pub(super) async fn replicate_now(&self, name: &str) {
        let Some(peers) = self.inner.services.peers.clone() else {
            return;
        };
        let Some(entry) = self.records().deployment(name) else {
            return;
        };
        let replica = self.replica_of(&entry);
        let calls = self.gossip_alive_peers().into_iter().map(|node| {
            let request = PeerRequest::Replicate(replica.clone());
            let peers = Arc::clone(&peers);
            async move { peers.call(&node, request, Duration::from_secs(2)).await }
        });
        let _ = futures::future::join_all(calls).await;
    }

    /// Tells every alive peer that a deployment this node was the root of is terminated,
    /// waiting a moment for them (the replication loop tells them again, and the others).
    pub(super) async fn forget_now(&self, name: &str, epoch: u64) {
        let Some(peers) = self.inner.services.peers.clone() else {
            return;
        };
        let calls = self.gossip_alive_peers().into_iter().map(|node| {
            let request = PeerRequest::Forget {
                deployment: name.to_string(),
                epoch,
            };
            let peers = Arc::clone(&peers);
            async move { peers.call(&node, request, Duration::from_secs(2)).await }
        });
        let _ = futures::future::join_all(calls).await;
    }

    /// Replicates this node's deployments to every other alive node whenever they change or
    /// a node joins, and tells them when a deployment is gone. Runs until shutdown.
    pub(super) async fn replicate_forever(self) {
        let Some(peers) = self.inner.services.peers.clone() else {
            return;
        };
        let me = self.inner.config.name.clone();
        // What each deployment's replica was last sent as, and to whom it arrived.
        let mut sent: HashMap<String, (Replica, BTreeSet<String>)> = HashMap::new();
        let mut rounds: u64 = 0;
        loop {
            tokio::time::sleep(REPLICATION_PERIOD).await;
            if self
                .inner
                .shutting_down
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return;
            }
            peers.publish_free(self.reserved());
            // A loss whose takeover the membership's view got in the way of is taken up again.
            self.take_over_orphans();
            rounds += 1;
            if rounds.is_multiple_of(OWNER_CHECK_ROUNDS) {
                self.check_owners().await;
                self.reconcile_replicas().await;
            }
            let alive = self.gossip_alive_peers();
            let own: Vec<Replica> = self
                .records()
                .deployments()
                .iter()
                .filter(|entry| entry.record.root_node == me)
                .filter(|entry| entry.record.state != DeploymentState::Terminated)
                .map(|entry| self.replica_of(entry))
                .collect();
            let mut calls = Vec::new();
            for replica in &own {
                let name = replica.summary.name.clone();
                let slot = sent
                    .entry(name.clone())
                    .or_insert_with(|| (replica.clone(), BTreeSet::new()));
                if slot.0 != *replica {
                    *slot = (replica.clone(), BTreeSet::new());
                }
                for node in alive.iter().filter(|node| !slot.1.contains(*node)) {
                    let request = PeerRequest::Replicate(replica.clone());
                    let (peers, node, name) = (Arc::clone(&peers), node.clone(), name.clone());
                    calls.push(async move {
                        let answer = peers.call(&node, request, SHORT_DEADLINE).await;
                        (name, node, matches!(answer, Ok(PeerResponse::Done)))
                    });
                }
            }
            for (name, node, arrived) in futures::future::join_all(calls).await {
                if arrived && let Some(slot) = sent.get_mut(&name) {
                    slot.1.insert(node);
                }
            }
            let gone: Vec<(String, u64)> = sent
                .iter()
                .filter(|(name, _)| !own.iter().any(|r| r.summary.name == **name))
                .map(|(name, (replica, _))| (name.clone(), replica.epoch))
                .collect();
            for (name, epoch) in gone {
                sent.remove(&name);
                let forget = alive.iter().map(|node| {
                    let request = PeerRequest::Forget {
                        deployment: name.clone(),
                        epoch,
                    };
                    peers.call(node, request, SHORT_DEADLINE)
                });
                let _ = futures::future::join_all(forget).await;
            }
        }
    }

    /// A replica from the deployment's root. An own deployment under an older epoch means
    /// another node took it over: this node steps down.
    pub(super) fn receive_replica(&self, replica: Replica) -> PeerResponse {
        let name = replica.summary.name.clone();
        if sd_store::validate_deployment_name(&name).is_err() {
            return PeerResponse::Refused(format!("invalid deployment name \"{name}\""));
        }
        let me = self.inner.config.name.clone();
        let theirs = (replica.epoch, replica.summary.root_node.clone());
        if let Some(own) = self.records().deployment_record(&name)
            && own.root_node == me
        {
            // Two takeovers under the same epoch are ordered by the root's name.
            if (own.epoch, me.clone()) >= theirs {
                return PeerResponse::Refused(format!(
                    "this node is the root of \"{name}\" under epoch {}, not older than {}",
                    own.epoch, replica.epoch
                ));
            }
            tokio::spawn(self.clone().step_down(
                name.clone(),
                replica.summary.root_node.clone(),
                replica.epoch,
            ));
        }
        self.follow_root(&name, &replica.summary.root_node, replica.epoch);
        if let Some(entry) = lock(&self.inner.live).get_mut(&name)
            && entry.root.is_none()
            && replica.epoch > entry.epoch
        {
            entry.follow(replica.epoch, &replica.summary.root_node);
        }
        let mut replicas = lock(&self.inner.replicas);
        if replicas
            .get(&name)
            .is_some_and(|known| known.epoch > replica.epoch)
        {
            return PeerResponse::Refused(format!("a newer epoch of \"{name}\" is known here"));
        }
        store_replica(&self.inner.config.data_dir, &name, Some(&replica));
        lock(&self.inner.claims).replica_arrived(&name, &replica.summary.root_node);
        replicas.insert(name, replica);
        PeerResponse::Done
    }

    /// Drops the replicas whose root answers that it no longer has the deployment (a `Forget`
    /// that did not arrive: this node was down or cut off when it was sent).
    async fn reconcile_replicas(&self) {
        let Some(peers) = self.inner.services.peers.clone() else {
            return;
        };
        let by_root: Vec<(String, Vec<(String, u64)>)> = {
            let replicas = lock(&self.inner.replicas);
            let mut roots: HashMap<String, Vec<(String, u64)>> = HashMap::new();
            for replica in replicas.values() {
                roots
                    .entry(replica.summary.root_node.clone())
                    .or_default()
                    .push((replica.summary.name.clone(), replica.epoch));
            }
            roots.into_iter().collect()
        };
        for (root, names) in by_root {
            if !crate::cluster::is_alive(&peers, &root) {
                continue;
            }
            let Ok(PeerResponse::Deployments(held)) = peers
                .call(&root, PeerRequest::Deployments, SHORT_DEADLINE)
                .await
            else {
                continue;
            };
            for (name, epoch) in names {
                if !held.iter().any(|summary| summary.name == name) {
                    self.forget_replica(&name, epoch);
                }
            }
        }
    }

    /// Drops the replica of a deployment its root has terminated.
    pub(super) fn forget_replica(&self, name: &str, epoch: u64) -> PeerResponse {
        let mut replicas = lock(&self.inner.replicas);
        if replicas.get(name).is_some_and(|known| known.epoch <= epoch) {
            replicas.remove(name);
            store_replica(&self.inner.config.data_dir, name, None);
        }
        PeerResponse::Done
    }

    /// Takes over the deployments whose root is not alive and whose successor (among the
    /// alive members) is this node. Run at every loss: a root lost together with the node
    /// that would have succeeded it is picked up at the second loss.
    pub(super) fn take_over_orphans(&self) {
        let Some(peers) = &self.inner.services.peers else {
            return;
        };
        if !crate::cluster::has_majority(peers) {
            return;
        }
        let alive: Vec<String> = peers
            .members()
            .into_iter()
            .filter(|member| member.alive)
            .map(|member| member.name)
            .collect();
        let orphaned: Vec<Replica> = lock(&self.inner.replicas)
            .values()
            .filter(|replica| {
                !alive.contains(&replica.summary.root_node)
                    && peers.is_gone(&replica.summary.root_node)
            })
            .cloned()
            .collect();
        for replica in orphaned {
            let name = replica.summary.name.clone();
            let successor = sd_placement::successor(&name, alive.iter().map(String::as_str));
            if successor == Some(self.inner.config.name.as_str()) {
                tokio::spawn(self.clone().take_over(replica));
            }
        }
    }

    /// Becomes the root of a deployment whose root was lost: the next epoch, recorded, then
    /// the tree planned again with the children still running elsewhere adopted.
    async fn take_over(self, replica: Replica) {
        let name = replica.summary.name.clone();
        tracing::warn!(
            deployment = %name,
            lost_root = %replica.summary.root_node,
            epoch = replica.epoch + 1,
            "taking the deployment over"
        );
        let Ok(_reservation) = self.reserve(&name) else {
            return;
        };
        if self
            .records()
            .deployment_record(&name)
            .is_some_and(|own| own.root_node == self.inner.config.name)
        {
            return;
        }
        let planned = self
            .prepare_off_thread(
                &replica.summary.source,
                &replica.description,
                &replica.overrides,
            )
            .await;
        let Ok((planned, _)) = planned else {
            return;
        };
        let epoch = replica.epoch + 1;
        let lost = replica.summary.root_node.clone();
        self.records().put_deployment(DeploymentRecord {
            name: name.clone(),
            description: replica.description.clone(),
            source: replica.summary.source.clone(),
            state: DeploymentState::Deploying,
            epoch,
            root_node: self.inner.config.name.clone(),
            created_unix_ms: replica.summary.created_unix_ms,
            updated_unix_ms: unix_ms_now(),
            overrides: replica.overrides.clone(),
        });
        if self.records().flush().await.is_err() {
            return;
        }
        self.records().note(
            &name,
            "",
            "taken_over",
            format!("node \"{lost}\" was lost; this node is the root under epoch {epoch}"),
        );
        {
            let mut replicas = lock(&self.inner.replicas);
            replicas.remove(&name);
        }
        store_replica(&self.inner.config.data_dir, &name, None);
        let alive: BTreeSet<String> = self
            .inner
            .services
            .peers
            .as_ref()
            .map(|peers| {
                peers
                    .members()
                    .into_iter()
                    .filter(|m| m.alive)
                    .map(|m| m.name)
                    .collect()
            })
            .unwrap_or_default();
        // What the replica says ran where, corrected by what the alive nodes say they run now:
        // the replica may be a moment behind a restart the lost root made just before.
        let mut adoptions: HashMap<usize, String> = replica
            .placements
            .iter()
            .filter(|(_, node)| *node != lost && alive.contains(node))
            .map(|(index, node)| (*index as usize, node.clone()))
            .collect();
        let mut newest: HashMap<usize, (u64, u64)> = HashMap::new();
        let mut held: Vec<(String, Vec<(FragmentKey, String)>)> = self
            .ask_every_peer(PeerRequest::Fragments {
                deployment: name.clone(),
            })
            .await
            .into_iter()
            .filter_map(|(node, answer)| match answer {
                PeerResponse::Fragments(fragments) => Some((node, fragments)),
                _ => None,
            })
            .collect();
        held.push((self.inner.config.name.clone(), self.fragments_of(&name)));
        for (node, fragments) in held {
            for (key, parent) in fragments {
                let index = key.index as usize;
                let rank = (key.epoch, key.incarnation);
                if parent != lost || newest.get(&index).is_some_and(|best| *best >= rank) {
                    continue;
                }
                newest.insert(index, rank);
                adoptions.insert(index, node.clone());
            }
        }
        adoptions.retain(|index, _| *index < planned.components.len());
        drop(_reservation);
        let _ = self.launch(name, planned, HashMap::new(), adoptions).await;
    }

    /// Another node is the deployment's root under a newer epoch: terminate what this node
    /// runs of its old tree (requests to fragments the new root adopted are refused, so
    /// those keep running) and keep the newer record as a replica.
    pub(super) async fn step_down(self, name: String, root: String, epoch: u64) {
        tracing::warn!(deployment = %name, new_root = %root, epoch, "stepping down as root");
        // Another request on the name (a deploy step, a terminate) finishes first.
        let mut tries = 0;
        let reservation = loop {
            match self.reserve(&name) {
                Ok(reservation) => break reservation,
                Err(_) if tries < 600 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => return,
            }
        };
        let still_root = self.records().deployment_record(&name).is_some_and(|own| {
            own.root_node == self.inner.config.name
                && (own.epoch, self.inner.config.name.clone()) < (epoch, root.clone())
        });
        if !still_root {
            return;
        }
        let live = lock(&self.inner.live)
            .get(&name)
            .and_then(|live| Some((Arc::clone(&live.deployment), live.root.clone()?)));
        self.records().note(
            &name,
            "",
            "stepping_down",
            format!("node \"{root}\" holds it under the newer epoch {epoch}"),
        );
        if let Some((deployment, component)) = live {
            self.set_state(&name, DeploymentState::Terminating);
            component.terminate().await;
            deployment.all_stopped().await;
            self.clean(&deployment).await;
        }
        let holds_fragments = lock(&self.inner.live).contains_key(&name);
        if holds_fragments {
            if let Some(mut record) = self.records().deployment_record(&name) {
                record.root_node = root;
                record.epoch = epoch;
                record.state = DeploymentState::Running;
                self.records().put_deployment(record);
            }
        } else {
            self.records().remove_deployment(&name);
        }
        let _ = self.records().flush().await;
        drop(reservation);
    }

    /// A deployment this node was the root of before the agent restarted: once the
    /// membership has settled, recovered as root, unless a peer holds it under a newer
    /// epoch, in which case what is left of it here is cleaned away.
    pub(super) async fn recover_root_in_cluster(self, entry: DeploymentEntry) {
        tokio::time::sleep(SETTLE_BEFORE_RECOVERY).await;
        let name = entry.record.name.clone();
        let newer = self
            .ask_every_peer(PeerRequest::Deployments)
            .await
            .into_iter()
            .filter_map(|(_, answer)| match answer {
                PeerResponse::Deployments(summaries) => Some(summaries),
                _ => None,
            })
            .flatten()
            .find(|summary: &DeploymentSummary| {
                summary.name == name && summary.epoch > entry.record.epoch
            });
        let replicated = lock(&self.inner.replicas)
            .get(&name)
            .filter(|replica| replica.epoch > entry.record.epoch)
            .map(|replica| replica.summary.clone());
        let taken_over = self
            .records()
            .deployment_record(&name)
            .is_none_or(|own| own.root_node != self.inner.config.name);
        let newer = newer.or(replicated).or_else(|| {
            taken_over.then(|| DeploymentSummary {
                root_node: "another node".into(),
                ..super::summary(&entry)
            })
        });
        match newer {
            Some(summary) => {
                self.records().note(
                    &name,
                    "",
                    "stepping_down",
                    format!(
                        "node \"{}\" took it over under epoch {} while this agent was down",
                        summary.root_node, summary.epoch
                    ),
                );
                self.discard(entry).await;
            }
            None => self.recover_root(entry).await,
        }
    }
}
