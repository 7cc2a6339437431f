#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
//! Hostile `.fl` files, written row by row with the format's own writer: every one is refused
//! with an error that says what is wrong, or read into a tree that holds together.

use proptest::prelude::*;
use rusqlite::params;

use super::write::Writer;
use super::*;

const DIR: i64 = 0o40755;
const FILE: i64 = 0o100644;
const LINK: i64 = 0o120777;

/// An `.fl` with a root (ino 1), and whatever `build` adds.
fn fl(build: impl FnOnce(&Writer)) -> Result<Flist, RfsError> {
    let w = Writer::new().unwrap();
    w.inode(0, "/", 4096, 0, 0, DIR, 0, 1).unwrap();
    build(&w);
    read(&w.finish().unwrap())
}

fn refused(build: impl FnOnce(&Writer)) -> String {
    match fl(build) {
        Ok(f) => panic!("accepted: {f:?}"),
        Err(e) => e.to_string(),
    }
}

fn exec(w: &Writer, sql: &str) {
    w.db().execute_batch(sql).unwrap();
}

#[test]
fn a_tree_reads_with_children_sorted_and_blocks_of_512_kib_but_the_last() {
    let f = fl(|w| {
        let big = w.inode(1, "b", 600 * 1024, 7, 8, FILE, 0, 100).unwrap();
        w.block(big, &[1; 32], &[2; 32]).unwrap();
        w.block(big, &[3; 32], &[4; 32]).unwrap();
        let dir = w.inode(1, "a", 4096, 0, 0, DIR, 0, 1).unwrap();
        let link = w.inode(dir, "z", 3, 0, 0, LINK, 0, 1).unwrap();
        w.db().execute("INSERT INTO extra (ino, data) VALUES (?1, ?2)", params![link, b"../b".as_slice()]).unwrap();
        w.inode(dir, "null", 0, 0, 0, 0o20666, 0x0103, 1).unwrap();
        w.inode(1, "empty", 0, 0, 0, FILE, 0, 1).unwrap();
    })
    .unwrap();
    assert_eq!(f.format, Format::Rfs);
    let names: Vec<_> = f.entries.iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect();
    assert_eq!(names, ["", "a", "b", "empty", "null", "z"]);
    let lens: Vec<_> = f.chunks.iter().map(|c| c.len).collect();
    assert_eq!(lens, [BLOCK_LEN, 88 * 1024]);
    assert!(f.chunks.iter().all(|c| c.format == Format::Rfs && c.plain.is_some()));
    let b = f.inode_of(f.resolve(b"/b").unwrap()).unwrap();
    assert_eq!((b.uid, b.gid, b.mtime.secs, b.size()), (7, 8, 100, 600 * 1024));
    let z = f.inode_of(f.resolve(b"/a/z").unwrap()).unwrap();
    assert_eq!(z.data, InodeData::Symlink(b"../b".to_vec()));
    let null = f.inode_of(f.resolve(b"/a/null").unwrap()).unwrap();
    assert_eq!(null.data, InodeData::Device(0x0103));
}

#[test]
fn hostile_tables_and_values_are_refused_with_the_reason() {
    type Build = Box<dyn FnOnce(&Writer)>;
    let cases: Vec<(&str, Build)> = vec![
        ("not text", Box::new(|w| exec(w, "INSERT INTO inode (parent, name, mode) VALUES (1, NULL, 33188)"))),
        ("size", Box::new(|w| exec(w, "INSERT INTO inode VALUES (2, 1, 'a', 'big', 0, 0, 33188, 0, 0, 0)"))),
        (
            "uid 1099511627776 is out of range",
            Box::new(|w| {
                w.inode(1, "a", 0, 1 << 40, 0, FILE, 0, 1).unwrap();
            }),
        ),
        (
            "size -1 is out of range",
            Box::new(|w| {
                w.inode(1, "a", -1, 0, 0, FILE, 0, 1).unwrap();
            }),
        ),
        (
            "no file type",
            Box::new(|w| {
                w.inode(1, "a", 0, 0, 0, 0o170644, 0, 1).unwrap();
            }),
        ),
        (
            "not reachable from the root",
            Box::new(|w| {
                exec(
                    w,
                    "INSERT INTO inode VALUES (5, 6, 'x', 0, 0, 0, 16877, 0, 0, 0);
                     INSERT INTO inode VALUES (6, 5, 'y', 0, 0, 0, 16877, 0, 0, 0)",
                );
            }),
        ),
        (
            "holds \"a\" twice",
            Box::new(|w| {
                w.inode(1, "a", 0, 0, 0, FILE, 0, 1).unwrap();
                w.inode(1, "a", 0, 0, 0, DIR, 0, 1).unwrap();
            }),
        ),
        (
            "cannot hold its 1152921504606846976 bytes",
            Box::new(|w| {
                let a = w.inode(1, "a", 1 << 60, 0, 0, FILE, 0, 1).unwrap();
                w.block(a, &[1; 32], &[2; 32]).unwrap();
            }),
        ),
        (
            "cannot hold its 5 bytes",
            Box::new(|w| {
                w.inode(1, "a", 5, 0, 0, FILE, 0, 1).unwrap();
            }),
        ),
        (
            "cannot hold its 10 bytes",
            Box::new(|w| {
                let a = w.inode(1, "a", 10, 0, 0, FILE, 0, 1).unwrap();
                w.block(a, &[1; 32], &[2; 32]).unwrap();
                w.block(a, &[3; 32], &[4; 32]).unwrap();
            }),
        ),
        ("not a regular file but has blocks", Box::new(|w| w.block(1, &[1; 32], &[2; 32]).unwrap())),
        ("1 block rows name no inode", Box::new(|w| w.block(99, &[1; 32], &[2; 32]).unwrap())),
        (
            "a block id of 31 bytes",
            Box::new(|w| {
                let a = w.inode(1, "a", 1, 0, 0, FILE, 0, 1).unwrap();
                w.block(a, &[1; 31], &[2; 32]).unwrap();
            }),
        ),
        (
            "not a 32-byte blob",
            Box::new(|w| {
                let a = w.inode(1, "a", 1, 0, 0, FILE, 0, 1).unwrap();
                exec(w, &format!("INSERT INTO block VALUES ({a}, 'text id', x'00')"));
            }),
        ),
        (
            "2 inodes claim to be the root",
            Box::new(|w| {
                w.inode(0, "other", 0, 0, 0, DIR, 0, 1).unwrap();
            }),
        ),
        (
            "parent 1 is not a directory",
            Box::new(|w| {
                exec(
                    w,
                    "UPDATE inode SET mode = 33188 WHERE ino = 1;
            INSERT INTO inode VALUES (2, 1, 'a', 0, 0, 0, 33188, 0, 0, 0)",
                )
            }),
        ),
        (
            "parent 77 does not exist",
            Box::new(|w| {
                w.inode(77, "a", 0, 0, 0, FILE, 0, 1).unwrap();
            }),
        ),
        ("the root is not a directory", Box::new(|w| exec(w, "UPDATE inode SET mode = 33188 WHERE ino = 1"))),
        (
            "no target",
            Box::new(|w| {
                w.inode(1, "l", 0, 0, 0, LINK, 0, 1).unwrap();
            }),
        ),
        (
            "two inode rows have ino 1",
            Box::new(|w| {
                exec(
                    w,
                    "CREATE TABLE copy AS SELECT * FROM inode; DROP TABLE inode;
                     CREATE TABLE inode AS SELECT * FROM copy; INSERT INTO inode SELECT * FROM copy",
                );
            }),
        ),
        ("not a byte", Box::new(|w| exec(w, "INSERT INTO route VALUES (0, 300, 'dir:///x')"))),
        ("after its end", Box::new(|w| exec(w, "INSERT INTO route VALUES (9, 8, 'dir:///x')"))),
        ("no table tag", Box::new(|w| exec(w, "DROP TABLE tag"))),
        (
            "inode is a view, not a plain table",
            Box::new(|w| exec(w, "ALTER TABLE inode RENAME TO real; CREATE VIEW inode AS SELECT * FROM real")),
        ),
    ];
    for (want, build) in cases {
        let got = refused(build);
        assert!(got.contains(want), "wanted {want:?} in {got:?}");
    }
    for name in ["", ".", "..", "a/b", "a\0b"] {
        let got = refused(|w| {
            w.inode(1, name, 0, 0, 0, FILE, 0, 1).unwrap();
        });
        assert!(got.contains("unsafe name"), "{name:?}: {got}");
    }
}

#[test]
fn files_that_are_not_sqlite_or_damaged_give_clear_errors() {
    let good = Writer::new().unwrap().finish().unwrap();
    assert!(matches!(read(b"SQLite format 3\0garbage"), Err(RfsError::Sqlite(_))));
    assert!(matches!(read(&good[..good.len() / 2]), Err(RfsError::Sqlite(_) | RfsError::MissingTable(_))));
    let mut flipped = good.clone();
    for b in flipped.iter_mut().skip(100).step_by(97) {
        *b ^= 0x55;
    }
    assert!(read(&flipped).is_err());
    assert!(matches!(read(&good), Err(RfsError::Invalid(e)) if e.contains("no root")));
}

#[test]
fn a_table_over_many_pages_reads_whole() {
    let w = Writer::new().unwrap();
    w.inode(0, "/", 0, 0, 0, DIR, 0, 1).unwrap();
    exec(
        &w,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
              INSERT INTO inode (parent, name, size, uid, gid, mode, rdev, ctime, mtime)
              SELECT 1, 'f' || i, 0, 0, 0, 33188, 0, 0, 0 FROM n",
    );
    let bytes = w.finish().unwrap();
    assert_eq!(read(&bytes).unwrap().entries.len(), 20_001);
}

/// Hostile rows of every kind: small ino and parent ranges (so cycles, duplicates, missing and
/// non-directory parents are common), bad names, every file type, sizes at and around the block
/// bounds and absurd ones, any number of blocks.
fn row() -> impl Strategy<Value = (i64, i64, u8, u8, i64, u8)> {
    let size = prop_oneof![
        Just(0i64),
        Just(1),
        Just(i64::from(BLOCK_LEN)),
        Just(i64::from(BLOCK_LEN) + 1),
        Just(-1),
        Just(i64::MAX),
        0..4 * i64::from(BLOCK_LEN)
    ];
    (0i64..8, 0i64..8, any::<u8>(), 0u8..8, size, 0u8..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn hostile_rows_are_refused_or_read_into_a_tree_that_holds_together(rows in prop::collection::vec(row(), 0..12)) {
        let w = Writer::new().unwrap();
        let modes = [DIR, FILE, LINK, 0o20644, 0o60644, 0o10644, 0o140644, 0o170000];
        let names = ["a", "b", "c", "", "..", "x/y", "ü", "a"];
        for (ino, parent, name, mode, size, blocks) in &rows {
            let name = names[*name as usize % names.len()];
            let _ = w.db().execute(
                "INSERT INTO inode VALUES (?1, ?2, ?3, ?4, 0, 0, ?5, 0, 0, 0)",
                params![ino, parent, name, size, modes[*mode as usize]],
            );
            let _ = w.db().execute("INSERT OR IGNORE INTO extra VALUES (?1, 't')", params![ino]);
            for b in 0..*blocks {
                w.block(*ino, &[b; 32], &[*mode; 32]).unwrap();
            }
        }
        let bytes = w.finish().unwrap();
        if let Ok(f) = read(&bytes) {
            let stored: i64 = rows.iter().filter(|r| r.0 > 0).count() as i64;
            prop_assert!(f.entries.len() as i64 <= stored.max(1));
            let data: u64 = f.inodes.iter().map(Inode::data_len).sum();
            prop_assert_eq!(data, f.stream_len());
            for c in &f.chunks {
                prop_assert!(c.len >= 1 && c.len <= BLOCK_LEN);
            }
        }
    }
}
