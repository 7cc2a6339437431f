#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
//! The reader against SQLite itself: databases SQLite wrote, read back by both, must agree row by
//! row, for every page size, reserved tail, value type and length (overflow chains included);
//! damaged files must give errors, never a panic or a hang.

use super::*;
use proptest::prelude::*;
use rusqlite::types::Value as SqlValue;
use rusqlite::Connection;

fn to_sql(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Integer(i) => SqlValue::Integer(*i),
        Value::Real(r) => SqlValue::Real(*r),
        Value::Text(t) => SqlValue::Text(String::from_utf8(t.clone()).unwrap()),
        Value::Blob(b) => SqlValue::Blob(b.clone()),
    }
}

/// Gives an empty database a reserved tail on each page (as checksumming and encrypting builds
/// do).
fn reserve(db: &Connection, bytes: u8) {
    let mut n = i32::from(bytes);
    // SAFETY: a valid handle, a NUL-terminated name and an int, as the opcode takes.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            db.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_RESERVE_BYTES,
            (&mut n as *mut i32).cast(),
        )
    };
    assert_eq!(rc, 0);
}

fn bytes_of(db: &Connection) -> Vec<u8> {
    db.serialize(rusqlite::MAIN_DB).unwrap().to_vec()
}

fn all_rows(bytes: &[u8], table: &str, columns: &[&str]) -> Result<Vec<(i64, Vec<Value>)>, SqliteError> {
    let db = Database::open(bytes)?;
    let table = db.table(table)?.ok_or_else(|| bad("no such table"))?;
    let mut out = Vec::new();
    db.rows(&table, columns, &mut |rowid, values| {
        out.push((rowid, values));
        Ok(())
    })?;
    Ok(out)
}

fn sqlite_rows(db: &Connection, sql: &str, width: usize) -> Vec<(i64, Vec<SqlValue>)> {
    let mut stmt = db.prepare(sql).unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, (1..=width).map(|i| r.get::<_, SqlValue>(i).unwrap()).collect())))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// Every integer serial type's bounds, floats, text and blobs around the overflow thresholds of
/// every page size, and NULL.
fn value() -> impl Strategy<Value = SqlValue> {
    let int = prop_oneof![
        Just(0i64),
        Just(1),
        Just(-1),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(127),
        Just(-128),
        Just(32767),
        Just(-32769),
        Just(8_388_607),
        Just(-8_388_609),
        Just(2_147_483_647),
        Just(-2_147_483_649),
        Just(140_737_488_355_327),
        Just(-140_737_488_355_329),
        any::<i64>(),
    ];
    let len = prop_oneof![0usize..40, 400usize..1200, 3000usize..5000, 60_000usize..70_000];
    prop_oneof![
        Just(SqlValue::Null),
        int.prop_map(SqlValue::Integer),
        any::<f64>().prop_filter("SQLite stores NaN as NULL", |f| !f.is_nan()).prop_map(SqlValue::Real),
        len.clone().prop_flat_map(|n| prop::collection::vec(any::<u8>(), n)).prop_map(SqlValue::Blob),
        len.prop_flat_map(|n| prop::collection::vec(any::<char>(), n / 4))
            .prop_map(|c| SqlValue::Text(c.into_iter().collect())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn rows_read_as_sqlite_reads_them(
        page in prop_oneof![Just(512u32), Just(1024), Just(4096), Just(65536)],
        reserved in prop_oneof![Just(0u8), Just(8), Just(32)],
        vacuum in 0u8..2,
        rows in prop::collection::vec((value(), value(), any::<bool>()), 0..60),
        filler in 0usize..400,
    ) {
        // A file, not memory: an in-memory database keeps no reserved tail.
        let dir = tempfile::tempdir().unwrap();
        let db = Connection::open(dir.path().join("t.db")).unwrap();
        db.execute_batch(&format!("PRAGMA auto_vacuum = {vacuum}; PRAGMA page_size = {page};")).unwrap();
        reserve(&db, reserved);
        // VACUUM applies the reserved tail where the empty file did not take it (auto_vacuum).
        db.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, \"a b\", c BLOB); CREATE TABLE pad (x); VACUUM;").unwrap();
        prop_assert_eq!(bytes_of(&db)[20], reserved, "the reserved tail took (page {} vacuum {})", page, vacuum);
        for (a, c, keep) in &rows {
            db.execute("INSERT INTO t (\"a b\", c) VALUES (?1, ?2)", rusqlite::params![a, c]).unwrap();
            // Small rows between, so the table spreads over interior pages.
            db.execute("INSERT INTO pad VALUES (?1)", [filler as i64]).unwrap();
            if !keep {
                db.execute("DELETE FROM t WHERE id = (SELECT max(id) FROM t) - 1", []).unwrap();
            }
        }
        for _ in 0..filler {
            db.execute("INSERT INTO t (\"a b\", c) VALUES (?1, zeroblob(?2))", rusqlite::params![filler as i64, (filler * 7) as i64]).unwrap();
        }
        let want = sqlite_rows(&db, "SELECT rowid, id, \"a b\", c FROM t ORDER BY rowid", 3);
        let bytes = bytes_of(&db);
        let got = all_rows(&bytes, "T", &["ID", "a b", "c"]).unwrap();
        prop_assert_eq!(got.len(), want.len());
        for ((rowid, values), (want_rowid, want_values)) in got.iter().zip(&want) {
            prop_assert_eq!(rowid, want_rowid);
            let values: Vec<SqlValue> = values.iter().map(to_sql).collect();
            prop_assert_eq!(&values, want_values);
        }
    }

    /// Any bytes after a valid header, and any damage to a real database: an answer or an
    /// error, never a panic.
    #[test]
    fn damaged_files_give_errors_not_panics(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..20)) {
        let mut bytes = sample();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = all_rows(&bytes, "inode", &["ino", "name"]);
        let _ = Database::open(&bytes).map(|d| d.schema().len());
    }
}

/// rfs's own schema with a few rows, a symlink target long enough to overflow.
fn sample() -> Vec<u8> {
    let db = Connection::open_in_memory().unwrap();
    db.execute_batch(
        "PRAGMA page_size = 512;
         CREATE TABLE IF NOT EXISTS inode (ino INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER, name VARCHAR(255),
           size INTEGER, uid INTEGER, gid INTEGER, mode INTEGER, rdev INTEGER, ctime INTEGER, mtime INTEGER);
         CREATE INDEX IF NOT EXISTS parents ON inode (parent);
         CREATE TABLE IF NOT EXISTS extra (ino INTEGER PRIMARY KEY, data VARCHAR(4096));
         CREATE TABLE IF NOT EXISTS route (start integer, end integer, url VARCHAR(2048));
         INSERT INTO inode VALUES (1, 0, '/', 0, 0, 0, 16877, 0, 1, 2);
         INSERT INTO extra VALUES (7, randomblob(3000));",
    )
    .unwrap();
    for i in 2..200 {
        db.execute(
            "INSERT INTO inode VALUES (?1, 1, ?2, 5, 0, 0, 33188, 0, 1, 2)",
            rusqlite::params![i, format!("f{i}")],
        )
        .unwrap();
    }
    bytes_of(&db)
}

#[test]
fn rfs_schema_columns_and_the_rowid() {
    let bytes = sample();
    let rows = all_rows(&bytes, "inode", &["ino", "parent", "name", "mode"]).unwrap();
    assert_eq!(rows.len(), 199);
    assert_eq!(
        rows[0].1,
        vec![Value::Integer(1), Value::Integer(0), Value::Text(b"/".to_vec()), Value::Integer(16877)]
    );
    let extra = all_rows(&bytes, "extra", &["ino", "data"]).unwrap();
    assert!(matches!(&extra[0].1[..], [Value::Integer(7), Value::Blob(b)] if b.len() == 3000));
    assert!(all_rows(&bytes, "route", &["start", "end", "url"]).unwrap().is_empty());
    assert!(all_rows(&bytes, "inode", &["nope"]).unwrap_err().to_string().contains("no column nope"));
    let db = Database::open(&bytes).unwrap();
    assert!(db.table("block").unwrap().is_none());
    assert!(db.table("parents").unwrap_err().to_string().contains("is a index"));
}

#[test]
fn column_lists_as_sqlite_reads_them() {
    let cases: &[(&str, &[(&str, bool)])] = &[
        ("CREATE TABLE t (a INTEGER PRIMARY KEY, b)", &[("a", true), ("b", false)]),
        ("CREATE TABLE t (a integer primary key asc, b)", &[("a", true), ("b", false)]),
        // SQLite's quirk: DESC makes it an ordinary column.
        ("CREATE TABLE t (a INTEGER PRIMARY KEY DESC, b)", &[("a", false), ("b", false)]),
        ("CREATE TABLE t (a INT PRIMARY KEY, b)", &[("a", false), ("b", false)]),
        ("CREATE TABLE t (a INTEGER, b TEXT, PRIMARY KEY (a DESC))", &[("a", true), ("b", false)]),
        ("CREATE TABLE t (a INTEGER, b, CONSTRAINT k PRIMARY KEY (a, b))", &[("a", false), ("b", false)]),
        (
            "CREATE TABLE \"x y\" ([a b] VARCHAR(10, 2) DEFAULT ('(,)'), `c``d` NOT NULL, \"e\"\"f\" -- note, (\n, g /* , */)",
            &[("a b", false), ("c`d", false), ("e\"f", false), ("g", false)],
        ),
        ("CREATE TABLE route (start integer, end integer, url VARCHAR(2048))", &[("start", false), ("end", false), ("url", false)]),
    ];
    for (sql, want) in cases {
        let got: Vec<(String, bool)> = columns_of(sql).unwrap().into_iter().map(|c| (c.name, c.rowid)).collect();
        let want: Vec<(String, bool)> = want.iter().map(|(n, r)| (n.to_string(), *r)).collect();
        assert_eq!(got, want, "{sql}");
    }
    for (sql, why) in [
        ("CREATE TABLE t (a INTEGER PRIMARY KEY, b) WITHOUT ROWID", "WITHOUT ROWID"),
        ("CREATE TABLE t (a, b AS (a + 1))", "generated"),
        ("CREATE TABLE t (a, b INTEGER GENERATED ALWAYS AS (a) STORED)", "generated"),
        ("CREATE TABLE t (a, 'b", "unterminated"),
        ("CREATE TABLE t (a, b", "not closed"),
    ] {
        assert!(columns_of(sql).unwrap_err().contains(why), "{sql}");
    }
}

#[test]
fn rows_of_columns_added_later_read_as_null_and_generated_columns_are_refused() {
    let db = Connection::open_in_memory().unwrap();
    db.execute_batch("CREATE TABLE t (a); INSERT INTO t VALUES (1); ALTER TABLE t ADD COLUMN b DEFAULT 5; INSERT INTO t VALUES (2, 3);")
        .unwrap();
    let rows = all_rows(&bytes_of(&db), "t", &["a", "b"]).unwrap();
    assert_eq!(rows[0].1, vec![Value::Integer(1), Value::Null]);
    assert_eq!(rows[1].1, vec![Value::Integer(2), Value::Integer(3)]);
    db.execute_batch("CREATE TABLE g (a, b AS (a * 2)); CREATE VIEW v AS SELECT 1;").unwrap();
    let bytes = bytes_of(&db);
    assert!(all_rows(&bytes, "g", &["a"]).unwrap_err().to_string().contains("generated"));
    assert!(all_rows(&bytes, "v", &["a"]).unwrap_err().to_string().contains("is a view"));
}

#[test]
fn a_virtual_table_a_utf16_file_and_odd_headers_are_refused() {
    let db = Connection::open_in_memory().unwrap();
    db.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, false).unwrap();
    db.execute_batch(
        "CREATE TABLE t (a); PRAGMA writable_schema = ON;
         INSERT INTO sqlite_master VALUES ('table', 'v', 'v', 0, 'CREATE VIRTUAL TABLE v USING anything(a)');",
    )
    .unwrap();
    let bytes = bytes_of(&db);
    assert!(all_rows(&bytes, "v", &["a"]).unwrap_err().to_string().contains("virtual"));
    let utf16 = Connection::open_in_memory().unwrap();
    utf16.execute_batch("PRAGMA encoding = 'UTF-16le'; CREATE TABLE t (a); INSERT INTO t VALUES ('x');").unwrap();
    assert!(Database::open(&bytes_of(&utf16)).err().unwrap().to_string().contains("UTF-16"));
    let mut odd = bytes.clone();
    odd[16..18].copy_from_slice(&1000u16.to_be_bytes());
    assert!(Database::open(&odd).err().unwrap().to_string().contains("page size 1000"));
    assert!(Database::open(&bytes[..99]).is_err());
    assert!(Database::open(
        b"SQLite format 2\0 and then some more bytes than a header holds, a hundred or so in all ...."
    )
    .is_err());
}

#[test]
fn a_page_reached_twice_is_an_error_not_a_loop() {
    let db = Connection::open_in_memory().unwrap();
    db.execute_batch("PRAGMA page_size = 512; CREATE TABLE t (a);").unwrap();
    for i in 0..400 {
        db.execute("INSERT INTO t VALUES (?1)", [format!("row {i} {}", "x".repeat(40))]).unwrap();
    }
    let mut bytes = bytes_of(&db);
    let root = Database::open(&bytes).unwrap().table("t").unwrap().unwrap().root as usize;
    let page = (root - 1) * 512;
    assert_eq!(bytes[page], INTERIOR_TABLE, "the table spans pages");
    // The right-most child pointer of the root now points at the root itself.
    bytes[page + 8..page + 12].copy_from_slice(&(root as u32).to_be_bytes());
    let err = all_rows(&bytes, "t", &["a"]).unwrap_err().to_string();
    assert!(err.contains("reached twice"), "{err}");
    // And cut short: the pages past the end are named.
    let whole = bytes_of(&db);
    let err = all_rows(&whole[..whole.len() - 512], "t", &["a"]).unwrap_err().to_string();
    assert!(err.contains("past the end"), "{err}");
}

#[test]
fn varints_of_every_length() {
    for v in [0u64, 1, 127, 128, 16383, 16384, (1 << 56) - 1, 1 << 56, u64::MAX] {
        let mut bytes = Vec::new();
        if v > (1 << 56) - 1 {
            for i in (1..=8).rev() {
                bytes.push(0x80 | ((v >> (i * 7 + 1)) & 0x7f) as u8);
            }
            bytes.push(v as u8);
        } else {
            let mut groups = vec![(v & 0x7f) as u8];
            let mut rest = v >> 7;
            while rest > 0 {
                groups.push(0x80 | (rest & 0x7f) as u8);
                rest >>= 7;
            }
            groups.reverse();
            bytes = groups;
        }
        assert_eq!(varint(&bytes), Some((v, bytes.len())), "{v}");
        assert_eq!(varint(&bytes[..bytes.len() - 1]), None);
    }
}

#[test]
fn the_fl_files_rfs_made_read_as_sqlite_reads_them() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rfs");
    let mut files = 0;
    for dir in std::fs::read_dir(&fixtures).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(dir).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_none_or(|e| e != "fl") {
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            let mut db = Connection::open_in_memory().unwrap();
            db.deserialize_read_exact(rusqlite::MAIN_DB, bytes.as_slice(), bytes.len(), true).unwrap();
            let tables: &[(&str, &[&str])] = &[
                ("inode", &["ino", "parent", "name", "size", "uid", "gid", "mode", "rdev", "ctime", "mtime"]),
                ("extra", &["ino", "data"]),
                ("block", &["ino", "id", "key"]),
                ("tag", &["key", "value"]),
                ("route", &["start", "end", "url"]),
            ];
            for (table, columns) in tables {
                let list = columns.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
                let want =
                    sqlite_rows(&db, &format!("SELECT rowid, {list} FROM {table} ORDER BY rowid"), columns.len());
                let got = all_rows(&bytes, table, columns).unwrap();
                let got: Vec<(i64, Vec<SqlValue>)> =
                    got.into_iter().map(|(r, v)| (r, v.iter().map(to_sql).collect())).collect();
                assert_eq!(got, want, "{} table {table}", path.display());
            }
        }
    }
    assert!(files >= 2, "the rfs fixtures are there");
}
