//! Copying an flist's chunks between stores: only what the target lacks, in parallel, each
//! object verified against the flist before it is written (a tampered source object is
//! reported and never copied). Objects are copied as stored (compressed, maybe encrypted).

use std::collections::BTreeMap;
use std::sync::Mutex;

use rayon::prelude::*;

use crate::chunk;
use crate::format::{ChunkRef, Flist, Hash};
use crate::store::Store;

/// What a copy did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CopyReport {
    /// Distinct chunks the flists name.
    pub chunks: usize,
    /// Already in the target.
    pub present: usize,
    /// Copied now.
    pub copied: usize,
    /// Stored bytes copied.
    pub bytes: u64,
    /// Chunks that could not be copied, and why.
    pub failures: BTreeMap<String, String>,
}

/// Copies every chunk of `flists` that `to` lacks from `from`, with `threads` workers;
/// `progress` hears of each chunk done.
pub fn copy(
    flists: &[Flist],
    from: &dyn Store,
    to: &dyn Store,
    threads: usize,
    progress: &(dyn Fn() + Sync),
) -> CopyReport {
    let mut wanted: BTreeMap<Hash, ChunkRef> = BTreeMap::new();
    for f in flists {
        for c in &f.chunks {
            wanted.insert(c.id, *c);
        }
    }
    let report = Mutex::new(CopyReport { chunks: wanted.len(), ..CopyReport::default() });
    let record = |f: &dyn Fn(&mut CopyReport)| f(&mut report.lock().unwrap_or_else(|p| p.into_inner()));
    let work = || {
        wanted.values().par_bridge().for_each(|c| {
            match copy_one(c, from, to) {
                Ok(None) => record(&|r| r.present += 1),
                Ok(Some(n)) => record(&|r| {
                    r.copied += 1;
                    r.bytes += n;
                }),
                Err(why) => record(&|r| {
                    r.failures.insert(c.id.to_hex(), why.clone());
                }),
            }
            progress();
        })
    };
    match rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build() {
        Ok(pool) => pool.install(work),
        Err(_) => work(),
    }
    report.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// `Ok(None)` if `to` has it, `Ok(Some(bytes))` if copied.
fn copy_one(c: &ChunkRef, from: &dyn Store, to: &dyn Store) -> Result<Option<u64>, String> {
    if to.has(&c.id).map_err(|e| e.to_string())? {
        return Ok(None);
    }
    let stored = from.get(&c.id).map_err(|e| e.to_string())?;
    chunk::open(c, &stored).map_err(|e| e.to_string())?;
    to.put(&c.id, &stored).map_err(|e| e.to_string())?;
    Ok(Some(stored.len() as u64))
}
