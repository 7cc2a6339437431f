//! The chunk source a mount reads through: a small in-memory LRU, then the verified disk cache,
//! then the stores. Concurrent requests for one chunk share one download (single-flight), and
//! [`CachedSource::prefetch`] fetches ahead on background threads for sequential readers: each
//! chunk asked for ahead is queued once, the bytes queued or in flight ahead are capped, and a
//! fetcher never waits on another's download (it moves on to the next chunk instead).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::cache::Cache;
use crate::chunk::Verified;
use crate::format::{ChunkRef, Flist, Hash};
use crate::read::ChunkSource;
use crate::store::{FetchError, Router};

/// One download in progress; followers wait on the condvar for the leader's result.
#[derive(Default)]
struct Flight {
    /// The chunk, or what each store said (the waiters wrap it in their own error).
    result: Mutex<Option<Result<Verified, Vec<String>>>>,
    done: Condvar,
}

/// Recently used chunks, bounded by bytes.
struct Memory {
    chunks: HashMap<Hash, Verified>,
    order: VecDeque<Hash>,
    bytes: usize,
    limit: usize,
}

impl Memory {
    fn get(&mut self, id: &Hash) -> Option<Verified> {
        self.chunks.get(id).cloned()
    }

    fn put(&mut self, id: Hash, v: Verified) {
        if self.chunks.contains_key(&id) || v.len() > self.limit {
            return;
        }
        while self.bytes + v.len() > self.limit {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(gone) = self.chunks.remove(&old) {
                self.bytes -= gone.len();
            }
        }
        self.bytes += v.len();
        self.order.push_back(id);
        self.chunks.insert(id, v);
    }
}

/// Counters for tests and `stats`.
#[derive(Debug, Default, serde::Serialize)]
pub struct FetchStats {
    /// Chunks downloaded from stores.
    pub fetched: u64,
    /// Bytes of plain data downloaded.
    pub fetched_bytes: u64,
    /// Requests answered from memory.
    pub memory_hits: u64,
    /// Requests answered from the disk cache.
    pub disk_hits: u64,
    /// Requests that joined a download already in flight.
    pub joined: u64,
    /// Reader requests that had to wait for a download (their own or one in flight): what
    /// read-ahead and traces are there to bring down.
    pub waited: u64,
    /// The most bytes ever queued or in flight ahead of the readers (at most the cap).
    pub prefetch_peak_bytes: u64,
}

/// Chunks asked for ahead of readers: queued or being fetched.
#[derive(Default)]
struct Ahead {
    /// Their plain hashes.
    wanted: HashSet<Hash>,
    /// Their plain bytes.
    bytes: u64,
    /// At most this many bytes.
    cap: u64,
    /// The most there ever were.
    peak: u64,
}

impl Ahead {
    /// A chunk asked for ahead is no longer: fetched, failed, or never queued.
    fn release(&mut self, c: &ChunkRef) {
        if self.wanted.remove(&c.plain_hash()) {
            self.bytes = self.bytes.saturating_sub(u64::from(c.len));
        }
    }
}

/// How long a prefetcher waits for work before it gives its receive buffer back.
const PREFETCHER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Memory, disk cache and stores behind one [`ChunkSource`].
pub struct CachedSource {
    router: Router,
    cache: Option<Arc<Cache>>,
    memory: Mutex<Memory>,
    flights: Mutex<HashMap<Hash, Arc<Flight>>>,
    prefetch_tx: crossbeam_channel::Sender<(Arc<Flist>, u32)>,
    prefetch_rx: crossbeam_channel::Receiver<(Arc<Flist>, u32)>,
    ahead: Mutex<Ahead>,
    fetched: AtomicU64,
    fetched_bytes: AtomicU64,
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    joined: AtomicU64,
    waited: AtomicU64,
}

impl CachedSource {
    /// A source over `router`, caching on disk in `cache` when given and keeping up to
    /// `memory_bytes` of recent chunks in memory.
    pub fn new(router: Router, cache: Option<Arc<Cache>>, memory_bytes: usize) -> Arc<Self> {
        // Unbounded: what is queued is bounded in bytes by `ahead`.
        let (prefetch_tx, prefetch_rx) = crossbeam_channel::unbounded();
        Arc::new(CachedSource {
            router,
            cache,
            memory: Mutex::new(Memory {
                chunks: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                limit: memory_bytes,
            }),
            flights: Mutex::new(HashMap::new()),
            prefetch_tx,
            prefetch_rx,
            ahead: Mutex::new(Ahead::default()),
            fetched: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            memory_hits: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            waited: AtomicU64::new(0),
        })
    }

    /// Starts `threads` background fetchers serving [`CachedSource::prefetch`], with at most
    /// `cap` bytes queued or in flight ahead of the readers.
    pub fn start_prefetchers(self: &Arc<Self>, threads: usize, cap: u64) {
        crate::durable::lock(&self.ahead).cap = cap;
        for i in 0..threads {
            let me = Arc::downgrade(self);
            let rx = self.prefetch_rx.clone();
            let spawned = std::thread::Builder::new().name(format!("prefetch-{i}")).spawn(move || {
                // Keeps its receive buffer while work comes; gives it back once idle for a while
                // (giving it back whenever the queue ran dry cleared a new one for most chunks).
                let next = || match rx.recv_timeout(PREFETCHER_IDLE) {
                    Ok(job) => Some(job),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        crate::store::release_received();
                        rx.recv().ok()
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => None,
                };
                while let Some((flist, index)) = next() {
                    // The source is gone once its mount is: stop.
                    let Some(me) = me.upgrade() else { return };
                    let Some(c) = flist.chunks.get(index as usize) else { continue };
                    if let Err(e) = me.fetch_ahead(c) {
                        tracing::debug!("prefetch of chunk {index} failed: {e}");
                    }
                    crate::durable::lock(&me.ahead).release(c);
                }
            });
            if let Err(e) = spawned {
                tracing::warn!("no prefetch thread: {e}");
            }
        }
    }

    /// Asks the background fetchers for a chunk: nothing to do when it is in memory, being
    /// fetched or queued already; `false` when the bytes ahead of the readers are at their cap
    /// (or the index is not a chunk), and it was not queued.
    pub fn prefetch(&self, flist: &Arc<Flist>, index: u32) -> bool {
        let Some(c) = flist.chunks.get(index as usize) else { return false };
        let key = c.plain_hash();
        if self.lock_memory().get(&key).is_some() || crate::durable::lock(&self.flights).contains_key(&key) {
            return true;
        }
        {
            let mut ahead = crate::durable::lock(&self.ahead);
            if ahead.wanted.contains(&key) {
                return true;
            }
            let bytes = ahead.bytes.saturating_add(u64::from(c.len));
            if bytes > ahead.cap {
                return false;
            }
            ahead.wanted.insert(key);
            ahead.bytes = bytes;
            ahead.peak = ahead.peak.max(bytes);
        }
        if self.prefetch_tx.send((flist.clone(), index)).is_err() {
            crate::durable::lock(&self.ahead).release(c);
            return false;
        }
        true
    }

    /// Fetches a recorded trace's chunks ahead of the readers, in its order, on a thread of its
    /// own: each waits for room under the prefetch cap and until fewer than `depth` chunks are
    /// queued or in flight ahead of the readers, and no more than `cap` bytes in all are asked
    /// for. Ends early when the mount is gone.
    ///
    /// The depth keeps the replay just ahead of the reads it stands for, which come in its
    /// order: where the CPU or the link is what limits (a guest under emulation), chunks fetched
    /// side by side share it, and the one a reader waits for comes later the more are ahead.
    pub fn replay(self: &Arc<Self>, flist: Arc<Flist>, trace: crate::trace::Trace, cap: u64, depth: usize) {
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("trace-replay".into()).spawn(move || {
            let mut asked = 0u64;
            for index in trace.chunks {
                let Some(c) = flist.chunks.get(index as usize) else { continue };
                asked = asked.saturating_add(u64::from(c.len));
                if asked > cap {
                    tracing::info!("trace replay stopped at its cap of {cap} bytes");
                    return;
                }
                loop {
                    let Some(me) = me.upgrade() else { return };
                    let room = crate::durable::lock(&me.ahead).wanted.len() < depth.max(1);
                    if room && me.prefetch(&flist, index) {
                        break;
                    }
                    drop(me);
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("no trace replay: {e}");
        }
    }

    /// Brings a chunk into memory for a reader to come: from the disk cache, or downloaded
    /// unless another thread is downloading it already.
    fn fetch_ahead(&self, c: &ChunkRef) -> Result<(), FetchError> {
        let key = c.plain_hash();
        if self.lock_memory().get(&key).is_some() {
            return Ok(());
        }
        if let Some(v) = self.cache.as_ref().and_then(|cache| cache.get(c)) {
            self.lock_memory().put(key, v);
            return Ok(());
        }
        self.download(c, false).map(|_| ())
    }

    fn lock_memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        crate::durable::lock(&self.memory)
    }

    /// Every store's health (failures in a row, whether it is tried last for now).
    pub fn store_health(&self) -> Vec<crate::store::StoreHealth> {
        self.router.health()
    }

    /// Counters so far.
    pub fn stats(&self) -> FetchStats {
        FetchStats {
            fetched: self.fetched.load(Ordering::Relaxed),
            fetched_bytes: self.fetched_bytes.load(Ordering::Relaxed),
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
            disk_hits: self.disk_hits.load(Ordering::Relaxed),
            joined: self.joined.load(Ordering::Relaxed),
            waited: self.waited.load(Ordering::Relaxed),
            prefetch_peak_bytes: crate::durable::lock(&self.ahead).peak,
        }
    }

    /// The disk cache, if any.
    pub fn cache(&self) -> Option<&Arc<Cache>> {
        self.cache.as_ref()
    }

    fn get_chunk(&self, c: &ChunkRef) -> Result<Verified, FetchError> {
        let key = c.plain_hash();
        if let Some(v) = self.lock_memory().get(&key) {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(v);
        }
        if let Some(v) = self.cache.as_ref().and_then(|cache| cache.get(c)) {
            self.disk_hits.fetch_add(1, Ordering::Relaxed);
            self.lock_memory().put(key, v.clone());
            return Ok(v);
        }
        self.waited.fetch_add(1, Ordering::Relaxed);
        match self.download(c, true)? {
            Some(v) => Ok(v),
            None => Err(FetchError { id: c.id, failures: vec!["download vanished".into()] }),
        }
    }

    /// Downloads a chunk, or (with `join`) waits for the download of it already in flight;
    /// `None` when another thread is downloading it and `join` is false.
    fn download(&self, c: &ChunkRef, join: bool) -> Result<Option<Verified>, FetchError> {
        let key = c.plain_hash();
        let (flight, leader) = {
            let mut flights = crate::durable::lock(&self.flights);
            match flights.get(&key) {
                Some(_) if !join => return Ok(None),
                Some(f) => (f.clone(), false),
                None => {
                    // A download may have finished between the memory check and this lock.
                    if let Some(v) = self.lock_memory().get(&key) {
                        return Ok(Some(v));
                    }
                    let f = Arc::new(Flight::default());
                    flights.insert(key, f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            self.joined.fetch_add(1, Ordering::Relaxed);
            let mut result = crate::durable::lock(&flight.result);
            while result.is_none() {
                result = flight.done.wait(result).unwrap_or_else(|p| p.into_inner());
            }
            return match result.as_ref() {
                Some(Ok(v)) => Ok(Some(v.clone())),
                Some(Err(failures)) => Err(FetchError { id: c.id, failures: failures.clone() }),
                None => Ok(None),
            };
        }
        let result = self.router.fetch(c);
        if let Ok(v) = &result {
            tracing::debug!("fetched chunk {} ({} bytes)", c.id, v.len());
            self.fetched.fetch_add(1, Ordering::Relaxed);
            self.fetched_bytes.fetch_add(v.len() as u64, Ordering::Relaxed);
            if let Some(cache) = &self.cache {
                cache.put(c, v);
            }
            self.lock_memory().put(key, v.clone());
        }
        *crate::durable::lock(&flight.result) = Some(match &result {
            Ok(v) => Ok(v.clone()),
            Err(e) => Err(e.failures.clone()),
        });
        flight.done.notify_all();
        crate::durable::lock(&self.flights).remove(&key);
        result.map(Some)
    }
}

impl ChunkSource for CachedSource {
    fn chunk(&self, flist: &Flist, index: u32) -> Result<Verified, FetchError> {
        self.get_chunk(crate::read::chunk_ref(flist, index)?)
    }
}
