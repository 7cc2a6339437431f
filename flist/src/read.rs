//! Reading file contents of an flist: extents from [`Flist::extents`], chunks from a
//! [`ChunkSource`] (the router directly here; the verified disk cache in front of it when
//! mounted), holes as zeros.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Mutex;

use crate::chunk::Verified;
use crate::format::{ChunkRef, Extent, Flist, Inode};
use crate::store::{FetchError, Router};

/// The chunk at `index` of `flist`, or an error naming the bad index.
pub fn chunk_ref(flist: &Flist, index: u32) -> Result<&ChunkRef, FetchError> {
    flist.chunks.get(index as usize).ok_or_else(|| FetchError {
        id: crate::format::Hash([0; 32]),
        failures: vec![format!("chunk index {index} out of range")],
    })
}

/// Gives verified chunk bytes by index in an flist's chunk table.
pub trait ChunkSource: Sync {
    /// Chunk `index` of `flist`, verified.
    fn chunk(&self, flist: &Flist, index: u32) -> Result<Verified, FetchError>;
}

/// Fetches straight from the stores, remembering the last few chunks so that reading a file in
/// small pieces (or several small files of one packed chunk) fetches each chunk once.
pub struct RouterSource<'a> {
    router: &'a Router,
    recent: Mutex<HashMap<u32, Verified>>,
}

const RECENT_CHUNKS: usize = 8;

impl<'a> RouterSource<'a> {
    /// A source over `router`.
    pub fn new(router: &'a Router) -> Self {
        RouterSource { router, recent: Mutex::new(HashMap::new()) }
    }
}

impl ChunkSource for RouterSource<'_> {
    fn chunk(&self, flist: &Flist, index: u32) -> Result<Verified, FetchError> {
        if let Some(v) = crate::durable::lock(&self.recent).get(&index) {
            return Ok(v.clone());
        }
        let v = self.router.fetch(chunk_ref(flist, index)?)?;
        let mut recent = crate::durable::lock(&self.recent);
        if recent.len() >= RECENT_CHUNKS {
            recent.clear();
        }
        recent.insert(index, v.clone());
        Ok(v)
    }
}

/// Writes `len` bytes of a file from `offset` into `out`.
pub fn copy_range(
    flist: &Flist,
    source: &dyn ChunkSource,
    inode: &Inode,
    offset: u64,
    len: u64,
    out: &mut dyn Write,
) -> io::Result<u64> {
    copy_extents(flist, source, &flist.extents(inode, offset, len), out)
}

/// The verified chunk a data extent lies in, and where in it the extent's bytes are.
pub fn extent_bytes(
    flist: &Flist,
    source: &dyn ChunkSource,
    chunk: u32,
    offset: u32,
    len: u32,
) -> io::Result<(Verified, std::ops::Range<usize>)> {
    let bytes = source.chunk(flist, chunk).map_err(io::Error::other)?;
    let range = offset as usize..offset as usize + len as usize;
    match bytes.get(range.clone()) {
        Some(_) => Ok((bytes, range)),
        None => Err(io::Error::other("extent outside its chunk")),
    }
}

/// Writes the bytes that `extents` (from [`Flist::extents`]) describe into `out`.
pub fn copy_extents(
    flist: &Flist,
    source: &dyn ChunkSource,
    extents: &[Extent],
    out: &mut dyn Write,
) -> io::Result<u64> {
    let zeros = [0u8; 64 * 1024];
    let mut written = 0;
    for &extent in extents {
        match extent {
            Extent::Data { chunk, offset, len } => {
                let (bytes, range) = extent_bytes(flist, source, chunk, offset, len)?;
                out.write_all(bytes.get(range).unwrap_or_default())?;
                written += u64::from(len);
            }
            Extent::Hole { mut len } => {
                written += len;
                while len > 0 {
                    let n = len.min(zeros.len() as u64) as usize;
                    out.write_all(zeros.get(..n).unwrap_or_default())?;
                    len -= n as u64;
                }
            }
        }
    }
    Ok(written)
}

/// A whole file's contents in memory (for small files and comparisons).
pub fn read_all(flist: &Flist, source: &dyn ChunkSource, inode: &Inode) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(inode.size().min(1 << 26) as usize);
    copy_range(flist, source, inode, 0, inode.size(), &mut out)?;
    Ok(out)
}
