//! Tree → chunks in stores + flist metadata.
//!
//! The data stream (every file's data, in inode order) is cut into *segments*: a file at least
//! `large_file` bytes long is a segment of its own, so its chunks line up with the file and dedup
//! across images whatever its neighbours; runs of smaller files are concatenated into one segment,
//! so a directory of small files becomes a few chunks instead of thousands of requests. Each
//! segment is cut by FastCDC, so an insertion only changes the chunks around it.
//!
//! One thread reads and cuts; `threads` workers hash, compress, encrypt and upload; results are
//! put back in stream order, so the output does not depend on scheduling.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::chunk::{self, ChunkError};
use crate::format::{BuildError, ChunkRef, Entry, Flist, Inode, InodeData, Route};
use crate::source::{Content, NodeId, Tree};
use crate::store::{Router, StoreError};

/// Content-defined chunk sizes.
#[derive(Clone, Copy, Debug)]
pub struct Chunking {
    /// No cut before this many bytes.
    pub min: u32,
    /// Target mean size.
    pub avg: u32,
    /// Always cut here.
    pub max: u32,
}

impl Chunking {
    /// Sizes around a mean: min = avg/4, max = avg*4 (the usual FastCDC spread).
    pub fn around(avg: u32) -> Self {
        let avg = avg.clamp(fastcdc::v2020::AVERAGE_MIN, fastcdc::v2020::AVERAGE_MAX);
        Chunking {
            min: (avg / 4).max(fastcdc::v2020::MINIMUM_MIN),
            avg,
            max: (avg * 4).min(fastcdc::v2020::MAXIMUM_MAX),
        }
    }
}

/// How to pack.
#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Chunk sizes.
    pub chunking: Chunking,
    /// Files at least this long get chunks of their own.
    pub large_file: u64,
    /// Chunk sizes for runs of smaller files packed together: smaller than `chunking`, so that
    /// reading one small file fetches few of its neighbours.
    pub small_chunking: Chunking,
    /// zstd level per chunk.
    pub zstd_level: i32,
    /// Convergent encryption of every chunk.
    pub encrypt: bool,
    /// Tags to record.
    pub tags: BTreeMap<String, String>,
    /// Routes to record; `None` records the router's own.
    pub routes: Option<Vec<Route>>,
    /// Worker threads for sealing and uploading.
    pub threads: usize,
}

impl Default for PackOptions {
    fn default() -> Self {
        let chunking = Chunking::around(DEFAULT_AVG_CHUNK);
        PackOptions {
            chunking,
            large_file: u64::from(chunking.min),
            small_chunking: Chunking::around(DEFAULT_SMALL_FILES_CHUNK),
            zstd_level: 3,
            encrypt: false,
            tags: BTreeMap::new(),
            routes: None,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// Default mean chunk size; see `bench/` for how it was chosen (dedup across images, and bytes a
/// program's start fetches from a mount).
pub const DEFAULT_AVG_CHUNK: u32 = 256 * 1024;

/// Default mean chunk size for packed small files; see `bench/mount.py` (bytes a program's
/// start fetches).
pub const DEFAULT_SMALL_FILES_CHUNK: u32 = 128 * 1024;

/// Why packing failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum PackError {
    #[error("reading {what}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("sealing a chunk")]
    Seal(#[source] ChunkError),
    #[error("uploading a chunk")]
    Store(#[source] StoreError),
    #[error("building the metadata")]
    Build(#[source] BuildError),
    #[error("the tree has {0} inodes, more than an flist holds")]
    TooLarge(usize),
}

/// What a pack produced.
pub struct PackReport {
    /// The metadata.
    pub flist: Flist,
    /// Its encoding, to write to a file.
    pub bytes: Vec<u8>,
    /// Chunks that some store did not have yet.
    pub new_chunks: u64,
    /// Stored (compressed) bytes of those.
    pub new_bytes: u64,
    /// Stored bytes of all chunks, new or not.
    pub stored_bytes: u64,
    /// Chunks each replica failed to take (the others did): `flist store copy` repairs it.
    pub replica_misses: BTreeMap<String, u64>,
}

/// Progress callbacks: bytes of data read so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// Breadth-first entries and first-appearance inodes, as the format wants them.
#[derive(Default)]
struct Flattener {
    entries: Vec<Entry>,
    inodes: Vec<Inode>,
    /// The tree node behind each inode.
    inode_nodes: Vec<NodeId>,
    inode_of: HashMap<NodeId, u32>,
    /// Directories whose children are still to be listed: (node, inode index).
    queue: VecDeque<(NodeId, usize)>,
}

impl Flattener {
    fn visit(&mut self, tree: &Tree, node_id: NodeId, name: Vec<u8>) {
        let Some(node) = tree.node(node_id) else {
            return;
        };
        let inode = match self.inode_of.get(&node_id) {
            Some(&i) => i,
            None => {
                let data = match &node.content {
                    Content::Dir(_) => InodeData::Dir { children: 0..0 },
                    Content::File { size, regions, .. } => {
                        InodeData::File { size: *size, regions: regions.clone(), stream_offset: 0 }
                    }
                    Content::Symlink(t) => InodeData::Symlink(t.clone()),
                    Content::Device(d) => InodeData::Device(*d),
                    Content::Special => InodeData::Special,
                };
                let m = &node.meta;
                self.inodes.push(Inode {
                    mode: m.mode,
                    uid: m.uid,
                    gid: m.gid,
                    mtime: m.mtime,
                    ctime: m.ctime,
                    xattrs: m.xattrs.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    data,
                    nlink: 0,
                });
                self.inode_nodes.push(node_id);
                let i = (self.inodes.len() - 1) as u32;
                self.inode_of.insert(node_id, i);
                if matches!(node.content, Content::Dir(_)) {
                    self.queue.push_back((node_id, i as usize));
                }
                i
            }
        };
        self.entries.push(Entry { name, inode, parent: 0 });
    }
}

/// Returns the flattener with `entries`, `inodes` and `inode_nodes` filled.
fn flatten(tree: &Tree) -> Result<Flattener, PackError> {
    let mut f = Flattener::default();
    f.visit(tree, 0, Vec::new());
    while let Some((node_id, inode)) = f.queue.pop_front() {
        let Some(Content::Dir(children)) = tree.node(node_id).map(|n| &n.content) else {
            continue;
        };
        let start = f.entries.len() as u32;
        for (name, &child) in children {
            f.visit(tree, child, name.clone());
        }
        let end = f.entries.len() as u32;
        if let Some(InodeData::Dir { children: range }) = f.inodes.get_mut(inode).map(|i| &mut i.data) {
            *range = start..end;
        }
    }
    if f.inodes.len() >= u32::MAX as usize || f.entries.len() >= u32::MAX as usize {
        return Err(PackError::TooLarge(f.inodes.len()));
    }
    Ok(f)
}

/// A run of files chunked together; `small` when they are small files packed together.
struct Segment {
    files: Vec<NodeId>,
    small: bool,
}

/// Groups files with data into segments (see the module docs).
fn segments(tree: &Tree, files: &[NodeId], large_file: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut small: Vec<NodeId> = Vec::new();
    for &id in files {
        let len = tree.node(id).map_or(0, |n| n.data_len());
        if len == 0 {
            continue;
        }
        if len >= large_file {
            if !small.is_empty() {
                out.push(Segment { files: std::mem::take(&mut small), small: true });
            }
            out.push(Segment { files: vec![id], small: false });
        } else {
            small.push(id);
        }
    }
    if !small.is_empty() {
        out.push(Segment { files: small, small: true });
    }
    out
}

/// Reads the files of a segment one after another, naming the file in any error.
struct SegmentReader<'a> {
    tree: &'a Tree,
    files: std::slice::Iter<'a, NodeId>,
    current: Option<Box<dyn Read + Send>>,
    progress: Progress<'a>,
}

impl Read for SegmentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(r) = &mut self.current {
                let n = r.read(buf)?;
                if n > 0 {
                    (self.progress)(n as u64);
                    return Ok(n);
                }
                self.current = None;
            }
            let Some(&id) = self.files.next() else {
                return Ok(0);
            };
            let Some(node) = self.tree.node(id) else {
                continue;
            };
            let what = match &node.content {
                Content::File { data, .. } => self.tree.describe(data),
                _ => String::new(),
            };
            let inner = self.tree.open_data(node).map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))?;
            self.current = Some(Box::new(NamedReader { inner, what }));
        }
    }
}

/// Wraps a file's reader so that its errors say which file failed.
struct NamedReader {
    inner: Box<dyn Read + Send>,
    what: String,
}

impl Read for NamedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.what)))
    }
}

/// Packs a tree: uploads its chunks through `router` and returns the metadata.
pub fn pack(tree: &Tree, router: &Router, opts: &PackOptions, progress: Progress) -> Result<PackReport, PackError> {
    let Flattener { entries, inodes, inode_nodes, .. } = flatten(tree)?;
    let files: Vec<NodeId> = inode_nodes
        .iter()
        .zip(&inodes)
        .filter(|(_, i)| matches!(i.data, InodeData::File { .. }))
        .map(|(&n, _)| n)
        .collect();
    let segs = segments(tree, &files, opts.large_file);

    // Per chunk index: its reference, whether a store lacked it, its stored size.
    type Sealed = Option<(ChunkRef, bool, u64)>;
    let results: Mutex<Vec<Sealed>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<PackError>> = Mutex::new(None);
    let misses: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    let failed = AtomicBool::new(false);
    let fail = |e: PackError| {
        failed.store(true, Ordering::Relaxed);
        let mut slot = crate::durable::lock(&failure);
        slot.get_or_insert(e);
    };
    let (tx, rx) = crossbeam_channel::bounded::<(usize, Vec<u8>)>(opts.threads.max(1) * 2);

    std::thread::scope(|scope| {
        for _ in 0..opts.threads.max(1) {
            let rx = rx.clone();
            let (results, fail, failed, misses) = (&results, &fail, &failed, &misses);
            scope.spawn(move || {
                for (index, data) in rx {
                    if failed.load(Ordering::Relaxed) {
                        continue;
                    }
                    let sealed = match chunk::seal(&data, opts.encrypt, opts.zstd_level) {
                        Ok(s) => s,
                        Err(e) => {
                            fail(PackError::Seal(e));
                            continue;
                        }
                    };
                    match router.put(&sealed) {
                        Ok((outcome, missed)) => {
                            if let Some(missed) = missed {
                                let mut m = crate::durable::lock(misses);
                                for (store, why) in missed.stores {
                                    tracing::warn!("chunk {} not written to {store}: {why}", sealed.chunk.id);
                                    *m.entry(store).or_default() += 1;
                                }
                            }
                            let mut r = crate::durable::lock(results);
                            if r.len() <= index {
                                r.resize(index + 1, None);
                            }
                            if let Some(slot) = r.get_mut(index) {
                                *slot = Some((sealed.chunk, outcome.new, sealed.bytes.len() as u64));
                            }
                        }
                        Err(e) => fail(PackError::Store(e)),
                    }
                }
            });
        }
        drop(rx);
        let mut index = 0usize;
        'segments: for seg in &segs {
            let reader = SegmentReader { tree, files: seg.files.iter(), current: None, progress };
            let c = if seg.small { opts.small_chunking } else { opts.chunking };
            for piece in fastcdc::v2020::StreamCDC::new(reader, c.min, c.avg, c.max) {
                if failed.load(Ordering::Relaxed) {
                    break 'segments;
                }
                match piece {
                    Ok(piece) => {
                        if tx.send((index, piece.data)).is_err() {
                            break 'segments;
                        }
                        index += 1;
                    }
                    Err(e) => {
                        let source: io::Error = e.into();
                        fail(PackError::Read { what: "source".into(), source });
                        break 'segments;
                    }
                }
            }
        }
        drop(tx);
    });

    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut chunks = Vec::with_capacity(results.len());
    let (mut new_chunks, mut new_bytes, mut stored_bytes) = (0, 0, 0);
    for (chunk, new, stored) in results.into_iter().flatten() {
        chunks.push(chunk);
        stored_bytes += stored;
        if new {
            new_chunks += 1;
            new_bytes += stored;
        }
    }
    let routes = opts.routes.clone().unwrap_or_else(|| router.routes());
    let (flist, bytes) =
        Flist::build(opts.tags.clone(), routes, opts.encrypt, chunks, entries, inodes).map_err(PackError::Build)?;
    let replica_misses = misses.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(PackReport { flist, bytes, new_chunks, new_bytes, stored_bytes, replica_misses })
}
