//! The router: which stores hold a chunk (by the first byte of its id, like rfs's route table),
//! in which order to try them, how often to retry, and verification of what comes back. A
//! corrupt or missing object on one replica is logged and the next replica is tried; nothing
//! unverified ever leaves [`Router::fetch`].

use std::sync::Arc;
use std::time::Duration;

use super::{display_url, open, parse_route, Store, StoreError};
use crate::chunk::{self, Sealed, Verified};
use crate::format::{ChunkRef, Hash, Route};

/// How hard to try one store before moving on.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts per store for transient errors (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time.
    pub first_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 3, first_backoff: Duration::from_millis(200), max_backoff: Duration::from_secs(2) }
    }
}

impl RetryPolicy {
    /// Runs `op` until it succeeds, fails for good, or the attempts are spent.
    fn run<T>(&self, mut op: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut backoff = self.first_backoff;
        let mut attempt = 1;
        loop {
            match op() {
                Err(e) if e.is_transient() && attempt < self.attempts.max(1) => {
                    tracing::debug!("{e}; retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(self.max_backoff);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Every store failed to deliver a verified chunk.
#[derive(Debug, thiserror::Error)]
#[error("chunk {id} could not be fetched: {}", if .failures.is_empty() { "no store serves its prefix".to_string() } else { .failures.join("; ") })]
pub struct FetchError {
    /// The chunk's id.
    pub id: Hash,
    /// What each store said.
    pub failures: Vec<String>,
}

/// What a put did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// True when at least one store did not have the chunk yet.
    pub new: bool,
}

struct Routed {
    start: u8,
    end: u8,
    store: Arc<dyn Store>,
}

/// Stores by id prefix, with replicas and retries.
pub struct Router {
    routes: Vec<Routed>,
    policy: RetryPolicy,
}

impl Router {
    /// A router with no stores.
    pub fn new(policy: RetryPolicy) -> Self {
        Router { routes: Vec::new(), policy }
    }

    /// Adds a store for ids whose first byte is in `start..=end`.
    pub fn add(&mut self, start: u8, end: u8, store: Arc<dyn Store>) {
        self.routes.push(Routed { start, end, store });
    }

    /// A router from `--store` arguments (`URL` or `START-END=URL`).
    pub fn from_specs<S: AsRef<str>>(specs: &[S], policy: RetryPolicy) -> Result<Self, StoreError> {
        let mut router = Router::new(policy);
        for spec in specs {
            let (start, end, url) = parse_route(spec.as_ref())?;
            router.add(start, end, open(&url)?);
        }
        Ok(router)
    }

    /// A router from the routes recorded in an flist.
    pub fn from_routes(routes: &[Route], policy: RetryPolicy) -> Result<Self, StoreError> {
        let mut router = Router::new(policy);
        for r in routes {
            router.add(r.start, r.end, open(&r.url)?);
        }
        Ok(router)
    }

    /// The routes as an flist records them (credentials stripped).
    pub fn routes(&self) -> Vec<Route> {
        self.routes.iter().map(|r| Route { start: r.start, end: r.end, url: display_url(r.store.url()) }).collect()
    }

    /// Whether any store is configured.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The stores that should hold `id`, in the order to try them.
    pub fn stores_for<'a>(&'a self, id: &Hash) -> impl Iterator<Item = &'a Arc<dyn Store>> + 'a {
        let first = id.0[0];
        self.routes.iter().filter(move |r| (r.start..=r.end).contains(&first)).map(|r| &r.store)
    }

    /// Fetches and verifies a chunk, trying each replica in turn.
    pub fn fetch(&self, chunk: &ChunkRef) -> Result<Verified, FetchError> {
        let mut failures = Vec::new();
        for store in self.stores_for(&chunk.id) {
            match self.fetch_from(store.as_ref(), chunk) {
                Ok(v) => return Ok(v),
                Err(why) => {
                    tracing::warn!("chunk {} from {}: {why}", chunk.id, store.url());
                    failures.push(why);
                }
            }
        }
        Err(FetchError { id: chunk.id, failures })
    }

    /// Fetches and verifies a chunk from one given store, with retries.
    pub fn fetch_from(&self, store: &dyn Store, chunk: &ChunkRef) -> Result<Verified, String> {
        let bytes = self.policy.run(|| store.get(&chunk.id)).map_err(|e| e.to_string())?;
        chunk::open(chunk, &bytes).map_err(|e| e.to_string())
    }

    /// Writes a sealed chunk to every store its id routes to, skipping those that have it.
    pub fn put(&self, sealed: &Sealed) -> Result<PutOutcome, StoreError> {
        let id = &sealed.chunk.id;
        let mut new = false;
        let mut any = false;
        for store in self.stores_for(id) {
            any = true;
            if !self.policy.run(|| store.has(id))? {
                self.policy.run(|| store.put(id, &sealed.bytes))?;
                new = true;
            }
        }
        if !any {
            return Err(StoreError::Failed { store: "router".into(), why: format!("no store serves chunk {id}") });
        }
        Ok(PutOutcome { new })
    }
}
