//! The FUSE mount, through the real kernel FUSE (/dev/fuse; run as root): the whole tree with
//! every attribute, verified content, the disk cache, failover, outages, and single-flight.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod util;

use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

use util::servers::{free_port, http_server_logged, http_server_slow};
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
    // Readers sharing failed downloads all get EIO, none hangs on a download that failed.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let err = fs::read(m.path.join("file")).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EIO));
            });
        }
    });
    assert!(started.elapsed() < Duration::from_secs(30), "the reads hung for {:?}", started.elapsed());
    let _server = http_server_logged(&t.join("store"), port, None);
    assert_eq!(fs::read(m.path.join("file")).unwrap(), content);
}

#[test]
fn parallel_readers_fetch_each_chunk_once() {
    let t = TestDir::new();
    let content = util::noise(24 << 20, 1);
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

#[test]
fn a_cold_mount_under_many_readers_serves_the_true_bytes_from_a_slow_store_while_another_fails() {
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;
    let t = TestDir::new();
    // Files from empty to 3 MiB in three directories, every fifth a copy of an earlier one.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..30u64 {
        let content = match i {
            i if i % 5 == 4 => files[(i as usize) / 2].1.clone(),
            i => util::noise(((i * 104_729) % (3 << 20)) as usize, i as u32),
        };
        let name = format!("d{}/f{i}", i % 3);
        util::write(&t.join("src").join(&name), &content);
        files.push((name, content));
    }
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let slow = http_server_slow(&t.join("store"), free_port(), 5);
    let mut failing = http_server_logged(&t.join("store"), free_port(), None);
    let stores = [format!("http://127.0.0.1:{}", failing.port), format!("http://127.0.0.1:{}", slow.port)];

    let mnt = t.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let flist = Arc::new(flist::Flist::decode(&fs::read(t.join("f.fl")).unwrap()).unwrap());
    let policy = flist::store::RetryPolicy {
        attempts: 2,
        first_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    };
    let router = flist::store::Router::from_specs(&stores, policy).unwrap();
    let cache = Arc::new(flist::cache::Cache::open(&t.join("cache"), 1 << 30).unwrap());
    const CAP: u64 = 2 << 20;
    let source = flist::fetch::CachedSource::new(router, Some(cache), 4 << 20);
    source.start_prefetchers(8, CAP);
    let fs_ = flist::fuse::FlistFs::new(flist, source.clone(), Default::default());
    let session = flist::fuse::mount(fs_, &mnt, &Default::default()).unwrap();

    // Eight readers at once, each through every file in its own order: whole-file reads, and
    // pieces at scattered offsets. The first store goes away while they read: after each reader's
    // first file, so that it happens mid-read however fast this machine fetches. (Counters with
    // a deadline rather than barriers: a reader that fails must not leave the others waiting.)
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let readers = 8usize;
    let (first_files_read, first_store_gone) = (AtomicUsize::new(0), AtomicBool::new(false));
    let wait_until = |done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let started = Instant::now();
    std::thread::scope(|s| {
        for reader in 0..readers {
            let (files, mnt) = (&files, &mnt);
            let (first_files_read, first_store_gone, wait_until) = (&first_files_read, &first_store_gone, &wait_until);
            s.spawn(move || {
                for k in 0..files.len() {
                    if k == 1 {
                        first_files_read.fetch_add(1, Ordering::SeqCst);
                        wait_until(&|| first_store_gone.load(Ordering::SeqCst));
                    }
                    let (name, content) = &files[(k * 7 + reader * 11) % files.len()];
                    let path = mnt.join(name);
                    if reader % 2 == 0 {
                        assert!(fs::read(&path).unwrap() == *content, "{name} read whole by reader {reader}");
                        continue;
                    }
                    let file = fs::File::open(&path).unwrap();
                    for piece in 0..12u64 {
                        let len = content.len() as u64;
                        let at = (piece * 918_273 + reader as u64 * 4099) % len.max(1);
                        let size = ((piece * 37_119) % 200_000 + 1).min(len - at.min(len));
                        let mut buf = vec![0; size as usize];
                        file.read_exact_at(&mut buf, at).unwrap();
                        assert!(buf[..] == content[at as usize..(at + size) as usize], "{name} at {at}+{size}");
                    }
                }
            });
        }
        wait_until(&|| first_files_read.load(Ordering::SeqCst) == readers);
        failing.stop();
        first_store_gone.store(true, Ordering::SeqCst);
    });
    assert!(started.elapsed() < Duration::from_secs(120), "the readers took {:?}", started.elapsed());
    let stats = source.stats();
    assert!(stats.prefetch_peak_bytes <= CAP, "fetched ahead beyond the cap: {stats:?}");
    assert!(stats.fetched > 0 && stats.prefetch_peak_bytes > 0, "{stats:?}");
    let health = source.store_health();
    assert!(health.iter().any(|h| h.failures > 0), "the failing store was never tried: {health:?}");
    session.umount_and_join().unwrap();
}

/// Sequential readers are read ahead of all the way through their files, also when the cap on
/// bytes ahead stops the read-ahead again and again: two files read side by side, paced slower
/// than a slow store gives chunks, wait for a download only now and then, and each chunk is
/// fetched once.
#[test]
fn sequential_readers_are_read_ahead_of_to_the_end_under_a_small_cap() {
    use std::io::Read;
    use std::sync::Arc;
    let t = TestDir::new();
    let files: Vec<Vec<u8>> = (0..2).map(|i| util::noise(12 << 20, 40 + i)).collect();
    for (i, content) in files.iter().enumerate() {
        util::write(&t.join(&format!("src/f{i}")), content);
    }
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let slow = http_server_slow(&t.join("store"), free_port(), 5);
    let flist = Arc::new(flist::Flist::decode(&fs::read(t.join("f.fl")).unwrap()).unwrap());
    let chunks = flist.chunks.len() as u64;
    let router =
        flist::store::Router::from_specs(&[format!("http://127.0.0.1:{}", slow.port)], Default::default()).unwrap();
    let source = flist::fetch::CachedSource::new(router, None, 64 << 20);
    // About two chunks ahead at most: the read-ahead stops at the cap nearly every time.
    source.start_prefetchers(4, 1 << 20);
    let fs_ = flist::fuse::FlistFs::new(flist, source.clone(), Default::default());
    let mnt = t.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let session = flist::fuse::mount(fs_, &mnt, &Default::default()).unwrap();
    std::thread::scope(|s| {
        for (i, content) in files.iter().enumerate() {
            let path = mnt.join(format!("f{i}"));
            s.spawn(move || {
                let mut file = fs::File::open(path).unwrap();
                let mut read = Vec::new();
                let mut buf = vec![0; 256 << 10];
                loop {
                    let n = file.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    read.extend_from_slice(&buf[..n]);
                    std::thread::sleep(Duration::from_millis(15));
                }
                assert!(read == *content, "f{i}");
            });
        }
    });
    let stats = source.stats();
    session.umount_and_join().unwrap();
    assert!(chunks >= 40, "too few chunks to show anything: {chunks}");
    assert_eq!(stats.fetched, chunks, "each chunk fetched once: {stats:?}");
    assert!(stats.prefetch_peak_bytes <= 1 << 20, "{stats:?}");
    assert!(stats.waited <= chunks / 4, "{} of {chunks} chunks waited for: {stats:?}", stats.waited);
}

/// A mount in this process with read-ahead fetchers, replaying `replay` (bytes of a trace file,
/// hostile or not) and recording into `record`.
fn traced_mount(
    t: &TestDir,
    store: &str,
    cache: &str,
    mnt: &str,
    replay: Option<(&[u8], u64)>,
    record: Option<std::path::PathBuf>,
) -> (fuser::BackgroundSession, std::sync::Arc<flist::fetch::CachedSource>) {
    use std::sync::Arc;
    let file = fs::read(t.join("f.fl")).unwrap();
    let digest = flist::Hash(*blake3::hash(&file).as_bytes());
    let flist = Arc::new(flist::Flist::decode(&file).unwrap());
    let router = flist::store::Router::from_specs(&[store], Default::default()).unwrap();
    let cache = Arc::new(flist::cache::Cache::open(&t.join(cache), 1 << 30).unwrap());
    let source = flist::fetch::CachedSource::new(router, Some(cache), 64 << 20);
    source.start_prefetchers(4, 32 << 20);
    if let Some((bytes, cap)) = replay {
        if let Ok(trace) = flist::trace::Trace::decode_for(bytes, &digest, flist.chunks.len()) {
            source.replay(flist.clone(), trace, cap, 4);
        }
    }
    let mut fs_ = flist::fuse::FlistFs::new(flist, source.clone(), Default::default());
    if let Some(out) = record {
        fs_ = fs_.record_trace(flist::trace::Recorder::new(digest, Duration::from_secs(600)), out);
    }
    fs::create_dir_all(t.join(mnt)).unwrap();
    (flist::fuse::mount(fs_, &t.join(mnt), &Default::default()).unwrap(), source)
}

/// A node ends its recordings when it is healthy: what is read after that (a login, a shutdown)
/// is not its start and stays out of the trace.
#[test]
fn a_recording_ended_by_its_handle_keeps_only_the_reads_before() {
    let t = TestDir::new();
    let files: Vec<Vec<u8>> = (0..6u32).map(|i| util::noise(400_000, 100 + i)).collect();
    for (i, content) in files.iter().enumerate() {
        util::write(&t.join(&format!("src/f{i}")), content);
    }
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let file = fs::read(t.join("f.fl")).unwrap();
    let digest = flist::Hash(*blake3::hash(&file).as_bytes());
    let flist = std::sync::Arc::new(flist::Flist::decode(&file).unwrap());
    let router = flist::store::Router::from_specs(&[t.store("store")], Default::default()).unwrap();
    let source = flist::fetch::CachedSource::new(router, None, 64 << 20);
    let out = t.join("f.trace");
    let fs_ = flist::fuse::FlistFs::new(flist.clone(), source, Default::default())
        .record_trace(flist::trace::Recorder::new(digest, Duration::from_secs(600)), out.clone());
    let recording = fs_.trace_recording();
    fs::create_dir_all(t.join("m")).unwrap();
    let session = flist::fuse::mount(fs_, &t.join("m"), &Default::default()).unwrap();
    for (i, content) in files.iter().enumerate().take(2) {
        assert!(fs::read(t.join(&format!("m/f{i}"))).unwrap() == *content);
    }
    recording.finish();
    let at_finish = fs::read(&out).expect("the trace is written when the recording is ended");
    let trace = flist::trace::Trace::decode(&at_finish).unwrap();
    for (i, content) in files.iter().enumerate().skip(2) {
        assert!(fs::read(t.join(&format!("m/f{i}"))).unwrap() == *content);
    }
    recording.finish();
    session.umount_and_join().unwrap();
    assert_eq!(
        fs::read(&out).unwrap(),
        at_finish,
        "reads after the end, a second finish and the unmount change nothing"
    );
    // The first two files' chunks: some, and fewer than the image's (four files were read after).
    assert!(
        !trace.chunks.is_empty() && trace.chunks.len() < flist.chunks.len(),
        "{} of {} chunks",
        trace.chunks.len(),
        flist.chunks.len()
    );
}

#[test]
fn a_recorded_trace_is_replayed_and_a_hostile_one_changes_no_byte() {
    let t = TestDir::new();
    let mut files = Vec::new();
    for i in 0..40u32 {
        let content = util::noise(300_000 + (i as usize) * 1000, i);
        util::write(&t.join(&format!("src/f{i:02}")), &content);
        files.push(content);
    }
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let log = t.join("http.log");
    let server = http_server_logged(&t.join("store"), free_port(), Some(&log));
    let store = format!("http://127.0.0.1:{}", server.port);
    // A start that reads a few files, scattered through the image.
    let start = [31usize, 4, 17, 9];
    let read_start = |mnt: &str| {
        for &i in &start {
            assert!(fs::read(t.join(mnt).join(format!("f{i:02}"))).unwrap() == files[i], "f{i:02} under {mnt}");
        }
    };
    let gets = || fs::read_to_string(&log).unwrap().lines().filter(|l| l.contains("\"GET ")).count();

    // Recorded on the first start; written when the mount ends.
    let trace_path = t.join("f.trace");
    let (session, cold) = traced_mount(&t, &store, "c1", "m1", None, Some(trace_path.clone()));
    read_start("m1");
    session.umount_and_join().unwrap();
    let bytes = fs::read(&trace_path).unwrap();
    let trace = flist::trace::Trace::decode(&bytes).unwrap();
    assert!(trace.chunks.len() >= start.len(), "{trace:?}");
    let shown = flist_ok(&[&"trace", &"show", &trace_path, &"--flist", &t.join("f.fl"), &"--json"]);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["matches"], true, "{shown}");
    assert_eq!(shown["chunks"], trace.chunks.len());

    // Replayed on a fresh cache, before any read: it alone fetches every chunk of the trace,
    // and the start then waits for no download at all.
    let (session, replayed) = traced_mount(&t, &store, "c2", "m2", Some((&bytes, 1 << 30)), None);
    wait_for("the replay to fetch every chunk of the trace", || {
        replayed.stats().fetched as usize >= trace.chunks.len()
    });
    read_start("m2");
    assert_eq!(replayed.stats().waited, 0, "{:?}", replayed.stats());
    session.umount_and_join().unwrap();
    // And with the start right after the mount: never more waits than on the cold start.
    let (session, racing) = traced_mount(&t, &store, "c3", "m3", Some((&bytes, 1 << 30)), None);
    read_start("m3");
    let (cold_waits, replay_waits) = (cold.stats().waited, racing.stats().waited);
    assert!(cold_waits > 0 && replay_waits <= cold_waits, "replayed {replay_waits} waits, cold {cold_waits}");
    eprintln!("reads that waited for a download: cold {cold_waits}, with the trace {replay_waits}");
    session.umount_and_join().unwrap();

    // Hostile traces: none changes a byte, and none costs more requests than its cap allows.
    let image = flist::Flist::decode(&fs::read(t.join("f.fl")).unwrap()).unwrap();
    let cap = 3 * 300_000u64;
    let within_cap = image.chunks.iter().scan(0u64, |sum, c| {
        *sum += u64::from(c.len);
        Some(*sum)
    });
    let within_cap = within_cap.take_while(|sum| *sum <= cap).count();
    let every: Vec<u32> = (0..u32::MAX).take(100_000).collect();
    let own = flist::trace::Trace::decode(&bytes).unwrap().flist;
    let mut truncated = bytes.clone();
    truncated.truncate(bytes.len() - 2);
    let hostile: Vec<(&str, Vec<u8>, u64)> = vec![
        ("garbage", b"FLTRACE1 not really".to_vec(), 1 << 30),
        ("truncated", truncated, 1 << 30),
        (
            "foreign",
            flist::trace::Trace { flist: flist::Hash([9; 32]), chunks: trace.chunks.clone() }.encode(),
            1 << 30,
        ),
        ("oversized", flist::trace::Trace { flist: own, chunks: every }.encode(), cap),
        ("empty", Vec::new(), 1 << 30),
    ];
    for (n, (what, bytes, cap)) in hostile.iter().enumerate() {
        let before = gets();
        let (session, source) =
            traced_mount(&t, &store, &format!("h{n}"), &format!("hm{n}"), Some((bytes, *cap)), None);
        std::thread::sleep(Duration::from_millis(300));
        let replayed = gets() - before;
        let allowed = if *what == "oversized" { within_cap } else { 0 };
        assert!(replayed <= allowed, "{what}: {replayed} requests before any read (at most {allowed})");
        read_start(&format!("hm{n}"));
        assert!(source.stats().prefetch_peak_bytes <= 32 << 20);
        session.umount_and_join().unwrap();
    }
}

/// Mounts in this process, through the library, so that the server's counters can be read.
struct InProcess {
    session: Option<fuser::BackgroundSession>,
    counters: std::sync::Arc<flist::fuse::FsCounters>,
}

impl InProcess {
    fn new(flist_path: &std::path::Path, store: &str, cache: &std::path::Path, mnt: &std::path::Path) -> Self {
        use std::sync::Arc;
        fs::create_dir_all(mnt).unwrap();
        let flist = Arc::new(flist::Flist::decode(&fs::read(flist_path).unwrap()).unwrap());
        let router = flist::store::Router::from_specs(&[store], Default::default()).unwrap();
        let cache = Arc::new(flist::cache::Cache::open(cache, 1 << 30).unwrap());
        let source = flist::fetch::CachedSource::new(router, Some(cache), 64 << 20);
        let fs = flist::fuse::FlistFs::new(flist, source, Default::default());
        let counters = fs.counters();
        let session = flist::fuse::mount(fs, mnt, &Default::default()).unwrap();
        InProcess { session: Some(session), counters }
    }

    fn reads(&self) -> u64 {
        self.counters.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn passthrough_opens(&self) -> u64 {
        self.counters.passthrough_opens.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

/// Reads a file after dropping its pages from the kernel cache, so that a cached open has to ask
/// the server again.
fn read_uncached(path: &std::path::Path) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path).unwrap();
    // SAFETY: a plain advisory call on an open descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut out).unwrap();
    out
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Passthrough hands the kernel files it reads without asking flint, so it is on only where
/// the cache filesystem has fs-verity (the kernel then checks every page itself). The qemu test
/// `tests/boot/cache_disk.py` covers an ext4 cache with the `verity` feature and bytes changed
/// on the disk below a live mount; this runs on whatever the host's cache filesystem is.
#[test]
fn passthrough_only_under_fs_verity_and_a_corrupt_assembly_is_never_used() {
    let t = TestDir::new();
    let content = util::noise(8 << 20, 7);
    util::write(&t.join("src/big"), &content);
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let (store, cache) = (t.store("store"), t.join("cache"));
    let files = cache.join("files");
    let assembled = || if files.exists() { store_objects(&files) } else { Vec::new() };
    let verity = flist::verity::probe(t.join(".").as_path()).is_ok();
    eprintln!("the test directory's filesystem has fs-verity: {verity}");
    if !verity {
        let m = InProcess::new(&t.join("f.fl"), &store, &cache, &t.join("mnt"));
        let path = t.join("mnt/big");
        for _ in 0..3 {
            let before = m.reads();
            assert!(read_uncached(&path) == content);
            assert!(m.reads() > before, "a read did not reach flint: it was passed through");
            std::thread::sleep(Duration::from_millis(500));
        }
        assert_eq!(m.passthrough_opens(), 0);
        assert!(assembled().is_empty(), "a file was assembled for a passthrough that is off");
        // What flint serves itself is verified: a byte changed in every cached chunk is caught.
        let fans = fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path());
        let chunks: Vec<_> =
            fans.filter(|p| p.file_name().unwrap().len() == 2).flat_map(|fan| fs::read_dir(fan).unwrap()).collect();
        assert!(!chunks.is_empty());
        for chunk in chunks.into_iter().map(|e| e.unwrap().path()) {
            let mut bytes = fs::read(&chunk).unwrap();
            bytes[0] ^= 1;
            fs::write(&chunk, &bytes).unwrap();
        }
        assert!(read_uncached(&path) == content);
        return;
    }
    {
        let m = InProcess::new(&t.join("f.fl"), &store, &cache, &t.join("mnt"));
        let path = t.join("mnt/big");
        // First open: served by the server, and the file is assembled in the background.
        assert!(read_uncached(&path) == content);
        assert!(m.reads() > 0);
        wait_for("the assembled file", || assembled().len() == 1);
        // The next open goes to the kernel: no read reaches the server any more.
        let before = m.reads();
        wait_for("a passthrough open", || {
            let data = read_uncached(&path);
            assert!(data == content);
            m.passthrough_opens() > 0
        });
        assert!(read_uncached(&path) == content);
        assert_eq!(m.reads(), before, "a passthrough read reached the server");
        // Under fs-verity the assembled file cannot be written to.
        let file = assembled().pop().unwrap();
        assert!(fs::OpenOptions::new().write(true).open(&file).is_err(), "a sealed file opened for writing");
    }
    // Replace the assembled file by an altered copy: the next mount finds out, serves the true
    // bytes itself, and assembles a good file again.
    let file = assembled().pop().unwrap();
    let mut bytes = fs::read(&file).unwrap();
    bytes[5 << 20] ^= 1;
    fs::remove_file(&file).unwrap();
    fs::write(&file, &bytes).unwrap();
    let m = InProcess::new(&t.join("f.fl"), &store, &cache, &t.join("mnt"));
    let path = t.join("mnt/big");
    assert!(read_uncached(&path) == content);
    wait_for("the assembled file to be rebuilt", || fs::read(&file).is_ok_and(|b| b == content));
    wait_for("a passthrough open", || {
        assert!(read_uncached(&path) == content);
        m.passthrough_opens() > 0
    });
}

#[test]
fn rw_mount_keeps_changes_in_the_upper_layer() {
    let t = TestDir::new();
    util::write(&t.join("src/etc/hostname"), b"flist\n");
    util::write(&t.join("src/doomed"), b"bye\n");
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let upper = t.join("rw");
    let m = Mounted::new(&t.join("f.fl"), &t.join("mnt"), &["--rw", upper.to_str().unwrap()]);
    assert_eq!(fs::read(m.path.join("etc/hostname")).unwrap(), b"flist\n");
    fs::write(m.path.join("etc/hostname"), b"changed\n").unwrap();
    // Absent below (a negative entry the kernel keeps): still made, and then seen, above.
    assert!(!m.path.join("new").exists());
    fs::write(m.path.join("new"), b"new\n").unwrap();
    assert_eq!(fs::read(m.path.join("new")).unwrap(), b"new\n");
    fs::remove_file(m.path.join("doomed")).unwrap();
    assert_eq!(fs::read(m.path.join("etc/hostname")).unwrap(), b"changed\n");
    assert!(!m.path.join("doomed").exists());
    // The changes are in the upper layer; the flist below is untouched.
    assert_eq!(fs::read(upper.join("upper/etc/hostname")).unwrap(), b"changed\n");
    assert_eq!(fs::read(upper.join("upper/new")).unwrap(), b"new\n");
    assert_eq!(fs::read(upper.join("lower/etc/hostname")).unwrap(), b"flist\n");
    assert_eq!(fs::read(upper.join("lower/doomed")).unwrap(), b"bye\n");
    // Unmounting the view takes the read-only mount below with it.
    flist_ok(&[&"umount", &m.path]);
    let lower = upper.join("lower");
    let until = Instant::now() + Duration::from_secs(10);
    while fs::read_to_string("/proc/self/mountinfo").unwrap().contains(lower.to_str().unwrap()) {
        assert!(Instant::now() < until, "the read-only mount stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Mounting again shows the kept changes.
    let m = Mounted::new(&t.join("f.fl"), &t.join("mnt"), &["--rw", upper.to_str().unwrap()]);
    assert_eq!(fs::read(m.path.join("etc/hostname")).unwrap(), b"changed\n");
    assert!(!m.path.join("doomed").exists());
}

/// With fault injection built in (`--features faults`): a read handler that panics on every
/// request fails each read with EIO, and the mount lives on: more reads than it has request
/// threads, then metadata and listings still answer, and it unmounts cleanly.
#[cfg(feature = "faults")]
#[test]
fn a_panicking_fuse_handler_fails_its_request_and_the_mount_lives_on() {
    let t = TestDir::new();
    util::write(&t.join("src/file"), &b"served bytes ".repeat(10_000));
    util::write(&t.join("src/other"), b"more");
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let mnt = t.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flist"))
        .args(["mount", "-d"])
        .arg(t.join("f.fl"))
        .arg(&mnt)
        .env("FLINT_FAULTS", "fuse.read=panic")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = Mounted { path: mnt };
    let (tx, rx) = std::sync::mpsc::channel();
    let path = m.path.clone();
    std::thread::spawn(move || {
        // Twice as many as the mount's request threads: a panic that ended a thread would hang these.
        let errors: Vec<_> =
            (0..8).map(|i| fs::read(path.join(["file", "other"][i % 2])).map_err(|e| e.raw_os_error())).collect();
        let _ = tx.send(errors);
    });
    let errors = rx.recv_timeout(Duration::from_secs(60)).expect("reads hung: the mount died");
    assert!(errors.iter().all(|e| *e == Err(Some(libc::EIO))), "{errors:?}");
    assert_eq!(fs::metadata(m.path.join("file")).unwrap().len(), 130_000);
    let mut names: Vec<_> = fs::read_dir(&m.path).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["file", "other"]);
}

#[test]
fn an_absent_name_is_asked_for_once_then_the_kernel_remembers_it() {
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::Ordering::Relaxed;
    let t = TestDir::new();
    util::write(&t.join("src/bin/tool"), b"#!/bin/sh\n");
    util::write(&t.join("src/file"), b"x");
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let m = InProcess::new(&t.join("f.fl"), &t.store("store"), &t.join("cache"), &t.join("mnt"));
    let mnt = t.join("mnt");
    let lookups = || m.counters.lookups.load(Relaxed);
    // Absent names of every byte value (but `/`), the longest a name may be, and names beside
    // present ones, at the root and below.
    let mut absent: Vec<std::path::PathBuf> = (1..=255u8)
        .filter(|&b| b != b'/')
        .map(|b| mnt.join("bin").join(std::ffi::OsStr::from_bytes(&[b, b'x'])))
        .collect();
    absent.push(mnt.join("n".repeat(255)));
    // FUSE takes names up to 1024 bytes (longer than any a directory of an flist holds).
    absent.push(mnt.join("n".repeat(1024)));
    absent.push(mnt.join("tool"));
    absent.push(mnt.join("bin/tool2"));
    absent.push(mnt.join("bin/too"));
    for round in 0..3 {
        let before = lookups();
        for path in &absent {
            let e = fs::metadata(path).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{}: {e}", path.display());
        }
        match round {
            0 => assert!(lookups() - before >= absent.len() as u64, "{} lookups", lookups() - before),
            _ => assert_eq!(lookups(), before, "absent names were asked for again in round {round}"),
        }
    }
    // What is there still is; a name under a file is still not a directory.
    assert_eq!(fs::read(mnt.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(fs::metadata(mnt.join("file/below")).unwrap_err().raw_os_error(), Some(libc::ENOTDIR));
}

#[test]
fn directories_open_without_asking_the_server_and_their_listings_stay_cached() {
    use std::sync::atomic::Ordering::Relaxed;
    let t = TestDir::new();
    for d in 0..20 {
        for f in 0..5 {
            util::write(&t.join(&format!("src/d{d}/sub/f{f}")), format!("{d}/{f}").as_bytes());
        }
    }
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let m = InProcess::new(&t.join("f.fl"), &t.store("store"), &t.join("cache"), &t.join("mnt"));
    let mnt = t.join("mnt");
    let list = |dir: &std::path::Path| {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };
    let mut listed = 0;
    for round in 0..3 {
        let before = m.counters.dir_reads.load(Relaxed);
        assert_eq!(list(&mnt).len(), 20);
        for d in 0..20 {
            assert_eq!(list(&mnt.join(format!("d{d}/sub"))), ["f0", "f1", "f2", "f3", "f4"], "round {round}");
        }
        match round {
            0 => listed = m.counters.dir_reads.load(Relaxed) - before,
            // The kernel keeps the listings: nothing is asked again.
            _ => assert_eq!(m.counters.dir_reads.load(Relaxed), before, "round {round}"),
        }
    }
    assert!(listed >= 21, "{listed} listing requests for 21 directories");
    // 21 directories opened 3 times each: the server was asked once, and said to stop asking.
    assert_eq!(m.counters.dir_opens.load(Relaxed), 1);
}

#[test]
fn without_passthrough_files_open_without_asking_the_server() {
    use std::sync::atomic::Ordering::Relaxed;
    let t = TestDir::new();
    for f in 0..10 {
        util::write(&t.join(&format!("src/f{f}")), format!("file {f}").as_bytes());
    }
    pack(&t, "src", "f.fl", &[t.store("store")]);
    let m = InProcess::new(&t.join("f.fl"), &t.store("store"), &t.join("cache"), &t.join("mnt"));
    for _ in 0..3 {
        for f in 0..10 {
            assert_eq!(fs::read(t.join(&format!("mnt/f{f}"))).unwrap(), format!("file {f}").as_bytes());
        }
    }
    let opens = m.counters.file_opens.load(Relaxed);
    if flist::verity::probe(t.join(".").as_path()).is_ok() {
        // Passthrough may hand an open the assembled file: every open is asked.
        assert!(opens >= 30, "{opens}");
    } else {
        // 30 opens: the server was asked once, and said to stop asking.
        assert_eq!(opens, 1);
    }
}
