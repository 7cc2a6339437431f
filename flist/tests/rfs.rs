//! Zero-OS rfs `.fl` flists: the ones rfs v2.0.6 made (tests/rfs/) unpacked and mounted through
//! the real kernel FUSE, compared entry by entry with the trees they were made from; blocks
//! tampered in either hash, short blocks, and both store layouts over dir and HTTP. Flists rfs
//! cannot make are written with flist's own writer of the format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flist::rfs::{block, write};
use flist::store::{RetryPolicy, Router};
use util::servers::http_server;
use util::{assert_same_tree_to_the_second, flist, flist_ok, noise, Mounted, TestDir};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rfs").join(name)
}

/// The tree an rfs fixture was made from, extracted as root keeps it (owners, devices, times).
fn extract_tree(name: &str, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    let tar = fixture(name).join(format!("{name}.tar.zst"));
    let status =
        Command::new("tar").args(["--zstd", "--numeric-owner", "-xpf"]).arg(&tar).arg("-C").arg(dest).status().unwrap();
    assert!(status.success(), "extracting {}", tar.display());
}

fn fl(name: &str) -> PathBuf {
    fixture(name).join(format!("{name}.fl"))
}

fn fixture_store(name: &str) -> String {
    format!("dir://{}", fixture(name).join("store").display())
}

/// A copy of a fixture's store (flat layout) to tamper with.
fn copy_store(name: &str, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    for e in fs::read_dir(fixture(name).join("store")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dest.join(e.file_name())).unwrap();
    }
}

/// The stored block ids of one file of an `.fl`, in order (read with `flist stat --json`).
fn blocks_of(flist: &Path, path: &str) -> Vec<String> {
    let out = flist_ok(&[&"stat", &"--json", &"--chunks", &flist, &path]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["chunks"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn rfs_flists_unpack_as_the_trees_they_were_made_from() {
    for name in ["small", "busybox"] {
        let t = TestDir::new();
        extract_tree(name, &t.join("tree"));
        flist_ok(&[&"unpack", &fl(name), &t.join("out"), &"--store", &fixture_store(name)]);
        assert_same_tree_to_the_second(&t.join("tree"), &t.join("out"));
        flist_ok(&[&"verify", &fl(name), &"--store", &fixture_store(name)]);
    }
}

#[test]
fn rfs_flists_mount_as_the_trees_they_were_made_from_over_dir_and_http() {
    for name in ["small", "busybox"] {
        let t = TestDir::new();
        extract_tree(name, &t.join("tree"));
        let cache = t.join("cache");
        let cache = cache.to_str().unwrap();
        {
            let m = Mounted::new(&fl(name), &t.join("mnt"), &["--store", &fixture_store(name), "--cache", cache]);
            assert_same_tree_to_the_second(&t.join("tree"), &m.path);
        }
        // rfs's flat layout served over HTTP, and a fresh cache so every block comes from it.
        let server = http_server(&fixture(name).join("store"));
        let url = format!("http://127.0.0.1:{}", server.port);
        let cache = t.join("cache2");
        let m = Mounted::new(&fl(name), &t.join("mnt2"), &["--store", &url, "--cache", cache.to_str().unwrap()]);
        assert_same_tree_to_the_second(&t.join("tree"), &m.path);
        // Cached rfs blocks are kept under their BLAKE2b key, apart from flint's chunks.
        assert!(cache.join("rfs").is_dir(), "no rfs/ in the cache");
    }
}

#[test]
fn a_tampered_block_is_refused_and_the_next_replica_serves() {
    let t = TestDir::new();
    extract_tree("small", &t.join("tree"));
    let truth = fs::read(t.join("tree/dir/three-mib")).unwrap();
    let ids = blocks_of(&fl("small"), "/dir/three-mib");
    assert_eq!(ids.len(), 7, "3 MiB + 777 bytes is six full blocks and a short one");
    copy_store("small", &t.join("a"));
    copy_store("small", &t.join("b"));
    let tamper = |store: &str| {
        for id in [&ids[0], &ids[6]] {
            let path = t.join(store).join(id);
            let mut bytes = fs::read(&path).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x01;
            fs::write(&path, bytes).unwrap();
        }
    };
    tamper("a");
    let (a, b) = (t.store("a"), t.store("b"));
    {
        let cache = t.join("cache1");
        let m = Mounted::new(
            &fl("small"),
            &t.join("mnt1"),
            &["--store", &a, "--store", &b, "--cache", cache.to_str().unwrap()],
        );
        assert_eq!(fs::read(m.path.join("dir/three-mib")).unwrap(), truth);
    }
    // Every replica tampered: EIO, never the altered bytes, and the unpack says which block.
    tamper("b");
    let cache = t.join("cache2");
    let m = Mounted::new(
        &fl("small"),
        &t.join("mnt2"),
        &["--store", &a, "--store", &b, "--cache", cache.to_str().unwrap()],
    );
    let err = fs::read(m.path.join("dir/three-mib")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // The same tree's other files still read.
    assert_eq!(fs::read(m.path.join("hello.txt")).unwrap(), fs::read(t.join("tree/hello.txt")).unwrap());
    let verify = flist(&[&"verify", &fl("small"), &"--store", &a]);
    assert_eq!(verify.status.code(), Some(2), "verify finds the tampered blocks");
    let out = flist(&[&"cat", &fl("small"), &"/dir/three-mib", &"--store", &a]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&ids[0]) || err.contains(&ids[6]), "the error names no block: {err}");
}

/// A mount in the foreground whose log the test reads; stopped with SIGTERM on drop.
struct LoggedMount {
    child: std::process::Child,
    path: PathBuf,
    log: PathBuf,
}

impl LoggedMount {
    fn new(fl: &Path, path: &Path, store: &str, log: &Path) -> LoggedMount {
        fs::create_dir_all(path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_flist"))
            .arg("mount")
            .arg(fl)
            .arg(path)
            .args(["--store", store])
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::read_to_string("/proc/self/mountinfo").unwrap().contains(path.to_str().unwrap()) {
            assert!(Instant::now() < deadline, "the mount did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        LoggedMount { child, path: path.to_path_buf(), log: log.to_path_buf() }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for LoggedMount {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = flist(&[&"umount", &"--lazy", &self.path]);
    }
}

/// An `.fl` of one directory holding `file`, whose blocks the caller chooses: `blocks` are
/// (plain bytes, key to seal under); `size` is what the inode row says.
fn one_file_fl(t: &TestDir, blocks: &[(Vec<u8>, Option<flist::Hash>)], size: i64) -> PathBuf {
    let store = t.join("made");
    let store_url = format!("dir://{}", store.display());
    let mut router = Router::new(RetryPolicy::default());
    router.add(0, 255, flist::store::open(&store_url).unwrap());
    let w = write::Writer::new().unwrap();
    let root = w.inode(0, "/", 0, 0, 0, 0o40755, 0, 1_600_000_000).unwrap();
    let ino = w.inode(root, "file", size, 0, 0, 0o100644, 0, 1_600_000_000).unwrap();
    for (plain, key) in blocks {
        let sealed = match key {
            Some(key) => block::seal_under(plain, *key).unwrap(),
            None => block::seal(plain).unwrap(),
        };
        router.put(&sealed).unwrap();
        w.block(ino, &sealed.chunk.id.0, &sealed.chunk.plain.unwrap().0).unwrap();
    }
    w.db().execute("INSERT INTO route (start, end, url) VALUES (0, 255, ?1)", [&store_url]).unwrap();
    let path = t.join("made.fl");
    fs::write(&path, w.finish().unwrap()).unwrap();
    path
}

#[test]
fn a_block_whose_plain_bytes_miss_their_key_is_eio_and_logged() {
    let t = TestDir::new();
    let plain = noise(100_000, 7);
    // Sealed under another block's key: the stored bytes match the id, they decrypt, but the
    // plain bytes are not what the key names: the .fl is wrong, no replica can help.
    let other_key = block::hash(b"some other block");
    let fl = one_file_fl(&t, &[(plain.clone(), Some(other_key))], plain.len() as i64);
    let m = LoggedMount::new(&fl, &t.join("mnt"), &format!("dir://{}", t.join("made").display()), &t.join("log"));
    let err = fs::read(m.path.join("file")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let log = m.log();
    assert!(log.contains(&other_key.to_hex()) && log.contains("the .fl is wrong"), "the log does not say why: {log}");
    // The reader's own check, unpack, refuses it too.
    let out = flist(&[&"unpack", &fl, &t.join("out")]);
    assert!(!out.status.success());
}

#[test]
fn a_block_shorter_than_its_place_in_the_file_is_eio_with_a_clear_log() {
    let t = TestDir::new();
    // Two blocks, the first short: the file's index (512 KiB per block but the last) is wrong,
    // and flint says so instead of serving bytes at the wrong offsets.
    let first = noise(300_000, 1);
    let second = noise(200_000, 2);
    let size = (512 * 1024 + second.len()) as i64;
    let fl = one_file_fl(&t, &[(first, None), (second.clone(), None)], size);
    let m = LoggedMount::new(&fl, &t.join("mnt"), &format!("dir://{}", t.join("made").display()), &t.join("log"));
    assert_eq!(fs::metadata(m.path.join("file")).unwrap().len(), size as u64);
    let err = fs::read(m.path.join("file")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let log = m.log();
    assert!(log.contains("300000") && log.contains("524288"), "the log does not say the lengths: {log}");
}

#[test]
fn a_well_made_fl_from_flists_own_writer_reads_back() {
    // The writer's pack of a tree rfs's fixtures do not hold (many files, a 5 MiB one, 0-byte
    // ones) mounts as the tree: the writer and the reader agree, so hostile rows from the same
    // writer test the reader, not the writer.
    let t = TestDir::new();
    let src = t.join("src");
    for i in 0..50 {
        util::write(&src.join(format!("d{}/f{i}", i % 5)), &noise(i * 997, i as u32));
    }
    util::write(&src.join("big"), &noise(5 << 20, 99));
    let store_url = t.store("store");
    let mut router = Router::new(RetryPolicy::default());
    router.add(0, 255, flist::store::open(&store_url).unwrap());
    fs::write(t.join("w.fl"), write::pack(&src, &router).unwrap()).unwrap();
    let m = Mounted::new(&t.join("w.fl"), &t.join("mnt"), &["--cache", t.join("cache").to_str().unwrap()]);
    assert_same_tree_to_the_second(&src, &m.path);
}

/// Puts every block of a fixture's store into another store.
fn load_store(name: &str, url: &str) {
    let to = flist::store::open(url).unwrap();
    for e in fs::read_dir(fixture(name).join("store")).unwrap() {
        let path = e.unwrap().path();
        let id = flist::Hash::from_hex(path.file_name().unwrap().to_str().unwrap()).unwrap();
        to.put(&id, &fs::read(&path).unwrap()).unwrap();
    }
}

#[test]
fn rfs_flists_mount_from_zdb_default_namespace() {
    let t = TestDir::new();
    extract_tree("small", &t.join("tree"));
    let redis = util::servers::redis_server();
    let url = format!("zdb://127.0.0.1:{}", redis.port);
    load_store("small", &url);
    let m =
        Mounted::new(&fl("small"), &t.join("mnt"), &["--store", &url, "--cache", t.join("cache").to_str().unwrap()]);
    assert_same_tree_to_the_second(&t.join("tree"), &m.path);
}

/// `redis-cli MONITOR` on a server, writing what it sees to `out`; killed on drop.
struct Monitor {
    child: std::process::Child,
    out: PathBuf,
}

impl Monitor {
    fn new(port: u16, out: &Path) -> Monitor {
        let child = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "MONITOR"])
            .stdout(fs::File::create(out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli (redis-tools) must be installed");
        let m = Monitor { child, out: out.to_path_buf() };
        // MONITOR answers OK once it is watching.
        m.wait_for("OK");
        m
    }

    fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(&self.out).unwrap().contains(what) {
            assert!(Instant::now() < deadline, "MONITOR saw no {what}: {}", fs::read_to_string(&self.out).unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay to `port` that keeps a copy of every byte clients send through it: Redis leaves
/// commands it rejects for their argument count out of MONITOR, so this is how a test sees them.
fn recording_relay(port: u16) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let upstream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut from_client, mut to_upstream) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            let (mut from_upstream, mut to_client) = (upstream, client);
            let record = record.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n @ 1..) = from_client.read(&mut buf) {
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to_upstream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to_upstream.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_upstream, &mut to_client);
                let _ = to_client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (relay_port, seen)
}

#[test]
fn zdb_over_a_unix_socket() {
    let t = TestDir::new();
    let socket = t.join("redis.sock");
    let mut redis = Command::new("redis-server")
        .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (make deps)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen on {}", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("zdb://{}", socket.display());
    load_store("small", &url);
    let out = flist(&[&"cat", &fl("small"), &"/dir/three-mib", &"--store", &url]);
    extract_tree("small", &t.join("tree"));
    let _ = redis.kill();
    let _ = redis.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, fs::read(t.join("tree/dir/three-mib")).unwrap());
}

#[test]
fn zdb_namespaces_are_selected_as_rfs_selects_them() {
    let t = TestDir::new();
    let redis = util::servers::redis_server();
    let monitor = Monitor::new(redis.port, &t.join("monitor"));
    let cat = |url: &str| flist(&[&"cat", &fl("small"), &"/hello.txt", &"--store", &url, &"--retries", &"1"]);

    // A numeric namespace is a Redis database: SELECT 1 works, and the blocks are found there.
    let url = format!("zdb://127.0.0.1:{}/1", redis.port);
    load_store("small", &url);
    let out = cat(&url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    extract_tree("small", &t.join("tree"));
    assert_eq!(out.stdout, fs::read(t.join("tree/hello.txt")).unwrap());
    monitor.wait_for("\"SELECT\" \"1\"");

    // A named namespace: Redis refuses the SELECT, and flint says so.
    let out = cat(&format!("zdb://127.0.0.1:{}/blocks", redis.port));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SELECT refused"), "unclear error: {err}");
    monitor.wait_for("\"SELECT\" \"blocks\"");

    // With a password: rfs sends it as SELECT's third argument. Redis rejects that command before
    // MONITOR sees it, so the bytes are read off a relay.
    let (relay, seen) = recording_relay(redis.port);
    let out = cat(&format!("zdb://:s3cret@127.0.0.1:{relay}/blocks"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SELECT refused") && !err.contains("s3cret"), "unclear error (or the password shown): {err}");
    let sent = seen.lock().unwrap().clone();
    let select = b"*3\r\n$6\r\nSELECT\r\n$6\r\nblocks\r\n$6\r\ns3cret\r\n";
    assert!(sent.windows(select.len()).any(|w| w == select), "sent: {:?}", String::from_utf8_lossy(&sent));
}

#[test]
fn rfs_flists_mount_from_an_fl_server() {
    let t = TestDir::new();
    extract_tree("busybox", &t.join("tree"));
    let server = util::servers::fl_server(&fixture("busybox").join("store"));
    let url = format!("server://http://127.0.0.1:{}", server.port);
    let m =
        Mounted::new(&fl("busybox"), &t.join("mnt"), &["--store", &url, "--cache", t.join("cache").to_str().unwrap()]);
    assert_same_tree_to_the_second(&t.join("tree"), &m.path);
}

#[test]
fn rfs_flists_mount_from_s3_in_the_flat_layout() {
    let t = TestDir::new();
    extract_tree("small", &t.join("tree"));
    let s3 = util::servers::s3_server(&t.join("s3"));
    let flint_url =
        format!("s3+http://{}:{}@127.0.0.1:{}/rfs", util::servers::S3_KEY, util::servers::S3_SECRET, s3.port);
    flist::store::create_bucket(&flint_url).unwrap();
    // rfs writes hex(id) keys (flat); put them there by hand through the bucket's files.
    copy_store("small", &t.join("s3/rfs"));
    // The same bucket in rfs's syntax: s3:// is plain HTTP there.
    let rfs_url = flint_url.replacen("s3+http://", "s3://", 1);
    let m = Mounted::new(
        &fl("small"),
        &t.join("mnt"),
        &["--store", &rfs_url, "--cache", t.join("cache").to_str().unwrap()],
    );
    assert_same_tree_to_the_second(&t.join("tree"), &m.path);
}

#[test]
fn flists_are_taken_by_reference_and_checked_against_their_digest() {
    let t = TestDir::new();
    extract_tree("small", &t.join("tree"));
    let server = http_server(&fixture("small"));
    let url = format!("http://127.0.0.1:{}/small.fl", server.port);
    let blake3 = blake3::hash(&fs::read(fl("small")).unwrap()).to_hex().to_string();
    let store = fixture_store("small");
    {
        let m = Mounted::new(Path::new(&url), &t.join("mnt"), &["--store", &store, "--digest", &blake3]);
        assert_same_tree_to_the_second(&t.join("tree"), &m.path);
    }
    let listed = flist_ok(&[&"ls", &format!("{url}@blake3:{blake3}"), &"/"]);
    assert_eq!(listed, flist_ok(&[&"ls", &fl("small"), &"/"]));
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(fs::read(fl("small")).unwrap()))
    };
    flist_ok(&[&"cat", &format!("{url}@sha256:{sha256}"), &"/hello.txt", &"--store", &store]);
    // A wrong digest, in the reference or given apart: refused before anything is read.
    for args in
        [vec![format!("{url}@blake3:{}", "0".repeat(64))], vec![url.clone(), "--digest".into(), "ab".repeat(32)]]
    {
        let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"inspect"];
        all.extend(args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
        let out = flist(&all);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("refused"), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = flist(&[&"inspect", &format!("http://127.0.0.1:{}/none.fl", server.port)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"), "{}", String::from_utf8_lossy(&out.stderr));

    // From S3: BUCKET/KEY in the URL.
    let s3 = util::servers::s3_server(&t.join("s3"));
    let bucket =
        format!("s3+http://{}:{}@127.0.0.1:{}/flists", util::servers::S3_KEY, util::servers::S3_SECRET, s3.port);
    flist::store::create_bucket(&bucket).unwrap();
    fs::copy(fl("small"), t.join("s3/flists/small.fl")).unwrap();
    let unpacked = t.join("out");
    flist_ok(&[&"unpack", &format!("{bucket}/small.fl"), &unpacked, &"--store", &store, &"--digest", &blake3]);
    assert_same_tree_to_the_second(&t.join("tree"), &unpacked);
}

#[test]
fn rfs_flists_convert_to_flint_flists_of_the_same_tree() {
    let t = TestDir::new();
    for name in ["small", "busybox"] {
        extract_tree(name, &t.join(&format!("{name}-tree")));
        let out = t.join(&format!("{name}.fl"));
        let source_fl = fl(name);
        let convert = |json: bool| {
            let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"convert", &source_fl, &"-o", &out];
            let (from, to) = (fixture_store(name), t.store("store"));
            args.extend([
                &"--from-store" as &dyn AsRef<std::ffi::OsStr>,
                &from,
                &"--store",
                &to,
                &"--tag",
                &"name=converted",
            ]);
            if json {
                args.push(&"--json");
            }
            let summary: serde_json::Value = serde_json::from_str(&flist_ok(&args)).unwrap();
            summary
        };
        let first = convert(true);
        assert!(first["files_checked"].as_u64().unwrap() > 0, "{first}");
        // Again into the same store: every chunk is already there.
        let again = convert(true);
        assert_eq!(again["new_chunks"], 0, "{again}");
        assert_eq!(again["digest"], first["digest"], "conversion is deterministic");
        let info: serde_json::Value = serde_json::from_str(&flist_ok(&[&"inspect", &"--json", &out])).unwrap();
        assert_eq!(info["format"], "flint");
        assert_eq!(info["tags"]["name"], "converted");
        let source = blake3::hash(&fs::read(fl(name)).unwrap()).to_hex().to_string();
        assert_eq!(info["tags"]["flint.converted-from"], source.as_str());
        // `flist diff --content` of the source and the result: nothing differs.
        let (from, to) = (fixture_store(name), t.store("store"));
        let diff = flist(&[&"diff", &source_fl, &out, &"--content", &"--store", &from, &"--store", &to]);
        assert!(
            diff.status.success(),
            "{}{}",
            String::from_utf8_lossy(&diff.stdout),
            String::from_utf8_lossy(&diff.stderr)
        );
        let m = Mounted::new(&out, &t.join(&format!("{name}-mnt")), &["--cache", t.join("cache").to_str().unwrap()]);
        assert_same_tree_to_the_second(&t.join(&format!("{name}-tree")), &m.path);
        if name == "busybox" {
            // rfs's /.startup.toml became the run configuration a service with "image" uses.
            assert_eq!(info["tags"]["oci.entrypoint"], r#"["/bin/httpd","-f","-p","8080","-h","/www"]"#);
            assert_eq!(info["tags"]["oci.env"], r#"["GREETING=hello from rfs","PATH=/bin"]"#);
            assert_eq!(info["tags"]["oci.workdir"], "/www");
        }
    }
    // The small flist's two 3 MiB copies are separate inodes in rfs; here they share chunks.
    let info: serde_json::Value =
        serde_json::from_str(&flist_ok(&[&"inspect", &"--json", &t.join("small.fl")])).unwrap();
    assert!(info["distinct_chunks"].as_u64() < info["chunks"].as_u64(), "{info}");
}

#[test]
fn a_conversion_with_a_bad_source_block_writes_nothing() {
    let t = TestDir::new();
    copy_store("small", &t.join("bad"));
    let id = &blocks_of(&fl("small"), "/compressible")[0];
    let path = t.join("bad").join(id);
    let mut bytes = fs::read(&path).unwrap();
    bytes[10] ^= 0x80;
    fs::write(&path, bytes).unwrap();
    let out = flist(&[
        &"convert",
        &fl("small"),
        &"-o",
        &t.join("out.fl"),
        &"--from-store",
        &t.store("bad"),
        &"--store",
        &t.store("store"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(id.as_str()) && err.contains("compressible"), "the error names no block or file: {err}");
    assert!(!t.join("out.fl").exists());
}

#[test]
fn flint_flists_convert_keeping_every_attribute() {
    // Re-chunking a flint flist keeps what rfs cannot carry: xattrs, hard links, nanoseconds,
    // sparse files.
    let t = TestDir::new();
    util::awkward_tree(&t.join("src"));
    flist_ok(&[&"pack", &t.join("src"), &"-o", &t.join("a.fl"), &"--store", &t.store("a")]);
    flist_ok(&[
        &"convert",
        &t.join("a.fl"),
        &"-o",
        &t.join("b.fl"),
        &"--store",
        &t.store("b"),
        &"--chunk-size",
        &"64K",
        &"--encrypt",
    ]);
    let m = Mounted::new(&t.join("b.fl"), &t.join("mnt"), &["--cache", t.join("cache").to_str().unwrap()]);
    util::assert_same_tree(&t.join("src"), &m.path);
}
