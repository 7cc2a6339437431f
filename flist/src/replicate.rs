//! Chunks between stores: [`copy`] copies an flist's chunks that the target lacks, in parallel,
//! each object verified against the flist before it is written (a tampered source object is
//! reported and never copied; objects are copied as stored, compressed and maybe encrypted).
//! [`gc`] finds, and optionally deletes, the objects of a store that no kept flist names.

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

/// Runs `work` on a pool of `threads` (on the global pool if one cannot be made).
fn on_pool(threads: usize, work: impl FnOnce() + Send) {
    match rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build() {
        Ok(pool) => pool.install(work),
        Err(_) => work(),
    }
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
    let record = |f: &dyn Fn(&mut CopyReport)| f(&mut crate::durable::lock(&report));
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
    on_pool(threads, work);
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

/// What a garbage collection found (and did).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    /// Objects in the store.
    pub objects: usize,
    /// Objects a kept flist names.
    pub kept: usize,
    /// Objects no kept flist names.
    pub garbage: Vec<String>,
    /// Of those, deleted now.
    pub deleted: usize,
    /// Deletions that failed, and why.
    pub failures: BTreeMap<String, String>,
}

/// Mark and sweep: the objects of `store` that none of `keep` names are garbage; with `delete`
/// they are removed (in parallel), else only reported.
pub fn gc(
    keep: &[Flist],
    store: &dyn Store,
    delete: bool,
    threads: usize,
) -> Result<GcReport, crate::store::StoreError> {
    let marked: std::collections::HashSet<Hash> = keep.iter().flat_map(|f| f.chunks.iter().map(|c| c.id)).collect();
    let objects = store.list()?;
    let garbage: Vec<Hash> = objects.iter().filter(|id| !marked.contains(id)).copied().collect();
    let report = Mutex::new(GcReport {
        objects: objects.len(),
        kept: objects.len() - garbage.len(),
        garbage: garbage.iter().map(Hash::to_hex).collect(),
        ..GcReport::default()
    });
    if delete {
        let work = || {
            garbage.par_iter().for_each(|id| {
                let result = store.delete(id);
                let mut r = crate::durable::lock(&report);
                match result {
                    Ok(()) => r.deleted += 1,
                    Err(e) => {
                        r.failures.insert(id.to_hex(), e.to_string());
                    }
                }
            })
        };
        on_pool(threads, work);
    }
    Ok(report.into_inner().unwrap_or_else(|p| p.into_inner()))
}
