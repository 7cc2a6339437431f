//! Logs leave the node (`init run --report`, a real `netboot serve`): every line a service writes
//! reaches the server once and in order across the server killed and started again, and across
//! the node killed with lines in its journal (they go at its next boot); without a disk they
//! wait in memory. The node's numbers arrive beside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::{hex_key, publish, start, Node, INIT};

/// The boot server binary, built beside init (a workspace test run builds it anyway).
fn netboot() -> PathBuf {
    let path = Path::new(INIT).with_file_name("netboot");
    if !path.exists() {
        let built = Command::new(env!("CARGO")).args(["build", "-q", "-p", "netboot", "--bin", "netboot"]).status();
        assert!(built.unwrap().success(), "building netboot");
    }
    path
}

/// `netboot serve` on `port` (0: any; the port is read back), killed (SIGKILL) on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(root: &Path, port: u16) -> Server {
        // The nodes here are taken as they come (enrollment is netboot's to test).
        std::fs::write(root.join("netboot.json"), r#"{"enrollment": "open"}"#).unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new(netboot())
                .args(["serve", "--root"])
                .arg(root)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            // "serving ROOT on http://127.0.0.1:PORT/"
            if let Some(port) = line.trim().rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()) {
                return Server { child, port };
            }
            // The port of the server just killed may not be free yet.
            let _ = child.wait();
            assert!(Instant::now() < until, "netboot serve did not start on port {port}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the server holds of `node`'s log, or nothing while it is down.
fn held(port: u16, node: &str) -> Vec<Value> {
    let url = format!("http://127.0.0.1:{port}/logs/{node}?tail=100000");
    let Ok(mut resp) = ureq::get(&url).call() else { return Vec::new() };
    let text = resp.body_mut().read_to_string().unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The talker's lines the server holds, as "RUN I".
fn talk(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["s"] == "talker")
        .filter_map(|l| l["l"].as_str()?.strip_prefix("talk ").map(String::from))
        .collect()
}

fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// A service that writes 500 numbered lines each time `$OUT/go` appears, as "talk RUN I" (RUN
/// counts its starts, kept in `$OUT/run`).
fn talker() -> Value {
    let script = "r=$(cat $OUT/run 2>/dev/null || echo 0); r=$((r+1)); echo $r > $OUT/run; echo \"talk $r started\"; \
                  i=0; while :; do if [ -e $OUT/go ]; then rm -f $OUT/go; \
                  for j in $(seq 1 500); do i=$((i+1)); echo \"talk $r $i\"; done; fi; sleep 0.05; done";
    json!({"version": 1, "services": [{"name": "talker", "exec": ["/bin/sh", "-c", script]}]})
}

fn go(out: &Path) {
    std::fs::write(out.join("go"), "").unwrap();
}

fn boot(conf: &Path, report: &str, state: Option<&Path>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(conf.join("key.pub"), hex_key()).unwrap();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--config", &conf, &"--report", &report];
    if let Some(s) = state.as_ref() {
        args.push(&"--state");
        args.push(s);
    }
    start(dir, &args)
}

fn node_id(node: &Node) -> String {
    let m = node.ctl_json(&["manifest"]);
    m["identity"].as_str().unwrap().split_whitespace().nth(1).unwrap().to_string()
}

/// The lines "RUN 1".."RUN last".
fn numbered(run: u32, last: u32) -> Vec<String> {
    (1..=last).map(|i| format!("{run} {i}")).collect()
}

fn journal_holds(state: &Path, text: &str) -> bool {
    std::fs::read_dir(state.join("logs"))
        .map(|d| d.flatten().any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(text))))
        .unwrap_or(false)
}

#[test]
fn every_line_arrives_once_and_in_order_across_server_restarts_and_a_node_killed_with_lines_in_its_journal() {
    let root = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    publish(conf.path(), &talker(), out.path());
    let server = Server::start(root.path(), 0);
    let port = server.port;
    let report = format!("{}/report", server.url());
    let mut node = boot(conf.path(), &report, Some(state.path()));
    let id = node_id(&node);
    wait("the talker", Duration::from_secs(30), || out.path().join("run").exists());

    // Up: 500 lines arrive, and the console's lines with them.
    let sent = Instant::now();
    go(out.path());
    let delay = wait("500 lines at the server", Duration::from_secs(60), || talk(&held(port, &id)).len() >= 501);
    println!("log delivery: 500 lines held by the server {:.2} s after the service wrote them", delay.as_secs_f64());
    let lines = held(port, &id);
    assert_eq!(talk(&lines), [vec!["1 started".to_string()], numbered(1, 500)].concat(), "each line once");
    assert!(lines
        .iter()
        .any(|l| l["s"] == "console" && l["l"].as_str().unwrap().contains("manifest version 1 applied")));
    assert!(lines.iter().all(|l| l["b"] == 1 && l.get("dropped").is_none()), "boot 1, nothing dropped");
    let _ = sent;

    // Down (killed): the next 500 wait in the journal on disk, then arrive once it is back.
    drop(server);
    go(out.path());
    let outage = Instant::now();
    wait("the journal holding line 1000", Duration::from_secs(60), || journal_holds(state.path(), "talk 1 1000"));
    assert!(held(port, &id).is_empty(), "the server is down");
    std::thread::sleep(Duration::from_secs(3));
    let server = Server::start(root.path(), port);
    wait("1000 lines at the restarted server", Duration::from_secs(90), || talk(&held(port, &id)).len() >= 1001);
    assert_eq!(talk(&held(port, &id)), [vec!["1 started".to_string()], numbered(1, 1000)].concat(), "each line once");
    println!("log delivery after a {:.1} s outage: complete", outage.elapsed().as_secs_f64());

    // Down again, and the node killed with 500 lines in its journal: they go at its next boot.
    drop(server);
    go(out.path());
    wait("the journal holding line 1500", Duration::from_secs(60), || journal_holds(state.path(), "talk 1 1500"));
    drop(node);
    let server = Server::start(root.path(), port);
    node = boot(conf.path(), &report, Some(state.path()));
    assert_eq!(node_id(&node), id, "the same key, from the state directory");
    wait("boot 2's talker at the server", Duration::from_secs(90), || {
        talk(&held(port, &id)).iter().any(|l| l == "2 started")
    });
    let lines = held(port, &id);
    let mut want = vec!["1 started".to_string()];
    want.extend(numbered(1, 1500));
    want.push("2 started".into());
    assert_eq!(talk(&lines), want, "every line once, in order");
    let boots: Vec<u64> = lines.iter().map(|l| l["b"].as_u64().unwrap()).collect();
    assert!(boots.windows(2).all(|w| w[0] <= w[1]) && boots.last() == Some(&2), "boot 1's lines, then boot 2's");
    assert!(lines.iter().all(|l| l.get("dropped").is_none()), "nothing dropped");
    let numbers: Vec<(u64, u64)> = lines.iter().map(|l| (l["b"].as_u64().unwrap(), l["n"].as_u64().unwrap())).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "positions only grow");

    // The node's numbers came too, with the shipper's own.
    wait("the node's numbers", Duration::from_secs(60), || {
        ureq::get(&format!("{}/metrics/{id}", server.url()))
            .call()
            .is_ok_and(|mut r| r.body_mut().read_to_string().unwrap().contains("flint_manifest_version 1\n"))
    });
    let metrics = String::from_utf8(node.ctl(&["metrics"]).stdout).unwrap();
    assert!(metrics.contains("flint_log_lines_delivered_total "), "{metrics}");
    let pid = node.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().to_string();
    println!("init run with log shipping: RSS {}, {} threads", field("VmRSS:"), field("Threads:"));
}

#[test]
fn without_a_disk_the_lines_wait_in_memory_through_an_outage() {
    let root = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    publish(conf.path(), &talker(), out.path());
    let server = Server::start(root.path(), 0);
    let port = server.port;
    let node = boot(conf.path(), &format!("{}/report", server.url()), None);
    let id = node_id(&node);
    wait("the talker", Duration::from_secs(30), || out.path().join("run").exists());
    wait("the talker's first line", Duration::from_secs(60), || !talk(&held(port, &id)).is_empty());
    assert_eq!(talk(&held(port, &id)), ["1 started"]);
    drop(server);
    for _ in 0..2 {
        go(out.path());
        wait("the talker's lines", Duration::from_secs(30), || !out.path().join("go").exists());
        std::thread::sleep(Duration::from_millis(300));
    }
    let waiting = String::from_utf8(node.ctl(&["metrics"]).stdout).unwrap();
    let waiting: u64 =
        waiting.lines().find_map(|l| l.strip_prefix("flint_log_lines_waiting ")).unwrap().parse().unwrap();
    assert!(waiting >= 1000, "{waiting} lines waiting in memory");
    let _server = Server::start(root.path(), port);
    wait("every line at the restarted server", Duration::from_secs(90), || talk(&held(port, &id)).len() >= 1001);
    let mut want = vec!["1 started".to_string()];
    want.extend(numbered(1, 1000));
    assert_eq!(talk(&held(port, &id)), want);
    // Ephemeral: boot 0.
    assert!(held(port, &id).iter().all(|l| l["b"] == 0));
}
