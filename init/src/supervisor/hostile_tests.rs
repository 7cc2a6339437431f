//! The whole path from outside to the supervisor with hostile values: a signed manifest with huge,
//! negative, fractional, empty, duplicate and cyclic fields is either refused with an error or
//! becomes a plan whose every service the state machine then drives through any events over any
//! times without a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use flint_manifest::ed25519::SigningKey;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::state::{step, Backoff, Event, Spec, State};
use flint_manifest::{limits, sign, verify, MAX_SECONDS};

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

/// A service's `limits`: mostly absent or valid, else out of range, mistyped, negative, huge,
/// malformed sizes and devices.
fn limits() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        4 => (1u64..100_000).prop_map(|n| json!(n)),
        1 => Just(json!(0)),
        1 => Just(json!(-1)),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(1e300)),
        1 => Just(json!(0.5)),
        1 => Just(json!("12")),
    ];
    let size = prop_oneof![
        4 => "[1-9][0-9]{0,4}(K|M|G|KiB|MiB|m|)",
        1 => "[0-9]{15,25}[KMGT]?",
        1 => Just("".to_string()),
        1 => Just("64 M".to_string()),
        1 => Just("1.5G".to_string()),
        1 => Just("\n64M".to_string()),
        1 => ".{0,12}",
    ];
    let device = prop_oneof![
        4 => "[0-9]{1,3}:[0-9]{1,3}",
        2 => "/dev/[a-z]{1,5}",
        1 => Just("/dev/".to_string()),
        1 => Just("/dev/../etc".to_string()),
        1 => Just("8:0\nrbps=1".to_string()),
        1 => "[0-9]{11}:[0-9]",
        1 => ".{0,10}",
    ];
    let io = (device, number.clone(), number.clone())
        .prop_map(|(device, read, write)| json!({"device": device, "read_bps": read, "write_iops": write}));
    let cpus = prop_oneof![
        4 => (0.0..64.0f64).prop_map(|f| json!(f)),
        1 => Just(json!(0.001)),
        1 => Just(json!(-2)),
        1 => Just(json!(1e308)),
        1 => Just(json!(5e-324)),
    ];
    prop_oneof![
        6 => Just(Value::Null),
        4 => (
            prop_oneof![2 => size.prop_map(|s| json!(s)), 1 => number.clone()],
            number.clone(),
            number,
            cpus,
            prop::collection::vec(io, 0..3),
        )
            .prop_map(|(memory, pids, weight, cpus, io)| {
                json!({"memory": memory, "pids": pids, "cpu_weight": weight, "cpus": cpus, "io": io})
            }),
        1 => Just(json!({"io": vec![json!({"device": "8:0", "read_bps": 1}); 65]})),
        1 => Just(json!({"memroy": "1G"})),
        1 => Just(json!("1G")),
    ]
}

/// A service's `namespaces`.
fn namespaces() -> impl Strategy<Value = Value> {
    let word = prop_oneof![8 => "(pid|uts|ipc|net)", 1 => Just("mnt".to_string()), 1 => ".{0,6}"];
    prop_oneof![4 => Just(Value::Null), 2 => prop::collection::vec(word, 0..6).prop_map(|w| json!(w)), 1 => Just(json!("pid"))]
}

/// A service's readiness check: none, a command, a port (or not quite one), or both.
fn readiness_check() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => Just(Value::Null),
        2 => Just(json!({"test": ["/bin/true"]})),
        1 => Just(json!({"test": []})),
        3 => any::<u16>().prop_map(|p| json!({"test_port": p})),
        1 => prop_oneof![Just(json!(-1)), Just(json!(65_536)), Just(json!(u64::MAX)), Just(json!("80")), Just(json!(8.5))]
            .prop_map(|p| json!({"test_port": p})),
        1 => any::<u16>().prop_map(|p| json!({"test": ["/bin/true"], "test_port": p})),
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
        (seconds(), seconds(), any::<bool>(), readiness_check()),
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
        (capabilities(), any::<bool>(), limits(), namespaces()),
    )
        .prop_map(
            |(name, exec, after, (stop, test, oneshot, check), restart, signal, (caps, new_privileges, limits, ns))| {
                let mut s = json!({"name": name, "exec": exec, "after": after, "oneshot": oneshot,
                               "restart": restart, "stop_signal": signal, "new_privileges": new_privileges});
                let o = s.as_object_mut().unwrap();
                if !caps.is_null() {
                    o.insert("capabilities".into(), caps);
                }
                if !limits.is_null() {
                    o.insert("limits".into(), limits);
                }
                if !ns.is_null() {
                    o.insert("namespaces".into(), ns);
                }
                if !stop.is_null() {
                    o.insert("stop_timeout".into(), stop);
                }
                if !test.is_null() {
                    o.insert("test_timeout".into(), test);
                }
                if let Some(check) = check.as_object() {
                    o.extend(check.clone());
                }
                s
            },
        )
}

/// A manifest's `health`: absent, valid, or with hostile windows, counts and names.
fn health() -> impl Strategy<Value = Value> {
    let restarts = prop_oneof![4 => (1u32..10).prop_map(|n| json!(n)), 1 => Just(json!(0)), 1 => Just(json!(-1)),
                               1 => Just(json!(u64::MAX)), 1 => Just(json!(1.5)), 2 => Just(Value::Null)];
    let require = prop_oneof![3 => Just(Value::Null), 2 => prop::collection::vec(name(), 0..4).prop_map(|n| json!(n)),
                              1 => Just(json!("web"))];
    prop_oneof![
        3 => Just(Value::Null),
        4 => (seconds(), restarts, require, seconds())
            .prop_map(|(t, r, q, s)| json!({"timeout": t, "restarts": r, "require": q, "settle": s})),
    ]
}

/// A manifest's `expires`: absent, a time, seconds, or garbage.
fn expires() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => Just(Value::Null),
        2 => Just(json!("2026-12-10T12:00:00Z")),
        1 => Just(json!("9999-12-31T23:59:59Z")),
        1 => Just(json!("10000-01-01T00:00:00Z")),
        1 => Just(json!("1969-12-31T23:59:59Z")),
        2 => any::<u64>().prop_map(|n| json!(n)),
        1 => Just(json!(-1)),
        1 => ".{0,24}".prop_map(|t| json!(t)),
    ]
}

fn event() -> impl Strategy<Value = (Event, u64)> {
    let e = prop_oneof![
        Just(Event::Tick),
        (1..4i32).prop_map(Event::Spawned),
        Just(Event::SpawnFailed),
        (10..12i32).prop_map(Event::TestSpawned),
        any::<bool>().prop_map(|success| Event::Checked { success }),
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
        health in health(),
        expires in expires(),
    ) {
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut manifest = json!({"version": version, "services": services});
        for (field, value) in [("health", health), ("expires", expires)] {
            if !value.is_null() {
                manifest[field] = value;
            }
        }
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let Ok(plan) = verify(&bytes, Some(sign(&bytes, &key).as_bytes()), &key.verifying_key()) else {
            return Ok(());
        };
        prop_assert!(plan.health.window.as_secs_f64() <= MAX_SECONDS && plan.health.restarts >= 1);
        prop_assert!(plan.health.require.iter().all(|r| plan.services.iter().any(|s| &s.name == r)));
        let _ = flint_manifest::health::expired(plan.expires, std::time::SystemTime::now());
        // The health window over the services' rows as the events go: never a panic.
        let mut window = crate::health::Window::open(plan.health.clone(), Instant::now());
        for s in &plan.services {
            prop_assert!(s.stop_timeout.as_secs_f64() <= MAX_SECONDS && s.test_timeout.as_secs_f64() <= MAX_SECONDS);
            // One readiness check at most, a real port, a command with a program.
            prop_assert!(s.test.is_none() || s.test_port.is_none());
            prop_assert!(s.test_port != Some(0) && s.test.as_ref().is_none_or(|argv| !argv.is_empty()));
            let caps = s.confinement.capabilities;
            prop_assert_eq!(caps.0 & !flint_manifest::caps::CapabilitySet::ALL.0, 0);
            // What init would write into the service's cgroup is numbers, one line each.
            let limits = &s.limits;
            prop_assert!(limits.memory_max.is_none_or(|m| (limits::MIN_MEMORY..=limits::MAX_AMOUNT).contains(&m)));
            prop_assert!(limits.pids_max.is_none_or(|p| (1..=limits::MAX_PIDS).contains(&p)));
            for (_, _, value) in limits.files() {
                prop_assert!(!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit() || b == b' '), "{}", value);
            }
            for io in &limits.io {
                let line = io.line((8, 0));
                prop_assert!(!line.contains('\n') && line.split(' ').count() == 5, "{}", line);
            }
            let spec = Spec::from(s);
            let (mut state, mut now) = (State::default(), Instant::now());
            for (event, millis) in &events {
                now = crate::later(now, Duration::from_millis(*millis));
                (state, _) = step(state, *event, now, deps_up, &spec, &Backoff::default());
                if let Some(deadline) = state.deadline() {
                    let _ = deadline.saturating_duration_since(now);
                }
                let seen = crate::health::Seen { name: s.name.clone(), state: state.word().into(), starts: state.starts };
                let _ = window.step(now, &[seen]);
            }
        }
    }
}
