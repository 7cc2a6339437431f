//! `init run` on the host: a signed manifest's services with real processes, driven and
//! inspected through `init ctl` over the control socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flint_manifest::ed25519::SigningKey;
use serde_json::{json, Value};
use util::{alive, hex_key, publish, start, start_under, Node, INIT};

/// A fresh directory with a signed manifest running `services` in `conf/`.
fn config(services: Value) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    publish(&conf, &json!({"version": 1, "services": services}), &dir.path().join("out"));
    std::fs::write(conf.join("key.pub"), hex_key()).unwrap();
    (dir, conf)
}

fn start_config(dir: tempfile::TempDir, conf: &Path) -> Node {
    let node = start(dir, &[&"--config", &conf]);
    node.wait_for("the manifest", |n| n.version().is_some());
    node
}

#[test]
fn services_start_in_order_restart_with_backoff_stop_and_shut_down() {
    let (dir, conf) = config(json!([
        {"name": "setup", "oneshot": true, "exec": ["/bin/sh", "-c", "sleep 0.3; echo setup > $OUT/setup"]},
        {"name": "web", "after": ["setup"], "log": "file",
         "exec": ["/bin/sh", "-c", "test -f $OUT/setup && echo web up; exec sleep 1000"],
         "test": ["/bin/sh", "-c", "test -f $OUT/setup"]},
        {"name": "crashy", "exec": ["/bin/sh", "-c", "echo x >> $OUT/crashy; exit 1"]},
        {"name": "stubborn", "stop_timeout": 0.5,
         "exec": ["/bin/sh", "-c", "trap '' TERM; echo $$ > $OUT/stubborn.pid; while :; do sleep 0.1; done"]},
        {"name": "front", "after": ["web"], "exec": ["/bin/sleep", "1000"]}
    ]));
    let node = start_config(dir, &conf);
    let out = node.out();

    // Dependencies: web only after setup completed, front only after web is ready.
    node.wait_for("front", |n| n.state("front")["state"] == "running");
    assert_eq!(node.state("setup")["state"], "done");
    assert_eq!(node.state("web")["state"], "running");
    assert_eq!(std::fs::read_to_string(out.join("web.log")).unwrap(), "web up\n");
    let log = node.ctl_json(&["log", "web"]);
    assert!(log["lines"].as_array().unwrap().iter().any(|l| l["line"] == "web up"), "{log}");

    // A crashing service restarts with growing delays (100, 200, 400, 800, 800 ms ...), not in a
    // tight loop and not once forever.
    std::thread::sleep(Duration::from_secs(3));
    let crashes = std::fs::read_to_string(out.join("crashy")).unwrap().lines().count();
    assert!((3..=10).contains(&crashes), "{crashes} starts in 3 s");
    assert!(node.state("crashy")["failures"].as_u64().unwrap() >= 3);

    // Stop escalates to SIGKILL for a service that ignores SIGTERM; it stays down.
    let pid: i32 = std::fs::read_to_string(out.join("stubborn.pid")).unwrap().trim().parse().unwrap();
    assert!(node.ctl(&["stop", "stubborn"]).status.success());
    node.wait_for("stubborn to stop", |n| n.state("stubborn")["state"] == "stopped");
    assert!(!alive(pid), "the stubborn process survived");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.state("stubborn")["state"], "stopped");
    assert!(node.ctl(&["start", "stubborn"]).status.success());
    node.wait_for("stubborn to run again", |n| n.state("stubborn")["state"] == "running");

    // Restart gives a new process.
    let before = node.state("front")["pid"].as_i64().unwrap();
    assert!(node.ctl(&["restart", "front"]).status.success());
    node.wait_for("front to restart", |n| n.state("front")["pid"].as_i64().is_some_and(|p| p != before));
    let unknown = node.ctl(&["stop", "nope"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no service"));

    // SIGTERM: everything stops (front before web before setup), init exits 0, nothing left.
    let pids: Vec<i32> = node
        .ctl_json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["pid"].as_i64())
        .map(|p| p as i32)
        .collect();
    let mut node = node;
    assert!(node.terminate().success());
    for pid in pids {
        assert!(!alive(pid), "pid {pid} outlived init");
    }
}

#[test]
fn services_ready_together_start_by_cpu_weight_most_first() {
    let service = |name: &str, weight: Option<u64>| {
        let mut s = json!({"name": name, "exec": ["/bin/sleep", "1000"]});
        if let Some(w) = weight {
            s["limits"] = json!({"cpu_weight": w});
        }
        s
    };
    // Listed least first: the order they start in is not the manifest's.
    let (dir, conf) = config(json!([
        service("background", Some(1)),
        service("plain", None),
        service("favoured", Some(500)),
        service("plain-too", Some(100))
    ]));
    let node = start_config(dir, &conf);
    node.wait_for("all four", |n| {
        ["background", "plain", "favoured", "plain-too"].iter().all(|s| n.state(s)["state"] == "running")
    });
    let log = node.init_log();
    let at = |name: &str| log.find(&format!("service {name}: running")).unwrap_or_else(|| panic!("{name}: {log}"));
    assert!(
        at("favoured") < at("plain") && at("plain") < at("plain-too") && at("plain-too") < at("background"),
        "{log}"
    );
}

#[test]
fn the_node_answers_while_an_update_waits_out_a_stubborn_stop() {
    let stubborn = json!({"name": "stubborn", "stop_timeout": 120,
        "exec": ["/bin/sh", "-c", "trap '' TERM; echo $$ > $OUT/stubborn.pid; while :; do sleep 0.1; done"]});
    let steady = json!({"name": "steady", "exec": ["/bin/sleep", "1000"]});
    let (dir, conf) = config(json!([stubborn, steady.clone()]));
    let mut node = start_config(dir, &conf);
    node.wait_for("stubborn", |n| n.state("stubborn")["state"] == "running");
    let pid: i32 = std::fs::read_to_string(node.out().join("stubborn.pid")).unwrap().trim().parse().unwrap();
    // Version 2 drops stubborn, whose stop takes its whole two-minute grace.
    publish(&conf, &json!({"version": 2, "services": [steady]}), &node.out());
    let reload = node.ctl_json(&["reload"]);
    assert_eq!(reload["changed"], true, "{reload}");
    // The reload came back while the update waits: stubborn is still stopping, version 1 in force.
    assert_eq!(node.state("stubborn")["state"], "stopping");
    let manifest = node.ctl_json(&["manifest"]);
    assert_eq!((manifest["version"].as_u64(), manifest["applying"].as_u64()), (Some(1), Some(2)), "{manifest}");
    let again = node.ctl_json(&["reload"]);
    assert_eq!(again["applying"], 2, "one update at a time: {again}");
    // A power request is taken at once (within wait_for's 30 s, a quarter of the grace).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.child.as_ref().unwrap().id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    node.wait_for("the shutdown to begin", |n| n.init_log().contains("stopping every service"));
    assert!(alive(pid), "stubborn is still within its grace");
    // The grace would run on; end it, and init exits cleanly without recording version 2.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(node.terminate().success());
    assert!(!node.init_log().contains("manifest version 2 applied"), "{}", node.init_log());
}

#[test]
fn unsigned_tampered_and_foreign_manifests_are_refused() {
    let services = json!([{"name": "a", "exec": ["/bin/true"]}]);
    let run = |conf: &Path, extra: &[&str]| {
        Command::new(INIT)
            .arg("run")
            .arg("--config")
            .arg(conf)
            .args(extra)
            .arg("--socket")
            .arg(conf.join("s"))
            .output()
            .unwrap()
    };
    let (_d, conf) = config(services.clone());
    let mut text = std::fs::read(conf.join("manifest.json")).unwrap();
    text[2] ^= 1;
    std::fs::write(conf.join("manifest.json"), &text).unwrap();
    let out = run(&conf, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad signature"), "{}", String::from_utf8_lossy(&out.stderr));

    let (_d, conf) = config(services.clone());
    std::fs::remove_file(conf.join("manifest.json.sig")).unwrap();
    let out = run(&conf, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signed"));

    let (_d, conf) = config(services);
    let other: String =
        SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let out = run(&conf, &["--key", &other]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad signature"));
}

/// The hex capability sets and `NoNewPrivs` a service saw in its /proc/self/status.
fn confinement_seen(path: &Path) -> std::collections::HashMap<String, u64> {
    let text = std::fs::read_to_string(path).unwrap();
    let field = |l: &str| {
        let (k, v) = l.split_once(':')?;
        let v = v.trim();
        let n = if k == "NoNewPrivs" { v.parse().ok()? } else { u64::from_str_radix(v, 16).ok()? };
        Some((k.to_string(), n))
    };
    text.lines().filter_map(field).collect()
}

#[test]
fn services_run_with_a_bounded_capability_set_and_no_new_privileges() {
    // Each writes what it holds, then whether it could make a mount namespace (sys_admin).
    let probe = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status > $OUT/$0; \
                 unshare -m true 2>/dev/null; echo $? > $OUT/$0.unshare";
    let service = |name: &str, extra: Value| {
        let mut s = json!({"name": name, "oneshot": true, "exec": ["/bin/sh", "-c", probe, name]});
        s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        s
    };
    let (dir, conf) = config(json!([
        service("plain", json!({})),
        service("wide", json!({"capabilities": {"add": ["sys_admin"], "drop": ["net_raw"]}, "new_privileges": true})),
        service("all", json!({"capabilities": {"add": ["all"]}})),
        service("none", json!({"capabilities": {"drop": ["all"]}})),
    ]));
    let node = start_config(dir, &conf);
    let out = node.out();
    for name in ["plain", "wide", "all", "none"] {
        node.wait_for(name, |n| n.state(name)["state"] == "done");
    }
    let bit = |n: u32| 1u64 << n;
    let (sys_admin, net_raw, chown, setuid) = (bit(21), bit(13), bit(0), bit(7));
    let default = flint_manifest::caps::RawCapabilities::default().resolve().unwrap().0;

    // `init ctl status` shows what each service may hold.
    let shown = node.state("plain");
    let names: Vec<&str> = shown["capabilities"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(names.contains(&"chown") && names.contains(&"setuid") && !names.contains(&"sys_admin"), "{shown}");
    assert_eq!(shown["no_new_privs"], true);
    assert_eq!(node.state("wide")["no_new_privs"], false);
    assert_eq!(node.state("none")["capabilities"], json!([]));

    let plain = confinement_seen(&out.join("plain"));
    assert_eq!(plain["CapBnd"], default, "{plain:?}");
    assert!(plain["CapBnd"] & sys_admin == 0 && plain["CapBnd"] & chown != 0 && plain["CapBnd"] & setuid != 0);
    // Root gets exactly the bounding set; nothing is left to inherit.
    assert_eq!(plain["CapEff"], default);
    assert_eq!(plain["CapPrm"], default);
    assert_eq!(plain["CapInh"] & !default, 0);
    assert_eq!(plain["CapAmb"], 0);
    assert_eq!(plain["NoNewPrivs"], 1);
    assert_ne!(
        std::fs::read_to_string(out.join("plain.unshare")).unwrap().trim(),
        "0",
        "unshare worked without sys_admin"
    );

    let wide = confinement_seen(&out.join("wide"));
    assert_eq!(wide["CapBnd"], (default | sys_admin) & !net_raw, "{wide:?}");
    assert_eq!(wide["NoNewPrivs"], 0);
    assert_eq!(std::fs::read_to_string(out.join("wide.unshare")).unwrap().trim(), "0", "unshare failed with sys_admin");

    // `all` is what the host's kernel has: every capability init itself holds.
    let all = confinement_seen(&out.join("all"));
    let own = confinement_seen(Path::new("/proc/self/status"));
    assert_eq!(all["CapBnd"], own["CapBnd"], "{all:?}");

    let none = confinement_seen(&out.join("none"));
    assert_eq!((none["CapBnd"], none["CapEff"]), (0, 0), "{none:?}");
}

/// The cgroup (v2) a process is in, relative to the hierarchy.
fn cgroup_of(pid: i64) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines().find_map(|l| l.strip_prefix("0::")).unwrap().to_string()
}

#[test]
fn each_service_has_a_cgroup_and_nothing_it_forked_outlives_it() {
    // `setsid` takes the background sleep out of the service's process group and session:
    // only the cgroup still knows it belongs to the service.
    let escape = "setsid sleep 1000 & echo $! > $OUT/$0.escaped; exec sleep 1000";
    let (dir, conf) = config(json!([
        {"name": "forker", "exec": ["/bin/sh", "-c", escape, "forker"]},
        {"name": "quitter", "restart": "never",
         "exec": ["/bin/sh", "-c", "setsid sleep 1000 & echo $! > $OUT/$0.escaped; sleep 0.5", "quitter"]},
        {"name": "limited", "exec": ["sleep", "1000"],
         "limits": {"memory": "64M", "pids": 16, "cpu_weight": 50, "cpus": 0.5,
                    "io": [{"device": "/dev/nonexistent-disk", "read_bps": 1048576}]}},
    ]));
    let node = start_config(dir, &conf);
    let out = node.out();
    node.wait_for("forker and limited", |n| {
        n.state("forker")["state"] == "running" && n.state("limited")["state"] == "running"
    });
    node.wait_for("the escapees' pids", |_| {
        out.join("forker.escaped").exists() && out.join("quitter.escaped").exists()
    });
    let escaped = |name: &str| -> i32 {
        let path = out.join(format!("{name}.escaped"));
        let mut text = String::new();
        for _ in 0..50 {
            text = std::fs::read_to_string(&path).unwrap();
            if text.ends_with('\n') {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        text.trim().parse().unwrap()
    };
    let (forker_bg, quitter_bg) = (escaped("forker"), escaped("quitter"));

    // Every service's group is its own, under init's slice, and init is in none of them.
    let status = node.state("forker");
    let group = status["cgroup"]["path"].as_str().unwrap().to_string();
    assert!(group.ends_with("/flint/forker"), "{status}");
    let pid = node.pid("forker").unwrap();
    assert!(group.ends_with(&cgroup_of(pid)), "{group} vs {}", cgroup_of(pid));
    assert_eq!(cgroup_of(forker_bg.into()), cgroup_of(pid), "the escaped child left the group");
    let procs = std::fs::read_to_string(Path::new(&group).join("cgroup.procs")).unwrap();
    assert_eq!(procs.lines().count(), 2, "{procs}");
    let init = node.child.as_ref().unwrap().id();
    assert!(cgroup_of(init.into()).ends_with("/init"), "init itself is in a leaf of its own");
    assert!(status["cgroup"]["cpu_usec"].as_u64().is_some(), "{status}");

    // Limits this kernel's cgroup cannot take are named, not silently dropped; those it can are
    // in the group's files.
    let limited = node.state("limited");
    let unenforced: Vec<String> =
        limited["cgroup"]["unenforced"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    assert!(unenforced.iter().any(|u| u.starts_with("io.max") && u.contains("nonexistent-disk")), "{unenforced:?}");
    let limited_group = PathBuf::from(limited["cgroup"]["path"].as_str().unwrap());
    for (file, value) in
        [("memory.max", "67108864"), ("pids.max", "16"), ("cpu.weight", "50"), ("cpu.max", "50000 100000")]
    {
        match std::fs::read_to_string(limited_group.join(file)) {
            Ok(text) => assert_eq!(text.trim(), value, "{file}"),
            Err(_) => assert!(unenforced.iter().any(|u| u.starts_with(file)), "{file} neither set nor reported"),
        }
    }
    assert_eq!(limited["cgroup"]["memory_max"], 64 << 20);

    // A service that exits leaves nothing behind: what it forked goes with it.
    node.wait_for("quitter to end", |n| n.state("quitter")["state"] == "done");
    node.wait_for("quitter's escapee to die", |_| !alive(quitter_bg));

    // Stopping a service kills its whole group.
    assert!(alive(forker_bg));
    node.ctl(&["stop", "forker"]);
    node.wait_for("forker to stop", |n| n.state("forker")["state"] == "stopped");
    node.wait_for("forker's escapee to die", |_| !alive(forker_bg));

    // On the way out init removes every group it made, and its own.
    let node_group = Path::new(&group).parent().unwrap().parent().unwrap().to_path_buf();
    let _ = node.ctl(&["shutdown"]);
    node.wait_for("init to exit", |n| !n.socket().exists());
    node.wait_for("init's groups to go", |_| !node_group.exists());
}

#[test]
fn a_service_in_its_own_namespaces_sees_only_itself_and_stops_on_sigterm() {
    // It reports what it sees, then waits as a service's pid 2 under the namespace's reaper;
    // the readiness check must see the service's network (only loopback) to pass.
    let probe = "echo $$ > $OUT/ns.pid; hostname > $OUT/ns.hostname; ls /proc | grep -c '^[0-9]' > $OUT/ns.procs; \
                 cat /proc/net/dev > $OUT/ns.net; exec sleep 1000";
    let (dir, conf) = config(json!([
        {"name": "inside", "exec": ["/bin/sh", "-c", probe], "namespaces": ["pid", "uts", "ipc", "net"],
         "stop_timeout": 60,
         "test": ["/bin/sh", "-c", "test $(grep -c : /proc/net/dev) = 1 && hostname | grep -qx inside"]},
        {"name": "outside", "exec": ["sleep", "1000"]},
    ]));
    let node = start_config(dir, &conf);
    let out = node.out();
    node.wait_for("inside to be ready", |n| n.state("inside")["state"] == "running");
    node.wait_for("what it saw", |_| out.join("ns.net").exists());
    std::thread::sleep(Duration::from_millis(100));
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap().trim().to_string();
    assert_eq!(read("ns.pid"), "2", "the service is pid 2, under the namespace's reaper");
    assert_eq!(read("ns.hostname"), "inside");
    let procs: u32 = read("ns.procs").parse().unwrap();
    assert!(procs <= 4, "{procs} processes seen: the reaper, the shell and the two it ran");
    let interfaces: Vec<String> =
        read("ns.net").lines().skip(2).map(|l| l.split(':').next().unwrap().trim().to_string()).collect();
    assert_eq!(interfaces, ["lo"]);
    let status = node.state("inside");
    assert_eq!(status["namespaces"], json!(["pid", "uts", "ipc", "net"]));
    assert!(node.state("outside")["namespaces"].as_array().unwrap().is_empty());
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host_name.trim(), "inside", "the service's host name stayed its own");

    // SIGTERM reaches the service through the reaper: it stops well before its 60 s timeout,
    // and is not killed.
    node.ctl(&["stop", "inside"]);
    node.wait_for("inside to stop", |n| n.state("inside")["state"] == "stopped");
    let log = node.log("inside").join("\n");
    assert!(!log.contains("did not stop in time"), "{log}");
    let _ = node.ctl(&["shutdown"]);
    node.wait_for("init to exit", |n| !n.socket().exists());
}

/// A listener that starts listening on `port` of 127.0.0.1 after `delay` seconds, then records
/// that it does in `$OUT/NAME`.
fn late_listener(name: &str, port: u16, delay: f64) -> Value {
    let program = format!(
        "import socket,time\ntime.sleep({delay})\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1',{port})); s.listen(8); open('$OUT/{name}','w').close(); time.sleep(1000)"
    );
    json!(["python3", "-c", program])
}

#[test]
fn a_port_readiness_check_passes_once_the_port_listens_in_the_services_own_network() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = free.local_addr().unwrap().port();
    drop(free);
    // 8080 inside its own network namespace: free there whatever the host runs.
    let (dir, conf) = config(json!([
        {"name": "host", "exec": late_listener("host.listening", host_port, 0.4), "test_port": host_port},
        {"name": "inside", "exec": late_listener("inside.listening", 8080, 0.4), "test_port": 8080,
         "namespaces": ["net"]},
        {"name": "after", "after": ["host", "inside"], "oneshot": true,
         "exec": ["/bin/sh", "-c", "test -f $OUT/host.listening && test -f $OUT/inside.listening && touch $OUT/after"]},
        {"name": "never", "exec": ["sleep", "1000"], "test_port": 9, "namespaces": ["net"], "test_timeout": 1},
    ]));
    let node = start_config(dir, &conf);
    let out = node.out();
    node.wait_for("the dependent to complete", |n| n.state("after")["state"] == "done");
    assert!(out.join("after").exists(), "it ran only once both ports listened");
    assert_eq!(node.state("host")["state"], "running");
    assert_eq!(node.state("inside")["state"], "running");
    // The node's own loopback has nothing on 8080 for the check to have found instead.
    assert!(std::net::TcpStream::connect("127.0.0.1:8080").is_err());
    // A port that never listens: restarted after its test_timeout, again and again.
    node.wait_for("never to be restarted twice", |n| n.state("never")["starts"].as_u64().is_some_and(|s| s >= 3));
    let log = node.log("never").join("\n");
    assert!(log.contains("readiness check timed out"), "{log}");
    assert_ne!(node.state("never")["state"], "running");
    let mut node = node;
    assert!(node.terminate().success());
}

/// `(pid, ppid, state)` of every process on the host.
fn processes() -> Vec<(i32, i32, char)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| {
            let pid = stat.split(' ').next()?.parse().ok()?;
            let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
            let state = rest.next()?.chars().next()?;
            let ppid = rest.next()?.parse().ok()?;
            Some((pid, ppid, state))
        })
        .collect()
}

#[test]
fn as_pid_1_of_a_pid_namespace_orphans_are_adopted_and_reaped() {
    let (dir, conf) = config(json!([
        {"name": "parent", "exec": ["/bin/sh", "-c",
            "for i in 1 2 3 4 5; do sh -c 'sleep 1 &'; done; exec sleep 1000"]}
    ]));
    let run_dir = dir.path().join("run");
    let node = start_under(
        &["unshare", "--pid", "--fork", "--mount-proc"],
        dir,
        &[&"--config", &conf, &"--run-dir", &run_dir],
    );
    let unshare = node.child.as_ref().unwrap().id() as i32;
    node.wait_for("parent", |n| n.version().is_some() && n.state("parent")["state"] == "running");
    let init = processes().into_iter().find(|p| p.1 == unshare).map(|p| p.0).expect("init under unshare");

    // The five sleeps lost their parent shell: the namespace's PID 1, init, adopted them.
    std::thread::sleep(Duration::from_millis(300));
    let adopted: Vec<i32> = processes().into_iter().filter(|p| p.1 == init && p.2 != 'Z').map(|p| p.0).collect();
    assert!(adopted.len() >= 6, "init has {} children, expected the service and 5 orphans", adopted.len());

    // They exit after a second; none stays a zombie.
    std::thread::sleep(Duration::from_millis(1700));
    let zombies: Vec<i32> = processes().into_iter().filter(|p| p.1 == init && p.2 == 'Z').map(|p| p.0).collect();
    assert!(zombies.is_empty(), "unreaped: {zombies:?}");
    let children = processes().into_iter().filter(|p| p.1 == init).count();
    assert_eq!(children, 1, "only the service is left");
    let _ = node.ctl(&["shutdown"]);
    node.wait_for("init to exit", |n| !n.socket().exists());
}

/// With fault injection built in (`--features faults`): each long-lived loop of init panics once
/// (the supervisor, the node loop, the signal thread, the control socket) or the node loop stalls for good after its
/// first fetch. Every time, the services come up and are restarted when they die, the control
/// socket answers; after a panic, the log names the thread it hit, the manifest is recorded and
/// SIGTERM still shuts init down cleanly; with the node loop stuck, `init ctl poweroff` still
/// takes init down, without it.
#[cfg(feature = "faults")]
#[test]
fn every_loop_of_init_survives_a_panic_and_a_stalled_node_loop_leaves_the_services_supervised() {
    let services = json!([
        {"name": "web", "exec": ["/bin/sleep", "1000"], "test": ["/bin/true"]},
        {"name": "after-web", "after": ["web"], "exec": ["/bin/sleep", "1000"]}
    ]);
    for (fault, panics) in [
        ("init.supervisor=panic-once", true),
        ("init.node=panic-once", true),
        ("init.signals=panic-once", true),
        // The first `init ctl` connection is dropped; the socket answers the next ones.
        ("init.control=panic-once", true),
        ("init.node=stall", false),
    ] {
        let (dir, conf) = config(services.clone());
        let env = format!("FLINT_FAULTS={fault}");
        // A stalled node loop never records a version: wait for the services instead.
        let mut node = start_under(&["env", &env], dir, &[&"--config", &conf]);
        // after-web starts only once web's readiness check passed.
        let running = |n: &Node| {
            let out = n.ctl(&["--json", "status", "after-web"]);
            out.status.success() && serde_json::from_slice::<Value>(&out.stdout).unwrap()["state"] == "running"
        };
        node.wait_for(fault, running);
        if panics {
            let log = node.init_log();
            assert!(log.contains("PANIC in thread") && log.contains("fault injected"), "{fault}: {log}");
            assert!(log.contains("panicked; it runs again"), "{fault}: {log}");
            node.wait_for("the manifest", |n| n.version() == Some(1));
        }
        // The supervisor still restarts what dies.
        let pid = node.pid("after-web").unwrap() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        node.wait_for("after-web again", |n| n.pid("after-web").is_some_and(|p| p as i32 != pid));
        if panics {
            assert!(node.terminate().success(), "{fault}");
        } else {
            // The power keeper answers though the node loop is stuck, stops the services, and
            // finishes without the node loop once its grace is over.
            let services: Vec<i32> = ["web", "after-web"].iter().map(|s| node.pid(s).unwrap() as i32).collect();
            let out = node.ctl(&["--json", "poweroff"]);
            assert!(out.status.success(), "{fault}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!({"ok": true}));
            // (A SIGTERM on top of the poweroff under way changes nothing.)
            assert!(node.terminate().success(), "{fault}");
            let log = node.init_log();
            assert!(log.contains("the node loop did not return"), "{fault}: {log}");
            let alive = processes().into_iter().filter(|p| services.contains(&p.0) && p.2 != 'Z').count();
            assert_eq!(alive, 0, "{fault}: every service was stopped");
        }
    }
}
