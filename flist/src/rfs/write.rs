//! A writer of rfs's `.fl` format, for what rfs itself cannot make: tests and fuzzing write
//! hostile rows with it ([`Writer::db`] takes any SQL), and [`pack`] makes an `.fl` of a
//! directory the way `rfs pack` does (512 KiB blocks, sealed as rfs seals them), so benchmarks
//! can compare the same tree in both formats. flint never writes `.fl` files for nodes.

use std::collections::VecDeque;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rusqlite::{params, Connection, MAIN_DB};

use super::{block, RfsError, BLOCK_LEN};
use crate::store::Router;

/// The schema rfs v2.0.6 creates (`schema/schema.sql`).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inode (
    ino INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER, name VARCHAR(255), size INTEGER,
    uid INTEGER, gid INTEGER, mode INTEGER, rdev INTEGER, ctime INTEGER, mtime INTEGER);
CREATE INDEX IF NOT EXISTS parents ON inode (parent);
CREATE INDEX IF NOT EXISTS names ON inode (name);
CREATE TABLE IF NOT EXISTS extra (ino INTEGER PRIMARY KEY, data VARCHAR(4096));
CREATE TABLE IF NOT EXISTS block (ino INTEGER, id VARCHAR(32), key VARCHAR(32));
CREATE INDEX IF NOT EXISTS block_ino ON block (ino);
CREATE TABLE IF NOT EXISTS tag (key VARCHAR(10) PRIMARY KEY, value VARCHAR(255));
CREATE TABLE IF NOT EXISTS route (start integer, end integer, url VARCHAR(2048));
";

/// An `.fl` being written, in memory.
pub struct Writer {
    db: Connection,
}

impl Writer {
    /// An empty `.fl` with rfs's schema and no rows.
    pub fn new() -> Result<Writer, RfsError> {
        let db = Connection::open_in_memory()?;
        db.execute_batch(SCHEMA)?;
        Ok(Writer { db })
    }

    /// An empty database without rfs's schema, for files that break it.
    pub fn bare() -> Result<Writer, RfsError> {
        Ok(Writer { db: Connection::open_in_memory()? })
    }

    /// The database, to write any rows (or schema) at all.
    pub fn db(&self) -> &Connection {
        &self.db
    }

    /// Adds an inode row; returns its ino.
    #[allow(clippy::too_many_arguments)]
    pub fn inode(
        &self,
        parent: i64,
        name: &str,
        size: i64,
        uid: i64,
        gid: i64,
        mode: i64,
        rdev: i64,
        time: i64,
    ) -> Result<i64, RfsError> {
        self.db.execute(
            "INSERT INTO inode (parent, name, size, uid, gid, mode, rdev, ctime, mtime) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![parent, name, size, uid, gid, mode, rdev, time],
        )?;
        Ok(self.db.last_insert_rowid())
    }

    /// Adds a block of file `ino`.
    pub fn block(&self, ino: i64, id: &[u8], key: &[u8]) -> Result<(), RfsError> {
        self.db.execute("INSERT INTO block (ino, id, key) VALUES (?1, ?2, ?3)", params![ino, id, key])?;
        Ok(())
    }

    /// The bytes of the `.fl`.
    pub fn finish(self) -> Result<Vec<u8>, RfsError> {
        Ok(self.db.serialize(MAIN_DB)?.to_vec())
    }
}

/// Packs a directory as `rfs pack` does: every path its own inode (no hard links), names made
/// UTF-8 lossily, whole-second times, no xattrs; each file cut into 512 KiB blocks, sealed,
/// and written through `router` (whose routes are recorded). Returns the `.fl`'s bytes.
pub fn pack(root: &Path, router: &Router) -> Result<Vec<u8>, RfsError> {
    let w = Writer::new()?;
    let io = |e: std::io::Error| RfsError::Invalid(format!("packing {}: {e}", root.display()));
    let meta = std::fs::symlink_metadata(root).map_err(io)?;
    let row = |parent: i64, name: &str, m: &std::fs::Metadata| {
        let size = i64::try_from(m.size()).unwrap_or(i64::MAX);
        w.inode(parent, name, size, m.uid().into(), m.gid().into(), m.mode().into(), m.rdev() as i64, m.mtime())
    };
    let root_ino = row(0, "/", &meta)?;
    let mut queue = VecDeque::from([(root.to_path_buf(), root_ino)]);
    while let Some((dir, dir_ino)) = queue.pop_front() {
        let mut names: Vec<_> = std::fs::read_dir(&dir).map_err(io)?.collect::<Result<_, _>>().map_err(io)?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let path = e.path();
            let m = std::fs::symlink_metadata(&path).map_err(io)?;
            let ino = row(dir_ino, &String::from_utf8_lossy(e.file_name().as_bytes()), &m)?;
            let kind = m.file_type();
            if kind.is_dir() {
                queue.push_back((path, ino));
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io)?;
                w.db.execute(
                    "INSERT INTO extra (ino, data) VALUES (?1, ?2)",
                    params![ino, target.as_os_str().as_bytes()],
                )?;
            } else if kind.is_file() {
                let bytes = std::fs::read(&path).map_err(io)?;
                for piece in bytes.chunks(BLOCK_LEN as usize) {
                    let sealed = block::seal(piece).map_err(|e| RfsError::Invalid(e.to_string()))?;
                    router.put(&sealed).map_err(|e| RfsError::Invalid(format!("storing a block: {e}")))?;
                    let key = sealed.chunk.plain.unwrap_or(sealed.chunk.id);
                    w.block(ino, &sealed.chunk.id.0, &key.0)?;
                }
            }
        }
    }
    for r in router.routes() {
        w.db.execute("INSERT INTO route (start, end, url) VALUES (?1, ?2, ?3)", params![r.start, r.end, r.url])?;
    }
    w.finish()
}
