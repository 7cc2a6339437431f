//! The verified disk cache: plain chunk bytes on local disk, shared by every flist on the node.
//!
//! Entries are named by the BLAKE3 of their plain bytes, so identical content dedups across all
//! flists (encrypted or not). Every read from disk is hashed again before use: a flipped bit is
//! detected, the entry dropped and the chunk refetched, never served (rfs trusted any non-empty
//! cache file forever). Writes go to a temporary file, are synced, then renamed, so a crash
//! leaves either the whole entry or none. A byte quota is kept by evicting the least recently
//! used entries; a full disk evicts more and, failing that, serves without caching.
//!
//! Next to chunks, the cache can hold whole files assembled from verified chunks (`files/`), for
//! the kernel to read directly through FUSE passthrough; [`crate::assembled`] verifies them
//! against the chunk hashes once per mount. They count in the same quota and LRU.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::chunk::{verify_plain, Verified};
use crate::format::{ChunkRef, Format, Hash};

/// Why the cache could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("opening the cache at {}", path.display())]
pub struct CacheError {
    /// The cache directory.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// Counters and sizes, for `flist cache stats`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CacheStats {
    /// Entries on disk.
    pub entries: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// The quota.
    pub quota: u64,
    /// Reads served from disk, verified.
    pub hits: u64,
    /// Reads that found nothing.
    pub misses: u64,
    /// Entries found corrupt and dropped.
    pub corrupt: u64,
    /// Entries evicted to stay under the quota.
    pub evicted: u64,
    /// Writes that failed (then served uncached).
    pub write_errors: u64,
    /// Chunks named by the pin set (a node's last good version), kept against eviction.
    pub pinned: u64,
}

/// A cache entry: a chunk named by the BLAKE3 of its plain bytes, an rfs block by their
/// BLAKE2b-256 (under `rfs/`, re-checked with that hash), or an assembled file by its content key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Key {
    Chunk(Hash),
    Block(Hash),
    File(Hash),
}

impl Key {
    fn of(chunk: &ChunkRef) -> Key {
        match chunk.format {
            Format::Flint => Key::Chunk(chunk.plain_hash()),
            Format::Rfs => Key::Block(chunk.plain_hash()),
        }
    }
}

#[derive(Default)]
struct Index {
    /// Size and last-use tick of each entry.
    entries: HashMap<Key, (u64, u64)>,
    /// Entries by last use, oldest first.
    by_use: BTreeMap<u64, Key>,
    /// Chunks kept against eviction.
    pinned: HashSet<Hash>,
    tick: u64,
    stats: CacheStats,
}

impl Index {
    fn touch(&mut self, id: Key, size: u64) {
        self.tick += 1;
        if let Some((old_size, old_tick)) = self.entries.insert(id, (size, self.tick)) {
            self.by_use.remove(&old_tick);
            self.stats.bytes -= old_size;
        } else {
            self.stats.entries += 1;
            self.stats.pinned += u64::from(self.is_pinned(&id));
        }
        self.stats.bytes += size;
        // Pinned entries are not in the eviction order at all.
        if !self.is_pinned(&id) {
            self.by_use.insert(self.tick, id);
        }
    }

    fn is_pinned(&self, id: &Key) -> bool {
        matches!(id, Key::Chunk(h) | Key::Block(h) if self.pinned.contains(h))
    }

    /// Makes `chunks` the pin set: they leave the eviction order, the chunks pinned before
    /// (and no longer) go back into it.
    fn pin(&mut self, chunks: HashSet<Hash>) {
        self.pinned = chunks;
        let mut pinned = 0;
        for (id, &(_, tick)) in &self.entries {
            if self.is_pinned(id) {
                self.by_use.remove(&tick);
                pinned += 1;
            } else {
                self.by_use.insert(tick, *id);
            }
        }
        self.stats.pinned = pinned;
    }

    fn forget(&mut self, id: &Key) {
        if let Some((size, tick)) = self.entries.remove(id) {
            self.by_use.remove(&tick);
            self.stats.pinned -= u64::from(self.is_pinned(id));
            self.stats.bytes -= size;
            self.stats.entries -= 1;
        }
    }

    fn oldest(&self) -> Option<Key> {
        self.by_use.values().next().copied()
    }
}

/// A chunk cache in a directory.
pub struct Cache {
    root: PathBuf,
    quota: u64,
    index: Mutex<Index>,
}

/// Where assembled files live, under the cache root.
const FILES: &str = "files";
/// Where rfs blocks live, under the cache root.
const BLOCKS: &str = "rfs";

fn hex_name(id: &Hash) -> (String, String) {
    let hex = id.to_hex();
    (hex.get(..2).unwrap_or_default().to_string(), hex)
}

type Found = Vec<(Option<std::time::SystemTime>, Key, u64)>;

/// Collects the entries of a fanned-out directory (`ab/abcd…`); a missing directory is empty.
fn scan(dir: &Path, key: fn(Hash) -> Key, found: &mut Found) -> io::Result<()> {
    let fans = match fs::read_dir(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for fan in fans.flatten() {
        if fan.file_name().len() != 2 {
            continue;
        }
        for e in fs::read_dir(fan.path())?.flatten() {
            let Some(id) = e.file_name().to_str().and_then(Hash::from_hex) else { continue };
            if let Ok(md) = e.metadata() {
                found.push((md.modified().ok(), key(id), md.len()));
            }
        }
    }
    Ok(())
}

impl Cache {
    /// Opens (creating) a cache in `root` holding at most `quota` bytes. Existing entries are
    /// indexed oldest-modified first; anything that is not an entry is left alone.
    pub fn open(root: &Path, quota: u64) -> Result<Cache, CacheError> {
        let err = |source| CacheError { path: root.to_path_buf(), source };
        fs::create_dir_all(root.join("tmp")).map_err(err)?;
        // Leftovers of writes interrupted by a crash.
        for e in fs::read_dir(root.join("tmp")).map_err(err)?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let mut found = Vec::new();
        scan(root, Key::Chunk, &mut found).map_err(err)?;
        scan(&root.join(FILES), Key::File, &mut found).map_err(err)?;
        scan(&root.join(BLOCKS), Key::Block, &mut found).map_err(err)?;
        found.sort_by_key(|(modified, _, _)| *modified);
        let cache = Cache { root: root.to_path_buf(), quota, index: Mutex::new(Index::default()) };
        {
            let mut index = cache.lock();
            index.stats.quota = quota;
            for (_, id, size) in found {
                index.touch(id, size);
            }
        }
        cache.evict_to(quota);
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        crate::durable::lock(&self.index)
    }

    fn path(&self, key: &Key) -> PathBuf {
        let (dir, id) = match key {
            Key::Chunk(id) => (self.root.clone(), id),
            Key::Block(id) => (self.root.join(BLOCKS), id),
            Key::File(id) => (self.root.join(FILES), id),
        };
        let (fan, name) = hex_name(id);
        dir.join(fan).join(name)
    }

    /// Whether the chunk is cached (not verified: [`Cache::get`] does that).
    pub fn has(&self, chunk: &ChunkRef) -> bool {
        self.lock().entries.contains_key(&Key::of(chunk))
    }

    /// The cached plain bytes of `chunk`, verified; `None` when absent or found corrupt (then
    /// dropped, so the caller refetches).
    pub fn get(&self, chunk: &ChunkRef) -> Option<Verified> {
        let key = Key::of(chunk);
        let path = self.path(&key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(_) => {
                let mut index = self.lock();
                index.stats.misses += 1;
                index.forget(&key);
                return None;
            }
        };
        let size = bytes.len() as u64;
        match verify_plain(chunk, bytes) {
            Ok(v) => {
                let mut index = self.lock();
                index.stats.hits += 1;
                index.touch(key, size);
                Some(v)
            }
            Err(e) => {
                self.drop_corrupt(&key, &format!("{e}; refetching"));
                None
            }
        }
    }

    /// Stores verified plain bytes. Failure is logged and counted, never fatal: the caller
    /// already has the bytes.
    pub fn put(&self, chunk: &ChunkRef, plain: &Verified) {
        if let Err(e) = self.store(Key::of(chunk), plain.len() as u64, &mut |f| f.write_all(plain)) {
            tracing::warn!("caching chunk {} failed ({e}); serving it uncached", chunk.plain_hash());
        }
    }

    /// The assembled file named `key`, opened for reading, if present. The caller verifies it.
    pub fn open_file(&self, key: &Hash) -> Option<fs::File> {
        let key = Key::File(*key);
        let file = fs::File::open(self.path(&key)).ok()?;
        let size = file.metadata().ok()?.len();
        self.lock().touch(key, size);
        Some(file)
    }

    /// Writes an assembled file of `size` bytes with `fill`, atomically, and opens it for
    /// reading.
    pub fn put_file(
        &self,
        key: &Hash,
        size: u64,
        fill: &mut dyn FnMut(&mut fs::File) -> io::Result<()>,
    ) -> io::Result<fs::File> {
        let key = Key::File(*key);
        self.store(key, size, fill)?;
        fs::File::open(self.path(&key))
    }

    /// Whether assembled files here can have fs-verity; the error says why not.
    pub fn probe_verity(&self) -> io::Result<()> {
        crate::verity::probe(&self.root.join("tmp"))
    }

    /// Drops an assembled file found corrupt.
    pub fn drop_file(&self, key: &Hash) {
        self.drop_corrupt(&Key::File(*key), "assembled file");
    }

    /// Removes an entry found corrupt, with a log line saying `why`, and counts it.
    fn drop_corrupt(&self, key: &Key, why: &str) {
        let path = self.path(key);
        tracing::warn!("cache entry {} is corrupt ({why}); dropped", path.display());
        let _ = fs::remove_file(&path);
        let mut index = self.lock();
        index.forget(key);
        index.stats.corrupt += 1;
    }

    /// Writes an entry within the quota; on a full disk, evicts and tries once more.
    fn store(&self, key: Key, size: u64, fill: &mut dyn FnMut(&mut fs::File) -> io::Result<()>) -> io::Result<()> {
        if size > self.quota {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "larger than the cache quota"));
        }
        self.evict_to(self.quota.saturating_sub(size));
        let mut result = self.write(&key, fill);
        if matches!(&result, Err(e) if e.raw_os_error() == Some(libc::ENOSPC)) {
            // The disk is fuller than the quota thinks: make room by halving, then try once more.
            let bytes = self.lock().stats.bytes;
            self.evict_to(bytes / 2);
            result = self.write(&key, fill);
        }
        match &result {
            Ok(()) => self.lock().touch(key, size),
            Err(_) => self.lock().stats.write_errors += 1,
        }
        result
    }

    fn write(&self, key: &Key, fill: &mut dyn FnMut(&mut fs::File) -> io::Result<()>) -> io::Result<()> {
        let path = self.path(key);
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))?;
        fill(tmp.as_file_mut())?;
        // No fsync: every entry is verified whenever it is read (chunks by hash, assembled files
        // against their chunks and fs-verity), so one torn by a power cut is dropped and fetched
        // again. A cold read is not paid for with a disk flush per chunk. A pinned chunk is the
        // exception: it is what a rollback reads with the stores down.
        let pinned = self.lock().is_pinned(key);
        if pinned {
            tmp.as_file().sync_data()?;
        }
        // The fan directory is made when the first entry in it finds it missing, not looked up
        // before every write.
        match tmp.persist(&path) {
            Ok(_) => {}
            Err(e) if e.error.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir)?;
                }
                e.file.persist(&path).map_err(|e| e.error)?;
            }
            Err(e) => return Err(e.error),
        }
        if let Some(dir) = path.parent().filter(|_| pinned) {
            crate::durable::sync_dir(dir)?;
        }
        Ok(())
    }

    /// Keeps exactly `chunks` (by plain hash) against eviction, e.g. every chunk of the node's
    /// last good version, so that a rollback works with the stores down. Pinned bytes still
    /// count in the quota; when they alone exceed it, new entries are served uncached.
    ///
    /// Entries are written without a flush, so the pinned ones already here are made durable by
    /// flushing the cache's filesystem once: a power cut soon after must not leave them empty.
    pub fn pin(&self, chunks: HashSet<Hash>) -> io::Result<()> {
        self.lock().pin(chunks);
        let root = fs::File::open(&self.root)?;
        // SAFETY: syncfs takes a file descriptor that `root` keeps open for the call.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root)) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Evicts least recently used entries until at most `target` bytes remain.
    pub fn evict_to(&self, target: u64) {
        loop {
            let victim = {
                let mut index = self.lock();
                if index.stats.bytes <= target {
                    return;
                }
                let Some(id) = index.oldest() else { return };
                index.forget(&id);
                index.stats.evicted += 1;
                id
            };
            let _ = fs::remove_file(self.path(&victim));
        }
    }

    /// Re-hashes every chunk against its name and drops the corrupt ones; returns how many.
    /// Assembled files are verified when a mount first uses them.
    pub fn verify_all(&self) -> u64 {
        let ids: Vec<Key> = self.lock().entries.keys().copied().collect();
        let mut bad = 0;
        for id in ids {
            let (format, hash) = match id {
                Key::Chunk(hash) => (Format::Flint, hash),
                Key::Block(hash) => (Format::Rfs, hash),
                Key::File(_) => continue,
            };
            let path = self.path(&id);
            let ok = fs::read(&path).map(|b| crate::chunk::plain_hash_of(format, &b) == hash).unwrap_or(false);
            if !ok {
                self.drop_corrupt(&id, "content does not match its name");
                bad += 1;
            }
        }
        bad
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::seal;

    fn chunk_of(data: &[u8]) -> (ChunkRef, Verified) {
        let s = seal(data, false, 1).unwrap();
        let v = crate::chunk::open(&s.chunk, &s.bytes).unwrap();
        (s.chunk, v)
    }

    #[test]
    fn hit_after_put_and_corruption_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        let (c, v) = chunk_of(b"some chunk bytes");
        assert!(cache.get(&c).is_none());
        cache.put(&c, &v);
        assert_eq!(&*cache.get(&c).unwrap(), b"some chunk bytes");
        // Flip a byte on disk: detected, dropped, reported as a miss.
        let path = cache.path(&Key::of(&c));
        let mut b = fs::read(&path).unwrap();
        b[0] ^= 1;
        fs::write(&path, b).unwrap();
        assert!(cache.get(&c).is_none());
        assert!(!path.exists());
        let s = cache.stats();
        assert_eq!((s.hits, s.corrupt, s.entries), (1, 1, 0));
    }

    #[test]
    fn an_entry_is_written_when_its_fan_directory_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        let (first, v1) = chunk_of(b"first");
        cache.put(&first, &v1);
        let fan = cache.path(&Key::of(&first)).parent().unwrap().to_path_buf();
        // Removed from under the cache (an operator's cleanup): the entry written again makes
        // it anew.
        fs::remove_dir_all(&fan).unwrap();
        cache.put(&first, &v1);
        assert_eq!(&*cache.get(&first).unwrap(), b"first");
        assert_eq!(cache.stats().write_errors, 0);
    }

    #[test]
    fn quota_evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 3000).unwrap();
        let chunks: Vec<_> = (0..4u8).map(|i| chunk_of(&[i; 1000])).collect();
        for (c, v) in &chunks[..3] {
            cache.put(c, v);
        }
        // Use chunk 0 so that chunk 1 is the oldest, then add chunk 3.
        assert!(cache.get(&chunks[0].0).is_some());
        cache.put(&chunks[3].0, &chunks[3].1);
        assert!(cache.stats().bytes <= 3000);
        assert!(cache.get(&chunks[1].0).is_none());
        assert!(cache.get(&chunks[0].0).is_some());
        assert!(cache.get(&chunks[3].0).is_some());
        // Reopening finds the same entries.
        drop(cache);
        let again = Cache::open(dir.path(), 3000).unwrap();
        assert_eq!(again.stats().entries, 3);
        assert_eq!(again.verify_all(), 0);
    }

    #[test]
    fn pinned_chunks_outlive_eviction_until_unpinned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 3000).unwrap();
        let chunks: Vec<_> = (0..6u8).map(|i| chunk_of(&[i; 1000])).collect();
        // Pinned before and after they are cached: both stay.
        cache.put(&chunks[0].0, &chunks[0].1);
        cache.pin([chunks[0].0.id, chunks[1].0.id].into_iter().collect()).unwrap();
        cache.put(&chunks[1].0, &chunks[1].1);
        assert_eq!(cache.stats().pinned, 2);
        for (c, v) in &chunks[2..] {
            cache.put(c, v);
        }
        assert!(cache.stats().bytes <= 3000);
        assert!(cache.get(&chunks[0].0).is_some() && cache.get(&chunks[1].0).is_some());
        assert!(cache.get(&chunks[2].0).is_none(), "the unpinned oldest went");
        cache.evict_to(0);
        assert_eq!((cache.stats().entries, cache.stats().bytes), (2, 2000));
        // A new pin set releases the old one to eviction.
        cache.pin([chunks[5].0.id].into_iter().collect()).unwrap();
        assert_eq!(cache.stats().pinned, 0);
        cache.evict_to(0);
        assert_eq!(cache.stats().entries, 0);
    }
}
