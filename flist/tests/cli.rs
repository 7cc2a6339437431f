//! End-to-end tests of the `flist` CLI against real stores: a directory, Python's HTTP server and
//! an S3 server (s3s-fs), with real files (devices, xattrs, capabilities, sparse files, hardlinks).
//! Run as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use util::servers::{http_server, http_server_on, s3_server, S3_KEY, S3_SECRET};
use util::{assert_same_tree, awkward_tree, flist, flist_ok, store_objects, TestDir};

fn pack_json(src: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"pack", &src, &"-o", &out, &"--json"];
    for a in extra {
        args.push(a);
    }
    serde_json::from_str(&flist_ok(&args)).unwrap()
}

#[test]
fn awkward_tree_round_trips_plain_and_encrypted() {
    for encrypt in [false, true] {
        let t = TestDir::new();
        awkward_tree(&t.join("src"));
        let store = t.store("store");
        let mut extra = vec!["--store", store.as_str(), "--tag", "name=awkward"];
        if encrypt {
            extra.push("--encrypt");
        }
        let summary = pack_json(&t.join("src"), &t.join("a.fl"), &extra);
        // 1 GiB of hole and 64 MiB of sparse file must not be stored.
        assert!(summary["data_bytes"].as_u64().unwrap() < 6 << 20, "{summary}");
        flist_ok(&[&"unpack", &t.join("a.fl"), &t.join("out")]);
        assert_same_tree(&t.join("src"), &t.join("out"));
        flist_ok(&[&"verify", &t.join("a.fl")]);
        if encrypt {
            // A store alone reveals nothing: no object decompresses to the plaintext.
            let marker = b"file number 7";
            for obj in store_objects(&t.join("store")) {
                let bytes = fs::read(&obj).unwrap();
                let plain = zstd_decompress(&bytes);
                assert!(plain.is_none_or(|p| !p.windows(marker.len()).any(|w| w == marker)));
            }
        }
    }
}

fn zstd_decompress(bytes: &[u8]) -> Option<Vec<u8>> {
    let out = std::process::Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes).ok()?;
            c.wait_with_output().ok()
        })?;
    out.status.success().then_some(out.stdout)
}

#[test]
fn same_tree_gives_identical_bytes() {
    let t = TestDir::new();
    awkward_tree(&t.join("src"));
    let s1 = pack_json(&t.join("src"), &t.join("1.fl"), &["--store", &t.store("s1")]);
    let s2 = pack_json(&t.join("src"), &t.join("2.fl"), &["--store", &t.store("s1"), "--threads", "1"]);
    assert_eq!(fs::read(t.join("1.fl")).unwrap(), fs::read(t.join("2.fl")).unwrap());
    assert_eq!(s1["digest"], s2["digest"]);
    // The second run found every chunk already stored.
    assert_eq!(s2["new_chunks"], 0);
    assert!(s1["new_chunks"].as_u64().unwrap() > 0);
}

/// Python's tarfile as the writer: PAX records it makes itself (`hdrcharset=BINARY` for the
/// values that are not UTF-8), every xattr of the tree as `SCHILY.xattr.*`, times to the
/// nanosecond.
const PYTHON_TAR: &str = r#"
import os, sys, tarfile
root, out = sys.argv[1], sys.argv[2]
def with_xattrs(info):
    path = os.path.join(root, info.name)
    st = os.lstat(path)
    ns = st.st_mtime_ns
    info.pax_headers["mtime"] = ("-" if ns < 0 else "") + f"{abs(ns) // 10**9}.{abs(ns) % 10**9:09d}"
    for name in os.listxattr(path, follow_symlinks=False):
        value = os.getxattr(path, name, follow_symlinks=False)
        info.pax_headers["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    return info
with tarfile.open(out, "w", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
    tar.add(root, arcname=".", filter=with_xattrs)
"#;

#[test]
fn python_tarfile_archive_packs_like_the_directory() {
    let (t, src) = archivable_tree();
    let tar = t.join("py.tar");
    let status = std::process::Command::new("python3").args(["-c", PYTHON_TAR]).arg(&src).arg(&tar).status().unwrap();
    assert!(status.success());
    let store = t.store("store");
    pack_json(&src, &t.join("dir.fl"), &["--store", &store]);
    pack_json(&tar, &t.join("py.fl"), &["--store", &store]);
    assert_archive_is_the_directory(&t, &src, "py.fl");
    assert!(!t.join("out/etc/forged-by-xattr").exists(), "an xattr value made no entry");
}

#[test]
fn tar_archive_packs_like_the_directory() {
    let (t, src) = archivable_tree();
    let tar = t.join("src.tar");
    let status = std::process::Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--format=posix", "--numeric-owner", "-C"])
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let store = t.store("store");
    let dir_pack = pack_json(&src, &t.join("dir.fl"), &["--store", &store]);
    pack_json(&tar, &t.join("tar.fl"), &["--store", &store]);
    // Compressed archives give the very same flist as the plain one.
    for (tool, ext) in [("gzip", "gz"), ("zstd", "zst")] {
        let packed = t.join(&format!("src.tar.{ext}"));
        let out = std::process::Command::new(tool).arg("-kc").arg(&tar).output().unwrap();
        fs::write(&packed, out.stdout).unwrap();
        let s = pack_json(&packed, &t.join(&format!("{ext}.fl")), &["--store", &store]);
        assert_eq!(fs::read(t.join(&format!("{ext}.fl"))).unwrap(), fs::read(t.join("tar.fl")).unwrap(), "{tool}");
        assert_eq!(s["new_chunks"], 0);
    }
    assert!(dir_pack["chunks"].as_u64().unwrap() > 0);
    assert_archive_is_the_directory(&t, &src, "tar.fl");
}

/// The awkward tree in `src` of a new test directory, without what a tar can't hold (a socket) or
/// would store densely (the 1 GiB hole).
fn archivable_tree() -> (TestDir, std::path::PathBuf) {
    let t = TestDir::new();
    let src = t.join("src");
    awkward_tree(&src);
    fs::remove_file(src.join("socket")).unwrap();
    fs::remove_file(src.join("all-hole")).unwrap();
    (t, src)
}

/// `dir.fl` (packed from `src`) and `archive_fl` (from an archive of it) describe identical
/// trees: `diff` exits 0 and prints nothing (contents compared byte by byte where the sparse file
/// was packed sparse from the directory and dense from the archive), and the archive's flist
/// unpacks to `src` entry by entry, every attribute and xattr byte compared (the sparse file comes
/// back dense from a tar without -S).
fn assert_archive_is_the_directory(t: &TestDir, src: &Path, archive_fl: &str) {
    let out = flist(&[&"diff", &"--content", &t.join("dir.fl"), &t.join(archive_fl)]);
    assert!(
        out.status.success(),
        "diff found: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    flist_ok(&[&"unpack", &t.join(archive_fl), &t.join("out")]);
    let (a, b) = (util::snapshot(src), util::snapshot(&t.join("out")));
    assert_eq!(a.len(), b.len());
    for (path, ra) in &a {
        if path.as_slice() != b"sparse" {
            assert_eq!(Some(ra), b.get(path), "{}", String::from_utf8_lossy(path));
        }
    }
}

#[test]
fn tampered_chunk_is_never_served_and_the_replica_is_used() {
    let t = TestDir::new();
    util::write(&t.join("src/file"), &b"precious content ".repeat(50_000));
    let (a, b) = (t.store("a"), t.store("b"));
    pack_json(&t.join("src"), &t.join("f.fl"), &["--store", &a, "--store", &b]);
    for obj in store_objects(&t.join("a")) {
        let mut bytes = fs::read(&obj).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        fs::write(&obj, bytes).unwrap();
    }
    let out = flist(&[&"cat", &t.join("f.fl"), &"/file"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"precious content ".repeat(50_000));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("corrupt") || log.contains("decompress"), "no warning logged: {log}");
    // verify --all-replicas names the bad store.
    let out = flist(&[&"verify", &"--all-replicas", &t.join("f.fl")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("BAD"));
    // With the only good replica gone, reading fails; nothing corrupt reaches stdout.
    fs::remove_dir_all(t.join("b")).unwrap();
    let out = flist(&[&"cat", &t.join("f.fl"), &"/file"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be fetched"));
}

#[test]
fn http_store_serves_reads_fails_cleanly_when_down_and_recovers() {
    let t = TestDir::new();
    awkward_tree(&t.join("src"));
    fs::remove_file(t.join("src/all-hole")).unwrap();
    pack_json(&t.join("src"), &t.join("f.fl"), &["--store", &t.store("store")]);
    let mut server = http_server(&t.join("store"));
    let url = format!("http://127.0.0.1:{}", server.port);
    flist_ok(&[&"unpack", &t.join("f.fl"), &t.join("out"), &"--store", &url]);
    assert_same_tree(&t.join("src"), &t.join("out"));

    server.stop();
    let started = std::time::Instant::now();
    let out = flist(&[&"cat", &t.join("f.fl"), &"/big.bin", &"--store", &url, &"--retries", &"2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unavailable"), "unclear error: {err}");
    assert!(started.elapsed().as_secs() < 30, "a down store must fail within the retry bound");

    let _server = http_server_on(&t.join("store"), server.port);
    let out = flist_ok(&[&"cat", &t.join("f.fl"), &"/dir/small.txt", &"--store", &url]);
    assert_eq!(out, "small file\n");
}

#[test]
fn s3_store_round_trip_without_recording_credentials() {
    let t = TestDir::new();
    let server = s3_server(&t.join("s3"));
    let url = format!("s3+http://{S3_KEY}:{S3_SECRET}@127.0.0.1:{}/chunks", server.port);
    flist::store::create_bucket(&url).unwrap();
    awkward_tree(&t.join("src"));
    let summary = pack_json(&t.join("src"), &t.join("f.fl"), &["--store", &url]);
    assert!(summary["new_chunks"].as_u64().unwrap() > 0);
    let meta = fs::read(t.join("f.fl")).unwrap();
    let info: serde_json::Value = serde_json::from_str(&flist_ok(&[&"inspect", &"--json", &t.join("f.fl")])).unwrap();
    assert_eq!(info["stores"][0]["url"], format!("s3+http://127.0.0.1:{}/chunks", server.port));
    assert!(!meta.windows(S3_SECRET.len()).any(|w| w == S3_SECRET.as_bytes()));
    // Read back with the credentials from the environment.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flist"))
        .args(["unpack"])
        .arg(t.join("f.fl"))
        .arg(t.join("out"))
        .env("AWS_ACCESS_KEY_ID", S3_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(&t.join("src"), &t.join("out"));
    // Packing again into the same bucket uploads nothing.
    let again = pack_json(&t.join("src"), &t.join("g.fl"), &["--store", &url]);
    assert_eq!(again["new_chunks"], 0);
    // The server checks signatures: a wrong secret is refused, and says so.
    let wrong = format!("s3+http://{S3_KEY}:not-the-secret@127.0.0.1:{}/chunks", server.port);
    let refused = util::flist(&[&"verify", &t.join("f.fl"), &"--store", &wrong]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"), "{}", String::from_utf8_lossy(&refused.stderr));
}

#[test]
fn changed_tree_reuses_most_chunks_and_diff_names_the_changes() {
    let t = TestDir::new();
    awkward_tree(&t.join("src"));
    let store = t.store("store");
    let first = pack_json(&t.join("src"), &t.join("1.fl"), &["--store", &store]);
    fs::write(t.join("src/dir/sub/f100"), b"changed\n").unwrap();
    fs::write(t.join("src/dir/new-file"), b"new\n").unwrap();
    fs::remove_file(t.join("src/owned")).unwrap();
    let second = pack_json(&t.join("src"), &t.join("2.fl"), &["--store", &store]);
    let (total, new) = (second["chunks"].as_u64().unwrap(), second["new_chunks"].as_u64().unwrap());
    assert!(new < total && new <= 2, "a small change re-uploaded {new} of {total} chunks");
    assert!(first["chunks"].as_u64().unwrap() >= 3);
    // Without --content, files whose shared chunk changed are only "maybe" changed.
    let quick = flist(&[&"diff", &t.join("1.fl"), &t.join("2.fl")]);
    assert_eq!(quick.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&quick.stdout).contains("(content?)"));
    // With --content, exactly the real changes (and the directories they touched).
    let out = flist(&[&"diff", &"--content", &t.join("1.fl"), &t.join("2.fl")]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let expected =
        ["M /  (mtime)", "M /dir  (mtime)", "+ /dir/new-file", "M /dir/sub/f100  (mtime, size, content)", "- /owned"];
    assert_eq!(lines, expected, "{text}");
}

#[test]
fn inspection_commands_show_the_tree() {
    let t = TestDir::new();
    awkward_tree(&t.join("src"));
    pack_json(&t.join("src"), &t.join("f.fl"), &["--store", &t.store("store"), "--tag", "version=7"]);
    let info: serde_json::Value = serde_json::from_str(&flist_ok(&[&"inspect", &"--json", &t.join("f.fl")])).unwrap();
    assert_eq!(info["tags"]["version"], "7");
    assert!(info["entries"].as_u64().unwrap() > 300);
    let ls = flist_ok(&[&"ls", &"-l", &t.join("f.fl"), &"/"]);
    assert!(ls.contains("-rwsr-xr-x"), "{ls}");
    assert!(ls.contains("drwxrwxrwt"), "{ls}");
    assert!(ls.contains("abs-link -> /etc/passwd"), "{ls}");
    let stat: serde_json::Value =
        serde_json::from_str(&flist_ok(&[&"stat", &"--json", &t.join("f.fl"), &"/ping"])).unwrap();
    assert_eq!(stat["xattrs"]["security.capability"], hex(&util::CAP_NET_RAW));
    let stat: serde_json::Value =
        serde_json::from_str(&flist_ok(&[&"stat", &"--json", &t.join("f.fl"), &"/big.bin"])).unwrap();
    assert_eq!(stat["nlink"], 2);
    assert_eq!(stat["mtime"], "1600000000.123456789");
    assert!(stat.get("chunks").is_none(), "chunks only when asked");
    let stat: serde_json::Value =
        serde_json::from_str(&flist_ok(&[&"stat", &"--json", &"--chunks", &t.join("f.fl"), &"/big.bin"])).unwrap();
    let spans = stat["chunks"].as_array().unwrap();
    let covered: u64 = spans.iter().map(|c| c["len"].as_u64().unwrap()).sum();
    assert_eq!(covered, stat["size"].as_u64().unwrap(), "the chunks cover the file");
    for c in spans {
        let id = c["id"].as_str().unwrap();
        assert!(fs::metadata(t.join(&format!("store/{}/{id}", &id[..2]))).is_ok(), "chunk {id} is in the store");
    }
    let tree = flist_ok(&[&"tree", &t.join("f.fl"), &"/dir"]);
    assert!(tree.contains("├── rel-link -> ../big.bin") || tree.contains("└── rel-link -> ../big.bin"), "{tree}");
    assert_eq!(flist_ok(&[&"cat", &t.join("f.fl"), &"/dir/small.txt"]), "small file\n");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn bad_input_gets_a_clear_error() {
    let t = TestDir::new();
    util::write(&t.join("src/a"), b"a");
    pack_json(&t.join("src"), &t.join("f.fl"), &["--store", &t.store("store")]);
    let good = fs::read(t.join("f.fl")).unwrap();
    fs::write(t.join("truncated.fl"), &good[..good.len() - 5]).unwrap();
    fs::write(t.join("garbage.fl"), b"this is not an flist at all").unwrap();
    for (file, expect) in [("truncated.fl", "decompress"), ("garbage.fl", "not an flist")] {
        let out = flist(&[&"inspect", &t.join(file)]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{file}: {err}");
    }
    let out = flist(&[&"pack", &t.join("missing"), &"-o", &t.join("x.fl"), &"--store", &t.store("s")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));

    // A file the packer cannot read (packing as nobody) is named in the error, and no flist is written.
    util::write(&t.join("secret/ok"), b"fine");
    util::write(&t.join("secret/locked"), b"root only");
    fs::set_permissions(t.join("secret/locked"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_flist"))
        .arg("pack")
        .arg(t.join("secret"))
        .arg("-o")
        .arg(t.join("secret.fl"))
        .arg("--store")
        .arg(t.store("nobody-store"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked") && err.contains("Permission denied"), "{err}");
    assert!(!t.join("secret.fl").exists());
}

#[test]
fn store_copy_copies_only_what_is_missing_and_never_a_tampered_chunk() {
    let t = TestDir::new();
    util::write(&t.join("src/a.bin"), &util::noise(2 << 20, 7));
    util::write(&t.join("src/b.txt"), b"small");
    pack_json(&t.join("src"), &t.join("f.fl"), &["--store", &t.store("a")]);
    let copy = |to: &str| {
        let out = util::flist(&[
            &"store",
            &"copy",
            &t.join("f.fl"),
            &"--from",
            &t.store("a"),
            &"--to",
            &t.store(to),
            &"--json",
        ]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.success(), report)
    };
    let (ok, first) = copy("b");
    assert!(ok, "{first}");
    assert!(first["copied"].as_u64().unwrap() > 1, "{first}");
    assert_eq!(first["copied"], first["chunks"]);
    let (ok, again) = copy("b");
    assert!(ok && again["copied"] == 0 && again["present"] == first["chunks"], "{again}");
    flist_ok(&[&"verify", &t.join("f.fl"), &"--store", &t.store("b")]);

    // One object of the source altered: reported, not copied, the rest is.
    let objects = util::store_objects(&t.join("a"));
    let victim = &objects[0];
    let mut bytes = fs::read(victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    fs::write(victim, bytes).unwrap();
    let (ok, report) = copy("c");
    assert!(!ok, "a failure is an error exit");
    assert_eq!(report["failures"].as_object().unwrap().len(), 1, "{report}");
    assert_eq!(report["copied"].as_u64().unwrap() + 1, report["chunks"].as_u64().unwrap());
    let id = victim.file_name().unwrap();
    assert!(!t.join("c").join(&id.to_string_lossy()[..2]).join(id).exists(), "the tampered object was copied");
}

#[test]
fn store_gc_keeps_what_kept_flists_name_and_deletes_only_when_asked() {
    let t = TestDir::new();
    let server = s3_server(&t.join("s3"));
    // Under a prefix with characters a signature must encode (space, '+', '~', UTF-8).
    let s3 = format!("s3+http://{S3_KEY}:{S3_SECRET}@127.0.0.1:{}/collected/a%20b+c~%C3%A9", server.port);
    flist::store::create_bucket(&s3).unwrap();
    util::write(&t.join("one/a.bin"), &util::noise(1 << 20, 11));
    util::write(&t.join("two/b.bin"), &util::noise(1 << 20, 12));
    for store in [t.store("dir"), s3.clone()] {
        pack_json(&t.join("one"), &t.join("one.fl"), &["--store", &store]);
        pack_json(&t.join("two"), &t.join("two.fl"), &["--store", &store]);
        let one = t.join("one.fl");
        let gc = |delete: bool| {
            let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
                vec![&"store", &"gc", &"--store", &store, &"--keep", &one, &"--json"];
            if delete {
                args.push(&"--delete");
            }
            let report: serde_json::Value = serde_json::from_str(&flist_ok(&args)).unwrap();
            report
        };
        let dry = gc(false);
        let garbage = dry["garbage"].as_array().unwrap().len();
        assert!(garbage > 0 && dry["kept"].as_u64().unwrap() > 0, "{store}: {dry}");
        assert_eq!(dry["deleted"], 0);
        flist_ok(&[&"verify", &t.join("two.fl"), &"--store", &store]);
        let done = gc(true);
        assert_eq!(done["deleted"].as_u64().unwrap() as usize, garbage, "{store}: {done}");
        flist_ok(&[&"verify", &t.join("one.fl"), &"--store", &store]);
        assert!(!util::flist(&[&"verify", &t.join("two.fl"), &"--store", &store]).status.success(), "{store}");
        assert_eq!(gc(false)["garbage"].as_array().unwrap().len(), 0);
    }
}

#[test]
fn a_replica_that_cannot_be_written_degrades_the_pack_and_store_copy_repairs_it() {
    let t = TestDir::new();
    util::write(&t.join("src/a.bin"), &util::noise(1 << 20, 21));
    // A store under a regular file: every write fails, as on a full or broken disk.
    util::write(&t.join("blocker"), b"not a directory");
    let broken = format!("dir://{}/store", t.join("blocker").display());
    let summary = pack_json(&t.join("src"), &t.join("f.fl"), &["--store", &t.store("good"), "--store", &broken]);
    let chunks = summary["chunks"].as_u64().unwrap();
    assert_eq!(summary["replica_misses"][&broken], chunks, "{summary}");
    flist_ok(&[&"verify", &t.join("f.fl"), &"--store", &t.store("good")]);
    // With no store taking the chunks, packing fails.
    let none = util::flist(&[&"pack", &t.join("src"), &"-o", &t.join("g.fl"), &"--store", &broken]);
    assert!(!none.status.success());
}
