//! Properties of the supervision decisions over arbitrary failure sequences: restarts stay
//! within the declared intensity (INV-5), policies are honoured, backoff is bounded, and
//! strategies pick the children they promise.

use std::time::Duration;

use proptest::prelude::{
    Just, ProptestConfig, TestCaseError, any, prop, prop_assert, prop_assert_eq, prop_assert_ne,
    prop_oneof, proptest,
};
use sd_runtime::supervision::{
    Decision, Ending, RestartPolicy, Strategy, Supervisor, SupervisorSpec,
};

fn strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop_oneof![
        Just(Strategy::OneForOne),
        Just(Strategy::OneForAll),
        Just(Strategy::RestForOne),
        Just(Strategy::None),
    ]
}

fn policy() -> impl proptest::strategy::Strategy<Value = RestartPolicy> {
    prop_oneof![
        Just(RestartPolicy::Permanent),
        Just(RestartPolicy::Transient),
        Just(RestartPolicy::Temporary)
    ]
}

fn spec() -> impl proptest::strategy::Strategy<Value = SupervisorSpec> {
    (strategy(), 0u32..6, 1u64..20_000, 0u64..2_000, 0u64..10_000).prop_map(
        |(strategy, max_restarts, window, backoff, extra)| SupervisorSpec {
            strategy,
            max_restarts,
            window: Duration::from_millis(window),
            backoff: Duration::from_millis(backoff),
            backoff_max: Duration::from_millis(backoff + extra),
        },
    )
}

/// (child index seed, abnormal?, ms since the previous end, jitter)
fn events() -> impl proptest::strategy::Strategy<Value = Vec<(usize, bool, u64, f64)>> {
    prop::collection::vec(
        (0usize..100, any::<bool>(), 0u64..5_000, 0.0f64..1.0),
        1..80,
    )
}

use proptest::strategy::Strategy as _;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn restarts_stay_within_the_intensity(spec in spec(), policies in prop::collection::vec(policy(), 1..6), events in events()) {
        let mut supervisor = Supervisor::new(spec);
        let window_ms = spec.window.as_millis() as u64;
        let mut now = 0u64;
        let mut restart_times: Vec<u64> = Vec::new();
        for (seed, abnormal, gap, jitter) in events {
            now += gap;
            let child = seed % policies.len();
            let ending = if abnormal { Ending::Abnormal } else { Ending::Normal };
            let decision = supervisor.on_child_end(child, ending, &policies, now, jitter);
            match &decision {
                Decision::Restart { terminate, restart, delay } => {
                    restart_times.push(now);
                    // INV-5: no window holds more restarts than allowed.
                    let in_window = restart_times.iter().filter(|&&t| now - t < window_ms).count();
                    prop_assert!(in_window <= spec.max_restarts as usize, "{in_window} restarts in a window allowing {}", spec.max_restarts);
                    prop_assert!(restart.contains(&child));
                    prop_assert!(!terminate.contains(&child));
                    prop_assert!(restart.windows(2).all(|w| w[0] < w[1]), "restarted in declaration order");
                    for sibling in restart.iter().filter(|&&c| c != child) {
                        prop_assert!(terminate.contains(sibling), "a restarted sibling was terminated first");
                        prop_assert_ne!(policies[*sibling], RestartPolicy::Temporary);
                    }
                    match spec.strategy {
                        Strategy::OneForOne => prop_assert!(terminate.is_empty()),
                        Strategy::OneForAll => prop_assert_eq!(terminate.len() + 1, policies.len()),
                        Strategy::RestForOne => prop_assert!(terminate.iter().all(|&c| c > child)),
                        Strategy::None => prop_assert!(false, "strategy none never restarts"),
                    }
                    prop_assert!(delay.as_secs_f64() <= spec.backoff_max.as_secs_f64() * 1.25 + 1e-9);
                    prop_assert_ne!(policies[child], RestartPolicy::Temporary);
                }
                Decision::Carry => {
                    let carried = policies[child] == RestartPolicy::Temporary
                        || (policies[child] == RestartPolicy::Transient && ending == Ending::Normal);
                    prop_assert!(carried, "only a temporary child, or a transient one ending normally, is left alone");
                }
                Decision::Escalate(_) => {
                    prop_assert_ne!(policies[child], RestartPolicy::Temporary);
                }
            }
        }
    }

    #[test]
    fn a_first_restart_is_immediate_and_later_ones_wait(spec in spec(), jitter in 0.0f64..1.0) {
        let spec = SupervisorSpec { strategy: Strategy::OneForOne, max_restarts: 10, ..spec };
        let mut supervisor = Supervisor::new(spec);
        let policies = [RestartPolicy::Permanent];
        let Decision::Restart { delay: first, .. } = supervisor.on_child_end(0, Ending::Abnormal, &policies, 0, jitter) else {
            return Err(TestCaseError::fail("a permanent child is restarted"));
        };
        prop_assert_eq!(first, Duration::ZERO);
        let Decision::Restart { delay: second, .. } = supervisor.on_child_end(0, Ending::Abnormal, &policies, 0, jitter) else {
            return Err(TestCaseError::fail("the second restart is within the intensity"));
        };
        prop_assert!(second >= spec.backoff.min(spec.backoff_max));
    }
}
