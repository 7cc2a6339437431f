//! What gets packed: an in-memory tree of nodes with their attributes and a way to read each
//! file's data, built from a directory ([`dir`]), a tar archive ([`tar`]) or a container image's
//! layers ([`oci`]). Content is never held in memory: a node only says where its bytes are.

pub mod dir;
pub mod flist;
pub mod oci;
pub mod tar;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use crate::format::{Region, Timestamp};

/// Index of a node in [`Tree::nodes`].
pub type NodeId = usize;

/// Attributes every node has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Full `st_mode`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Status change time.
    pub ctime: Timestamp,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Meta {
    /// A root-owned `rwxr-xr-x` directory: parents an archive does not list, and image roots.
    pub fn default_dir() -> Meta {
        Meta { mode: libc::S_IFDIR | 0o755, ..Meta::default() }
    }
}

/// Where a file's data bytes (its regions, holes left out, concatenated) can be read.
#[derive(Clone, Debug)]
pub enum Data {
    /// A file on disk: its regions are read at their offsets.
    Path(PathBuf),
    /// A contiguous slice of an archive: `Tree::archives[archive]` at `offset`.
    Archive {
        /// Index into [`Tree::archives`].
        archive: usize,
        /// Byte offset of the data in the archive.
        offset: u64,
    },
    /// Bytes [`Tree::external`] gives under this key (another flist's file, when converting).
    External(u64),
}

/// Where [`Data::External`] bytes come from.
pub trait ExternalData: Send + Sync + std::fmt::Debug {
    /// A reader of exactly the data bytes under `key`.
    fn open(&self, key: u64) -> io::Result<Box<dyn Read + Send>>;
    /// A name for `key`, for error messages.
    fn describe(&self, key: u64) -> String;
}

/// What a node is.
#[derive(Clone, Debug)]
pub enum Content {
    /// A directory and its children by name.
    Dir(BTreeMap<Vec<u8>, NodeId>),
    /// A regular file.
    File {
        /// Apparent size.
        size: u64,
        /// Data regions when sparse; `None` when all data.
        regions: Option<Vec<Region>>,
        /// Where to read the data.
        data: Data,
    },
    /// A symlink target.
    Symlink(Vec<u8>),
    /// A device number.
    Device(u64),
    /// A fifo or socket.
    Special,
}

/// One file system object; several directory entries may name the same node (hardlinks).
#[derive(Clone, Debug)]
pub struct Node {
    /// Attributes.
    pub meta: Meta,
    /// Content.
    pub content: Content,
}

impl Node {
    /// Bytes this node contributes to the data stream.
    pub fn data_len(&self) -> u64 {
        match &self.content {
            Content::File { size, regions, .. } => crate::format::data_len(*size, regions.as_deref()),
            _ => 0,
        }
    }
}

/// A tree to pack. `nodes[0]` is the root directory.
#[derive(Clone, Debug)]
pub struct Tree {
    /// All nodes.
    pub nodes: Vec<Node>,
    /// Archives that [`Data::Archive`] refers to.
    pub archives: Vec<PathBuf>,
    /// Temporary files behind some of `archives` (decompressed archives), removed when the last
    /// copy of the tree is dropped.
    pub spools: Vec<std::sync::Arc<tempfile::TempPath>>,
    /// What [`Data::External`] refers to.
    pub external: Option<std::sync::Arc<dyn ExternalData>>,
}

impl Tree {
    /// A tree holding only a root directory with `meta`.
    pub fn new(meta: Meta) -> Self {
        Tree {
            nodes: vec![Node { meta, content: Content::Dir(BTreeMap::new()) }],
            archives: Vec::new(),
            spools: Vec::new(),
            external: None,
        }
    }

    /// The node at `id`, if any.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// Human-readable name of a node's data source, for error messages.
    pub fn describe(&self, data: &Data) -> String {
        match data {
            Data::Path(p) => p.display().to_string(),
            Data::Archive { archive, offset } => {
                let name = self.archives.get(*archive).map(|p| p.display().to_string()).unwrap_or_default();
                format!("{name} at byte {offset}")
            }
            Data::External(key) => self.external.as_ref().map_or_else(|| format!("item {key}"), |e| e.describe(*key)),
        }
    }

    /// A reader of exactly a file node's data bytes. A source that ends early (it changed while
    /// being packed) is an error, never silently short data.
    pub fn open_data(&self, node: &Node) -> io::Result<Box<dyn Read + Send>> {
        let Content::File { data, regions, .. } = &node.content else {
            return Ok(Box::new(io::empty()));
        };
        let len = node.data_len();
        let reader: Box<dyn Read + Send> = match data {
            Data::Path(path) => {
                let file = File::open(path)?;
                match regions {
                    None => Box::new(file.take(len)),
                    Some(regions) => Box::new(RegionReader { file, regions: regions.clone(), next: 0, left: 0 }),
                }
            }
            Data::Archive { archive, offset } => {
                let path = self.archives.get(*archive).ok_or_else(|| io::Error::other("unknown archive"))?;
                let mut file = File::open(path)?;
                file.seek(SeekFrom::Start(*offset))?;
                Box::new(file.take(len))
            }
            Data::External(key) => {
                self.external.as_ref().ok_or_else(|| io::Error::other("no external data in this tree"))?.open(*key)?
            }
        };
        Ok(Box::new(Exact { inner: reader, left: len }))
    }
}

/// Reads a sparse file's data regions one after another.
struct RegionReader {
    file: File,
    regions: Vec<Region>,
    next: usize,
    left: u64,
}

impl Read for RegionReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.left == 0 {
            let Some(r) = self.regions.get(self.next) else {
                return Ok(0);
            };
            self.file.seek(SeekFrom::Start(r.offset))?;
            self.left = r.len;
            self.next += 1;
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(buf.get_mut(..want).unwrap_or_default())?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Fails if the inner reader ends before `left` bytes.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "source shrank while being packed"));
        }
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

/// Why a path cannot be placed in a tree.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum PathError {
    #[error("path {0:?} climbs out of the tree (..)")]
    Escapes(String),
    #[error("hardlink target {0:?} is missing or a directory")]
    BadLinkTarget(String),
}

/// Splits an archive path into components, dropping `.`, empty parts and leading `/`; refuses
/// `..` so that nothing can land outside the tree.
pub fn components(path: &[u8]) -> Result<Vec<Vec<u8>>, PathError> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(PathError::Escapes(String::from_utf8_lossy(path).into_owned())),
            name => out.push(name.to_vec()),
        }
    }
    Ok(out)
}

impl Tree {
    /// The directory at `dirs`, created (with `default_dir` attributes) where missing; anything
    /// that is not a directory on the way is replaced, as `tar -x` does.
    fn make_dirs(&mut self, dirs: &[Vec<u8>], default_dir: &Meta) -> NodeId {
        let mut cur = 0;
        for name in dirs {
            let existing = match self.nodes.get(cur).map(|n| &n.content) {
                Some(Content::Dir(children)) => children.get(name).copied(),
                _ => None,
            };
            cur = match existing {
                Some(id) if matches!(self.nodes.get(id).map(|n| &n.content), Some(Content::Dir(_))) => id,
                _ => {
                    let id = self.nodes.len();
                    self.nodes.push(Node { meta: default_dir.clone(), content: Content::Dir(BTreeMap::new()) });
                    if let Some(Node { content: Content::Dir(children), .. }) = self.nodes.get_mut(cur) {
                        children.insert(name.clone(), id);
                    }
                    id
                }
            };
        }
        cur
    }

    /// Finds the node at a path.
    pub fn lookup(&self, path: &[Vec<u8>]) -> Option<NodeId> {
        path.iter().try_fold(0, |cur, name| match &self.nodes.get(cur)?.content {
            Content::Dir(children) => children.get(name).copied(),
            _ => None,
        })
    }

    /// Places `node` at `path` (creating parents), replacing what was there. A directory that
    /// replaces a directory keeps its children, as extracting an archive over a tree does.
    pub fn insert(&mut self, path: &[Vec<u8>], node: Node, default_dir: &Meta) -> NodeId {
        let Some((name, parents)) = path.split_last() else {
            // The root itself: only its attributes change.
            if let Some(root) = self.nodes.get_mut(0) {
                root.meta = node.meta;
            }
            return 0;
        };
        let parent = self.make_dirs(parents, default_dir);
        let existing = self.lookup(path);
        if let (Some(id), Content::Dir(_)) = (existing, &node.content) {
            if let Some(old) = self.nodes.get_mut(id).filter(|n| matches!(n.content, Content::Dir(_))) {
                old.meta = node.meta;
                return id;
            }
        }
        let id = self.nodes.len();
        self.nodes.push(node);
        self.link(parent, name.clone(), id);
        id
    }

    /// Adds another name for the existing non-directory at `target`.
    pub fn hardlink(&mut self, path: &[Vec<u8>], target: &[Vec<u8>], default_dir: &Meta) -> Result<(), PathError> {
        let id = self
            .lookup(target)
            .filter(|&id| !matches!(self.nodes.get(id).map(|n| &n.content), Some(Content::Dir(_))))
            .ok_or_else(|| PathError::BadLinkTarget(String::from_utf8_lossy(&target.join(&b'/')).into_owned()))?;
        if let Some((name, parents)) = path.split_last() {
            let parent = self.make_dirs(parents, default_dir);
            self.link(parent, name.clone(), id);
        }
        Ok(())
    }

    /// Removes the name at `path`, if present (for whiteouts).
    pub fn remove(&mut self, path: &[Vec<u8>]) {
        if let Some((name, parents)) = path.split_last() {
            if let Some(Node { content: Content::Dir(children), .. }) =
                self.lookup(parents).and_then(|p| self.nodes.get_mut(p))
            {
                children.remove(name);
            }
        }
    }

    /// Empties the directory at `dir`, if there is one (opaque directories of image layers).
    pub fn clear_dir(&mut self, dir: &[Vec<u8>]) {
        if let Some(Node { content: Content::Dir(children), .. }) = self.lookup(dir).and_then(|d| self.nodes.get_mut(d))
        {
            children.clear();
        }
    }

    fn link(&mut self, parent: NodeId, name: Vec<u8>, id: NodeId) {
        if let Some(Node { content: Content::Dir(children), .. }) = self.nodes.get_mut(parent) {
            children.insert(name, id);
        }
    }
}
