//! The FUSE mount, through the real kernel FUSE (/dev/fuse; run as root): the whole tree with
//! every attribute, verified content, the disk cache, failover, outages, and single-flight.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod util;

use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

use util::servers::{free_port, http_server_logged};
use util::{assert_same_tree, awkward_tree, flist_ok, store_objects, Mounted, TestDir};

fn pack(t: &TestDir, src: &str, out: &str, stores: &[String]) {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"pack"];
    let (s, o) = (t.join(src), t.join(out));
    args.push(&s);
    args.push(&"-o");
    args.push(&o);
    for st in stores {
        args.push(&"--store");
        args.push(st);
    }
    flist_ok(&args);
}

#[test]
fn mounted_tree_matches_the_source_exactly() {
    let t = TestDir::new();
    awkward_tree(&t.join("src"));
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let log = t.join("http.log");
    let server = http_server_logged(&t.join("store"), free_port(), Some(&log));
    let url = format!("http://127.0.0.1:{}", server.port);
    let cache = t.join("cache");
    let m = Mounted::new(&t.join("f.fl"), &t.join("mnt"), &["--store", &url, "--cache", cache.to_str().unwrap()]);
    // Every path, type, mode, owner, time, size, content hash, xattr (security.capability
    // included), link target, device number, hardlink group and allocation.
    assert_same_tree(&t.join("src"), &m.path);
    let stats: serde_json::Value =
        serde_json::from_str(&flist_ok(&[&"cache", &"stats", &"--json", &"--cache", &cache])).unwrap();
    assert!(stats["entries"].as_u64().unwrap() >= 3, "{stats}");
    // Errors map to the right errno, not ENOENT for everything.
    assert_eq!(fs::read(m.path.join("dir")).unwrap_err().raw_os_error(), Some(libc::EISDIR));
    assert_eq!(fs::read_dir(m.path.join("empty")).unwrap_err().raw_os_error(), Some(libc::ENOTDIR));
    assert_eq!(fs::metadata(m.path.join("nope")).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    assert_eq!(xattr::get(m.path.join("empty"), "user.none").unwrap(), None);
    assert_eq!(fs::write(m.path.join("new"), b"x").unwrap_err().raw_os_error(), Some(libc::EROFS));
}

#[test]
fn tampered_store_chunk_is_never_served() {
    let t = TestDir::new();
    let content = b"only the true bytes ".repeat(40_000);
    util::write(&t.join("src/file"), &content);
    let (a, b) = (t.store("a"), t.store("b"));
    pack(&t, "src", "f.fl", &[a.clone(), b.clone()]);
    for obj in store_objects(&t.join("a")) {
        let mut bytes = fs::read(&obj).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        fs::write(&obj, bytes).unwrap();
    }
    // Replica b is good: the mount serves the true bytes.
    {
        let m = Mounted::new(&t.join("f.fl"), &t.join("mnt1"), &["--store", &a, "--store", &b]);
        assert_eq!(fs::read(m.path.join("file")).unwrap(), content);
    }
    // Only the tampered store: EIO, never the altered bytes.
    let m = Mounted::new(&t.join("f.fl"), &t.join("mnt2"), &["--store", &a]);
    let err = fs::read(m.path.join("file")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
}

#[test]
fn corrupt_cache_entry_is_dropped_and_refetched() {
    let t = TestDir::new();
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    util::write(&t.join("src/file"), &content);
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let cache = t.join("cache");
    let cache_arg = cache.to_str().unwrap().to_string();
    {
        let m = Mounted::new(&t.join("f.fl"), &t.join("mnt"), &["--cache", &cache_arg]);
        assert_eq!(fs::read(m.path.join("file")).unwrap(), content);
    }
    // Flip one byte in every cached chunk on disk.
    let entries: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().len() == 2)
        .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten().map(|e| e.path()))
        .collect();
    assert!(!entries.is_empty());
    for p in &entries {
        let mut b = fs::read(p).unwrap();
        b[7] ^= 1;
        fs::write(p, b).unwrap();
    }
    let m = Mounted::new(&t.join("f.fl"), &t.join("mnt"), &["--cache", &cache_arg]);
    assert_eq!(fs::read(m.path.join("file")).unwrap(), content);
    drop(m);
    // The refetched entries are good again.
    let out = flist_ok(&[&"cache", &"verify", &"--cache", &cache]);
    assert!(out.starts_with("0 corrupt"), "{out}");
}

#[test]
fn store_outage_gives_eio_within_the_bound_then_recovers() {
    let t = TestDir::new();
    let content: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 256) as u8).collect();
    util::write(&t.join("src/file"), &content);
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let port = free_port();
    let mut server = http_server_logged(&t.join("store"), port, None);
    let url = format!("http://127.0.0.1:{port}");
    let m = Mounted::new(&t.join("f.fl"), &t.join("mnt"), &["--store", &url, "--retries", "2"]);
    server.stop();
    let started = Instant::now();
    let err = fs::read(m.path.join("file")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(started.elapsed() < Duration::from_secs(30), "the read hung for {:?}", started.elapsed());
    let _server = http_server_logged(&t.join("store"), port, None);
    assert_eq!(fs::read(m.path.join("file")).unwrap(), content);
}

#[test]
fn parallel_readers_fetch_each_chunk_once() {
    let t = TestDir::new();
    let mut content = Vec::with_capacity(24 << 20);
    let mut x: u32 = 1;
    while content.len() < 24 << 20 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        content.extend_from_slice(&x.to_le_bytes());
    }
    util::write(&t.join("src/big"), &content);
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let log = t.join("http.log");
    let server = http_server_logged(&t.join("store"), free_port(), Some(&log));
    let url = format!("http://127.0.0.1:{}", server.port);
    let m = Mounted::new(&t.join("f.fl"), &t.join("mnt"), &["--store", &url]);
    let path = m.path.join("big");
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| assert!(fs::read(&path).unwrap() == content));
        }
    });
    drop(m);
    let log = fs::read_to_string(&log).unwrap();
    let mut gets: HashMap<&str, usize> = HashMap::new();
    for line in log.lines().filter(|l| l.contains("\"GET ")) {
        let object = line.split('"').nth(1).unwrap_or_default();
        *gets.entry(object).or_default() += 1;
    }
    let chunks = store_objects(&t.join("store")).len();
    assert!(chunks >= 8, "too few chunks to show anything: {chunks}");
    assert_eq!(gets.len(), chunks, "every chunk fetched");
    assert!(gets.values().all(|&n| n == 1), "some chunk fetched more than once: {gets:?}");
}
