//! The router: which stores hold a chunk (by the first byte of its id, like rfs's route table),
//! in which order to try them, how often to retry, and verification of what comes back. A
//! corrupt or missing object on one replica is logged and the next replica is tried; nothing
//! unverified ever leaves [`Router::fetch`].
//!
//! Each store has a health record: a store that keeps failing with transient errors (down,
//! timing out) is tried after the healthy replicas for a cool-off that grows while it stays
//! down, so a dead replica does not cost every read its retries; one success heals it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{display_url, open, parse_route, Received, Store, StoreError};
use crate::chunk::{self, Sealed, Verified};
use crate::format::{ChunkRef, Flist, Format, Hash, Route};

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
    pub(crate) fn run<T>(&self, mut op: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
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

/// A write that some replicas missed: the chunk is stored, but not everywhere it routes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missed {
    /// The stores that failed to take it, and why.
    pub stores: Vec<(String, String)>,
}

struct Routed {
    start: u8,
    end: u8,
    store: Arc<dyn Store>,
    health: Mutex<Health>,
    traffic: Traffic,
}

/// What one store served, for metrics: kept apart from [`Health`], which a success resets.
#[derive(Debug, Default)]
struct Traffic {
    fetched: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
}

/// Consecutive transient failures of one store, and until when it counts as down.
#[derive(Debug, Default, Clone)]
struct Health {
    failures: u32,
    down_until: Option<Instant>,
}

/// Failed fetches (each already retried) before a store counts as down.
const DOWN_AFTER: u32 = 2;
/// The first cool-off; it doubles while the store keeps failing, up to `MAX_COOL_OFF`.
const COOL_OFF: Duration = Duration::from_secs(5);
const MAX_COOL_OFF: Duration = Duration::from_secs(300);

/// A store's health as reported by [`Router::health`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreHealth {
    /// The store.
    pub url: String,
    /// Consecutive transient failures.
    pub failures: u32,
    /// Whether it is tried last for now.
    pub down: bool,
    /// Chunks it served that verified.
    #[serde(default)]
    pub fetched: u64,
    /// Bytes of those chunks as stored (what crossed the wire).
    #[serde(default)]
    pub bytes: u64,
    /// Fetches from it that failed (after retries) or did not verify.
    #[serde(default)]
    pub errors: u64,
}

impl Routed {
    fn is_down(&self) -> bool {
        let h = crate::durable::lock(&self.health);
        h.down_until.is_some_and(|t| Instant::now() < t)
    }

    fn record(&self, transient_failure: bool) {
        let mut h = crate::durable::lock(&self.health);
        if !transient_failure {
            if h.down_until.is_some() {
                // At the failure's level, so that whoever saw it go sees it come back.
                tracing::warn!("store {} answers again", self.store.url());
            }
            *h = Health::default();
            return;
        }
        // Requests in flight when a store went down fail together: one outage, not several. Only
        // a failure after the cool-off (the store was tried again) lengthens the next one.
        if h.down_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        h.failures = h.failures.saturating_add(1);
        if h.failures >= DOWN_AFTER {
            let doublings = (h.failures - DOWN_AFTER).min(10);
            let cool_off = COOL_OFF.saturating_mul(1 << doublings).min(MAX_COOL_OFF);
            tracing::warn!("store {} is failing; trying it last for {cool_off:?}", self.store.url());
            h.down_until = Some(Instant::now() + cool_off);
        }
    }
}

/// Stores by id prefix, with replicas and retries.
pub struct Router {
    routes: Vec<Routed>,
    policy: RetryPolicy,
}

thread_local! {
    /// Each fetching thread's buffer for stored objects, reused from chunk to chunk.
    static RECEIVED: std::cell::RefCell<Received> = std::cell::RefCell::new(Received::default());
}

/// Runs `f` with this thread's receive buffer (a fresh one should it be in use already).
fn received<T>(f: impl FnOnce(&mut Received) -> T) -> T {
    RECEIVED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => {
            let out = f(&mut kept);
            kept.clear();
            out
        }
        Err(_) => f(&mut Received::default()),
    })
}

/// Gives back this thread's receive buffer: a thread that sits idle (a prefetcher without work
/// for a while) keeps no memory for fetches that may never come.
pub fn release_received() {
    RECEIVED.with(|cell| {
        if let Ok(mut kept) = cell.try_borrow_mut() {
            *kept = Received::default();
        }
    });
}

/// Opens a received object as `chunk`, with its stored size.
fn open_received(chunk: &ChunkRef, into: &Received) -> (Result<Verified, chunk::ChunkError>, usize) {
    (chunk::open(chunk, into.bytes()), into.bytes().len())
}

impl Router {
    /// A router with no stores.
    pub fn new(policy: RetryPolicy) -> Self {
        Router { routes: Vec::new(), policy }
    }

    /// Adds a store for ids whose first byte is in `start..=end`.
    pub fn add(&mut self, start: u8, end: u8, store: Arc<dyn Store>) {
        self.routes.push(Routed { start, end, store, health: Mutex::default(), traffic: Traffic::default() });
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

    /// The router an flist is read through: the stores given (`--store` specs), else those it
    /// records. An rfs `.fl`'s URLs, recorded or given, are in rfs's syntax ([`super::from_rfs_url`]).
    pub fn for_flist<S: AsRef<str>>(flist: &Flist, specs: &[S], policy: RetryPolicy) -> Result<Self, StoreError> {
        let url = |u: &str| match flist.format {
            Format::Flint => u.to_string(),
            Format::Rfs => super::from_rfs_url(u),
        };
        let mut router = Router::new(policy);
        if specs.is_empty() {
            for r in &flist.routes {
                router.add(r.start, r.end, open(&url(&r.url))?);
            }
        }
        for spec in specs {
            let (start, end, given) = parse_route(spec.as_ref())?;
            router.add(start, end, open(&url(&given))?);
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

    fn routed_for<'a>(&'a self, id: &Hash) -> impl Iterator<Item = &'a Routed> + 'a {
        let first = id.0[0];
        self.routes.iter().filter(move |r| (r.start..=r.end).contains(&first))
    }

    /// The stores that should hold `id`, in route order.
    pub fn stores_for<'a>(&'a self, id: &Hash) -> impl Iterator<Item = &'a Arc<dyn Store>> + 'a {
        self.routed_for(id).map(|r| &r.store)
    }

    /// Every store's health.
    pub fn health(&self) -> Vec<StoreHealth> {
        self.routes
            .iter()
            .map(|r| {
                let failures = crate::durable::lock(&r.health).failures;
                let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
                StoreHealth {
                    url: display_url(r.store.url()),
                    failures,
                    down: r.is_down(),
                    fetched: count(&r.traffic.fetched),
                    bytes: count(&r.traffic.bytes),
                    errors: count(&r.traffic.errors),
                }
            })
            .collect()
    }

    /// Fetches and verifies a chunk, trying each replica in turn: healthy ones first, in route
    /// order, then those that are down.
    pub fn fetch(&self, chunk: &ChunkRef) -> Result<Verified, FetchError> {
        let mut replicas: Vec<&Routed> = self.routed_for(&chunk.id).collect();
        replicas.sort_by_key(|r| r.is_down());
        let mut failures = Vec::new();
        for routed in replicas {
            let store = routed.store.as_ref();
            let got = received(|into| {
                self.policy.run(|| store.get_into(&chunk.id, into)).map(|()| open_received(chunk, into))
            });
            routed.record(got.as_ref().err().is_some_and(StoreError::is_transient));
            let add = |c: &std::sync::atomic::AtomicU64, n: u64| c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            let why = match got {
                Ok((opened, bytes)) => match opened {
                    Ok(v) => {
                        add(&routed.traffic.fetched, 1);
                        add(&routed.traffic.bytes, bytes as u64);
                        return Ok(v);
                    }
                    Err(e) if e.is_metadata_fault(chunk.format) => {
                        // The store served what was asked for: not its failure.
                        add(&routed.traffic.fetched, 1);
                        tracing::error!("{e}");
                        failures.push(e.to_string());
                        return Err(FetchError { id: chunk.id, failures });
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            add(&routed.traffic.errors, 1);
            tracing::warn!("chunk {} from {}: {why}", chunk.id, store.url());
            failures.push(why);
        }
        Err(FetchError { id: chunk.id, failures })
    }

    /// Fetches and verifies a chunk from one given store, with retries.
    pub fn fetch_from(&self, store: &dyn Store, chunk: &ChunkRef) -> Result<Verified, String> {
        let (opened, _) =
            received(|into| self.policy.run(|| store.get_into(&chunk.id, into)).map(|()| open_received(chunk, into)))
                .map_err(|e| e.to_string())?;
        opened.map_err(|e| e.to_string())
    }

    /// Writes a sealed chunk to every store its id routes to, skipping those that have it. A
    /// replica that fails is reported in the second value (and its health recorded) as long as
    /// another one took the chunk: writes degrade with a replica down, and `store copy` repairs
    /// it later. Only when no store holds the chunk is it an error.
    pub fn put(&self, sealed: &Sealed) -> Result<(PutOutcome, Option<Missed>), StoreError> {
        let id = &sealed.chunk.id;
        let (mut new, mut stored) = (false, false);
        let mut missed = Vec::new();
        let mut last_error = None;
        for routed in self.routed_for(id) {
            let store = &routed.store;
            let result = self.policy.run(|| store.has(id)).and_then(|has| {
                if !has {
                    self.policy.run(|| store.put(id, &sealed.bytes))?;
                }
                Ok(!has)
            });
            routed.record(result.as_ref().err().is_some_and(StoreError::is_transient));
            match result {
                Ok(added) => {
                    new |= added;
                    stored = true;
                }
                Err(e) => {
                    missed.push((display_url(store.url()), e.to_string()));
                    last_error = Some(e);
                }
            }
        }
        match (stored, last_error) {
            (true, _) => Ok((PutOutcome { new }, (!missed.is_empty()).then_some(Missed { stores: missed }))),
            (false, Some(e)) => Err(e),
            (false, None) => {
                Err(StoreError::Failed { store: "router".into(), why: format!("no store serves chunk {id}") })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn a_dead_replica_is_tried_last_once_it_keeps_failing() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = chunk::seal(b"some chunk", false, 3).unwrap();
        let good = open(&format!("dir://{}", dir.path().display())).unwrap();
        good.put(&sealed.chunk.id, &sealed.bytes).unwrap();
        // A port nothing listens on: connections are refused, a transient failure.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dead = open(&format!("http://127.0.0.1:{port}/store")).unwrap();
        let policy =
            RetryPolicy { attempts: 2, first_backoff: Duration::from_millis(1), max_backoff: Duration::from_millis(1) };
        let mut router = Router::new(policy);
        router.add(0, 255, dead);
        router.add(0, 255, good);

        for expected_failures in 1..=DOWN_AFTER {
            router.fetch(&sealed.chunk).unwrap();
            assert_eq!(router.health()[0].failures, expected_failures, "the dead store is tried first while healthy");
        }
        assert!(router.health()[0].down && !router.health()[1].down, "{:?}", router.health());
        router.fetch(&sealed.chunk).unwrap();
        assert_eq!(router.health()[0].failures, DOWN_AFTER, "a store that is down is not tried while another serves");
    }

    #[test]
    fn failures_during_a_cool_off_do_not_lengthen_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut router = Router::new(RetryPolicy::default());
        router.add(0, 255, open(&format!("dir://{}", dir.path().display())).unwrap());
        let routed = &router.routes[0];
        let down_until = || routed.health.lock().unwrap().down_until;
        for _ in 0..DOWN_AFTER {
            routed.record(true);
        }
        let first = down_until().unwrap();
        // Other requests in flight when it went down fail as well.
        for _ in 0..5 {
            routed.record(true);
        }
        assert_eq!((down_until(), router.health()[0].failures), (Some(first), DOWN_AFTER));
        // Tried again after the cool-off, and failing: the next cool-off is twice as long.
        routed.health.lock().unwrap().down_until = Some(Instant::now());
        routed.record(true);
        let second = down_until().unwrap().saturating_duration_since(Instant::now());
        assert!(second > COOL_OFF && second <= COOL_OFF * 2, "{second:?}");
        routed.record(false);
        assert!(!router.health()[0].down && router.health()[0].failures == 0);
    }
}
