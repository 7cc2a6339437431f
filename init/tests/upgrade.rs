//! Upgrades judged by their health window, on the host (`init run`): a version whose services
//! never get ready, or crash-loop, is rolled back by the node itself and refused afterwards; a
//! window cut short by a power loss (init and its services killed at once) boots the last good
//! version, and a version is tried at most twice; an expired manifest is refused by a trusted
//! clock and only reported by an untrusted one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod util;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::{hex_key, publish, start, Node};

/// A manifest of one service `web` that writes `tag` to `$OUT/web.version`; `ready` is its
/// readiness check's shell condition.
fn web(version: u64, tag: &str, ready: &str, health: Value) -> Value {
    json!({"version": version, "health": health, "services": [
        {"name": "web", "exec": ["/bin/sh", "-c", format!("echo {tag} > $OUT/web.version; exec sleep 1000")],
         "test": ["/bin/sh", "-c", ready], "test_timeout": 600}
    ]})
}

fn manifest(node: &Node) -> Value {
    node.ctl_json(&["manifest"])
}

fn reload(node: &Node) -> String {
    let out = node.ctl(&["reload"]);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Starts `init run` on `conf` with its state in `state`, trusting the host's clock unless told.
fn boot(conf: &Path, state: &Path, extra: &[&str]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(conf.join("key.pub"), hex_key()).unwrap();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--config", &conf, &"--state", &state];
    for e in extra {
        args.push(e);
    }
    start(dir, &args)
}

#[test]
fn an_upgrade_that_never_gets_ready_or_crash_loops_is_rolled_back_and_refused_afterwards() {
    let conf = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let shared_out = tempfile::tempdir().unwrap();
    let out = shared_out.path().to_path_buf();
    publish(conf.path(), &web(2, "v1", "true", json!({"timeout": 2})), &out);
    let node = boot(conf.path(), state.path(), &[]);
    node.wait_for("v2 healthy", |n| manifest(n)["good"] == 2);
    assert_eq!(running_tag_in(&out), "v1");
    let m = manifest(&node);
    assert!(m["health"].as_str().unwrap().contains("healthy"), "{m}");
    assert!(m["identity"].as_str().unwrap().contains("key kept in"), "{m}");

    // v3: its readiness check never passes; the 2 s window ends and the node goes back to v2.
    publish(conf.path(), &web(3, "v3", "false", json!({"timeout": 2})), &out);
    let applied = Instant::now();
    reload(&node);
    node.wait_for("v3 running", |_| running_tag_in(&out) == "v3");
    node.wait_for("the rollback to v2", |n| manifest(n)["failed"] == 3 && manifest(n)["version"] == 2);
    let rollback = applied.elapsed();
    node.wait_for("v2's service back", |n| running_tag_in(&out) == "v1" && n.state("web")["state"] == "running");
    let m = manifest(&node);
    assert!(m["health"].as_str().unwrap().contains("rolled back to manifest version 2"), "{m}");
    assert!(m["health"].as_str().unwrap().contains("not ready within the 2 s health window: web"), "{m}");
    assert_eq!((m["floor"].as_u64(), m["good"].as_u64()), (Some(3), Some(2)), "{m}");
    println!("rollback after a 2 s window: {:.2} s from reload to rolled back", rollback.as_secs_f64());
    // v3 is refused from now on, and so is anything older.
    let refused = reload(&node);
    assert!(refused.contains("version 3 failed its health check"), "{refused}");
    assert_eq!(manifest(&node)["version"], 2);

    // v4 crash-loops: 2 restarts fail it long before its 60 s window ends.
    let looping = json!({"version": 4, "health": {"timeout": 60, "restarts": 2}, "services": [
        {"name": "web", "exec": ["/bin/sh", "-c", "echo v4 > $OUT/web.version; exit 1"], "test": ["/bin/true"]}
    ]});
    publish(conf.path(), &looping, &out);
    let applied = Instant::now();
    reload(&node);
    node.wait_for("the rollback from v4", |n| manifest(n)["failed"] == 4 && manifest(n)["version"] == 2);
    assert!(applied.elapsed() < Duration::from_secs(60), "rolled back only at the window's end");
    let m = manifest(&node);
    assert!(m["health"].as_str().unwrap().contains("restarted 2 times"), "{m}");
    node.wait_for("v2's service back", |_| running_tag_in(&out) == "v1");

    // A good v5 is applied and becomes the last good version.
    publish(conf.path(), &web(5, "v5", "true", json!({"timeout": 5})), &out);
    reload(&node);
    node.wait_for("v5 healthy", |n| manifest(n)["good"] == 5);
    assert_eq!((manifest(&node)["version"].as_u64(), running_tag_in(&out).as_str()), (Some(5), "v5"));

    // The node's numbers say the same, in Prometheus's text format.
    let metrics = String::from_utf8(node.ctl(&["metrics"]).stdout).unwrap();
    for line in [
        "flint_manifest_version 5",
        "flint_manifest_good_version 5",
        "flint_manifest_failed_version 4",
        "flint_rollbacks_total 2",
        "flint_service_ready{service=\"web\"} 1",
        "flint_node_stale 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    let status = String::from_utf8(node.ctl(&["status"]).stdout).unwrap();
    let id = manifest(&node)["identity"].as_str().unwrap().split_whitespace().nth(1).unwrap().to_string();
    assert!(status.starts_with(&format!("node {id} (key kept in")), "{status}");
    assert!(status.contains("manifest version 5 (last good 5, floor 5, failed 4)"), "{status}");
    let starts = metrics.lines().find_map(|l| l.strip_prefix("flint_service_starts_total{service=\"web\"} ")).unwrap();
    assert!(starts.parse::<u64>().unwrap() >= 1, "{metrics}");
}

#[test]
fn a_health_window_cut_short_boots_the_last_good_version_and_a_version_is_tried_twice() {
    let conf = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let shared_out = tempfile::tempdir().unwrap();
    let out = shared_out.path();
    publish(conf.path(), &web(1, "v1", "true", json!({"timeout": 5})), out);
    let node = boot(conf.path(), state.path(), &[]);
    node.wait_for("v1 healthy", |n| manifest(n)["good"] == 1);
    let first_id = manifest(&node)["identity"].as_str().unwrap().split_whitespace().nth(1).unwrap().to_string();
    // v2 never gets ready within its minute; power is lost twice during its window.
    publish(conf.path(), &web(2, "v2", "false", json!({"timeout": 60})), out);
    reload(&node);
    node.wait_for("v2 in its window", |n| manifest(n)["health_window"] == 60);
    let trial = std::fs::read_to_string(state.path().join("trial")).unwrap();
    assert!(trial.starts_with("2 ") && trial.trim().ends_with(" 1"), "{trial}");
    drop(node);

    // Boot 2: the last good version first, then v2 again (its second and last try).
    let node = boot(conf.path(), state.path(), &[]);
    node.wait_for("v2's second try", |n| {
        std::fs::read_to_string(state.path().join("trial")).is_ok_and(|t| t.trim().ends_with(" 2"))
            && n.ctl_json(&["manifest"])["health_window"] == 60
    });
    let log = node.init_log();
    assert!(log.contains("the health window of version 2 was cut short"), "{log}");
    assert!(log.contains("rolled back to manifest version 1"), "{log}");
    // The identity is the node's own across boots.
    assert_eq!(manifest(&node)["identity"].as_str().unwrap().split_whitespace().nth(1).unwrap(), first_id);
    drop(node);

    // Boot 3: v2 has failed twice; the node runs v1 and refuses v2.
    let node = boot(conf.path(), state.path(), &[]);
    node.wait_for("v1 back", |n| manifest(n)["version"] == 1 && running_tag_in(out) == "v1");
    let refused = reload(&node);
    assert!(refused.contains("version 2 failed its health check"), "{refused}");
    let m = manifest(&node);
    assert_eq!((m["version"].as_u64(), m["failed"].as_u64(), m["floor"].as_u64()), (Some(1), Some(2), Some(2)), "{m}");
    assert!(!state.path().join("trial").exists());
}

fn running_tag_in(out: &Path) -> String {
    std::fs::read_to_string(out.join("web.version")).unwrap_or_default().trim().to_string()
}

#[test]
fn an_expired_manifest_is_refused_by_a_trusted_clock_and_only_reported_by_an_untrusted_one() {
    let out = tempfile::tempdir().unwrap();
    let fresh = |v: u64, tag: &str, expires: &str| {
        let mut m = web(v, tag, "true", json!({"timeout": 5}));
        m["expires"] = json!(expires);
        m
    };
    for trusted in [true, false] {
        let conf = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        publish(conf.path(), &fresh(1, "v1", "2999-01-01T00:00:00Z"), out.path());
        let extra: &[&str] = if trusted { &[] } else { &["--untrusted-clock"] };
        let node = boot(conf.path(), state.path(), extra);
        node.wait_for("v1", |n| manifest(n)["version"] == 1);
        assert_eq!(manifest(&node)["expires"], "2999-01-01T00:00:00Z");
        publish(conf.path(), &fresh(2, "v2", "2020-01-01T00:00:00Z"), out.path());
        let answer = reload(&node);
        if trusted {
            assert!(answer.contains("expired at 2020-01-01T00:00:00Z"), "{answer}");
            let m = manifest(&node);
            assert_eq!(m["version"], 1, "{m}");
            assert!(m["stale"].as_str().unwrap().contains("manifest version 2 expired"), "{m}");
            assert_eq!(
                std::fs::read_to_string(state.path().join("manifest.version")).unwrap().split(' ').next(),
                Some("1")
            );
            // A fresh one ends the staleness.
            publish(conf.path(), &fresh(3, "v3", "2999-01-01T00:00:00Z"), out.path());
            reload(&node);
            node.wait_for("v3", |n| manifest(n)["version"] == 3);
            assert_eq!(manifest(&node)["stale"], Value::Null);
        } else {
            node.wait_for("v2", |n| manifest(n)["version"] == 2);
            assert!(node.init_log().contains("not refused on expiry"), "{}", node.init_log());
        }
    }
}
