//! Where a component runs: on its parent's node, on the node `sfProcessHost` pins it to, or on
//! the node a Scheduler chooses (a `Schedulee`, or a Pool replica when the Pool names a
//! `scheduler`). The choice itself is `sd-placement`'s (pure); this gathers its inputs from the
//! description and the cluster's members.

use sd_lang::Value;
use sd_placement::{Constraint, Decision, Policy, Request, Resources};

use super::Deployment;
use crate::plan::Kind;

/// Where the component at `index` goes.
pub(crate) enum Placement {
    /// On the parent's node.
    Here,
    /// On that node.
    On(String),
    /// Not now: the node it needs is down (the reason says which).
    Wait(String),
}

/// Decides where the component at `index` runs; `avoid` lists the nodes its siblings were
/// placed on (spread keeps replicas apart). An error names what cannot be satisfied.
pub(crate) fn place(
    deployment: &Deployment,
    index: usize,
    avoid: &[String],
) -> Result<Placement, String> {
    let planned = &deployment.plan().components[index];
    let local = &deployment.services.node;
    let scheduled = scheduling(deployment, index)?;
    if planned.host.is_none() && scheduled.is_none() {
        return Ok(Placement::Here);
    }
    if planned.host.as_deref() == Some(local.as_str()) {
        return Ok(Placement::Here);
    }
    let Some(peers) = &deployment.services.peers else {
        // A single node: a scheduler has one choice; a pin to another node cannot be met.
        return match &planned.host {
            Some(host) => Err(format!(
                "it is pinned to node \"{host}\" (sfProcessHost), but this node (\"{local}\") is not in a cluster"
            )),
            None => Ok(Placement::Here),
        };
    };
    if !crate::cluster::has_majority(peers) {
        let members = peers.members();
        let alive = members.iter().filter(|m| m.alive).count();
        return Ok(Placement::Wait(format!(
            "this node sees {alive} of {} members alive, not a majority: nothing is placed on another node until the partition heals",
            members.len()
        )));
    }
    let (constraints, policy) = scheduled.unwrap_or_default();
    let request = Request {
        component: planned.path_text(),
        needs: needs(deployment, index),
        constraints,
        pinned: planned.host.clone(),
        policy,
        avoid: avoid.to_vec(),
    };
    match sd_placement::place(&peers.members(), &request) {
        Decision::Place(node) if &node == local => Ok(Placement::Here),
        Decision::Place(node) => Ok(Placement::On(node)),
        Decision::Wait { reason } => Ok(Placement::Wait(reason)),
        Decision::Unplaceable { reason } => Err(reason),
    }
}

/// The constraints and policy of a scheduled component, or `None` when no scheduler places it.
fn scheduling(
    deployment: &Deployment,
    index: usize,
) -> Result<Option<(Vec<Constraint>, Policy)>, String> {
    let planned = &deployment.plan().components[index];
    let pool = planned
        .parent
        .filter(|&parent| deployment.plan().components[parent].kind == Kind::Pool);
    // A Schedulee is always placed (NULL scheduler: built-in spread); a Pool's replica only
    // when the Pool names a scheduler.
    let (holder, scheduler) = if planned.kind == Kind::Schedulee {
        (index, deployment.bind_component(index, "scheduler")?)
    } else if let Some(pool) = pool {
        match deployment.bind_component(pool, "scheduler")? {
            Some(scheduler) => (pool, Some(scheduler)),
            None => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    let mut texts = strings(deployment, holder, "sdConstraints")?;
    let mut policy = Policy::Spread;
    if let Some(scheduler) = scheduler {
        texts.extend(strings(deployment, scheduler, "sdConstraints")?);
        if let Some(Value::Str(text)) = deployment.plan().component(scheduler).get("sdPlacement") {
            policy = text
                .parse()
                .map_err(|e: sd_placement::Error| format!("`sdPlacement`: {e}"))?;
        }
    }
    let constraints = texts
        .iter()
        .map(|text| Constraint::parse(text).map_err(|e| format!("`sdConstraints`: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((constraints, policy)))
}

/// A vector-of-strings attribute (absent: empty).
fn strings(deployment: &Deployment, index: usize, attribute: &str) -> Result<Vec<String>, String> {
    match deployment.plan().component(index).get(attribute) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Vector(items)) => items
            .iter()
            .map(|item| match item {
                Value::Str(text) => Ok(text.to_string()),
                other => Err(format!(
                    "`{attribute}` must hold strings, not {}",
                    other.type_name()
                )),
            })
            .collect(),
        Some(other) => Err(format!(
            "`{attribute}` must be a vector of strings, not {}",
            other.type_name()
        )),
    }
}

/// What the component's subtree reserves on its node: the `memory` and `vcpus` of its domains.
pub(crate) fn needs(deployment: &Deployment, index: usize) -> Resources {
    let mut total = Resources::default();
    let mut stack = vec![index];
    let plan = deployment.plan();
    while let Some(at) = stack.pop() {
        let planned = &plan.components[at];
        if matches!(planned.kind, Kind::ProcessDomain | Kind::QemuDomain) {
            let description = plan.component(at);
            let number = |name: &str| match description.get(name) {
                Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                Some(Value::Long(n)) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            };
            total.memory_mib += number("memory");
            total.vcpus += u32::try_from(number("vcpus")).unwrap_or(u32::MAX);
        }
        stack.extend(planned.children.iter().copied());
    }
    total
}
