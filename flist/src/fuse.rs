//! The read-only FUSE filesystem over an flist: the same code serves `flist mount` and PID 1.
//!
//! FUSE inode numbers are flist inode indices + 1 (so the root is 1), hardlinks share one. The
//! tree never changes under a mount, so entries, absent names and attributes get long kernel
//! TTLs, file pages are kept across opens (`FOPEN_KEEP_CACHE`) and directory listings are cached
//! too. Content comes from a [`CachedSource`]: verified before use, fetched once however many
//! readers, with chunks ahead of a sequential reader prefetched. Every failure is logged with
//! the path and mapped to an errno in [`errno`]; nothing here can panic or hang forever (store
//! fetches are bounded by the router's retry policy and HTTP timeouts), and a panic anyway fails
//! only its own request ([`contained`]).
//!
//! Where the kernel offers FUSE passthrough, a large file whose chunks are all in the disk cache
//! is assembled there ([`crate::assembled`]) in the background; later opens hand the kernel that
//! file, and reads no longer come through this server at all.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

use crate::durable::lock;
use crate::fetch::CachedSource;
use crate::format::{Extent, Flist, Inode, InodeData, Kind, Timestamp};
use crate::read::{copy_extents, extent_bytes};

/// What can go wrong serving a request, mapped to an errno in exactly one place.
#[derive(Debug)]
enum FsError {
    NoEntry,
    NotDir,
    IsDir,
    NotSymlink,
    NoAttr,
    Range,
    Fetch(String),
}

fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NoEntry => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::NotSymlink => Errno::EINVAL,
        FsError::NoAttr => Errno::NO_XATTR,
        FsError::Range => Errno::ERANGE,
        FsError::Fetch(_) => Errno::EIO,
    }
}

/// Mount tuning.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Kernel entry and attribute cache lifetime.
    pub ttl: Duration,
    /// Chunks to prefetch ahead of a sequential reader.
    pub readahead_chunks: u32,
    /// Use FUSE passthrough for large fully cached files, when the kernel can.
    pub passthrough: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions { ttl: Duration::from_secs(24 * 3600), readahead_chunks: 32, passthrough: true }
    }
}

/// What a mount has served, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct FsCounters {
    /// Lookups answered by this server (names found or not).
    pub lookups: AtomicU64,
    /// Directory opens asked of this server.
    pub dir_opens: AtomicU64,
    /// Directory listing requests answered by this server.
    pub dir_reads: AtomicU64,
    /// File opens asked of this server.
    pub file_opens: AtomicU64,
    /// Read requests answered by this server.
    pub reads: AtomicU64,
    /// Opens handed to the kernel as passthrough.
    pub passthrough_opens: AtomicU64,
}

/// A file's reader: where its last read ended, and the last chunk asked for ahead of it.
#[derive(Clone, Copy, Default)]
struct Stream {
    end: u64,
    asked: u32,
}

/// Reads through the image's chunks: the last chunk read, the inode it was read for, how many
/// reads in a row moved on through the chunks in order, and the last chunk asked for ahead.
#[derive(Clone, Copy, Default)]
struct Walk {
    last: u32,
    inode: u32,
    run: u32,
    asked: u32,
}

/// Requests at least this large, continuing the previous one, start chunk prefetch.
const STREAMING_REQUEST: u32 = 64 << 10;

/// Reads in a row that move on through the chunks in stream order (the next chunk, or the next
/// file in the same chunk) before read-ahead crosses file boundaries: a tree walked in the order
/// it was packed (`tar`, `cp -r`, `rsync`), not a program loading its libraries.
const WALKING_READS: u32 = 4;

const CACHED_FH: FileHandle = FileHandle(0);
const PASSTHROUGH_FH: FileHandle = FileHandle(1);

/// The open handles of one inode. The kernel refuses to mix cached and passthrough opens of an
/// inode, and wants one backing id for all its passthrough opens.
#[derive(Default)]
struct Opens {
    cached: u32,
    passthrough: u32,
    backing: Option<fuser::BackingId>,
}

/// Assembled files, shared with the background assembler.
#[derive(Default)]
struct Assembled {
    /// Inodes whose assembled file is sealed with fs-verity and verified for this mount.
    ready: Mutex<HashMap<u32, Arc<crate::assembled::Ready>>>,
    /// Inodes queued or being assembled.
    pending: Mutex<HashSet<u32>>,
}

struct Passthrough {
    assembled: Arc<Assembled>,
    queue: crossbeam_channel::Sender<u32>,
    /// Cleared when the kernel refuses a backing file: then every open is a cached one.
    working: AtomicBool,
}

/// What a read answers: a piece of one verified chunk, or bytes assembled from several extents.
enum ReadBytes {
    Piece(crate::chunk::Verified, std::ops::Range<usize>),
    Assembled(Vec<u8>),
}

impl ReadBytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            ReadBytes::Piece(chunk, range) => chunk.get(range.clone()).unwrap_or_default(),
            ReadBytes::Assembled(bytes) => bytes,
        }
    }
}

/// An flist served over FUSE.
pub struct FlistFs {
    flist: Arc<Flist>,
    source: Arc<CachedSource>,
    /// For each inode, the first entry naming it.
    entry_of: Vec<u32>,
    opts: FsOptions,
    /// Per inode, where the last read ended (a read starting there is sequential) and the last
    /// chunk asked for ahead of its reader.
    streams: Mutex<HashMap<u32, Stream>>,
    /// Where reads go through the image's chunks.
    walk: Mutex<Walk>,
    /// Set up in `init` when the kernel accepts passthrough and there is a disk cache.
    passthrough: Option<Passthrough>,
    opens: Mutex<HashMap<u32, Opens>>,
    counters: Arc<FsCounters>,
    /// Recording a trace of the first reads, and where it goes when done; shared with the
    /// [`TraceRecording`] handles that may end it sooner.
    recording: Arc<Mutex<Option<(crate::trace::Recorder, PathBuf)>>>,
}

/// A hold on a mount's trace recording, to end it before its window does: when what the trace
/// is for (a boot, a start) is done, so that later reads (a login, a shutdown) stay out of it.
#[derive(Clone)]
pub struct TraceRecording(Arc<Mutex<Option<(crate::trace::Recorder, PathBuf)>>>);

impl TraceRecording {
    /// Ends the recording and writes the trace now, if it is still going.
    pub fn finish(&self) {
        if let Some((recorder, out)) = lock(&self.0).take() {
            write_trace(&recorder, &out);
        }
    }
}

fn write_trace(recorder: &crate::trace::Recorder, out: &Path) {
    let trace = recorder.trace();
    match crate::durable::write_whole(out, &trace.encode()) {
        Ok(()) => tracing::info!("trace of {} chunks written to {}", trace.chunks.len(), out.display()),
        Err(e) => tracing::warn!("writing the trace {}: {e}", out.display()),
    }
}

impl Drop for FlistFs {
    fn drop(&mut self) {
        self.trace_recording().finish();
    }
}

/// The attributes of a negative entry: node 0 (FUSE's "no such name"); the rest is unused.
fn absent() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nanos));
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.secs as u64) + nanos
    } else {
        (UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())) + nanos
    }
}

/// The kernel's 32-bit device encoding (`new_encode_dev`), as FUSE carries it.
fn fuse_rdev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
    }
}

impl FlistFs {
    /// A filesystem serving `flist` with content from `source`.
    pub fn new(flist: Arc<Flist>, source: Arc<CachedSource>, opts: FsOptions) -> Self {
        let mut entry_of = vec![u32::MAX; flist.inodes.len()];
        for (i, e) in flist.entries.iter().enumerate() {
            if let Some(slot) = entry_of.get_mut(e.inode as usize).filter(|s| **s == u32::MAX) {
                *slot = i as u32;
            }
        }
        FlistFs {
            flist,
            source,
            entry_of,
            opts,
            streams: Mutex::new(HashMap::new()),
            walk: Mutex::new(Walk::default()),
            passthrough: None,
            opens: Mutex::new(HashMap::new()),
            counters: Arc::default(),
            recording: Arc::default(),
        }
    }

    /// Records which chunks are read, in order, until `recorder`'s window ends (or the mount
    /// does), then writes the trace to `out`.
    pub fn record_trace(self, recorder: crate::trace::Recorder, out: PathBuf) -> Self {
        *lock(&self.recording) = Some((recorder, out));
        self
    }

    /// A handle that ends the trace recording (see [`FlistFs::record_trace`]) when called.
    pub fn trace_recording(&self) -> TraceRecording {
        TraceRecording(self.recording.clone())
    }

    /// Notes the chunks a read used, for the trace being recorded.
    fn record(&self, first: u32, last: u32) {
        let mut slot = lock(&self.recording);
        let Some((recorder, _)) = slot.as_mut() else { return };
        let open = (first..=last).all(|c| recorder.read(c));
        if !open {
            if let Some((recorder, out)) = slot.take() {
                write_trace(&recorder, &out);
            }
        }
    }

    /// Counters that stay readable after the filesystem is handed to [`mount`].
    pub fn counters(&self) -> Arc<FsCounters> {
        self.counters.clone()
    }

    /// Starts the background assembler; returns the handle `open` uses.
    fn start_passthrough(&self) -> std::io::Result<Passthrough> {
        let assembled = Arc::new(Assembled::default());
        let (queue, rx) = crossbeam_channel::bounded::<u32>(256);
        let (flist, source, shared) = (self.flist.clone(), self.source.clone(), assembled.clone());
        // Ends when the filesystem (holding the sender) is dropped.
        std::thread::Builder::new().name("assembler".into()).spawn(move || {
            for index in rx {
                let plan = flist.inodes.get(index as usize).and_then(|i| crate::assembled::plan(&flist, i));
                if let Some(plan) = plan {
                    match crate::assembled::prepare(&flist, &plan, &source) {
                        Ok(Some(ready)) => {
                            lock(&shared.ready).insert(index, Arc::new(ready));
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!("assembling inode {index} for passthrough: {e}"),
                    }
                }
                lock(&shared.pending).remove(&index);
            }
        })?;
        Ok(Passthrough { assembled, queue, working: AtomicBool::new(true) })
    }

    /// Opens a regular file: passthrough when its assembled file is ready and no cached open
    /// of it is live, else a cached open (queueing assembly for next time).
    fn open_file(&self, index: u32, reply: ReplyOpen) {
        let Some(pt) = self.passthrough.as_ref().filter(|p| p.working.load(Ordering::Relaxed)) else {
            return reply.opened(CACHED_FH, FopenFlags::FOPEN_KEEP_CACHE);
        };
        let mut opens = lock(&self.opens);
        let state = opens.entry(index).or_default();
        if state.backing.is_none() && state.cached == 0 {
            let ready = lock(&pt.assembled.ready).get(&index).cloned();
            if let Some(ready) = ready.filter(|r| self.still_sealed(index, r)) {
                match reply.open_backing(&ready.file) {
                    Ok(id) => state.backing = Some(id),
                    Err(e) => {
                        tracing::warn!("the kernel refused a passthrough file ({e}); serving every read");
                        pt.working.store(false, Ordering::Relaxed);
                    }
                }
            }
        }
        if let Some(backing) = &state.backing {
            state.passthrough += 1;
            if self.counters.passthrough_opens.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::info!("passthrough: the kernel reads assembled files directly, checking them with fs-verity");
            }
            return reply.opened_passthrough(PASSTHROUGH_FH, FopenFlags::empty(), backing);
        }
        state.cached += 1;
        drop(opens);
        reply.opened(CACHED_FH, FopenFlags::FOPEN_KEEP_CACHE)
    }

    /// Whether `ready` is still the file that was checked (measured again on every open); one
    /// that is not is dropped, and its inode's reads are served by flint again.
    fn still_sealed(&self, index: u32, ready: &crate::assembled::Ready) -> bool {
        if ready.unchanged() {
            return true;
        }
        tracing::error!("the assembled file of inode {index} lost its fs-verity seal or changed: dropped");
        if let Some(pt) = &self.passthrough {
            lock(&pt.assembled.ready).remove(&index);
        }
        if let Some(cache) = self.source.cache() {
            cache.drop_file(&ready.key);
        }
        false
    }

    /// Asks the assembler to make `index` ready for passthrough, when a cached open is released:
    /// by then a reader has usually fetched every chunk, and assembling does not compete with it.
    /// Nothing is assembled until every chunk is in the disk cache.
    fn queue_assembly(&self, index: u32) {
        let Some(pt) = &self.passthrough else { return };
        let queued = !lock(&pt.assembled.ready).contains_key(&index) && lock(&pt.assembled.pending).insert(index);
        if queued && pt.queue.try_send(index).is_err() {
            lock(&pt.assembled.pending).remove(&index);
        }
    }

    fn inode(&self, ino: INodeNo) -> Result<(u32, &Inode), FsError> {
        let index = ino.0.checked_sub(1).and_then(|i| u32::try_from(i).ok()).ok_or(FsError::NoEntry)?;
        self.flist.inodes.get(index as usize).map(|i| (index, i)).ok_or(FsError::NoEntry)
    }

    fn dir_entry(&self, ino: INodeNo) -> Result<u32, FsError> {
        let (index, inode) = self.inode(ino)?;
        if inode.kind() != Kind::Dir {
            return Err(FsError::NotDir);
        }
        self.entry_of.get(index as usize).copied().ok_or(FsError::NoEntry)
    }

    fn attr(&self, index: u32, inode: &Inode) -> FileAttr {
        let mtime = system_time(inode.mtime);
        let rdev = match inode.data {
            InodeData::Device(d) => fuse_rdev(d),
            _ => 0,
        };
        FileAttr {
            ino: INodeNo(u64::from(index) + 1),
            size: inode.size(),
            blocks: inode.data_len().div_ceil(512),
            atime: mtime,
            mtime,
            ctime: system_time(inode.ctime),
            crtime: mtime,
            kind: file_type(inode.kind()),
            perm: (inode.mode & 0o7777) as u16,
            nlink: inode.nlink,
            uid: inode.uid,
            gid: inode.gid,
            rdev,
            blksize: 4096,
            flags: 0,
        }
    }

    fn path(&self, index: u32) -> String {
        let entry = self.entry_of.get(index as usize).copied().unwrap_or(0);
        String::from_utf8_lossy(&self.flist.path_of(entry)).into_owned()
    }

    /// The attributes of `name` in directory `parent`; `None` when the directory has no such
    /// name.
    fn lookup_child(&self, parent: INodeNo, name: &OsStr) -> Result<Option<FileAttr>, FsError> {
        let dir = self.dir_entry(parent)?;
        let Some(child) = self.flist.lookup(dir, name.as_bytes()) else { return Ok(None) };
        let inode_index = self.flist.entry(child).map(|e| e.inode).ok_or(FsError::NoEntry)?;
        let inode = self.flist.inodes.get(inode_index as usize).ok_or(FsError::NoEntry)?;
        Ok(Some(self.attr(inode_index, inode)))
    }

    fn read_range(&self, ino: INodeNo, offset: u64, size: u32) -> Result<ReadBytes, FsError> {
        let (index, inode) = self.inode(ino)?;
        match inode.kind() {
            Kind::File => {}
            Kind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::NoEntry),
        }
        let extents = self.flist.extents(inode, offset, u64::from(size));
        let out = match extents.as_slice() {
            // Within one chunk (most reads: chunks are larger than the kernel's requests): the
            // reply is a piece of the verified chunk itself, not a copy of it.
            &[Extent::Data { chunk, offset, len }] => {
                let (bytes, range) = extent_bytes(&self.flist, self.source.as_ref(), chunk, offset, len)
                    .map_err(|e| FsError::Fetch(e.to_string()))?;
                ReadBytes::Piece(bytes, range)
            }
            _ => {
                let mut out = Vec::with_capacity(size as usize);
                copy_extents(&self.flist, self.source.as_ref(), &extents, &mut out)
                    .map_err(|e| FsError::Fetch(e.to_string()))?;
                ReadBytes::Assembled(out)
            }
        };
        let data_chunks = || {
            extents.iter().filter_map(|e| match e {
                Extent::Data { chunk, .. } => Some(*chunk),
                Extent::Hole { .. } => None,
            })
        };
        let (first_chunk, last_chunk) = (data_chunks().next(), data_chunks().next_back());
        let walking = match (first_chunk, last_chunk) {
            (Some(first), Some(last)) => {
                self.record(first, last);
                let mut walk = lock(&self.walk);
                let run = match first {
                    f if f == walk.last.saturating_add(1) => walk.run.saturating_add(1),
                    f if f == walk.last && index != walk.inode => walk.run.saturating_add(1),
                    f if f == walk.last => walk.run,
                    _ => 0,
                };
                *walk = Walk { last, inode: index, run, asked: walk.asked };
                run >= WALKING_READS
            }
            _ => false,
        };
        let end = offset + out.as_slice().len() as u64;
        // A streaming reader continues where it stopped, and the kernel's read-ahead has grown
        // its requests; a program loader reads a header, then faults pages here and there.
        let (streaming, stream_asked) = {
            let mut streams = lock(&self.streams);
            let stream = streams.entry(index).or_default();
            let was = std::mem::replace(&mut stream.end, end);
            (was == offset && size >= STREAMING_REQUEST, stream.asked)
        };
        if let (true, Some(last)) = (streaming || walking, last_chunk) {
            // Only chunks that still hold this file's data, unless the reader walks the tree:
            // the next ones belong to other files.
            let file_end = match inode.data {
                _ if walking => u64::MAX,
                InodeData::File { stream_offset, .. } => stream_offset + inode.data_len(),
                _ => 0,
            };
            let asked = if walking { lock(&self.walk).asked } else { stream_asked };
            let asked = self.ask_ahead(last, file_end, asked);
            if walking {
                lock(&self.walk).asked = asked;
            } else if let Some(stream) = lock(&self.streams).get_mut(&index) {
                stream.asked = asked;
            }
        }
        Ok(out)
    }

    /// Asks for the chunks after `last` (up to the read-ahead, before `file_end`) to be fetched
    /// ahead; returns the last one asked for. Those up to `asked` were asked for by an earlier
    /// read of the same reader, and are not asked for again: every request asking for its whole
    /// window took three locks per chunk of it, shared with the fetchers.
    fn ask_ahead(&self, last: u32, file_end: u64, asked: u32) -> u32 {
        let window = last..=last.saturating_add(self.opts.readahead_chunks);
        let mut asked = if window.contains(&asked) { asked } else { last };
        while asked < *window.end() {
            let next = asked + 1;
            if next as usize >= self.flist.chunks.len()
                || self.flist.chunk_start(next as usize) >= file_end
                || !self.source.prefetch(&self.flist, next)
            {
                break;
            }
            asked = next;
        }
        asked
    }

    fn xattr(&self, ino: INodeNo, name: Option<&OsStr>) -> Result<Vec<u8>, FsError> {
        let (_, inode) = self.inode(ino)?;
        match name {
            Some(name) => inode
                .xattrs
                .iter()
                .find(|(k, _)| k.as_slice() == name.as_bytes())
                .map(|(_, v)| v.clone())
                .ok_or(FsError::NoAttr),
            None => Ok(inode.xattrs.iter().flat_map(|(k, _)| k.iter().copied().chain([0])).collect()),
        }
    }

    /// Directory listing from `offset`: `.`, `..`, then the children; each with the offset of
    /// the next one.
    fn listing(&self, ino: INodeNo, offset: u64) -> Result<Vec<(u64, u32, Vec<u8>)>, FsError> {
        let dir = self.dir_entry(ino)?;
        let this = self.flist.entry(dir).map(|e| e.inode).ok_or(FsError::NoEntry)?;
        let parent = self.flist.entry(dir).and_then(|e| self.flist.entry(e.parent)).map_or(this, |p| p.inode);
        let mut all = vec![(this, b".".to_vec()), (parent, b"..".to_vec())];
        for c in self.flist.children(dir) {
            if let Some(e) = self.flist.entry(c) {
                all.push((e.inode, e.name.clone()));
            }
        }
        Ok(all
            .into_iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(i, (inode, name))| (i as u64 + 1, inode, name))
            .collect())
    }

    fn log_error(&self, op: &str, ino: INodeNo, e: &FsError) {
        if let FsError::Fetch(why) = e {
            let index = ino.0.saturating_sub(1) as u32;
            tracing::error!("{op} {}: {why}", self.path(index));
        }
    }
}

impl Filesystem for FlistFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_READ,
        ] {
            let _ = config.add_capabilities(flag);
        }
        // Passthrough needs a stacking depth; 1 still lets overlayfs sit on top (`--rw`).
        // Only files the kernel checks itself (fs-verity) are handed to it.
        let wants_passthrough = self.opts.passthrough
            && self.source.cache().is_some_and(|cache| match cache.probe_verity() {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!(
                        "passthrough off: the cache filesystem has no fs-verity ({e}); flint serves and verifies every read"
                    );
                    false
                }
            });
        if wants_passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            match self.start_passthrough() {
                Ok(p) => self.passthrough = Some(p),
                Err(e) => tracing::warn!("no passthrough: {e}"),
            }
        }
        // Modest kernel read-ahead: it also sets the read-around of page faults in mmap'd files
        // (shared libraries), and each byte read fetches its whole chunk. Sequential readers get
        // speed from chunk prefetch instead.
        if let Err(max) = config.set_max_readahead(128 << 10) {
            let _ = config.set_max_readahead(max);
        }
        // Nothing is written here; this sets how large one read request may be (fuser derives
        // FUSE's max_pages from it): a reader asking for 1 MiB at a time gets it in one request.
        if let Err(max) = config.set_max_write(1 << 20) {
            let _ = config.set_max_write(max);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        contained("lookup", || match self.lookup_child(parent, name) {
            Ok(Some(attr)) => reply.entry(&self.opts.ttl, &attr, Generation(0)),
            // The tree never changes, so an absent name stays absent: an entry for node 0 is a
            // negative one the kernel keeps for the TTL, where ENOENT would have it ask again at
            // every lookup (a shell's PATH search, a loader's library search, an import path).
            Ok(None) => reply.entry(&self.opts.ttl, &absent(), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        contained("getattr", || match self.inode(ino) {
            Ok((index, inode)) => reply.attr(&self.opts.ttl, &self.attr(index, inode)),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        contained("readlink", || {
            match self.inode(ino).and_then(|(_, i)| match &i.data {
                InodeData::Symlink(t) => Ok(t),
                _ => Err(FsError::NotSymlink),
            }) {
                Ok(target) => reply.data(target),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counters.file_opens.fetch_add(1, Ordering::Relaxed);
        if self.passthrough.is_none() {
            // Nothing to decide per open without passthrough: ENOSYS once, and the kernel opens
            // files without asking (Linux 4.20+), keeping their pages as the answer here would.
            return reply.error(Errno::ENOSYS);
        }
        contained("open", || match self.inode(ino) {
            Ok((index, inode)) if inode.kind() == Kind::File => self.open_file(index, reply),
            Ok(_) => reply.opened(CACHED_FH, FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        contained("release", || {
            if let Ok((index, _)) = self.inode(ino) {
                let mut opens = lock(&self.opens);
                if let Some(state) = opens.get_mut(&index) {
                    if fh == PASSTHROUGH_FH {
                        state.passthrough = state.passthrough.saturating_sub(1);
                        if state.passthrough == 0 {
                            // Closes the kernel's backing file once its last open is gone.
                            state.backing = None;
                        }
                    } else {
                        state.cached = state.cached.saturating_sub(1);
                        self.queue_assembly(index);
                    }
                    if state.cached == 0 && state.passthrough == 0 {
                        opens.remove(&index);
                    }
                }
            }
            reply.ok();
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        contained("read", || {
            self.counters.reads.fetch_add(1, Ordering::Relaxed);
            tracing::trace!("read inode {ino} at {offset}, {size} bytes");
            match self.read_range(ino, offset, size) {
                Ok(bytes) => reply.data(bytes.as_slice()),
                Err(e) => {
                    self.log_error("read", ino, &e);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: fuser::ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counters.dir_opens.fetch_add(1, Ordering::Relaxed);
        // ENOSYS once, and the kernel opens directories without asking (Linux 5.1+), with the
        // flags an answer here would give (listings kept cached) and no RELEASEDIR: two round
        // trips fewer for every directory a walk visits.
        reply.error(Errno::ENOSYS);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.counters.dir_reads.fetch_add(1, Ordering::Relaxed);
        contained("readdir", || match self.listing(ino, offset) {
            Ok(rows) => {
                for (next, inode, name) in rows {
                    let kind =
                        self.flist.inodes.get(inode as usize).map_or(FileType::RegularFile, |i| file_type(i.kind()));
                    if reply.add(INodeNo(u64::from(inode) + 1), next, kind, OsStr::from_bytes(&name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        self.counters.dir_reads.fetch_add(1, Ordering::Relaxed);
        contained("readdirplus", || match self.listing(ino, offset) {
            Ok(rows) => {
                for (next, inode, name) in rows {
                    let Some(i) = self.flist.inodes.get(inode as usize) else { continue };
                    let attr = self.attr(inode, i);
                    if reply.add(attr.ino, next, OsStr::from_bytes(&name), &self.opts.ttl, &attr, Generation(0)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        contained("statfs", || {
            let blocks = self.flist.inodes.iter().map(|i| i.data_len()).sum::<u64>().div_ceil(4096);
            reply.statfs(blocks, 0, 0, self.flist.inodes.len() as u64, 0, 4096, 255, 4096);
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        contained("getxattr", || {
            reply_xattr(self.xattr(ino, Some(name)), size, reply);
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        contained("listxattr", || {
            reply_xattr(self.xattr(ino, None), size, reply);
        });
    }

    /// No ioctls (inode flags, …): "not a typewriter", what tools expect from a plain filesystem,
    /// instead of fuser's default that logs a warning for every `lsattr`.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }
}

/// Runs one request's handler so that a panic in it fails only that request: the reply, dropped
/// while unwinding, answers EIO (fuser's own drop), the panic is logged (the hook says where), and
/// the mount goes on serving. fuser itself does not catch panics: one would end the session thread.
fn contained(op: &'static str, handler: impl FnOnce()) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::faults::hit("fuse", op);
        handler();
    }));
    if outcome.is_err() {
        tracing::error!("FUSE {op}: the handler panicked; that request got EIO, the mount keeps serving");
    }
}

/// The xattr size protocol: size 0 asks for the length; too small a buffer is ERANGE.
fn reply_xattr(value: Result<Vec<u8>, FsError>, size: u32, reply: ReplyXattr) {
    match value {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(errno(&FsError::Range)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(&e)),
    }
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// FUSE request threads.
    pub threads: usize,
    /// Let every user in (`allow_other`); PID 1 and root mounts want this.
    pub allow_other: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions { threads: 4, allow_other: true }
    }
}

/// Mounts `fs` at `mountpoint`, serving requests on background threads until the returned
/// session is dropped (which unmounts).
pub fn mount(fs: FlistFs, mountpoint: &Path, opts: &MountOptions) -> std::io::Result<fuser::BackgroundSession> {
    use fuser::MountOption as O;
    let name = format!("flist:{}", fs.flist.digest().to_hex().get(..16).unwrap_or_default());
    let mut config = fuser::Config::default();
    config.mount_options =
        vec![O::FSName(name), O::Subtype("flist".into()), O::RO, O::Dev, O::Suid, O::Exec, O::DefaultPermissions];
    config.acl = if opts.allow_other { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    fuser::spawn_mount(fs, mountpoint, &config)
}
