//! Round trip of a real root filesystem: a debootstrap'd Debian (`tests/lib/rootfs.sh` builds and
//! caches the tarball; `make test-rootfs` passes it in FLINT_ROOTFS_TAR). Ignored by a plain
//! `cargo test` because it needs that tarball; `make test` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod util;

use std::process::Command;

use util::{assert_same_tree, flist, flist_ok, TestDir};

#[test]
#[ignore = "needs FLINT_ROOTFS_TAR (make test-rootfs)"]
fn debootstrap_tree_round_trips() {
    let tarball = std::env::var("FLINT_ROOTFS_TAR").expect("FLINT_ROOTFS_TAR must name a root filesystem tarball");
    let t = TestDir::new();
    let src = t.join("src");
    std::fs::create_dir(&src).unwrap();
    let status = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", &tarball, "-C"])
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success());
    let store = t.store("store");

    let pack = |from: &std::path::Path, out: &str| -> serde_json::Value {
        serde_json::from_str(&flist_ok(&[&"pack", &from, &"-o", &t.join(out), &"--store", &store, &"--json"])).unwrap()
    };
    let summary = pack(&src, "dir.fl");
    println!("pack summary: {summary}");
    let per_entry = summary["metadata_bytes"].as_f64().unwrap() / summary["entries"].as_f64().unwrap();
    println!("metadata: {:.1} bytes per entry", per_entry);
    assert!(summary["entries"].as_u64().unwrap() > 5000, "not a real root filesystem? {summary}");

    // Same tree, same bytes.
    let again = pack(&src, "again.fl");
    assert_eq!(summary["digest"], again["digest"]);
    assert_eq!(again["new_chunks"], 0);

    // Unpack and compare every attribute of every path.
    flist_ok(&[&"unpack", &t.join("dir.fl"), &t.join("out")]);
    assert_same_tree(&src, &t.join("out"));
    flist_ok(&[&"verify", &t.join("dir.fl")]);

    // Mounted through FUSE, the tree is the same and a real Debian userland runs from it.
    {
        let cache = t.join("cache");
        let m = util::Mounted::new(&t.join("dir.fl"), &t.join("mnt"), &["--cache", cache.to_str().unwrap()]);
        assert_same_tree(&src, &m.path);
        let out = Command::new("chroot")
            .arg(&m.path)
            .args(["/bin/sh", "-c", "ls / && cat /etc/os-release"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("usr") && text.contains("bookworm"), "{text}");
    }

    // The tarball itself packs to the same tree.
    pack(std::path::Path::new(&tarball), "tar.fl");
    let out = flist(&[&"diff", &"--content", &t.join("dir.fl"), &t.join("tar.fl")]);
    let text = String::from_utf8_lossy(&out.stdout);
    // The archive's root entry carries the time debootstrap's directory had; nothing else may differ.
    let changes: Vec<&str> = text.lines().filter(|l| *l != "M /  (mtime)").collect();
    assert!(changes.is_empty(), "dir and tar packs differ:\n{text}{}", String::from_utf8_lossy(&out.stderr));
}
