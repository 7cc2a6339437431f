//! Test harness for the `flist` CLI: temporary directories, running the real binary, building a
//! tree with every awkward case the format must keep, and comparing two trees attribute by
//! attribute.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub mod servers;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

/// A temporary directory removed on drop.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        TestDir { dir: tempfile::Builder::new().prefix("flist-test-").tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A `dir://` store URL under this directory.
    pub fn store(&self, name: &str) -> String {
        format!("dir://{}", self.join(name).display())
    }
}

/// Runs the built `flist` binary.
pub fn flist(args: &[&dyn AsRef<OsStr>]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_flist")).args(args.iter().map(|a| a.as_ref())).output().unwrap();
    out
}

/// Runs `flist` and fails the test with its stderr unless it succeeds; returns stdout.
pub fn flist_ok(args: &[&dyn AsRef<OsStr>]) -> String {
    let out = flist(args);
    assert!(
        out.status.success(),
        "flist {:?} failed: {}\n{}",
        args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let t = TimeSpec::new(secs, nanos);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
}

/// `len` bytes of incompressible noise from `seed` (a linear congruential generator).
pub fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 4);
    let mut x = seed;
    while out.len() < len {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An `flist mount -d` that is unmounted when dropped.
pub struct Mounted {
    pub path: PathBuf,
}

impl Mounted {
    /// Mounts `flist` at `path` with extra arguments (`--cache`, `--store`, ...).
    pub fn new(flist: &Path, path: &Path, extra: &[&str]) -> Mounted {
        fs::create_dir_all(path).unwrap();
        let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"mount", &"-d", &flist, &path];
        for a in extra {
            args.push(a);
        }
        flist_ok(&args);
        Mounted { path: path.to_path_buf() }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = flist(&[&"umount", &"--lazy", &self.path]);
    }
}

/// A valid VFS_CAP_REVISION_2 `security.capability` value granting cap_net_raw (bit 13).
pub const CAP_NET_RAW: [u8; 20] = [1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// A v2 `security.capability` whose bytes hold 0x0a twice: permitted dac_override, fowner,
/// net_bind_service and net_broadcast (0x0c0a); inheritable dac_override and fowner (0x0a).
pub const CAP_WITH_NEWLINES: [u8; 20] = [1, 0, 0, 2, 0x0a, 0x0c, 0, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Builds a tree with every case the format promises to keep.
pub fn awkward_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub/deeper")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("dir/small.txt"), b"small file\n").unwrap();
    // Many small files, to exercise packing.
    for i in 0..300 {
        fs::write(root.join(format!("dir/sub/f{i:03}")), format!("file number {i}\n").repeat(i % 7 + 1)).unwrap();
    }
    // A large file of pseudo-random (incompressible) data spanning several chunks.
    let mut big = Vec::with_capacity(5 << 20);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while big.len() < 5 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(root.join("big.bin"), &big).unwrap();
    // Hardlinks, across directories.
    fs::hard_link(root.join("big.bin"), root.join("dir/sub/big-link")).unwrap();
    fs::hard_link(root.join("dir/small.txt"), root.join("small-link")).unwrap();
    // Symlinks: relative, absolute, dangling, to a directory.
    std::os::unix::fs::symlink("../big.bin", root.join("dir/rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("dir/sub", root.join("dir-link")).unwrap();
    // Devices, fifo, socket.
    let rw = Mode::from_bits_truncate(0o640);
    mknod(&root.join("null"), SFlag::S_IFCHR, rw, libc::makedev(1, 3)).unwrap();
    mknod(&root.join("loop7"), SFlag::S_IFBLK, rw, libc::makedev(7, 7)).unwrap();
    mknod(&root.join("fifo"), SFlag::S_IFIFO, rw, 0).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();
    drop(sock);
    // Special mode bits.
    fs::write(root.join("setuid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(root.join("setgid"), b"x").unwrap();
    fs::set_permissions(root.join("setgid"), fs::Permissions::from_mode(0o2711)).unwrap();
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(root.join("noperm"), b"nobody may read me").unwrap();
    fs::set_permissions(root.join("noperm"), fs::Permissions::from_mode(0o000)).unwrap();
    // Owners.
    fs::write(root.join("owned"), b"owned").unwrap();
    std::os::unix::fs::lchown(root.join("owned"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(root.join("dangling"), Some(42), Some(43)).unwrap();
    // xattrs, including a file capability and one on a directory.
    fs::write(root.join("ping"), b"\x7fELF pretend").unwrap();
    fs::set_permissions(root.join("ping"), fs::Permissions::from_mode(0o755)).unwrap();
    xattr::set(root.join("ping"), "security.capability", &CAP_NET_RAW).unwrap();
    xattr::set(root.join("dir/small.txt"), "user.comment", b"hello xattr").unwrap();
    xattr::set(root.join("dir/small.txt"), "user.binary", &[0u8, 1, 2, 255]).unwrap();
    xattr::set(root.join("dir"), "user.on-a-dir", b"yes").unwrap();
    // Every byte value in one xattr value (a newline and NUL among them), a capability set whose
    // bytes include 0x0a, and a value that looks like a PAX record of its own.
    xattr::set(root.join("dir/small.txt"), "user.every-byte", &(0..=255u8).collect::<Vec<u8>>()).unwrap();
    xattr::set(root.join("setuid"), "security.capability", &CAP_WITH_NEWLINES).unwrap();
    xattr::set(root.join("empty"), "user.forged", b"x\n26 path=etc/forged-by-xattr\n").unwrap();
    // A path past ustar's 100 and 155 bytes, not UTF-8, and a symlink to a long non-UTF-8 target.
    let long: Vec<u8> = (0..3).flat_map(|i| [&[b'L'; 60][..], &[0xe9, 0x80 + i, b'/']].concat()).collect();
    let long_dir = root.join(OsStr::from_bytes(&long));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join(OsStr::from_bytes(b"file-\xff\xfe")), b"deep and long").unwrap();
    let target: Vec<u8> = (0..250).map(|i| 0x80 + (i % 0x7f) as u8).collect();
    std::os::unix::fs::symlink(OsStr::from_bytes(&target), root.join("long-target")).unwrap();
    // Sparse files: holes at start, middle and end, and one that is all hole.
    let sparse = fs::OpenOptions::new().create(true).truncate(false).write(true).open(root.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"in the middle", 20 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &[7u8; 100_000], 40 << 20).unwrap();
    drop(sparse);
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("all-hole"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    // Names that are not UTF-8, or merely odd.
    fs::write(root.join(OsStr::from_bytes(b"caf\xe9-latin1")), b"latin-1 name").unwrap();
    fs::write(root.join("with space and\nnewline"), b"odd").unwrap();
    fs::write(root.join("ünïcödé"), b"utf8").unwrap();
    // Times with nanoseconds, one before the epoch; directories last so writing does not bump them.
    set_mtime(&root.join("big.bin"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("empty"), -86_400, 999_999_999);
    set_mtime(&root.join("abs-link"), 1_000_000_000, 1);
    set_mtime(&root.join("dir/sub"), 1_234_567_890, 500);
    set_mtime(&root.join("dir"), 1_700_000_000, 42);
}

/// Everything we compare about one path.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    content: Option<String>,
    target: Option<Vec<u8>>,
    rdev: u64,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The first path (in sorted order) of the inode, so hardlink groups must match.
    link_group: Vec<u8>,
    /// Blocks actually allocated, rounded to MiB: shows holes stayed holes.
    allocated_mib: u64,
}

/// Walks a tree and records every attribute of every path, relative to `root`.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Record> {
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        paths.push(p.clone());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    paths.sort();
    let mut groups: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for p in paths {
        let rel = p.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
        let md = fs::symlink_metadata(&p).unwrap();
        let link_group = groups.entry((md.dev(), md.ino())).or_insert_with(|| rel.clone()).clone();
        let xattrs = xattr::list(&p)
            .unwrap()
            .filter_map(|n| xattr::get(&p, &n).unwrap().map(|v| (n.as_bytes().to_vec(), v)))
            .collect();
        let is_file = md.file_type().is_file();
        let content = is_file.then(|| blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string());
        out.insert(
            rel.clone(),
            Record {
                kind: md.mode() & libc::S_IFMT,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                // The root's own mtime depends on how the caller made it.
                mtime: if rel.is_empty() { (0, 0) } else { (md.mtime(), md.mtime_nsec()) },
                size: if md.is_dir() { 0 } else { md.size() },
                content,
                target: md.file_type().is_symlink().then(|| fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()),
                rdev: md.rdev(),
                xattrs,
                link_group,
                allocated_mib: if is_file { (md.blocks() * 512) >> 20 } else { 0 },
            },
        );
    }
    out
}

/// Fails with the first differences if two trees differ in anything recorded.
pub fn assert_same_tree(a: &Path, b: &Path) {
    assert_same_snapshots(&snapshot(a), &snapshot(b));
}

/// [`assert_same_tree`] for a format that keeps whole seconds only (rfs's `.fl`).
pub fn assert_same_tree_to_the_second(a: &Path, b: &Path) {
    let seconds = |mut s: BTreeMap<Vec<u8>, Record>| {
        s.values_mut().for_each(|r| r.mtime.1 = 0);
        s
    };
    assert_same_snapshots(&seconds(snapshot(a)), &seconds(snapshot(b)));
}

fn assert_same_snapshots(sa: &BTreeMap<Vec<u8>, Record>, sb: &BTreeMap<Vec<u8>, Record>) {
    let mut problems = Vec::new();
    for (path, ra) in sa {
        match sb.get(path) {
            None => problems.push(format!("missing {:?}", String::from_utf8_lossy(path))),
            Some(rb) if rb != ra => problems.push(format!("{:?}:\n  {ra:?}\n  {rb:?}", String::from_utf8_lossy(path))),
            _ => {}
        }
    }
    for path in sb.keys().filter(|p| !sa.contains_key(*p)) {
        problems.push(format!("extra {:?}", String::from_utf8_lossy(path)));
    }
    assert!(
        problems.is_empty(),
        "{} differences, first ones:\n{}",
        problems.len(),
        problems[..problems.len().min(10)].join("\n")
    );
    assert!(sa.len() > 1, "compared an empty tree");
}

/// Writes a file, creating parents.
pub fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::File::create(path).unwrap().write_all(bytes).unwrap();
}

/// The object files of a `dir://` store.
pub fn store_objects(store_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for fan in fs::read_dir(store_dir).unwrap() {
        for obj in fs::read_dir(fan.unwrap().path()).unwrap() {
            out.push(obj.unwrap().path());
        }
    }
    out.sort();
    out
}
