//! The deployment plan: the resolved tree checked and typed, before anything starts.
//!
//! Every component of the tree that will run is listed in deploy order (parents before
//! children, children in declaration order) with its kind, its parent's supervision settings,
//! its own restart policy and liveness settings, and the node it is pinned to. A description
//! whose plan has errors is rejected whole, with every error at once, and nothing starts.
//!
//! Which attributes are components that run follows SmartFrog: the eager component children
//! of a container (Compound, Sequence, Parallel, PhysicalHost, Schedulee, Pool) run; those of
//! a leaf (Prim, a domain, a storage backend, a shell, a scheduler) are data, and so is every
//! `extends LAZY` component. A component without `sfClass` is a `Prim`.

use std::time::Duration;

use sd_lang::bind::path_text;
use sd_lang::{Component, Value};

use crate::supervision::{RestartPolicy, SupervisorSpec, seconds};
use crate::{Error, Result};

/// The runtime kinds the prelude names in `sfClass` (`"sd.<Kind>"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Runs until terminated; does nothing else.
    Prim,
    /// Deploys every child, then starts them, in order.
    Compound,
    /// Runs its children one after another.
    Sequence,
    /// Runs its children at the same time.
    Parallel,
    /// `replicas` copies of `template`.
    Pool,
    /// One machine and what runs on it.
    PhysicalHost,
    /// Runs commands for other components.
    Shell,
    /// A supervised process.
    ProcessDomain,
    /// A QEMU virtual machine.
    QemuDomain,
    /// A working directory.
    DirStorageBackend,
    /// A qcow2 overlay.
    QcowStorageBackend,
    /// A raw image on a loop device.
    LoopbackStorageBackend,
    /// A logical volume.
    LvmStorageBackend,
    /// Chooses nodes.
    Scheduler,
    /// Components placed together by a scheduler.
    Schedulee,
}

impl Kind {
    /// The kind an `sfClass` names.
    pub fn from_class(class: &str) -> std::result::Result<Kind, String> {
        Ok(match class {
            "sd.Prim" => Kind::Prim,
            "sd.Compound" => Kind::Compound,
            "sd.Sequence" => Kind::Sequence,
            "sd.Parallel" => Kind::Parallel,
            "sd.Pool" => Kind::Pool,
            "sd.PhysicalHost" => Kind::PhysicalHost,
            "sd.Shell" => Kind::Shell,
            "sd.ProcessDomain" => Kind::ProcessDomain,
            "sd.QemuDomain" => Kind::QemuDomain,
            "sd.DirStorageBackend" => Kind::DirStorageBackend,
            "sd.QcowStorageBackend" => Kind::QcowStorageBackend,
            "sd.LoopbackStorageBackend" => Kind::LoopbackStorageBackend,
            "sd.LVMStorageBackend" => Kind::LvmStorageBackend,
            "sd.Scheduler" => Kind::Scheduler,
            "sd.Schedulee" => Kind::Schedulee,
            "sd.Domain" | "sd.StorageBackend" => {
                return Err(format!(
                    "\"{class}\" is abstract: extend one of its concrete kinds (ProcessDomain or QemuDomain; Dir, Qcow, Loopback or LVMStorageBackend)"
                ));
            }
            other => {
                return Err(format!(
                    "unknown component class \"{other}\" (the prelude's kinds are \"sd.<Kind>\", see docs/prelude.md)"
                ));
            }
        })
    }

    /// Whether its eager component children run as its children.
    pub fn is_container(self) -> bool {
        matches!(
            self,
            Kind::Compound
                | Kind::Sequence
                | Kind::Parallel
                | Kind::Pool
                | Kind::PhysicalHost
                | Kind::Schedulee
        )
    }
}

/// How often a component is checked, and how many missed checks make a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Between checks; zero disables them (`sfLivenessDelay`).
    pub delay: Duration,
    /// Missed checks in a row that make a failure (`sfLivenessFactor`).
    pub factor: u32,
}

/// One component that will run.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedComponent {
    /// Its path below the root (`[]` for `sfConfig` itself).
    pub path: Vec<String>,
    /// What runs it.
    pub kind: Kind,
    /// Its parent's index in [`Plan::components`].
    pub parent: Option<usize>,
    /// Its running children's indices, in declaration order.
    pub children: Vec<usize>,
    /// How its parent treats its end (`sdRestart`).
    pub restart: RestartPolicy,
    /// How it supervises its children (containers only).
    pub supervisor: Option<SupervisorSpec>,
    /// Its liveness checks.
    pub liveness: Liveness,
    /// The node it is pinned to (`sfProcessHost`); `None` runs it on its parent's node.
    pub host: Option<String>,
}

impl PlannedComponent {
    /// `sfConfig:a:b`, as errors and `sd status` show it.
    pub fn path_text(&self) -> String {
        path_text(&self.path)
    }
}

/// The checked, typed deployment: every component that will run, parents first.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The `sfConfig` that runs: the resolved one with each Pool's replicas added as its
    /// children (`r1` ... `rN`), so that run-time references bind from a replica's place.
    pub config: Component,
    /// In deploy order: a parent before its children, children in declaration order.
    pub components: Vec<PlannedComponent>,
}

/// The most replicas one Pool may have.
pub const MAX_REPLICAS: i32 = 10_000;

impl Plan {
    /// The index of the component at `path`, if it runs.
    pub fn index_of(&self, path: &[String]) -> Option<usize> {
        self.components.iter().position(|c| c.path == path)
    }

    /// The description of the component at index `index`.
    pub fn component(&self, index: usize) -> &Component {
        let mut component = &self.config;
        for name in &self.components[index].path {
            match component.get(name) {
                Some(Value::Component(child)) => component = child,
                _ => unreachable!("a planned path names components of the plan's config"),
            }
        }
        component
    }
}

/// A component's path as users may write it (`pool:r1`, the leading `sfConfig:` left out)
/// made whole: `sfConfig:pool:r1`.
pub fn full_path(path: &str) -> String {
    if path == "sfConfig" || path.starts_with("sfConfig:") {
        path.to_string()
    } else {
        format!("sfConfig:{path}")
    }
}

/// The name of a Pool's `n`-th replica (from 1).
pub fn replica_name(n: usize) -> String {
    format!("r{n}")
}

/// Adds each valid Pool's replicas to the tree, as eager copies of its template. A Pool
/// that already has an attribute named like one of its replicas is an error.
fn expand_pools(component: &mut Component, path: &mut Vec<String>, errors: &mut Vec<Error>) {
    for (name, value) in component.attrs.iter_mut() {
        if let Value::Component(child) = value
            && child.eager
        {
            path.push(name.to_string());
            expand_pools(child, path, errors);
            path.pop();
        }
    }
    if component.class() != Some("sd.Pool") {
        return;
    }
    let (Some(Value::Int(replicas)), Some(Value::Component(template))) =
        (component.get("replicas"), component.get("template"))
    else {
        return;
    };
    if !(0..=MAX_REPLICAS).contains(replicas) || template.eager {
        return;
    }
    let count = replicas.unsigned_abs() as usize;
    if let Some(taken) = (1..=count)
        .map(replica_name)
        .find(|name| component.attrs.contains_key(name.as_str()))
    {
        errors.push(invalid(
            path,
            "replicas",
            format!("the replicas are named r1 ... r{count}, but the Pool has an attribute `{taken}` already"),
        ));
        return;
    }
    let mut replica = template.clone();
    replica.eager = true;
    for n in 1..=count {
        let name = replica_name(n);
        path.push(name.clone());
        let mut copy = replica.clone();
        expand_pools(&mut copy, path, errors);
        path.pop();
        component
            .attrs
            .insert(name.as_str().into(), Value::Component(copy));
    }
}

fn invalid(path: &[String], attribute: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidAttribute {
        path: path_text(path),
        attribute,
        reason: reason.into(),
    }
}

/// Checks a resolved `sfConfig` and lists what will run; every error is reported.
pub fn plan(config: &Component) -> std::result::Result<Plan, Vec<Error>> {
    plan_with(config, &[])
}

/// [`plan`], with the live changes made to the deployment applied first (to the tree with
/// its pools expanded), so that a changed value is checked like a written one.
pub fn plan_with(
    config: &Component,
    overrides: &[sd_proto::Override],
) -> std::result::Result<Plan, Vec<Error>> {
    let mut config = config.clone();
    let mut planner = Planner {
        components: Vec::new(),
        errors: Vec::new(),
    };
    expand_pools(&mut config, &mut Vec::new(), &mut planner.errors);
    planner
        .errors
        .extend(crate::settings::apply(&mut config, overrides));
    planner.visit(&config, Vec::new(), None);
    if planner.errors.is_empty() {
        Ok(Plan {
            config,
            components: planner.components,
        })
    } else {
        Err(planner.errors)
    }
}

struct Planner {
    components: Vec<PlannedComponent>,
    errors: Vec<Error>,
}

impl Planner {
    fn visit(&mut self, component: &Component, path: Vec<String>, parent: Option<usize>) {
        let kind = match component.get("sfClass") {
            None => Kind::Prim,
            Some(Value::Str(class)) => match Kind::from_class(class) {
                Ok(kind) => kind,
                Err(reason) => {
                    self.errors.push(invalid(&path, "sfClass", reason));
                    return;
                }
            },
            Some(other) => {
                self.errors.push(invalid(
                    &path,
                    "sfClass",
                    format!("must be a string, not {}", other.type_name()),
                ));
                return;
            }
        };
        let path_string = path_text(&path);
        let restart = self
            .checked(RestartPolicy::from_component(component, &path_string))
            .unwrap_or(RestartPolicy::Transient);
        let supervisor = if kind.is_container() {
            self.checked(SupervisorSpec::from_component(component, &path_string))
        } else {
            None
        };
        let liveness = self
            .checked(liveness(component, &path))
            .unwrap_or(Liveness {
                delay: Duration::ZERO,
                factor: 2,
            });
        let host = self.checked(host(component, &path)).flatten();
        for error in check_kind(kind, component, &path) {
            self.errors.push(error);
        }
        let index = self.components.len();
        self.components.push(PlannedComponent {
            path: path.clone(),
            kind,
            parent,
            children: Vec::new(),
            restart,
            supervisor,
            liveness,
            host,
        });
        if let Some(parent) = parent {
            self.components[parent].children.push(index);
        }
        if !kind.is_container() {
            return;
        }
        for (name, child) in component.children() {
            // A pool's template is data: the pool makes the replicas.
            if child.eager && !(kind == Kind::Pool && name == "template") {
                let mut child_path = path.clone();
                child_path.push(name.to_string());
                self.visit(child, child_path, Some(index));
            }
        }
    }

    fn checked<T>(&mut self, result: Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.errors.push(error);
                None
            }
        }
    }
}

fn liveness(component: &Component, path: &[String]) -> Result<Liveness> {
    let delay = seconds(
        component,
        &path_text(path),
        "sfLivenessDelay",
        Duration::ZERO,
    )?;
    let factor = match component.get("sfLivenessFactor") {
        None => 2,
        Some(Value::Int(n)) if *n >= 1 => n.unsigned_abs(),
        Some(other) => {
            return Err(invalid(
                path,
                "sfLivenessFactor",
                format!(
                    "must be an integer of 1 or more, not {}",
                    sd_lang::unparse::value_text(other)
                ),
            ));
        }
    };
    Ok(Liveness { delay, factor })
}

fn host(component: &Component, path: &[String]) -> Result<Option<String>> {
    match component.get("sfProcessHost") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Str(name)) if name.is_empty() => Ok(None),
        Some(Value::Str(name)) => Ok(Some(name.clone())),
        Some(other) => Err(invalid(
            path,
            "sfProcessHost",
            format!(
                "must be a node name (a string) or NULL, not {}",
                other.type_name()
            ),
        )),
    }
}

/// Checks the attributes a kind needs before anything starts.
fn check_kind(kind: Kind, component: &Component, path: &[String]) -> Vec<Error> {
    let mut errors = Vec::new();
    let strings = |attribute: &'static str, errors: &mut Vec<Error>| -> Vec<String> {
        match component.get(attribute) {
            None => Vec::new(),
            Some(Value::Vector(items)) => items
                .iter()
                .filter_map(|item| match item {
                    Value::Str(s) => Some(s.clone()),
                    other => {
                        errors.push(invalid(
                            path,
                            attribute,
                            format!(
                                "must be a vector of strings, but holds {}",
                                sd_lang::unparse::value_text(other)
                            ),
                        ));
                        None
                    }
                })
                .collect(),
            Some(other) => {
                errors.push(invalid(
                    path,
                    attribute,
                    format!("must be a vector of strings, not {}", other.type_name()),
                ));
                Vec::new()
            }
        }
    };
    match kind {
        Kind::ProcessDomain => {
            if strings("command", &mut errors).is_empty()
                && !errors.iter().any(|e| {
                    matches!(
                        e,
                        Error::InvalidAttribute {
                            attribute: "command",
                            ..
                        }
                    )
                })
            {
                errors.push(invalid(
                    path,
                    "command",
                    "must name a program to run: [| \"/path/to/program\", \"arg\" ... |]",
                ));
            }
            for entry in strings("env", &mut errors) {
                if entry
                    .split_once('=')
                    .is_none_or(|(name, _)| name.is_empty())
                {
                    errors.push(invalid(
                        path,
                        "env",
                        format!("\"{entry}\" is not NAME=value"),
                    ));
                }
            }
        }
        Kind::Pool => {
            match component.get("replicas") {
                Some(Value::Int(n)) if (0..=MAX_REPLICAS).contains(n) => {}
                Some(other) => errors.push(invalid(
                    path,
                    "replicas",
                    format!(
                        "must be an integer from 0 to {MAX_REPLICAS}, not {}",
                        sd_lang::unparse::value_text(other)
                    ),
                )),
                None => errors.push(invalid(path, "replicas", "is missing")),
            }
            match component.get("template") {
                Some(Value::Component(template)) if !template.eager => {}
                Some(Value::Component(_)) => errors.push(invalid(path, "template", "must be written `template extends LAZY ...` (it is data for the pool, not a child)")),
                _ => errors.push(invalid(path, "template", "must be a component: `template extends LAZY ProcessDomain { ... }`")),
            }
        }
        _ => {}
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Component {
        let text = format!("#include \"prelude.sf\"\n{text}");
        sd_lang::resolve_str("t.sf", &text, &sd_lang::Options::default())
            .expect("resolves")
            .config
    }

    #[test]
    fn figure1_plans_hosts_backends_and_domains_in_order() {
        let root = sd_lang::resolve_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../configs/examples/figure1.sf"),
            &sd_lang::Options::default(),
        )
        .expect("figure 1 resolves");
        let plan = plan(&root.config).expect("figure 1 plans");
        let paths: Vec<String> = plan
            .components
            .iter()
            .map(PlannedComponent::path_text)
            .collect();
        assert_eq!(
            paths,
            [
                "sfConfig",
                "sfConfig:computer1",
                "sfConfig:computer1:myShell",
                "sfConfig:computer1:loop",
                "sfConfig:computer1:domain1",
                "sfConfig:computer1:qcow",
                "sfConfig:computer1:domain2",
                "sfConfig:computer2",
                "sfConfig:computer2:myShell",
                "sfConfig:computer2:overlay",
                "sfConfig:computer2:domain3",
            ]
        );
        let domain1 = &plan.components[4];
        assert_eq!(domain1.kind, Kind::QemuDomain);
        assert_eq!(domain1.parent, Some(1));
        assert_eq!(
            domain1.liveness,
            Liveness {
                delay: Duration::from_secs(2),
                factor: 2
            }
        );
        assert_eq!(plan.components[1].children, vec![2, 3, 4, 5, 6]);
        assert!(plan.components[1].supervisor.is_some() && domain1.supervisor.is_none());
    }

    #[test]
    fn leaves_keep_their_components_as_data_and_lazy_ones_never_run() {
        let config = resolve(
            "sfConfig extends Compound { p extends Prim { settings extends { a 1; } } pool extends Pool { replicas 2; template extends LAZY ProcessDomain { command [| \"sleep\", \"9\" |]; } } later extends LAZY Prim; }",
        );
        let plan = plan(&config).expect("plans");
        let paths: Vec<String> = plan
            .components
            .iter()
            .map(PlannedComponent::path_text)
            .collect();
        // The pool's replicas run; its template does not.
        assert_eq!(
            paths,
            [
                "sfConfig",
                "sfConfig:p",
                "sfConfig:pool",
                "sfConfig:pool:r1",
                "sfConfig:pool:r2"
            ]
        );
        assert_eq!(plan.components[3].kind, Kind::ProcessDomain);
        assert!(plan.index_of(&["pool".into(), "template".into()]).is_none());
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let config = resolve(
            "sfConfig extends Compound { sdRestartStrategy \"often\"; a extends ProcessDomain { command [| |]; env [| \"NOVALUE\" |]; } b extends Domain { driver \"x\"; } c extends Prim { sfClass \"org.example.Thing\"; sfLivenessFactor 0; } d extends Pool { replicas -1; template extends Prim; } e extends Prim { sfProcessHost 5; } }",
        );
        let errors = plan(&config).expect_err("bad settings");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let expect = [
            "`sfConfig:sdRestartStrategy`: unknown strategy \"often\"",
            "`sfConfig:a:command`: must name a program",
            "`sfConfig:a:env`: \"NOVALUE\" is not NAME=value",
            "`sfConfig:b:sfClass`: \"sd.Domain\" is abstract",
            "`sfConfig:c:sfClass`: unknown component class \"org.example.Thing\"",
            "`sfConfig:d:replicas`: must be an integer from 0 to 10000, not -1",
            "`sfConfig:d:template`: must be written `template extends LAZY ...`",
            "`sfConfig:e:sfProcessHost`: must be a node name",
        ];
        for wanted in expect {
            assert!(
                text.iter().any(|t| t.starts_with(wanted)),
                "missing `{wanted}` in {text:#?}"
            );
        }
    }

    #[test]
    fn a_pool_refuses_an_attribute_named_like_a_replica() {
        let config = resolve(
            "sfConfig extends Pool { replicas 2; r2 7; template extends LAZY ProcessDomain { command [| \"sleep\", \"9\" |]; } }",
        );
        let errors = plan(&config).expect_err("clash");
        assert!(
            errors[0]
                .to_string()
                .contains("the Pool has an attribute `r2` already"),
            "{errors:?}"
        );
    }

    #[test]
    fn unset_hosts_run_on_the_parent_node() {
        let config = resolve(
            "sfConfig extends Compound { a extends Prim { sfProcessHost NULL; } b extends Prim { sfProcessHost \"node-b\"; } }",
        );
        let plan = plan(&config).unwrap();
        assert_eq!(plan.components[1].host, None);
        assert_eq!(plan.components[2].host.as_deref(), Some("node-b"));
    }
}
