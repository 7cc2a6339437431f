//! The whole path from outside to the supervisor with hostile values: a signed manifest with huge,
//! negative, fractional, empty, duplicate and cyclic fields is either refused with an error or
//! becomes a plan whose every service the state machine then drives through any events over any
//! times without a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::state::{step, Backoff, Event, Spec, State};
use flint_manifest::{sign, verify, MAX_SECONDS};

fn seconds() -> impl Strategy<Value = Value> {
    prop_oneof![
        12 => (0.0..86_400.0f64).prop_map(|f| json!(f)),
        8 => Just(Value::Null),
        4 => hostile_seconds(),
    ]
}

fn hostile_seconds() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(1e19)),
        Just(json!(1e308)),
        Just(json!(f64::MAX)),
        Just(json!(-1.0)),
        Just(json!(-0.0)),
        Just(json!(0)),
        Just(json!(5e-324)),
        Just(json!(86_400)),
        Just(json!(86_400.000_001)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!("10")),
        any::<f64>().prop_filter("JSON has no NaN or inf", |f| f.is_finite()).prop_map(|f| json!(f)),
    ]
}

// Valid values weigh most, so that many manifests get through to the state machine.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => "[a-d]",
        1 => Just(String::new()),
        1 => Just("a".to_string()),
        1 => Just("b".to_string()),
        1 => Just("../x".to_string()),
        1 => Just(".hidden".to_string()),
        1 => Just("x".repeat(65)),
        1 => Just("nul\0".to_string()),
    ]
}

/// A service's `capabilities`: mostly absent or valid, else unknown, empty, NUL, huge or
/// mistyped names and fields.
fn capabilities() -> impl Strategy<Value = Value> {
    let cap = prop_oneof![
        8 => "(CAP_)?(sys_admin|NET_RAW|chown|all|bpf)",
        1 => Just(String::new()),
        1 => Just("cap_".to_string()),
        1 => Just("sys_\0admin".to_string()),
        1 => Just("x".repeat(100_000)),
        1 => "[a-z_]{1,20}",
    ];
    prop_oneof![
        8 => Just(Value::Null),
        4 => (prop::collection::vec(cap.clone(), 0..4), prop::collection::vec(cap, 0..4))
            .prop_map(|(add, drop)| json!({"add": add, "drop": drop})),
        1 => Just(json!({"add": "sys_admin"})),
        1 => Just(json!({"raise": ["sys_admin"]})),
        1 => Just(json!(["sys_admin"])),
    ]
}

fn service() -> impl Strategy<Value = Value> {
    (
        name(),
        prop::collection::vec(
            prop_oneof![1 => Just(String::new()), 1 => Just("\0".to_string()), 20 => "/[a-z]{1,8}"],
            1..3,
        ),
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(name(), 1..3)],
        (seconds(), seconds(), any::<bool>(), any::<bool>()),
        prop_oneof![
            4 => Just(json!("always")),
            4 => Just(json!("never")),
            4 => Just(json!("on-failure")),
            1 => Just(json!("sometimes"))
        ],
        prop_oneof![
            8 => Just(json!("TERM")),
            2 => Just(json!("SIGKILL")),
            2 => Just(json!("STOP")),
            1 => Just(json!("SIGNOPE")),
            1 => Just(json!(""))
        ],
        (capabilities(), any::<bool>()),
    )
        .prop_map(
            |(name, exec, after, (stop, test, oneshot, has_test), restart, signal, (caps, new_privileges))| {
                let mut s = json!({"name": name, "exec": exec, "after": after, "oneshot": oneshot,
                               "restart": restart, "stop_signal": signal, "new_privileges": new_privileges});
                let o = s.as_object_mut().unwrap();
                if !caps.is_null() {
                    o.insert("capabilities".into(), caps);
                }
                if !stop.is_null() {
                    o.insert("stop_timeout".into(), stop);
                }
                if !test.is_null() {
                    o.insert("test_timeout".into(), test);
                }
                if has_test {
                    o.insert("test".into(), json!(["/bin/true"]));
                }
                s
            },
        )
}

fn event() -> impl Strategy<Value = (Event, u64)> {
    let e = prop_oneof![
        Just(Event::Tick),
        (1..4i32).prop_map(Event::Spawned),
        Just(Event::SpawnFailed),
        (10..12i32).prop_map(Event::TestSpawned),
        Just(Event::TestSpawnFailed),
        (prop_oneof![1..4i32, 10..12i32], any::<bool>()).prop_map(|(pid, success)| Event::Exited { pid, success }),
        Just(Event::Start),
        Just(Event::Stop),
        Just(Event::Restart),
    ];
    // Time steps from nothing to ten years.
    (e, prop_oneof![Just(0u64), 0..10_000u64, Just(86_400_000), Just(315_360_000_000)])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn hostile_manifests_are_refused_or_supervised_without_a_panic(
        version in any::<u64>(),
        services in prop::collection::vec(service(), 0..6),
        events in prop::collection::vec(event(), 0..40),
        deps_up in any::<bool>(),
    ) {
        let key = SigningKey::from_bytes(&[3; 32]);
        let bytes = serde_json::to_vec(&json!({"version": version, "services": services})).unwrap();
        let Ok(plan) = verify(&bytes, Some(sign(&bytes, &key).as_bytes()), &key.verifying_key()) else {
            return Ok(());
        };
        for s in &plan.services {
            prop_assert!(s.stop_timeout.as_secs_f64() <= MAX_SECONDS && s.test_timeout.as_secs_f64() <= MAX_SECONDS);
            let caps = s.confinement.capabilities;
            prop_assert_eq!(caps.0 & !flint_manifest::caps::CapabilitySet::ALL.0, 0);
            let spec = Spec::from(s);
            let (mut state, mut now) = (State::default(), Instant::now());
            for (event, millis) in &events {
                now = crate::later(now, Duration::from_millis(*millis));
                (state, _) = step(state, *event, now, deps_up, &spec, &Backoff::default());
                if let Some(deadline) = state.deadline() {
                    let _ = deadline.saturating_duration_since(now);
                }
            }
        }
    }
}
