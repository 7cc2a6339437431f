//! Checks that every chunk of an flist is present and intact in the stores.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::format::{ChunkRef, Flist, Hash};
use crate::store::Router;

/// What a verification found.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Distinct chunks checked.
    pub chunks: u64,
    /// Checks made (chunks × replicas when checking all replicas).
    pub checks: u64,
    /// Checks that passed.
    pub ok: u64,
    /// `(chunk id, store, why)` for each failure.
    pub failures: Vec<(String, String, String)>,
}

/// Fetches and verifies every distinct chunk: from the first replica that has it, or from every
/// replica when `all_replicas`.
pub fn verify(flist: &Flist, router: &Router, all_replicas: bool, progress: &(dyn Fn(u64) + Sync)) -> VerifyReport {
    let mut seen = BTreeSet::new();
    let chunks: Vec<&ChunkRef> = flist.chunks.iter().filter(|c| seen.insert(c.id)).collect();
    let ok = AtomicU64::new(0);
    let checks = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let record = |id: &Hash, store: &str, why: String| {
        crate::durable::lock(&failures).push((id.to_hex(), store.to_string(), why));
    };
    chunks.par_iter().for_each(|chunk| {
        if all_replicas {
            let stores: Vec<_> = router.stores_for(&chunk.id).collect();
            if stores.is_empty() {
                record(&chunk.id, "-", "no store serves its prefix".into());
            }
            for store in stores {
                checks.fetch_add(1, Ordering::Relaxed);
                match router.fetch_from(store.as_ref(), chunk) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(why) => {
                        record(&chunk.id, store.url(), why);
                        0
                    }
                };
            }
        } else {
            checks.fetch_add(1, Ordering::Relaxed);
            match router.fetch(chunk) {
                Ok(_) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => record(&chunk.id, "all", e.to_string()),
            }
        }
        progress(u64::from(chunk.len));
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    failures.sort();
    VerifyReport { chunks: chunks.len() as u64, checks: checks.into_inner(), ok: ok.into_inner(), failures }
}
