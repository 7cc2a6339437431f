//! Hostile rfs `.fl` files, structure-aware: the input drives flist's own writer of the format,
//! so every case is a well-formed SQLite database with rfs's tables (or with one of them broken)
//! holding hostile rows — values of the wrong type, huge and negative sizes, cycles in `parent`,
//! duplicate and unsafe names, blocks on the wrong inodes, ids of the wrong length. Reading must
//! fail with an error or give a tree whose every file is covered by its chunks, exactly.
#![no_main]

use flist::format::{Extent, InodeData};
use flist::rfs::write::Writer;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use rusqlite::types::Value;

/// A column value: mostly plausible, sometimes of the wrong type or absurd.
fn value(u: &mut Unstructured, plausible: i64) -> Result<Value> {
    Ok(match u.int_in_range(0..=9)? {
        0 => Value::Null,
        1 => {
            let n = u.int_in_range(0..=8)?;
            Value::Text(String::from_utf8_lossy(u.bytes(n)?).into_owned())
        }
        2 => {
            let n = u.int_in_range(0..=40)?;
            Value::Blob(u.bytes(n)?.to_vec())
        }
        3 => Value::Real(f64::from_bits(u.arbitrary()?)),
        4 => Value::Integer(u.arbitrary()?),
        _ => Value::Integer(plausible),
    })
}

const MODES: [i64; 7] = [0o040755, 0o100644, 0o120777, 0o020644, 0o060644, 0o010644, 0o140755];
const NAMES: [&str; 8] = ["a", "b", "/", "", ".", "..", "x/y", "dir"];

fn rows(u: &mut Unstructured, w: &Writer) -> Result<()> {
    let db = w.db();
    let inodes = u.int_in_range(0..=24)?;
    for _ in 0..inodes {
        let parent = u.int_in_range(0..=inodes)?;
        let parent = value(u, i64::from(parent))?;
        let name = if u.ratio(1, 6)? {
            value(u, 0)?
        } else {
            Value::Text(NAMES[u.choose_index(NAMES.len())?].to_string())
        };
        let mode_bits = MODES[u.choose_index(MODES.len())?] | i64::from(u.int_in_range(0..=0o7777)?);
        let size = i64::from(u.int_in_range(0..=3_000_000u32)?);
        let row = [parent, name, value(u, size)?, value(u, 0)?, value(u, 0)?, value(u, mode_bits)?, value(u, 0)?, value(u, 1_600_000_000)?];
        let _ = db.execute(
            "INSERT INTO inode (parent, name, size, uid, gid, mode, rdev, mtime) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params_from_iter(row),
        );
    }
    for _ in 0..u.int_in_range(0..=40)? {
        let id: [u8; 32] = u.arbitrary()?;
        let id = if u.ratio(1, 8)? { value(u, 0)? } else { Value::Blob(id.to_vec()) };
        let key = if u.ratio(1, 8)? { value(u, 0)? } else { Value::Blob(u.arbitrary::<[u8; 32]>()?.to_vec()) };
        let ino = u.int_in_range(0..=inodes + 1)?;
        let ino = value(u, i64::from(ino))?;
        let _ = db.execute("INSERT INTO block (ino, id, key) VALUES (?1, ?2, ?3)", rusqlite::params![ino, id, key]);
    }
    for _ in 0..u.int_in_range(0..=6)? {
        let ino = u.int_in_range(0..=inodes)?;
        let ino = value(u, i64::from(ino))?;
        let _ = db.execute("INSERT INTO extra (ino, data) VALUES (?1, ?2)", rusqlite::params![ino, value(u, 0)?]);
    }
    for _ in 0..u.int_in_range(0..=3)? {
        let (start, end) = (value(u, 0)?, value(u, 255)?);
        let url = value(u, 0)?;
        let _ = db.execute("INSERT INTO route (start, \"end\", url) VALUES (?1, ?2, ?3)", rusqlite::params![start, end, url]);
        let _ = db.execute("INSERT OR REPLACE INTO tag (key, value) VALUES (?1, ?2)", rusqlite::params![value(u, 0)?, value(u, 0)?]);
    }
    // Now and then a table replaced by something else.
    if u.ratio(1, 10)? {
        let table = ["inode", "extra", "block", "tag", "route"][u.choose_index(5)?];
        let _ = db.execute_batch(&format!("DROP TABLE {table}; CREATE VIEW {table} AS SELECT 1 AS x;"));
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(w) = Writer::new() else { return };
    if rows(&mut u, &w).is_err() {
        return;
    }
    let Ok(bytes) = w.finish() else { return };
    let Ok(flist) = flist::rfs::read(&bytes) else { return };
    for inode in &flist.inodes {
        if let InodeData::File { size, .. } = inode.data {
            let covered: u64 = flist
                .extents(inode, 0, size)
                .iter()
                .map(|e| match e {
                    Extent::Data { len, .. } => u64::from(*len),
                    Extent::Hole { len } => *len,
                })
                .sum();
            assert_eq!(covered, size);
        }
    }
    for e in 0..flist.entries.len() as u32 {
        let path = flist.path_of(e);
        assert!(!path.windows(2).any(|w| w == b"//"));
    }
});
