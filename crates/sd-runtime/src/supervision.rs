//! Supervision decisions: what a parent does when one of its children ends.
//!
//! The settings come from the parent's attributes (documented in docs/prelude.md):
//! `sdRestartStrategy`, `sdMaxRestarts` within `sdRestartWindow` seconds, `sdRestartBackoff`
//! and `sdRestartBackoffMax`; and from each child's `sdRestart` policy.
//!
//! - A `temporary` child is never restarted; a `transient` one only after an abnormal end;
//!   a `permanent` one always.
//! - A restart counts against the parent's intensity: more than `sdMaxRestarts` restarts
//!   within the window and the parent fails itself instead (escalation, INV-5).
//! - Strategy `none` (SmartFrog's behaviour) escalates at once.
//! - Backoff is per child: its first restart within the window is immediate, its k-th
//!   (k ≥ 2) waits `backoff × 2^(k−2)`, capped at `backoffMax`, plus up to 25% jitter.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use sd_lang::{Component, Value};

use crate::{Error, Result};

/// Which children a child's failure restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Only the failed child.
    OneForOne,
    /// Every child (the others are terminated first, in reverse order).
    OneForAll,
    /// The failed child and every child declared after it.
    RestForOne,
    /// None: the failure terminates the parent (SmartFrog's behaviour).
    None,
}

impl Strategy {
    /// The strategy as `sdRestartStrategy` names it.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
            Strategy::None => "none",
        }
    }
}

/// What a child's end means to its parent (`sdRestart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always restarted, even after a normal end.
    Permanent,
    /// Restarted only after an abnormal end.
    Transient,
    /// Never restarted.
    Temporary,
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It finished its work (a process exiting with code 0).
    Normal,
    /// It crashed, failed a liveness check, or failed to deploy or start.
    Abnormal,
}

/// A parent's supervision settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SupervisorSpec {
    /// Which children a failure restarts.
    pub strategy: Strategy,
    /// Restarts allowed within `window`.
    pub max_restarts: u32,
    /// The window over which restarts are counted.
    pub window: Duration,
    /// The delay before a child's second restart within the window.
    pub backoff: Duration,
    /// The longest delay.
    pub backoff_max: Duration,
}

impl Default for SupervisorSpec {
    /// The prelude's defaults.
    fn default() -> Self {
        SupervisorSpec {
            strategy: Strategy::OneForOne,
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Why a parent fails itself instead of restarting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Escalation {
    /// Its strategy is `none`.
    StrategyNone {
        /// The child that failed.
        child: usize,
    },
    /// More than `max_restarts` restarts within the window.
    IntensityExceeded {
        /// The allowed restarts.
        max_restarts: u32,
        /// The window.
        window: Duration,
    },
}

/// What the parent does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: the child's end is recorded and the parent carries on.
    Carry,
    /// Terminate `terminate` (in reverse order), then, after `delay`, start `restart` again
    /// (in order). The failed child is in `restart`; `terminate` holds the siblings a
    /// `one_for_all` or `rest_for_one` strategy takes down with it.
    Restart {
        /// Running siblings to terminate first.
        terminate: Vec<usize>,
        /// Children to start again, in declaration order.
        restart: Vec<usize>,
        /// How long to wait before starting them.
        delay: Duration,
    },
    /// The parent fails itself; its own parent's strategy applies.
    Escalate(Escalation),
}

/// A parent's supervision state: when its children were restarted.
#[derive(Debug, Clone)]
pub struct Supervisor {
    spec: SupervisorSpec,
    /// Times (ms, the caller's clock) of the restarts within the window, oldest first.
    restarts: VecDeque<u64>,
    /// The same, per child, for the backoff.
    per_child: BTreeMap<usize, VecDeque<u64>>,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Drops the times that are `window_ms` or more before `now_ms`.
fn forget_before(times: &mut VecDeque<u64>, now_ms: u64, window_ms: u64) {
    while times
        .front()
        .is_some_and(|&t| now_ms.saturating_sub(t) >= window_ms)
    {
        times.pop_front();
    }
}

impl Supervisor {
    /// A supervisor with these settings and no restarts yet.
    pub fn new(spec: SupervisorSpec) -> Self {
        Supervisor {
            spec,
            restarts: VecDeque::new(),
            per_child: BTreeMap::new(),
        }
    }

    /// The settings.
    pub fn spec(&self) -> SupervisorSpec {
        self.spec
    }

    /// Changes the settings of a running parent (live reconfiguration); counts are kept.
    pub fn reconfigure(&mut self, spec: SupervisorSpec) {
        self.spec = spec;
    }

    /// Decides what to do when child `child` (of `policies.len()` children, in declaration
    /// order, with their `sdRestart` policies) ended as `ending` at `now_ms`. `jitter` is a
    /// number in `[0, 1)` from the caller's random source (seeded in chaos runs).
    pub fn on_child_end(
        &mut self,
        child: usize,
        ending: Ending,
        policies: &[RestartPolicy],
        now_ms: u64,
        jitter: f64,
    ) -> Decision {
        debug_assert!(
            child < policies.len(),
            "the child is one of the parent's children"
        );
        let policy = policies
            .get(child)
            .copied()
            .unwrap_or(RestartPolicy::Temporary);
        let restart_wanted = match (policy, ending) {
            (RestartPolicy::Temporary, _) | (RestartPolicy::Transient, Ending::Normal) => false,
            (RestartPolicy::Permanent, _) | (RestartPolicy::Transient, Ending::Abnormal) => true,
        };
        if !restart_wanted {
            return Decision::Carry;
        }
        if self.spec.strategy == Strategy::None {
            return Decision::Escalate(Escalation::StrategyNone { child });
        }
        let window_ms = millis(self.spec.window);
        forget_before(&mut self.restarts, now_ms, window_ms);
        if self.restarts.len() >= self.spec.max_restarts as usize {
            return Decision::Escalate(Escalation::IntensityExceeded {
                max_restarts: self.spec.max_restarts,
                window: self.spec.window,
            });
        }
        self.restarts.push_back(now_ms);
        let history = self.per_child.entry(child).or_default();
        forget_before(history, now_ms, window_ms);
        history.push_back(now_ms);
        let restarts_of_child = history.len();
        let delay = self.backoff(restarts_of_child, jitter);
        let affected: Vec<usize> = match self.spec.strategy {
            Strategy::OneForOne | Strategy::None => vec![child],
            Strategy::OneForAll => (0..policies.len()).collect(),
            Strategy::RestForOne => (child..policies.len()).collect(),
        };
        let terminate = affected.iter().copied().filter(|&c| c != child).collect();
        // Siblings taken down with it come back unless they are temporary.
        let restart = affected
            .into_iter()
            .filter(|&c| c == child || policies[c] != RestartPolicy::Temporary)
            .collect();
        Decision::Restart {
            terminate,
            restart,
            delay,
        }
    }

    /// The delay before a child's `k`-th restart within the window.
    fn backoff(&self, k: usize, jitter: f64) -> Duration {
        if k <= 1 {
            return Duration::ZERO;
        }
        let doublings = i32::try_from(k - 2).unwrap_or(i32::MAX).min(62);
        let base = self.spec.backoff.as_secs_f64() * 2f64.powi(doublings);
        let capped = base.min(self.spec.backoff_max.as_secs_f64());
        let jitter = jitter.clamp(0.0, 1.0);
        Duration::try_from_secs_f64(capped * (1.0 + 0.25 * jitter)).unwrap_or(self.spec.backoff_max)
    }
}

// ----- reading the settings from a resolved component -----------------------------------

fn invalid(path: &str, attribute: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidAttribute {
        path: path.to_string(),
        attribute,
        reason: reason.into(),
    }
}

/// A non-negative number of seconds (an integer or a double), or the default when absent.
pub(crate) fn seconds(
    component: &Component,
    path: &str,
    attribute: &'static str,
    default: Duration,
) -> Result<Duration> {
    let seconds = match component.get(attribute) {
        None => return Ok(default),
        Some(Value::Int(n)) => f64::from(*n),
        #[allow(clippy::cast_precision_loss)]
        Some(Value::Long(n)) => *n as f64,
        Some(Value::Float(x)) => f64::from(*x),
        Some(Value::Double(x)) => *x,
        Some(other) => {
            return Err(invalid(
                path,
                attribute,
                format!("must be a number of seconds, not {}", other.type_name()),
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        invalid(
            path,
            attribute,
            format!("must be a non-negative number of seconds, not {seconds}"),
        )
    })
}

impl SupervisorSpec {
    /// Reads the settings of the component at `path`; absent attributes take the defaults.
    pub fn from_component(component: &Component, path: &str) -> Result<SupervisorSpec> {
        let defaults = SupervisorSpec::default();
        let strategy = match component.get("sdRestartStrategy") {
            None => defaults.strategy,
            Some(Value::Str(text)) => match text.as_str() {
                "one_for_one" => Strategy::OneForOne,
                "one_for_all" => Strategy::OneForAll,
                "rest_for_one" => Strategy::RestForOne,
                "none" => Strategy::None,
                other => {
                    let reason = format!(
                        "unknown strategy \"{other}\" (use \"one_for_one\", \"one_for_all\", \"rest_for_one\" or \"none\")"
                    );
                    return Err(invalid(path, "sdRestartStrategy", reason));
                }
            },
            Some(other) => {
                return Err(invalid(
                    path,
                    "sdRestartStrategy",
                    format!("must be a string, not {}", other.type_name()),
                ));
            }
        };
        let max_restarts = match component.get("sdMaxRestarts") {
            None => defaults.max_restarts,
            Some(Value::Int(n)) => u32::try_from(*n).map_err(|_| {
                invalid(path, "sdMaxRestarts", format!("must be 0 or more, not {n}"))
            })?,
            Some(Value::Long(n)) => u32::try_from(*n).map_err(|_| {
                invalid(path, "sdMaxRestarts", format!("must be 0 or more, not {n}"))
            })?,
            Some(other) => {
                return Err(invalid(
                    path,
                    "sdMaxRestarts",
                    format!("must be an integer, not {}", other.type_name()),
                ));
            }
        };
        let window = seconds(component, path, "sdRestartWindow", defaults.window)?;
        let backoff = seconds(component, path, "sdRestartBackoff", defaults.backoff)?;
        let backoff_max = seconds(component, path, "sdRestartBackoffMax", defaults.backoff_max)?;
        if window.is_zero() && max_restarts > 0 {
            return Err(invalid(
                path,
                "sdRestartWindow",
                "must be more than 0 seconds when restarts are allowed",
            ));
        }
        if backoff_max < backoff {
            let reason = format!(
                "({}s) must not be less than sdRestartBackoff ({}s)",
                backoff_max.as_secs_f64(),
                backoff.as_secs_f64()
            );
            return Err(invalid(path, "sdRestartBackoffMax", reason));
        }
        Ok(SupervisorSpec {
            strategy,
            max_restarts,
            window,
            backoff,
            backoff_max,
        })
    }
}

impl RestartPolicy {
    /// Reads a child's `sdRestart` (default `transient`).
    pub fn from_component(component: &Component, path: &str) -> Result<RestartPolicy> {
        match component.get("sdRestart") {
            None => Ok(RestartPolicy::Transient),
            Some(Value::Str(text)) => match text.as_str() {
                "permanent" => Ok(RestartPolicy::Permanent),
                "transient" => Ok(RestartPolicy::Transient),
                "temporary" => Ok(RestartPolicy::Temporary),
                other => Err(invalid(
                    path,
                    "sdRestart",
                    format!(
                        "unknown policy \"{other}\" (use \"permanent\", \"transient\" or \"temporary\")"
                    ),
                )),
            },
            Some(other) => Err(invalid(
                path,
                "sdRestart",
                format!("must be a string, not {}", other.type_name()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use RestartPolicy::{Permanent, Temporary, Transient};

    fn supervisor(strategy: Strategy) -> Supervisor {
        Supervisor::new(SupervisorSpec {
            strategy,
            ..SupervisorSpec::default()
        })
    }

    #[test]
    fn policies_decide_whether_an_end_is_a_failure() {
        let mut s = supervisor(Strategy::OneForOne);
        let policies = [Permanent, Transient, Temporary];
        assert!(matches!(
            s.on_child_end(0, Ending::Normal, &policies, 0, 0.0),
            Decision::Restart { .. }
        ));
        assert_eq!(
            s.on_child_end(1, Ending::Normal, &policies, 0, 0.0),
            Decision::Carry
        );
        assert!(matches!(
            s.on_child_end(1, Ending::Abnormal, &policies, 0, 0.0),
            Decision::Restart { .. }
        ));
        assert_eq!(
            s.on_child_end(2, Ending::Abnormal, &policies, 0, 0.0),
            Decision::Carry
        );
    }

    #[test]
    fn strategies_choose_the_children() {
        let policies = [Transient, Transient, Temporary, Transient];
        let restart =
            |strategy| supervisor(strategy).on_child_end(1, Ending::Abnormal, &policies, 0, 0.0);
        assert_eq!(
            restart(Strategy::OneForOne),
            Decision::Restart {
                terminate: vec![],
                restart: vec![1],
                delay: Duration::ZERO
            }
        );
        assert_eq!(
            restart(Strategy::OneForAll),
            Decision::Restart {
                terminate: vec![0, 2, 3],
                restart: vec![0, 1, 3],
                delay: Duration::ZERO
            },
            "the temporary sibling is taken down and not restarted"
        );
        assert_eq!(
            restart(Strategy::RestForOne),
            Decision::Restart {
                terminate: vec![2, 3],
                restart: vec![1, 3],
                delay: Duration::ZERO
            }
        );
        assert_eq!(
            restart(Strategy::None),
            Decision::Escalate(Escalation::StrategyNone { child: 1 })
        );
    }

    #[test]
    fn intensity_escalates_and_the_window_forgets() {
        let spec = SupervisorSpec {
            max_restarts: 2,
            window: Duration::from_secs(10),
            ..SupervisorSpec::default()
        };
        let mut s = Supervisor::new(spec);
        let policies = [Transient];
        assert!(matches!(
            s.on_child_end(0, Ending::Abnormal, &policies, 0, 0.0),
            Decision::Restart { .. }
        ));
        assert!(matches!(
            s.on_child_end(0, Ending::Abnormal, &policies, 1_000, 0.0),
            Decision::Restart { .. }
        ));
        assert_eq!(
            s.on_child_end(0, Ending::Abnormal, &policies, 2_000, 0.0),
            Decision::Escalate(Escalation::IntensityExceeded {
                max_restarts: 2,
                window: Duration::from_secs(10)
            })
        );
        // 10 s after the first restart it no longer counts.
        assert!(matches!(
            s.on_child_end(0, Ending::Abnormal, &policies, 10_000, 0.0),
            Decision::Restart { .. }
        ));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let spec = SupervisorSpec {
            max_restarts: 100,
            window: Duration::from_secs(3600),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5),
            ..SupervisorSpec::default()
        };
        let mut s = Supervisor::new(spec);
        let delays: Vec<Duration> = (0..6)
            .map(
                |i| match s.on_child_end(0, Ending::Abnormal, &[Transient], i * 10, 0.0) {
                    Decision::Restart { delay, .. } => delay,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        let secs: Vec<f64> = delays.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]);
        let Decision::Restart { delay, .. } =
            s.on_child_end(0, Ending::Abnormal, &[Transient], 100, 0.999)
        else {
            panic!()
        };
        assert!(
            delay > Duration::from_secs(6) && delay <= Duration::from_millis(6_250),
            "{delay:?}"
        );
    }

    #[test]
    fn settings_come_from_the_prelude_attributes() {
        let resolved = sd_lang::resolve_str(
            "t.sf",
            "#include \"prelude.sf\"\nsfConfig extends Compound { sdRestartStrategy \"rest_for_one\"; sdMaxRestarts 3; sdRestartWindow 2.5; a extends Prim { sdRestart \"permanent\"; } }",
            &sd_lang::Options::default(),
        )
        .expect("resolves");
        let spec = SupervisorSpec::from_component(&resolved.config, "sfConfig").unwrap();
        assert_eq!(spec.strategy, Strategy::RestForOne);
        assert_eq!(spec.max_restarts, 3);
        assert_eq!(spec.window, Duration::from_millis(2_500));
        assert_eq!(
            spec.backoff,
            Duration::from_millis(500),
            "the prelude's default"
        );
        let child = resolved
            .config
            .get("a")
            .and_then(Value::as_component)
            .unwrap();
        assert_eq!(
            RestartPolicy::from_component(child, "sfConfig:a").ok(),
            Some(Permanent)
        );
    }

    #[test]
    fn bad_settings_name_the_attribute() {
        let mut component = Component::new();
        component
            .attrs
            .insert("sdRestartStrategy".into(), Value::Str("sometimes".into()));
        let error = SupervisorSpec::from_component(&component, "sfConfig:pool").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("`sfConfig:pool:sdRestartStrategy`: unknown strategy \"sometimes\""),
            "{error}"
        );
        let mut component = Component::new();
        component
            .attrs
            .insert("sdMaxRestarts".into(), Value::Int(-1));
        assert!(SupervisorSpec::from_component(&component, "x").is_err());
        let mut component = Component::new();
        component
            .attrs
            .insert("sdRestartWindow".into(), Value::Double(-2.0));
        assert!(
            SupervisorSpec::from_component(&component, "x")
                .unwrap_err()
                .to_string()
                .contains("non-negative")
        );
        let mut component = Component::new();
        component
            .attrs
            .insert("sdRestartBackoffMax".into(), Value::Double(0.1));
        assert!(
            SupervisorSpec::from_component(&component, "x").is_err(),
            "max below the backoff"
        );
    }
}
