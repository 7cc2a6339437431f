//! Whole files assembled in the disk cache from verified chunks, so that the kernel can read them
//! directly (FUSE passthrough) instead of asking the FUSE server for every page.
//!
//! Only dense files of at least [`MIN_SIZE`] whose chunks are their own (the packer gives every
//! file above the minimum chunk size its own chunks) qualify: then the file is exactly the
//! concatenation of its chunks, so it can be checked against the chunk hashes the flist pins.
//! An assembled file is named by its content key (BLAKE3 over its chunks' hashes), so flists
//! sharing a file share it too. Before a mount first uses it, fs-verity is turned on for it and
//! its bytes are checked against the chunk hashes (read back through fs-verity, so what is
//! checked is what the kernel pins); one that fails is dropped. From then on the kernel checks
//! every page read from it, and the mount measures its fs-verity digest again on each open.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use crate::fetch::CachedSource;
use crate::format::{Extent, Flist, Hash, Inode, InodeData};
use crate::read::ChunkSource;

/// Smaller files gain nothing from passthrough: their pages stay in the kernel cache anyway.
pub const MIN_SIZE: u64 = 1 << 20;

/// A file that can be assembled: its content key and its chunks, in order.
pub struct Plan {
    /// BLAKE3 over the chunks' plain hashes: names the assembled file.
    pub key: Hash,
    chunks: Vec<u32>,
    size: u64,
}

/// The plan for `inode`, when it qualifies.
pub fn plan(flist: &Flist, inode: &Inode) -> Option<Plan> {
    let InodeData::File { size, regions: None, .. } = &inode.data else { return None };
    if *size < MIN_SIZE {
        return None;
    }
    let mut hasher = blake3::Hasher::new();
    let mut chunks = Vec::new();
    for extent in flist.extents(inode, 0, *size) {
        let Extent::Data { chunk, offset: 0, len } = extent else { return None };
        let c = flist.chunks.get(chunk as usize)?;
        if c.len != len {
            return None;
        }
        hasher.update(&c.plain_hash().0);
        chunks.push(chunk);
    }
    Some(Plan { key: Hash(*hasher.finalize().as_bytes()), chunks, size: *size })
}

/// Why an assembled file could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// A chunk could not be read.
    #[error("reading chunk {chunk}")]
    Chunk {
        /// Its index.
        chunk: u32,
        /// Why.
        #[source]
        source: crate::store::FetchError,
    },
    /// The assembled file could not be written.
    #[error("writing the assembled file")]
    Write(#[source] io::Error),
    /// fs-verity could not be turned on for it, or it did not match its chunks under fs-verity.
    #[error("the assembled file could not be sealed with fs-verity")]
    Sealing,
}

/// An assembled file under fs-verity, checked against the flist, and the digest it had then.
pub struct Ready {
    /// The plan's content key, which names it in the cache.
    pub key: Hash,
    /// Open for reading: the backing file handed to the kernel.
    pub file: File,
    /// Its fs-verity digest when it was checked.
    pub digest: crate::verity::Digest,
}

impl Ready {
    /// Whether the file is still the one that was checked: fs-verity still on, same digest.
    pub fn unchanged(&self) -> bool {
        crate::verity::measure(&self.file).is_ok_and(|d| d == self.digest)
    }
}

/// An assembled, verified file for `plan` under fs-verity: the cached one when it checks out,
/// else a new one built from the disk cache. `Ok(None)` when the source has no disk cache or
/// some chunk is not cached yet (assembling is never a reason to download).
pub fn prepare(flist: &Flist, plan: &Plan, source: &CachedSource) -> Result<Option<Ready>, AssembleError> {
    let Some(cache) = source.cache() else { return Ok(None) };
    if let Some(file) = cache.open_file(&plan.key) {
        if let Some(ready) = seal(flist, plan, file) {
            return Ok(Some(ready));
        }
        cache.drop_file(&plan.key);
    }
    let cached = |i: &u32| flist.chunks.get(*i as usize).is_some_and(|c| cache.has(c));
    if !plan.chunks.iter().all(cached) {
        return Ok(None);
    }
    let mut failed = None;
    let written = cache.put_file(&plan.key, plan.size, &mut |file| {
        for &chunk in &plan.chunks {
            match source.chunk(flist, chunk) {
                Ok(bytes) => file.write_all(&bytes)?,
                Err(source) => {
                    failed = Some(AssembleError::Chunk { chunk, source });
                    return Err(io::Error::other("chunk unavailable"));
                }
            }
        }
        Ok(())
    });
    match (written, failed) {
        (_, Some(e)) => Err(e),
        (Ok(file), None) => match seal(flist, plan, file) {
            Some(ready) => Ok(Some(ready)),
            None => {
                cache.drop_file(&plan.key);
                Err(AssembleError::Sealing)
            }
        },
        (Err(e), None) => Err(AssembleError::Write(e)),
    }
}

/// Turns fs-verity on for `file` (unless it is on already), then checks the bytes fs-verity now
/// pins against the plan's chunks; the file and its digest when both hold.
fn seal(flist: &Flist, plan: &Plan, file: File) -> Option<Ready> {
    if let Err(e) = crate::verity::enable(&file) {
        tracing::warn!("fs-verity on an assembled file: {e}");
        return None;
    }
    let digest = crate::verity::measure(&file).ok()?;
    verify(flist, plan, &file).then_some(Ready { key: plan.key, file, digest })
}

/// Whether `file` holds exactly the plan's chunks.
fn verify(flist: &Flist, plan: &Plan, file: &File) -> bool {
    if file.metadata().map(|m| m.len()).ok() != Some(plan.size) {
        return false;
    }
    let mut buf = Vec::new();
    let mut offset = 0;
    for &chunk in &plan.chunks {
        let Some(c) = flist.chunks.get(chunk as usize) else { return false };
        buf.resize(c.len as usize, 0);
        if file.read_exact_at(&mut buf, offset).is_err()
            || crate::chunk::plain_hash_of(c.format, &buf) != c.plain_hash()
        {
            return false;
        }
        offset += u64::from(c.len);
    }
    true
}
