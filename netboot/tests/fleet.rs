//! The boot server as a fleet's control plane, over real sockets: enrollment (pending nodes get
//! no manifest, rejected ones write nothing, allowed keys, forget, replace), the admin API's
//! token, the audit log, the dashboard, and staged rollouts of real signed manifests: a bad
//! version reaches only the canaries and the rollout pauses by itself; a good one reaches every
//! node wave by wave, through a SIGKILL of the server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod util;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use flint_manifest::ed25519::SigningKey;
use flint_manifest::signed::{node_id, Envelope};
use serde_json::Value;
use util::{get, netboot, post, serve_with, signed_request, Postgres, Served};

/// A simulated node: its key and its request numbers, signing as init does.
struct Node {
    key: SigningKey,
    boot: u64,
    seq: BTreeMap<&'static str, u64>,
}

impl Node {
    fn new(n: u8) -> Node {
        Node { key: SigningKey::from_bytes(&[n; 32]), boot: 1, seq: BTreeMap::new() }
    }
    fn id(&self) -> String {
        node_id(&self.key.verifying_key().to_bytes())
    }
    fn envelope(&mut self, stream: &'static str) -> Envelope {
        let seq = self.seq.entry(stream).or_default();
        *seq += 1;
        Envelope {
            key: self.key.verifying_key().to_bytes(),
            boot: self.boot,
            stream: stream.into(),
            seq: *seq,
            time: 0,
        }
    }
    fn get(&mut self, url: &str, target: &str) -> (u16, String) {
        let e = self.envelope("manifest");
        signed_request(url, "GET", target, b"", &self.key, &e, &[])
    }
    fn report(&mut self, url: &str, stage: &str, detail: &str) -> (u16, String) {
        let body = serde_json::json!({ "stage": stage, "detail": detail }).to_string();
        let e = self.envelope("report");
        signed_request(url, "POST", "/report", body.as_bytes(), &self.key, &e, &[])
    }
}

fn admin_args(state: &Path) -> Vec<String> {
    vec!["--state".into(), state.display().to_string(), "--json".into()]
}

/// `netboot ARGS --state STATE --json`: whether it succeeded, its output and its errors.
fn run_cli(state: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(admin_args(state));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    netboot(&refs)
}

/// `netboot ARGS --state STATE --json`, which must succeed: its JSON.
fn cli(state: &Path, args: &[&str]) -> Value {
    let (ok, out, err) = run_cli(state, args);
    assert!(ok, "netboot {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("netboot {args:?}: {e}: {out}"))
}

fn cli_fails(state: &Path, args: &[&str]) -> String {
    let (ok, _, err) = run_cli(state, args);
    assert!(!ok, "netboot {args:?} should fail");
    err
}

/// Where a test's servers keep the fleet: SQLite under their state directory, or one PostgreSQL.
enum Backend {
    Sqlite,
    Postgres(Postgres),
}

impl Backend {
    fn args(&self) -> Vec<String> {
        match self {
            Backend::Sqlite => Vec::new(),
            Backend::Postgres(pg) => vec!["--db".into(), pg.url()],
        }
    }
}

fn start_on(backend: &Backend, root: &Path, state: &Path, extra: &[&str]) -> Served {
    let db = backend.args();
    let mut args = vec!["--state", state.to_str().unwrap()];
    args.extend(db.iter().map(String::as_str));
    args.extend_from_slice(extra);
    serve_with(root, None, &args)
}

fn node_of<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list.as_array().unwrap().iter().find(|n| n["id"] == id)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn new_nodes_wait_for_the_operator_and_what_they_may_write_is_bounded() {
    enrollment(&Backend::Sqlite);
}

#[test]
fn enrollment_on_postgresql() {
    enrollment(&Backend::Postgres(Postgres::start()));
}

fn enrollment(backend: &Backend) {
    let start = |root: &Path, state: &Path, extra: &[&str]| start_on(backend, root, state, extra);
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("manifest.json"), "shared").unwrap();
    let (mut a, mut b, mut c) = (Node::new(1), Node::new(2), Node::new(3));
    let allowed = hex::encode(c.key.verifying_key().to_bytes());
    std::fs::write(
        root.path().join("netboot.json"),
        format!(r#"{{"allowed": ["{allowed}"], "groups": {{"lab": ["{}"]}}}}"#, a.id()),
    )
    .unwrap();
    let s = start(root.path(), state.path(), &[]);

    // What a node fetches by PXE before it can sign becomes its own once it signs.
    assert_eq!(get(&format!("{}/ipxe/52-54-00-00-00-01", s.url), &[]).0, 200);
    // Pending: it boots and reports, gets no manifest, no logs taken, and writes at most every 2 s.
    let (status, body) = a.get(&s.url, "/manifest.json");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("pending") && body.contains(&format!("netboot nodes accept {}", a.id())), "{body}");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(a.report(&s.url, "network", "up").0, 200);
    assert_eq!(a.report(&s.url, "network", "again").0, 429, "a pending node writes once every 2 s");
    assert_eq!(get(&format!("{}/manifest.json", s.url), &[]).0, 401, "manual enrollment: unsigned gets nothing");
    // Allowed in netboot.json: accepted at once.
    assert_eq!(c.get(&s.url, "/manifest.json"), (200, "shared".into()));

    let list = cli(state.path(), &["nodes", "list"]);
    assert_eq!(node_of(&list, &a.id()).unwrap()["enrollment"], "pending");
    assert_eq!(node_of(&list, &a.id()).unwrap()["state"], "pending", "a pending node is never shown healthy");
    assert_eq!(node_of(&list, &a.id()).unwrap()["groups"], serde_json::json!(["lab"]));
    assert_eq!(node_of(&list, &c.id()).unwrap()["enrollment"], "accepted");
    assert_eq!(node_of(&list, &a.id()).unwrap()["mac"], "52:54:00:00:00:01", "its PXE fetches are folded in");
    assert!(node_of(&list, "127.0.0.1").is_none(), "{list}");
    let metrics = get(&format!("{}/metrics", s.url), &[]).2;
    assert!(String::from_utf8_lossy(&metrics).contains("flint_nodes{state=\"pending\",version=\"none\"} 1"));

    cli(state.path(), &["nodes", "accept", &a.id()]);
    assert_eq!(a.get(&s.url, "/manifest.json"), (200, "shared".into()));
    assert_eq!(a.report(&s.url, "applied", "manifest version 1").0, 200);
    assert_eq!(a.report(&s.url, "healthy", "manifest version 1 is healthy").0, 200, "accepted: no rate bound");

    // Rejected: refused, and nothing it sends is written.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(b.report(&s.url, "network", "hello").0, 200);
    cli(state.path(), &["nodes", "reject", &b.id()]);
    std::thread::sleep(Duration::from_millis(2100));
    let (status, body) = b.report(&s.url, "network", "let me in");
    assert_eq!(status, 403, "{body}");
    assert_eq!(b.get(&s.url, "/manifest.json").0, 403);
    let shown = cli(state.path(), &["nodes", "show", &b.id()]);
    assert_eq!(shown["state"], "rejected");
    assert_eq!(shown["stages"].as_array().unwrap().len(), 1, "the rejected node's report was not written");

    // Forget: gone; back as a new, pending node.
    cli(state.path(), &["nodes", "forget", &b.id()]);
    assert!(node_of(&cli(state.path(), &["nodes", "list"]), &b.id()).is_none());
    assert!(cli_fails(state.path(), &["nodes", "show", &b.id()]).contains("no node"));
    assert_eq!(b.get(&s.url, "/manifest.json").0, 403);
    assert_eq!(cli(state.path(), &["nodes", "show", &b.id()])["enrollment"], "pending");

    // Replace: a's disk died; its new key d takes its history and is accepted.
    let mut d = Node::new(4);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(d.report(&s.url, "network", "new disk").0, 200);
    cli(state.path(), &["nodes", "replace", &a.id(), &d.id()]);
    let shown = cli(state.path(), &["nodes", "show", &d.id()]);
    assert_eq!(shown["enrollment"], "accepted");
    assert_eq!(shown["replaced"], serde_json::json!([a.id()]));
    let stages: Vec<&str> = shown["stages"].as_array().unwrap().iter().map(|s| s["detail"].as_str().unwrap()).collect();
    assert_eq!(stages, ["up", "manifest version 1", "manifest version 1 is healthy", "new disk"]);
    assert!(node_of(&cli(state.path(), &["nodes", "list"]), &a.id()).is_none());
    assert_eq!(d.get(&s.url, "/manifest.json"), (200, "shared".into()));

    // Every action is in the audit log, with who did it.
    let audit = cli(state.path(), &["audit"]);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().rev().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["node accept", "node reject", "node forget", "node replace"]);
    assert!(audit[0]["who"].as_str().unwrap().starts_with("admin from 127.0.0.1"));

    // The admin API takes only the token, and is not on the nodes' listener.
    let (status, _) = post(&format!("{}/api/nodes/{}/accept", s.admin, b.id()), b"", &[]);
    assert_eq!(status, 401);
    let (status, _) =
        post(&format!("{}/api/nodes/{}/accept", s.admin, b.id()), b"", &[("Authorization", "Bearer wrong")]);
    assert_eq!(status, 401);
    assert_eq!(get(&format!("{}/api/nodes", s.url), &[]).0, 404);
    // The dashboard shows it all, and viewing it makes no node.
    let before = cli(state.path(), &["nodes", "list"]).as_array().unwrap().len();
    let page = String::from_utf8(get(&format!("{}/", s.admin), &[]).2).unwrap();
    for id in [b.id(), c.id(), d.id()] {
        assert!(page.contains(&id), "{id} not on the fleet page");
    }
    assert!(page.contains("node replace"), "the audit log is on the dashboard");
    let page = String::from_utf8(get(&format!("{}/nodes/{}", s.admin, b.id()), &[]).2).unwrap();
    assert!(page.contains("Pending") && page.contains(&format!("netboot nodes accept {}", b.id())), "{page}");
    assert_eq!(get(&format!("{}/nodes/nobody", s.admin), &[]).0, 404);
    assert_eq!(cli(state.path(), &["nodes", "list"]).as_array().unwrap().len(), before);
}

/// A signed manifest of `version` whose service `web` runs `command`.
fn manifest(dir: &Path, name: &str, version: u64, command: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let m = serde_json::json!({
        "version": version,
        "services": [{ "name": "web", "exec": ["/bin/sh", "-c", command] }],
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let (ok, _, err) = netboot(&["sign", path.to_str().unwrap(), "--key", dir.join("op.key").to_str().unwrap()]);
    assert!(ok, "{err}");
    path
}

/// What each node is served for `/manifest.json`: its version.
fn versions(nodes: &mut [Node], url: &str) -> Vec<u64> {
    nodes
        .iter_mut()
        .map(|n| {
            let (status, body) = n.get(url, "/manifest.json");
            assert_eq!(status, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            v["version"].as_u64().unwrap()
        })
        .collect()
}

fn status(state: &Path, id: u64) -> Value {
    cli(state, &["rollout", "status", &id.to_string()])
}

#[test]
fn a_bad_version_stops_at_the_canaries_and_a_good_one_reaches_every_node_in_waves_through_a_sigkill() {
    rollouts(&Backend::Sqlite);
}

#[test]
fn rollouts_on_postgresql() {
    rollouts(&Backend::Postgres(Postgres::start()));
}

fn rollouts(backend: &Backend) {
    let start = |root: &Path, state: &Path, extra: &[&str]| start_on(backend, root, state, extra);
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let ops = tempfile::tempdir().unwrap();
    assert!(netboot(&["keygen", ops.path().join("op.key").to_str().unwrap()]).0);
    let v1 = manifest(ops.path(), "v1.json", 1, "sleep 1000");
    std::fs::copy(&v1, root.path().join("manifest.json")).unwrap();
    std::fs::copy(v1.with_extension("json.sig"), root.path().join("manifest.json.sig")).unwrap();
    let mut nodes: Vec<Node> = (10..16).map(Node::new).collect();
    let canaries = [nodes[0].id(), nodes[1].id()];
    std::fs::write(
        root.path().join("netboot.json"),
        serde_json::json!({ "enrollment": "open", "groups": { "canary": canaries } }).to_string(),
    )
    .unwrap();
    let key_pub = ops.path().join("op.key.pub");
    let mut s = start(root.path(), state.path(), &["--manifest-key", key_pub.to_str().unwrap()]);
    assert_eq!(versions(&mut nodes, &s.url), [1; 6]);

    // A manifest signed by another key is refused before anything is served.
    let other = tempfile::tempdir().unwrap();
    assert!(netboot(&["keygen", other.path().join("op.key").to_str().unwrap()]).0);
    let forged = manifest(other.path(), "v2.json", 2, "exit 1");
    assert!(cli_fails(state.path(), &["rollout", "start", forged.to_str().unwrap()]).contains("a node would refuse"));

    // Version 2 fails: the canaries get it, roll back, and the rollout pauses by itself.
    let bad = manifest(ops.path(), "v2.json", 2, "exit 1");
    let waves = ["--wave", "group:canary", "--wave", "50%", "--wave", "rest", "--wait", "1s", "--deadline", "60s"];
    let mut args = vec!["rollout", "start", bad.to_str().unwrap()];
    args.extend(waves);
    let r = cli(state.path(), &args);
    assert_eq!(r["id"], 1);
    assert_eq!(r["waves"][0]["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(r["waves"][1]["nodes"].as_array().unwrap().len(), 1, "50% of 6 is 3, with the 2 canaries");
    wait_for("the canary wave to start", Duration::from_secs(10), || status(state.path(), 1)["current_wave"] == 1);
    assert_eq!(versions(&mut nodes, &s.url), [2, 2, 1, 1, 1, 1]);
    let sig = nodes[0].get(&s.url, "/manifest.json.sig").1;
    assert_eq!(sig.trim(), std::fs::read_to_string(bad.with_extension("json.sig")).unwrap().trim());
    assert_eq!(
        nodes[2].get(&s.url, "/manifest.json.sig").1.trim(),
        std::fs::read_to_string(v1.with_extension("json.sig")).unwrap().trim()
    );
    for n in &mut nodes[..2] {
        n.report(&s.url, "applied", "manifest version 2: 0 flists mounted, 1 services");
        n.report(&s.url, "unhealthy", "manifest version 2 failed its health check: web exited");
        n.report(
            &s.url,
            "rollback",
            "rolled back to manifest version 1: version 2 failed its health check: web exited",
        );
    }
    let rolled_back = Instant::now();
    wait_for("the rollout to pause", Duration::from_secs(10), || status(state.path(), 1)["state"] == "paused");
    eprintln!("FIGURE: canary rollback to pause: {:.2} s", rolled_back.elapsed().as_secs_f64());
    let paused = status(state.path(), 1);
    assert!(paused["reason"].as_str().unwrap().contains("2 failed (budget 0)"), "{paused}");
    assert!(paused["standing"][&canaries[0]].as_str().unwrap().starts_with("failed"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(versions(&mut nodes, &s.url), [2, 2, 1, 1, 1, 1], "no node outside the canaries ever gets version 2");
    assert!(cli_fails(state.path(), &["rollout", "start", v1.to_str().unwrap()]).contains("abort it first"));
    cli(state.path(), &["rollout", "abort"]);
    assert_eq!(versions(&mut nodes, &s.url), [2, 2, 1, 1, 1, 1], "the canaries keep 2: back only by a newer version");

    // The way back: version 3 with version 1's content, made and signed on the operator's side.
    let v3 = ops.path().join("v3.json");
    let (ok, _, err) = netboot(&[
        "rollout",
        "revert",
        "1",
        "--key",
        ops.path().join("op.key").to_str().unwrap(),
        "-o",
        v3.to_str().unwrap(),
        "--state",
        state.path().to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let mut made: Value = serde_json::from_slice(&std::fs::read(&v3).unwrap()).unwrap();
    assert_eq!(made["version"], 3);
    made["version"] = 1.into();
    assert_eq!(made, serde_json::from_slice::<Value>(&std::fs::read(&v1).unwrap()).unwrap());
    let again = cli_fails(state.path(), &["rollout", "start", bad.to_str().unwrap()]);
    assert!(again.contains("version 2 is not above 2"), "{again}");

    // Version 3 rolls out wave by wave; the server is killed (SIGKILL) mid-way and resumes.
    let mut args = vec!["rollout", "start", v3.to_str().unwrap()];
    args.extend(waves);
    let started = Instant::now();
    cli(state.path(), &args);
    let mut killed = false;
    let mut served_by_wave: Vec<Vec<u64>> = Vec::new();
    wait_for("the rollout to finish", Duration::from_secs(120), || {
        let got = versions(&mut nodes, &s.url);
        if served_by_wave.last() != Some(&got) {
            served_by_wave.push(got.clone());
        }
        for (n, v) in nodes.iter_mut().zip(&got) {
            if *v == 3 {
                n.report(&s.url, "applied", "manifest version 3: 0 flists mounted, 1 services");
                n.report(&s.url, "healthy", "manifest version 3 is healthy: web ready for 1 s");
            }
        }
        let st = status(state.path(), 2);
        if !killed && st["current_wave"] == 2 {
            let before = st.clone();
            s.child.kill().unwrap();
            s.child.wait().unwrap();
            s = start(root.path(), state.path(), &["--manifest-key", key_pub.to_str().unwrap()]);
            killed = true;
            // Nothing it did is lost (it may have done more between the look and the kill).
            let after = status(state.path(), 2);
            for (a, b) in after["waves"].as_array().unwrap().iter().zip(before["waves"].as_array().unwrap()) {
                assert_eq!(a["nodes"], b["nodes"], "the waves are as they were");
                assert!(b["started"].is_null() || a["started"] == b["started"], "{a} {b}");
                assert!(b["healthy"].is_null() || a["healthy"] == b["healthy"], "{a} {b}");
            }
            let held = |v: &Value| v["received"].as_array().unwrap().len();
            assert!(held(&after) >= held(&before));
        }
        st["state"] == "done"
    });
    eprintln!("FIGURE: 3-wave rollout over 6 simulated nodes (1 s waits): {:.1} s", started.elapsed().as_secs_f64());
    assert!(killed, "the server was killed mid-rollout");
    assert_eq!(versions(&mut nodes, &s.url), [3; 6]);
    // Waves in order: the canaries first, then the 50%, then the rest; never a node skipping ahead.
    let mut reached = 0;
    for got in &served_by_wave {
        let on = got.iter().filter(|v| **v == 3).count();
        assert!(on >= reached, "{served_by_wave:?}");
        reached = on;
        assert!(!got[2..].contains(&3) || got[..2] == [3, 3], "canaries first: {served_by_wave:?}");
    }
    let page = String::from_utf8(get(&format!("{}/rollouts/2", s.admin), &[]).2).unwrap();
    assert!(page.contains("done: every wave is healthy on version 3"), "{page}");
    let page = String::from_utf8(get(&format!("{}/rollouts/1", s.admin), &[]).2).unwrap();
    assert!(page.contains("paused by the server") && page.contains("aborted by admin"), "{page}");
    let metrics = String::from_utf8(get(&format!("{}/metrics", s.url), &[]).2).unwrap();
    assert!(
        metrics.contains("flint_rollout{id=\"2\",path=\"manifest.json\",version=\"3\",state=\"done\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("flint_rollout_nodes{id=\"2\",standing=\"healthy\"} 6"), "{metrics}");
    let audit = cli(state.path(), &["audit"]);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["rollout start", "rollout abort", "rollout step"] {
        assert!(actions.contains(&a), "{a} not in {actions:?}");
    }
}

#[test]
fn two_servers_on_one_postgresql_serve_one_fleet_and_promote_each_wave_once() {
    let pg = Backend::Postgres(Postgres::start());
    let root = tempfile::tempdir().unwrap();
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ops = tempfile::tempdir().unwrap();
    assert!(netboot(&["keygen", ops.path().join("op.key").to_str().unwrap()]).0);
    let v1 = manifest(ops.path(), "v1.json", 1, "sleep 1000");
    std::fs::copy(&v1, root.path().join("manifest.json")).unwrap();
    std::fs::copy(v1.with_extension("json.sig"), root.path().join("manifest.json.sig")).unwrap();
    let mut nodes: Vec<Node> = (20..26).map(Node::new).collect();
    let canaries = [nodes[0].id(), nodes[1].id()];
    std::fs::write(
        root.path().join("netboot.json"),
        serde_json::json!({ "groups": { "canary": canaries } }).to_string(),
    )
    .unwrap();
    let key_pub = ops.path().join("op.key.pub");
    let a = start_on(&pg, root.path(), state_a.path(), &["--manifest-key", key_pub.to_str().unwrap()]);
    let b = start_on(&pg, root.path(), state_b.path(), &["--manifest-key", key_pub.to_str().unwrap()]);
    let url = |i: usize| if i % 2 == 0 { a.url.clone() } else { b.url.clone() };

    // Manual enrollment: nodes seen by either server are pending on both; accepted through one.
    for (i, n) in nodes.iter_mut().enumerate() {
        assert_eq!(n.get(&url(i), "/manifest.json").0, 403);
    }
    let pending = cli(state_b.path(), &["nodes", "list"]);
    assert_eq!(pending.as_array().unwrap().iter().filter(|n| n["enrollment"] == "pending").count(), 6, "{pending}");
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    let mut args = vec!["nodes", "accept"];
    args.extend(ids.iter().map(String::as_str));
    cli(state_a.path(), &args);
    wait_for("server B to see the nodes accepted", Duration::from_secs(10), || {
        nodes.iter_mut().enumerate().all(|(i, n)| n.get(&url(i), "/manifest.json").0 == 200)
    });

    let good = manifest(ops.path(), "v2.json", 2, "sleep 1000");
    let started = cli(
        state_a.path(),
        &[
            "rollout",
            "start",
            good.to_str().unwrap(),
            "--wave",
            "group:canary",
            "--wave",
            "50%",
            "--wave",
            "rest",
            "--wait",
            "1s",
        ],
    );
    assert!(
        cli_fails(state_b.path(), &["rollout", "start", good.to_str().unwrap()]).contains("abort it first"),
        "B sees A's rollout"
    );
    let id = started["id"].as_u64().unwrap();
    wait_for("the rollout to finish", Duration::from_secs(60), || {
        let got = versions_from(&mut nodes, &url);
        for (i, (n, v)) in nodes.iter_mut().zip(&got).enumerate() {
            if *v == 2 {
                n.report(&url(i), "applied", "manifest version 2: 0 flists mounted, 1 services");
                n.report(&url(i), "healthy", "manifest version 2 is healthy: web ready for 1 s");
            }
        }
        let st = status(state_b.path(), id);
        st["state"] == "done"
    });
    assert_eq!(versions_from(&mut nodes, &url), [2; 6]);
    // Both servers stepped the rollout every second; each step was taken once.
    let audit = cli(state_a.path(), &["audit", "--limit", "1000"]);
    let steps: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|e| e["action"] == "rollout step")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    let starts = |wave: &str| {
        steps.iter().filter(|d| d.contains(&format!("wave {wave} ("))).filter(|d| d.contains("starts")).count()
    };
    assert_eq!((starts("1"), starts("2"), starts("3")), (1, 1, 1), "{steps:#?}");
    assert_eq!(steps.iter().filter(|d| d.contains("done: every wave")).count(), 1, "{steps:#?}");
    drop((a, b));
}

/// What each node is served by its own server (`url(i)`).
fn versions_from(nodes: &mut [Node], url: &dyn Fn(usize) -> String) -> Vec<u64> {
    nodes
        .iter_mut()
        .enumerate()
        .map(|(i, n)| {
            let (status, body) = n.get(&url(i), "/manifest.json");
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<Value>(&body).unwrap()["version"].as_u64().unwrap()
        })
        .collect()
}
