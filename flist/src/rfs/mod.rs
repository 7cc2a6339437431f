//! Zero-OS rfs `.fl` flists, read as they are.
//!
//! An `.fl` is a SQLite file: `inode` rows (tree, sizes, modes, owners, whole-second times),
//! `extra` (symlink targets), `block` (each file's blocks, in `rowid` order), `tag` and `route`.
//! [`read`] turns one into the same validated [`Flist`] model flint's own format decodes to, so
//! the read path, the verified cache and the FUSE server are one: a file's blocks become its
//! chunks in the data stream, and each chunk keeps rfs's names ([`Format::Rfs`]: stored bytes
//! named by their BLAKE2b-256, plain bytes by theirs, see [`block`]).
//!
//! What the index leaves open: a block's plain length is not recorded. Every block but a file's
//! last is taken to hold 512 KiB, the last the rest of the size; a block that holds something
//! else fails its read with EIO and a log line saying so ([`crate::chunk::ChunkError::Length`]),
//! it is never served shifted. A file whose size its block count cannot hold is refused when the
//! `.fl` is read.
//!
//! Hostile files: the database is read by [`sqlite`], flint's own reader of the file format (no
//! query engine, each page read at most once, so the work is bounded by the file's length); the
//! tables must be plain tables (not views or virtual tables); every value is checked for type and
//! range, the tree for cycles, unreachable rows, duplicate and unsafe names. Rows are read ordered by name
//! within a directory (raw bytes), as flint orders them: rfs's own reader leaves the order to
//! SQLite.

pub mod block;
pub mod sqlite;
pub mod startup;
#[cfg(feature = "tools")]
pub mod write;

use std::collections::{BTreeMap, HashMap};

use sqlite::{Database, SqliteError, Value};

use crate::format::{ChunkRef, Entry, Flist, Format, Hash, Inode, InodeData, Kind, Route, Timestamp};

/// The first bytes of every SQLite file, and so of every `.fl`.
pub const SQLITE_MAGIC: &[u8; 16] = sqlite::MAGIC;
/// The block size rfs packs with (`BLOB_SIZE`).
pub const BLOCK_LEN: u32 = 512 * 1024;
/// Largest `.fl` read: the metadata of millions of files is a few hundred MB.
pub const MAX_FILE_LEN: usize = 1 << 30;

/// Why bytes are not an rfs flist this reader can take.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum RfsError {
    #[error("the .fl is {0} bytes, over the {MAX_FILE_LEN} byte limit")]
    TooLarge(usize),
    #[error("the .fl is not a readable SQLite database: {0}")]
    Sqlite(String),
    #[error("the .fl has no table {0} (not an rfs flist, or a damaged one)")]
    MissingTable(&'static str),
    #[error("the .fl is not a valid rfs flist: {0}")]
    Invalid(String),
}

/// The writer's errors (tests and benches write `.fl` files with SQLite itself).
#[cfg(feature = "tools")]
impl From<rusqlite::Error> for RfsError {
    fn from(e: rusqlite::Error) -> Self {
        RfsError::Sqlite(e.to_string())
    }
}

impl From<SqliteError> for RfsError {
    fn from(e: SqliteError) -> Self {
        RfsError::Sqlite(e.to_string())
    }
}

fn invalid(why: impl Into<String>) -> RfsError {
    RfsError::Invalid(why.into())
}

/// Whether bytes are a SQLite file, the only thing an rfs `.fl` can be.
pub fn is_rfs(bytes: &[u8]) -> bool {
    bytes.starts_with(SQLITE_MAGIC)
}

/// One `inode` row, its values checked.
struct InodeRow {
    ino: i64,
    parent: i64,
    name: Vec<u8>,
    size: u64,
    uid: u32,
    gid: u32,
    mode: u32,
    rdev: u64,
    ctime: i64,
    mtime: i64,
}

/// Reads an rfs `.fl` into the flist model. `digest` of the result is the BLAKE3 of `bytes`,
/// what a manifest pins.
pub fn read(bytes: &[u8]) -> Result<Flist, RfsError> {
    if bytes.len() > MAX_FILE_LEN {
        return Err(RfsError::TooLarge(bytes.len()));
    }
    let db = Database::open(bytes)?;
    let rows = inode_rows(&db)?;
    let targets = symlink_targets(&db)?;
    let blocks = file_blocks(&db)?;
    let tags = tags(&db)?;
    let routes = routes(&db)?;
    let (entries, order, child_counts) = tree(&rows)?;

    let mut inodes = Vec::with_capacity(order.len());
    let mut chunks = Vec::new();
    let mut used_blocks = 0usize;
    for (&row_index, &child_count) in order.iter().zip(&child_counts) {
        let row = rows.get(row_index).ok_or_else(|| invalid("row index"))?;
        let kind = Kind::from_mode(row.mode)
            .ok_or_else(|| invalid(format!("inode {}: mode {:#o} is no file type", row.ino, row.mode)))?;
        let own_blocks = blocks.get(&row.ino).map(Vec::as_slice).unwrap_or_default();
        if kind != Kind::File && !own_blocks.is_empty() {
            return Err(invalid(format!("inode {} is not a regular file but has blocks", row.ino)));
        }
        used_blocks += own_blocks.len();
        let data = match kind {
            Kind::Dir => InodeData::Dir { children: 0..child_count },
            Kind::File => {
                push_blocks(row, own_blocks, &mut chunks)?;
                InodeData::File { size: row.size, regions: None, stream_offset: 0 }
            }
            Kind::Symlink => InodeData::Symlink(
                targets
                    .get(&row.ino)
                    .filter(|t| !t.is_empty())
                    .cloned()
                    .ok_or_else(|| invalid(format!("symlink inode {} has no target in extra", row.ino)))?,
            ),
            Kind::CharDev | Kind::BlockDev => InodeData::Device(row.rdev),
            Kind::Fifo | Kind::Socket => InodeData::Special,
        };
        let time = |secs| Timestamp { secs, nanos: 0 };
        inodes.push(Inode {
            mode: row.mode,
            uid: row.uid,
            gid: row.gid,
            mtime: time(row.mtime),
            ctime: time(row.ctime),
            xattrs: Vec::new(),
            data,
            nlink: 0,
        });
    }
    let all_blocks: usize = blocks.values().map(Vec::len).sum();
    if used_blocks != all_blocks {
        return Err(invalid(format!("{} block rows name no inode", all_blocks - used_blocks)));
    }
    let digest = Hash(*blake3::hash(bytes).as_bytes());
    Flist::assemble(Format::Rfs, tags, routes, chunks, entries, inodes, digest)
        .map_err(|e| invalid(format!("the tree does not hold together: {e}")))
}

/// A table rfs writes, with its rows' `columns` in rowid order. It must be a plain table: a view
/// or a virtual table could compute anything.
fn table_rows(db: &Database, name: &'static str, columns: &[&str]) -> Result<Vec<Vec<Value>>, RfsError> {
    let table = db.table(name)?.ok_or(RfsError::MissingTable(name))?;
    let mut out = Vec::new();
    db.rows(&table, columns, &mut |_, values| {
        out.push(values);
        Ok(())
    })?;
    Ok(out)
}

/// Text or blob bytes of a column.
fn raw(value: Option<&Value>, what: &str) -> Result<Vec<u8>, RfsError> {
    match value {
        Some(Value::Text(b) | Value::Blob(b)) => Ok(b.clone()),
        other => Err(invalid(format!("{what} is {}, not text", type_name(other)))),
    }
}

fn type_name(value: Option<&Value>) -> &'static str {
    value.map_or("missing", Value::type_name)
}

fn integer(value: Option<&Value>) -> Result<i64, String> {
    match value {
        Some(Value::Integer(i)) => Ok(*i),
        other => Err(format!("is {}, not an integer", type_name(other))),
    }
}

fn int<T: TryFrom<i64>>(row: &[Value], column: usize, what: &str, ino: i64) -> Result<T, RfsError> {
    let v = integer(row.get(column)).map_err(|e| invalid(format!("inode {ino}: {what} {e}")))?;
    T::try_from(v).map_err(|_| invalid(format!("inode {ino}: {what} {v} is out of range")))
}

fn inode_rows(db: &Database) -> Result<Vec<InodeRow>, RfsError> {
    let columns = ["ino", "parent", "name", "size", "uid", "gid", "mode", "rdev", "ctime", "mtime"];
    let mut out = Vec::new();
    for row in table_rows(db, "inode", &columns)? {
        let ino = integer(row.first()).map_err(|e| invalid(format!("an inode's ino {e}")))?;
        out.push(InodeRow {
            ino,
            parent: int(&row, 1, "parent", ino)?,
            name: raw(row.get(2), "a name")?,
            size: int(&row, 3, "size", ino)?,
            uid: int(&row, 4, "uid", ino)?,
            gid: int(&row, 5, "gid", ino)?,
            mode: int(&row, 6, "mode", ino)?,
            // `st_rdev` is a u64 that SQLite keeps as the i64 of the same bits.
            rdev: int::<i64>(&row, 7, "rdev", ino)? as u64,
            ctime: int(&row, 8, "ctime", ino)?,
            mtime: int(&row, 9, "mtime", ino)?,
        });
    }
    Ok(out)
}

fn symlink_targets(db: &Database) -> Result<HashMap<i64, Vec<u8>>, RfsError> {
    let mut out = HashMap::new();
    for row in table_rows(db, "extra", &["ino", "data"])? {
        let ino = integer(row.first()).map_err(|e| invalid(format!("an extra row's ino {e}")))?;
        if out.insert(ino, raw(row.get(1), "a symlink target")?).is_some() {
            return Err(invalid(format!("inode {ino} has two extra rows")));
        }
    }
    Ok(out)
}

fn hash32(value: Option<&Value>, what: &str) -> Result<Hash, RfsError> {
    match value {
        Some(Value::Blob(b)) => {
            b.as_slice().try_into().map(Hash).map_err(|_| invalid(format!("a block {what} of {} bytes", b.len())))
        }
        other => Err(invalid(format!("a block {what} is {}, not a 32-byte blob", type_name(other)))),
    }
}

/// Each file's (id, key) pairs in the order it was packed (rowid order, which the rows come in).
fn file_blocks(db: &Database) -> Result<HashMap<i64, Vec<(Hash, Hash)>>, RfsError> {
    let mut out: HashMap<i64, Vec<(Hash, Hash)>> = HashMap::new();
    for row in table_rows(db, "block", &["ino", "id", "key"])? {
        let ino = integer(row.first()).map_err(|e| invalid(format!("a block's ino {e}")))?;
        out.entry(ino).or_default().push((hash32(row.get(1), "id")?, hash32(row.get(2), "key")?));
    }
    Ok(out)
}

fn tags(db: &Database) -> Result<BTreeMap<String, String>, RfsError> {
    let mut out = BTreeMap::new();
    for row in table_rows(db, "tag", &["key", "value"])? {
        let text = |i| raw(row.get(i), "a tag").map(|b| String::from_utf8_lossy(&b).into_owned());
        out.insert(text(0)?, text(1)?);
    }
    Ok(out)
}

fn routes(db: &Database) -> Result<Vec<Route>, RfsError> {
    let mut out = Vec::new();
    for row in table_rows(db, "route", &["start", "end", "url"])? {
        let byte = |i| {
            let v = integer(row.get(i)).map_err(|e| invalid(format!("a route bound {e}")))?;
            u8::try_from(v).map_err(|_| invalid(format!("a route bound {v} is not a byte")))
        };
        let (start, end) = (byte(0)?, byte(1)?);
        if start > end {
            return Err(invalid(format!("a route starts at {start:#04x} after its end {end:#04x}")));
        }
        let url =
            String::from_utf8(raw(row.get(2), "a route url")?).map_err(|_| invalid("a route url is not UTF-8"))?;
        out.push(Route { start, end, url });
    }
    Ok(out)
}

fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// The entries breadth first, children sorted by name, with each entry's row index and child
/// count.
type Tree = (Vec<Entry>, Vec<usize>, Vec<u32>);

fn tree(rows: &[InodeRow]) -> Result<Tree, RfsError> {
    let mut by_ino = HashMap::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        if by_ino.insert(row.ino, i).is_some() {
            return Err(invalid(format!("two inode rows have ino {}", row.ino)));
        }
    }
    let is_dir = |row: &InodeRow| Kind::from_mode(row.mode) == Some(Kind::Dir);
    let mut children: HashMap<i64, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if row.parent == 0 {
            roots.push(i);
            continue;
        }
        match by_ino.get(&row.parent).and_then(|&p| rows.get(p)) {
            Some(parent) if is_dir(parent) => children.entry(row.parent).or_default().push(i),
            Some(_) => return Err(invalid(format!("inode {}'s parent {} is not a directory", row.ino, row.parent))),
            None => return Err(invalid(format!("inode {}'s parent {} does not exist", row.ino, row.parent))),
        }
    }
    let root = match roots.as_slice() {
        [root] => *root,
        [] => return Err(invalid("no root (an inode whose parent is 0)")),
        more => return Err(invalid(format!("{} inodes claim to be the root", more.len()))),
    };
    if !rows.get(root).is_some_and(is_dir) {
        return Err(invalid("the root is not a directory"));
    }
    let mut entries = vec![Entry { name: Vec::new(), inode: 0, parent: 0 }];
    let mut order = vec![root];
    let mut child_counts = Vec::with_capacity(rows.len());
    let mut next = 0;
    while let Some(&row_index) = order.get(next) {
        let row = rows.get(row_index).ok_or_else(|| invalid("row index"))?;
        let mut kids = children.remove(&row.ino).unwrap_or_default();
        kids.sort_by(|&a, &b| rows.get(a).map(|r| &r.name).cmp(&rows.get(b).map(|r| &r.name)));
        for pair in kids.windows(2) {
            if let [a, b] = pair {
                if rows.get(*a).map(|r| &r.name) == rows.get(*b).map(|r| &r.name) {
                    let name = rows.get(*a).map(|r| String::from_utf8_lossy(&r.name)).unwrap_or_default();
                    return Err(invalid(format!("directory inode {} holds {name:?} twice", row.ino)));
                }
            }
        }
        let count = u32::try_from(kids.len()).map_err(|_| invalid("a directory with too many entries"))?;
        child_counts.push(count);
        for kid in kids {
            let name = rows.get(kid).map(|r| r.name.clone()).unwrap_or_default();
            if !valid_name(&name) {
                return Err(invalid(format!(
                    "inode {} has an unsafe name {:?}",
                    rows.get(kid).map_or(0, |r| r.ino),
                    String::from_utf8_lossy(&name)
                )));
            }
            entries.push(Entry { name, inode: 0, parent: 0 });
            order.push(kid);
        }
        next += 1;
    }
    if order.len() != rows.len() {
        let lost = rows.len() - order.len();
        let example = children.values().flatten().next().and_then(|&i| rows.get(i)).map_or(0, |r| r.ino);
        return Err(invalid(format!(
            "{lost} inodes are not reachable from the root (their parents form a cycle), e.g. inode {example}"
        )));
    }
    Ok((entries, order, child_counts))
}

/// Appends a file's blocks as chunks: 512 KiB each but the last, which holds the rest.
fn push_blocks(row: &InodeRow, blocks: &[(Hash, Hash)], chunks: &mut Vec<ChunkRef>) -> Result<(), RfsError> {
    if row.size == 0 {
        // Nothing to read, whatever was recorded.
        return Ok(());
    }
    let n = blocks.len() as u64;
    let full = n.saturating_sub(1).saturating_mul(u64::from(BLOCK_LEN));
    let last = row.size.checked_sub(full).filter(|&l| n > 0 && l > 0 && l <= u64::from(BLOCK_LEN));
    let Some(last) = last else {
        return Err(invalid(format!(
            "inode {}: {n} blocks of at most {BLOCK_LEN} bytes cannot hold its {} bytes",
            row.ino, row.size
        )));
    };
    for (i, (id, key)) in blocks.iter().enumerate() {
        let len = if i as u64 + 1 == n { last as u32 } else { BLOCK_LEN };
        chunks.push(ChunkRef { id: *id, plain: Some(*key), len, format: Format::Rfs });
    }
    Ok(())
}

#[cfg(all(test, feature = "tools"))]
mod tests;
