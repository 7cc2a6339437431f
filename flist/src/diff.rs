//! Differences between two flists, path by path.
//!
//! File contents are compared by their extents first (same chunks at the same offsets means the
//! same bytes, for free); only when those differ, and sources are given, are the bytes fetched
//! and compared, since packing order can put equal content in different chunks.

use crate::format::{Extent, Flist, Hash, Inode, InodeData, ROOT};
use crate::read::{read_all, ChunkSource};

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// Path from the root.
    pub path: String,
    /// `added`, `removed` or `modified`.
    pub what: &'static str,
    /// For `modified`: which attributes differ (`type`, `mode`, `owner`, `mtime`, `xattrs`,
    /// `target`, `rdev`, `size`, `content`), with `content?` where contents were not compared
    /// and may be equal (same size, different chunks).
    pub fields: Vec<&'static str>,
}

/// Both flists with the sources to read their contents from, when contents should be compared
/// byte by byte.
pub type Sources<'a> = Option<(&'a dyn ChunkSource, &'a dyn ChunkSource)>;

/// Lists what changed from `a` to `b`, in path order.
pub fn diff(a: &Flist, b: &Flist, sources: Sources) -> std::io::Result<Vec<Change>> {
    let mut out = Vec::new();
    walk(a, b, Some(ROOT), Some(ROOT), sources, &mut out)?;
    Ok(out)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn walk(
    a: &Flist,
    b: &Flist,
    ea: Option<u32>,
    eb: Option<u32>,
    sources: Sources,
    out: &mut Vec<Change>,
) -> std::io::Result<()> {
    let path = match (ea, eb) {
        (Some(e), _) => lossy(&a.path_of(e)),
        (None, Some(e)) => lossy(&b.path_of(e)),
        (None, None) => return Ok(()),
    };
    let ia = ea.and_then(|e| a.inode_of(e));
    let ib = eb.and_then(|e| b.inode_of(e));
    match (ia, ib) {
        (Some(_), None) => out.push(Change { path, what: "removed", fields: Vec::new() }),
        (None, Some(_)) => out.push(Change { path, what: "added", fields: Vec::new() }),
        (Some(x), Some(y)) => {
            let fields = compare(a, b, x, y, sources)?;
            if !fields.is_empty() {
                out.push(Change { path, what: "modified", fields });
            }
        }
        (None, None) => {}
    }
    // Children of whichever sides are directories, merged by name.
    let ca: Vec<u32> = ea.map(|e| a.children(e).collect()).unwrap_or_default();
    let cb: Vec<u32> = eb.map(|e| b.children(e).collect()).unwrap_or_default();
    let (mut i, mut j) = (0, 0);
    while i < ca.len() || j < cb.len() {
        let na = ca.get(i).and_then(|&e| a.entry(e)).map(|e| e.name.as_slice());
        let nb = cb.get(j).and_then(|&e| b.entry(e)).map(|e| e.name.as_slice());
        let order = match (na, nb) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let (left, right) = match order {
            std::cmp::Ordering::Less => (ca.get(i).copied(), None),
            std::cmp::Ordering::Greater => (None, cb.get(j).copied()),
            std::cmp::Ordering::Equal => (ca.get(i).copied(), cb.get(j).copied()),
        };
        i += usize::from(left.is_some());
        j += usize::from(right.is_some());
        walk(a, b, left, right, sources, out)?;
    }
    Ok(())
}

/// What identifies a file's bytes without reading them.
fn extent_key(f: &Flist, inode: &Inode) -> Vec<(Option<Hash>, u32, u64)> {
    f.extents(inode, 0, inode.size())
        .into_iter()
        .map(|e| match e {
            Extent::Data { chunk, offset, len } => {
                (f.chunks.get(chunk as usize).map(|c| c.plain_hash()), offset, u64::from(len))
            }
            Extent::Hole { len } => (None, 0, len),
        })
        .collect()
}

fn compare(a: &Flist, b: &Flist, x: &Inode, y: &Inode, sources: Sources) -> std::io::Result<Vec<&'static str>> {
    let mut fields = Vec::new();
    if x.kind() != y.kind() {
        fields.push("type");
        return Ok(fields);
    }
    if x.mode != y.mode {
        fields.push("mode");
    }
    if (x.uid, x.gid) != (y.uid, y.gid) {
        fields.push("owner");
    }
    if x.mtime != y.mtime {
        fields.push("mtime");
    }
    if x.xattrs != y.xattrs {
        fields.push("xattrs");
    }
    match (&x.data, &y.data) {
        (InodeData::Symlink(p), InodeData::Symlink(q)) if p != q => fields.push("target"),
        (InodeData::Device(p), InodeData::Device(q)) if p != q => fields.push("rdev"),
        (InodeData::File { size: p, .. }, InodeData::File { size: q, .. }) => {
            if p != q {
                fields.push("size");
                fields.push("content");
            } else if extent_key(a, x) != extent_key(b, y) {
                match sources {
                    Some((sa, sb)) => {
                        if read_all(a, sa, x)? != read_all(b, sb, y)? {
                            fields.push("content");
                        }
                    }
                    None => fields.push("content?"),
                }
            }
        }
        _ => {}
    }
    Ok(fields)
}
