//! The node loop on the host, against a real HTTP server: `init run --manifest URL` mounts the
//! signed manifest's flists with its own FUSE server, runs services chrooted in them, and applies
//! newer manifests by diff; tampered, rolled-back and wrongly pinned manifests change nothing; a
//! restart without the server runs the last good manifest from the state disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod util;

use std::path::Path;
use std::process::Command;

use flist::pack::{pack, PackOptions};
use flist::store::{RetryPolicy, Router};
use serde_json::{json, Value};
use util::servers::http_server;
use util::{alive, hex_key, publish, start, Node};

/// The smallest root a service can run in: the host's dash, cat and sleep with their libraries.
fn mini_root(root: &Path, hello: &str) {
    for dir in ["bin", "dev", "proc", "sys"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for (from, to) in [("/bin/dash", "bin/sh"), ("/bin/cat", "bin/cat"), ("/bin/sleep", "bin/sleep")] {
        std::fs::copy(from, root.join(to)).unwrap();
        let ldd = Command::new("ldd").arg(from).output().unwrap();
        for lib in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
            let dest = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, dest).unwrap();
        }
    }
    std::fs::write(root.join("hello.txt"), format!("{hello}\n")).unwrap();
}

/// Packs `tree` into `store` and writes the flist to `out`; returns its digest.
fn pack_flist(tree: &Path, store: &Path, out: &Path) -> String {
    pack_tagged(tree, store, out, &[])
}

/// [`pack_flist`] with tags.
fn pack_tagged(tree: &Path, store: &Path, out: &Path, tags: &[(&str, &str)]) -> String {
    let tree = flist::source::dir::scan(tree).unwrap();
    let router = Router::from_specs(&[store.to_str().unwrap()], RetryPolicy::default()).unwrap();
    let opts = PackOptions {
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..PackOptions::default()
    };
    let report = pack(&tree, &router, &opts, &|_| {}).unwrap();
    std::fs::write(out, &report.bytes).unwrap();
    report.flist.digest().to_hex()
}

fn reload(node: &Node) -> Value {
    let out = node.ctl(&["--json", "reload"]);
    if out.status.success() {
        serde_json::from_slice(&out.stdout).unwrap()
    } else {
        json!({"error": String::from_utf8_lossy(&out.stderr)})
    }
}

#[test]
fn manifests_are_applied_by_diff_and_bad_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    let trees = dir.path().join("trees");
    std::fs::create_dir_all(srv.join("store")).unwrap();
    mini_root(&trees.join("app1"), "v1");
    mini_root(&trees.join("app2"), "v2");
    std::fs::create_dir_all(trees.join("data")).unwrap();
    std::fs::write(trees.join("data/seed.txt"), "seed").unwrap();
    let app1 = pack_flist(&trees.join("app1"), &srv.join("store"), &srv.join("app1.fl"));
    let app2 = pack_flist(&trees.join("app2"), &srv.join("store"), &srv.join("app2.fl"));
    let data = pack_flist(&trees.join("data"), &srv.join("store"), &srv.join("data.fl"));
    let mut server = http_server(&srv);
    let store = format!("http://127.0.0.1:{}/store", server.port);

    let node_dir = tempfile::tempdir().unwrap();
    let out = node_dir.path().join("out");
    // The writable flist names its store relative to the manifest's URL.
    let flist = |name: &str, file: &str, digest: &str, writable: bool| {
        json!({"name": name, "url": file, "digest": digest, "stores": [if writable { "store" } else { &store }],
               "mountpoint": format!("$OUT/mnt/{name}"), "writable": writable})
    };
    let reader = json!({"name": "reader", "root": "app", "exec": ["/bin/sh", "-c", "cat /hello.txt; exec sleep 1000"]});
    let steady = json!({"name": "steady", "exec": ["/bin/sleep", "1000"]});
    let writer = json!({"name": "writer", "oneshot": true,
                        "exec": ["/bin/sh", "-c", "cat $OUT/mnt/data/seed.txt > $OUT/mnt/data/new.txt"]});
    let v1 = json!({"version": 1,
        "flists": [flist("app", "app1.fl", &app1, false), flist("data", "data.fl", &data, true)],
        "services": [reader, steady, writer, {"name": "gone", "exec": ["/bin/sleep", "1000"]}]});
    publish(&srv, &v1, &out);

    let state = dir.path().join("state");
    let manifest_url = format!("http://127.0.0.1:{}/manifest.json", server.port);
    let args_dir = dir.path().to_path_buf();
    let run_args = move || {
        [
            "--manifest".to_string(),
            manifest_url.clone(),
            "--key".into(),
            hex_key(),
            "--state".into(),
            state.display().to_string(),
            "--cache".into(),
            args_dir.join("cache").display().to_string(),
            "--run-dir".into(),
            args_dir.join("run").display().to_string(),
            "--interval-secs".into(),
            "3600".into(),
        ]
    };
    let args = run_args();
    let args: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
    let mut node = start(node_dir, &args);

    // Version 1: both flists mounted, the chrooted service reads its root, the writable flist
    // takes writes into its upper layer on the state disk.
    node.wait_for("manifest version 1", |n| n.version() == Some(1));
    node.wait_for("reader's output", |n| n.log("reader").contains(&"v1".to_string()));
    node.wait_for("writer", |n| n.state("writer")["state"] == "done");
    assert_eq!(std::fs::read_to_string(out.join("mnt/data/new.txt")).unwrap(), "seed");
    assert_eq!(std::fs::read_to_string(dir.path().join("state/layers/data/upper/new.txt")).unwrap(), "seed");
    assert_eq!(std::fs::read_to_string(out.join("mnt/app/hello.txt")).unwrap(), "v1\n");
    let mounts = node.ctl_json(&["mounts"]);
    assert_eq!(mounts.as_array().unwrap().len(), 2, "{mounts}");
    for m in mounts.as_array().unwrap() {
        let stores = m["stores"].as_array().unwrap();
        assert!(!stores.is_empty() && stores.iter().all(|s| s["down"] == false && s["failures"] == 0), "{m}");
    }
    let data_mount = |mounts: &Value| mounts.as_array().unwrap().iter().find(|m| m["name"] == "data").cloned();
    let data_v1 = data_mount(&mounts);
    let steady_pid = node.pid("steady").unwrap();
    let reader_pid = node.pid("reader").unwrap();
    let gone_pid = node.pid("gone").unwrap();

    // Version 2: app changes (reader restarts in the new root), gone leaves, fresh arrives,
    // steady is untouched.
    let mut v2 = v1.clone();
    v2["version"] = json!(2);
    v2["flists"][0] = flist("app", "app2.fl", &app2, false);
    let services = v2["services"].as_array_mut().unwrap();
    services.retain(|s| s["name"] != "gone");
    services.push(json!({"name": "fresh", "exec": ["/bin/sleep", "1000"]}));
    publish(&srv, &v2, &out);
    // SIGHUP asks for a fetch now (the interval is an hour).
    let pid = nix::unistd::Pid::from_raw(node.child.as_ref().unwrap().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    node.wait_for("manifest version 2", |n| n.version() == Some(2));
    node.wait_for("reader's new output", |n| n.log("reader").contains(&"v2".to_string()));
    assert_ne!(node.pid("reader"), Some(reader_pid));
    assert_eq!(node.pid("steady"), Some(steady_pid), "an unchanged service was restarted");
    assert!(!node.ctl(&["status", "gone"]).status.success());
    assert!(!alive(gone_pid as i32), "a removed service still runs");
    node.wait_for("fresh", |n| n.state("fresh")["state"] == "running");
    assert_eq!(std::fs::read_to_string(out.join("mnt/app/hello.txt")).unwrap(), "v2\n");
    assert_eq!(data_mount(&node.ctl_json(&["mounts"])), data_v1, "an unchanged flist was mounted again");
    let staged = || std::fs::read_dir(dir.path().join("run/flists")).unwrap().count();
    assert_eq!(staged(), 2, "the old version's staging mount is left");

    // Refused, each leaving version 2 in force: tampered bytes, an older version, and a newer
    // version pinning a flist whose digest is not what the server has.
    let text = std::fs::read_to_string(srv.join("manifest.json")).unwrap();
    std::fs::write(srv.join("manifest.json"), text.replace("\"version\": 2", "\"version\": 3")).unwrap();
    let refused = reload(&node);
    assert!(refused["error"].as_str().unwrap().contains("bad signature"), "{refused}");
    publish(&srv, &v1, &out);
    let refused = reload(&node);
    assert!(refused["error"].as_str().unwrap().contains("older"), "{refused}");
    let mut v3 = v2.clone();
    v3["version"] = json!(3);
    // (The digest of no flist kept or served: a kept file with the pinned digest would be used.)
    v3["flists"][0] = flist("app", "app1.fl", &"ab".repeat(32), false);
    publish(&srv, &v3, &out);
    let refused = reload(&node);
    assert!(refused["error"].as_str().unwrap().contains("pins"), "{refused}");
    assert_eq!(node.version(), Some(2));
    assert_eq!(node.pid("steady"), Some(steady_pid));
    assert_eq!(std::fs::read_to_string(out.join("mnt/app/hello.txt")).unwrap(), "v2\n");
    assert_eq!(staged(), 2, "a refused update left a staging mount behind");

    // Shut down: services stop, flists are unmounted.
    assert!(node.terminate().success());
    assert!(!out.join("mnt/app/hello.txt").exists(), "the flist stayed mounted after init exited");

    // Without the server, a restarted init runs the last good manifest from the state disk,
    // with the flist files kept there and the chunks in the disk cache.
    server.stop();
    let args = run_args();
    let args: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
    let mut node = start(tempfile::tempdir().unwrap(), &args);
    node.wait_for("the kept manifest", |n| n.version() == Some(2));
    node.wait_for("reader's output", |n| n.log("reader").contains(&"v2".to_string()));
    assert_eq!(std::fs::read_to_string(out.join("mnt/data/new.txt")).unwrap(), "seed", "the upper layer was lost");
    let manifest = node.ctl_json(&["manifest"]);
    assert!(manifest["last_error"].as_str().is_some_and(|e| e.contains("fetching")), "{manifest}");
    assert!(node.terminate().success());
}

#[test]
fn a_container_image_runs_with_its_run_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    mini_root(&dir.path().join("image"), "from the image");
    // What `flist pack oci:…` writes for an image's configuration.
    let tags = [
        ("oci.entrypoint", r#"["/bin/sh", "-c"]"#),
        ("oci.cmd", r#"["echo $GREETING $OWN $(pwd); exec sleep 1000"]"#),
        ("oci.env", r#"["GREETING=hello", "OWN=image", "PATH=/bin"]"#),
        ("oci.workdir", "/bin"),
    ];
    let app = pack_tagged(&dir.path().join("image"), &srv.join("store"), &srv.join("app.fl"), &tags);
    let bare = pack_flist(&dir.path().join("image"), &srv.join("store"), &srv.join("bare.fl"));
    let server = http_server(&srv);
    let node_dir = tempfile::tempdir().unwrap();
    let out = node_dir.path().join("out");
    let flist = |name: &str, digest: &str| {
        json!({"name": name, "url": format!("{name}.fl"), "digest": digest,
        "stores": ["store"], "mountpoint": format!("$OUT/mnt/{name}")})
    };
    let v1 = json!({"version": 1, "flists": [flist("app", &app)],
        "services": [{"name": "app", "image": "app", "env": {"OWN": "mine"}}]});
    publish(&srv, &v1, &out);
    let manifest_url = format!("http://127.0.0.1:{}/manifest.json", server.port);
    let cache = dir.path().join("cache");
    let run = dir.path().join("run");
    let key = hex_key();
    let args: [&dyn AsRef<std::ffi::OsStr>; 8] =
        [&"--manifest", &manifest_url, &"--key", &key, &"--cache", &cache, &"--run-dir", &run];
    let mut node = start(node_dir, &args);
    node.wait_for("the image's command", |n| n.log("app").iter().any(|l| l.contains("hello")));
    assert!(node.log("app").contains(&"hello mine /bin".to_string()), "{:?}", node.log("app"));

    // An image without a command, for a service that gives none: refused, nothing changes.
    let mut v2 = v1.clone();
    v2["version"] = json!(2);
    v2["flists"] = json!([flist("app", &app), flist("bare", &bare)]);
    v2["services"] =
        json!([{"name": "app", "image": "app", "env": {"OWN": "mine"}}, {"name": "bare", "image": "bare"}]);
    publish(&srv, &v2, &out);
    let refused = reload(&node);
    assert!(refused["error"].as_str().unwrap().contains("no entrypoint or cmd"), "{refused}");
    assert_eq!(node.version(), Some(1));
    assert!(node.terminate().success());
}

#[test]
fn the_start_trace_ends_once_the_required_services_are_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, tree) = (dir.path().join("srv"), dir.path().join("tree"));
    std::fs::create_dir_all(srv.join("store")).unwrap();
    mini_root(&tree, "v1");
    // Read only after web is ready: 8 MiB of noise, so that chunks of its own lie inside it.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let late: Vec<u8> = (0..8 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(tree.join("late.bin"), &late).unwrap();
    let digest = pack_flist(&tree, &srv.join("store"), &srv.join("app.fl"));
    let server = http_server(&srv);
    let node_dir = tempfile::tempdir().unwrap();
    let out = node_dir.path().join("out");
    let manifest = json!({"version": 1,
        "flists": [{"name": "app", "url": "app.fl", "digest": digest,
                    "stores": [format!("http://127.0.0.1:{}/store", server.port)], "mountpoint": "$OUT/mnt/app"}],
        "services": [
            {"name": "web", "root": "app", "exec": ["/bin/sh", "-c", "cat /hello.txt; exec sleep 1000"],
             "test": ["/bin/cat", "/hello.txt"]},
            {"name": "late", "root": "app",
             "exec": ["/bin/sh", "-c", "sleep 3; cat /late.bin > /dev/null; echo read; exec sleep 1000"]}
        ],
        // Healthy only a minute after web is ready: the trace must not wait for that.
        "health": {"require": ["web"], "settle": 60, "timeout": 120}});
    publish(&srv, &manifest, &out);
    let state_dir = dir.path().join("state");
    let args: Vec<String> = vec![
        "--manifest".into(),
        format!("http://127.0.0.1:{}/manifest.json", server.port),
        "--key".into(),
        hex_key(),
        "--state".into(),
        state_dir.display().to_string(),
        "--cache".into(),
        dir.path().join("cache").display().to_string(),
        "--run-dir".into(),
        dir.path().join("run").display().to_string(),
    ];
    let args: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
    let node = start(node_dir, &args);

    let trace_path = state_dir.join("flists").join(format!("{digest}.trace"));
    node.wait_for("the start's trace", |_| trace_path.exists());
    assert!(!node.init_log().contains("is healthy"), "{}", node.init_log());
    node.wait_for("late's read", |n| n.log("late").contains(&"read".to_string()));

    let fl = flist::Flist::decode(&std::fs::read(srv.join("app.fl")).unwrap()).unwrap();
    let trace =
        flist::trace::Trace::decode_for(&std::fs::read(&trace_path).unwrap(), &fl.digest(), fl.chunks.len()).unwrap();
    let chunks_of = |path: &str| -> Vec<u32> {
        let inode = fl.inode_of(fl.resolve(path.as_bytes()).unwrap()).unwrap();
        let extents = fl.extents(inode, 0, inode.size());
        extents
            .iter()
            .filter_map(|e| match e {
                flist::format::Extent::Data { chunk, .. } => Some(*chunk),
                flist::format::Extent::Hole { .. } => None,
            })
            .collect()
    };
    // What web read to start is in it; chunks wholly inside late.bin, read after, are not (its
    // first and last may hold its neighbours' bytes too).
    assert!(chunks_of("/hello.txt").iter().all(|c| trace.chunks.contains(c)), "{:?}", trace.chunks);
    let late_chunks = chunks_of("/late.bin");
    assert!(late_chunks.len() > 2, "{late_chunks:?}");
    let inside = &late_chunks[1..late_chunks.len() - 1];
    assert!(inside.iter().all(|c| !trace.chunks.contains(c)), "late.bin's chunks {inside:?} in {:?}", trace.chunks);
}
