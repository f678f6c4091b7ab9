//! The records the store holds. They are stored as JSON: a field added later must carry
//! `#[serde(default)]` so that records written before it still decode, and unknown fields are
//! ignored, so a record written by a newer sd still decodes (rewriting it drops those fields).

use serde::{Deserialize, Serialize};

pub use sd_proto::{ComponentState, DeploymentState};

/// A deployment as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// Its name (see [`crate::NAME_RULE`]); the key of the `deployments` table.
    pub name: String,
    /// The resolved `sfConfig` in SmartFrog notation, as `sd_lang::unparse` prints it.
    pub description: String,
    /// The file it came from, for display.
    pub source: String,
    /// Where it is in its life.
    pub state: DeploymentState,
    /// The epoch of its current placement; a node holding an older epoch must not act on it.
    pub epoch: u64,
    /// The node holding its top actor.
    pub root_node: String,
    /// When it was deployed (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// When this record last changed (milliseconds since the Unix epoch).
    pub updated_unix_ms: u64,
    /// The live changes made to it (`sd set`), applied to `description` in order.
    #[serde(default)]
    pub overrides: Vec<sd_proto::Override>,
}

/// One component of a deployment: one node of its resolved tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRecord {
    /// The deployment it belongs to.
    pub deployment: String,
    /// Its path in the tree, e.g. `sfConfig:pool:vm1` (not empty, no NUL).
    pub path: String,
    /// Its runtime kind (`sfClass`), e.g. `sd.ProcessDomain`.
    pub kind: String,
    /// Where it is in its life.
    pub state: ComponentState,
    /// The node it runs on.
    pub node: String,
    /// Its workload's process, for a process domain that was started.
    #[serde(default)]
    pub process: Option<ProcessRecord>,
    /// How many times it was restarted.
    #[serde(default)]
    pub restarts: u32,
    /// When its recent restarts happened (milliseconds since the Unix epoch), for the
    /// restart intensity window.
    #[serde(default)]
    pub restart_times_unix_ms: Vec<u64>,
    /// The epoch of the placement it runs under.
    pub epoch: u64,
    /// Its last failure, if any.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When it last started running (milliseconds since the Unix epoch), for its uptime.
    #[serde(default)]
    pub started_unix_ms: Option<u64>,
}

/// A process as the kernel knows it: a pid alone is never trusted, since pids are reused.
/// The same pair as `sd_drivers::process::ProcessIdentity`, which this crate does not depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// The process id.
    pub pid: u32,
    /// When it started, in clock ticks after boot (`/proc/PID/stat`, field 22).
    pub start_time: u64,
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_optional_fields_default_and_unknown_ones_are_ignored() {
        let json = r#"{"deployment":"web","path":"sfConfig","kind":"sd.Compound",
            "state":"running","node":"n1","epoch":3,"added_later":true}"#;
        let record: ComponentRecord = serde_json::from_str(json).unwrap();
        assert_eq!(record.process, None);
        assert_eq!(record.restarts, 0);
        assert!(record.restart_times_unix_ms.is_empty());
        assert_eq!(record.epoch, 3);
    }

    #[test]
    fn now_is_after_2024() {
        assert!(unix_ms_now() > 1_704_067_200_000);
    }
}
