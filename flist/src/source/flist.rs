//! An flist as a tree to pack: what `flist convert` re-chunks. Its tree and attributes come
//! from the metadata; each file's bytes are fetched from its stores as the packer reads them,
//! every chunk (or rfs block) verified by the router on the way. The BLAKE3 of each file's
//! bytes is kept, so the converted flist can be checked against them.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use super::{Content, Data, ExternalData, Meta, Node, NodeId, Tree};
use crate::chunk::Verified;
use crate::format::{Extent, Flist, InodeData};
use crate::store::Router;

type Hashes = Arc<Mutex<HashMap<u32, blake3::Hash>>>;

/// The files of an flist, read through a router.
pub struct FlistData {
    flist: Arc<Flist>,
    router: Arc<Router>,
    /// BLAKE3 of each file's data bytes (holes left out), by inode index, once read to the end.
    hashes: Hashes,
}

impl std::fmt::Debug for FlistData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlistData({})", self.flist.digest())
    }
}

impl FlistData {
    /// The files of `flist`, fetched through `router`.
    pub fn new(flist: Arc<Flist>, router: Arc<Router>) -> Arc<FlistData> {
        Arc::new(FlistData { flist, router, hashes: Hashes::default() })
    }

    /// The hashes of the files read to the end so far, by inode index.
    pub fn hashes(&self) -> HashMap<u32, blake3::Hash> {
        crate::durable::lock(&self.hashes).clone()
    }

    /// Reads every file of the flist (in inode order) and returns their hashes.
    pub fn hash_all(&self) -> io::Result<HashMap<u32, blake3::Hash>> {
        for (index, inode) in self.flist.inodes.iter().enumerate() {
            if matches!(inode.data, InodeData::File { .. }) {
                io::copy(&mut self.open(index as u64)?, &mut io::sink())?;
            }
        }
        Ok(self.hashes())
    }
}

impl ExternalData for FlistData {
    fn open(&self, key: u64) -> io::Result<Box<dyn Read + Send>> {
        let index = u32::try_from(key).map_err(|_| io::Error::other("inode index out of range"))?;
        let inode = self.flist.inodes.get(index as usize).ok_or_else(|| io::Error::other("no such inode"))?;
        // Holes are not data bytes: only the extents that hold data are read.
        let extents: Vec<Extent> = self
            .flist
            .extents(inode, 0, inode.size())
            .into_iter()
            .filter(|e| matches!(e, Extent::Data { .. }))
            .collect();
        Ok(Box::new(FileReader {
            flist: self.flist.clone(),
            router: self.router.clone(),
            hashes: self.hashes.clone(),
            index,
            extents: extents.into_iter(),
            piece: None,
            hasher: blake3::Hasher::new(),
        }))
    }

    fn describe(&self, key: u64) -> String {
        let entry = self.flist.entries.iter().position(|e| u64::from(e.inode) == key);
        let path = entry.map(|e| String::from_utf8_lossy(&self.flist.path_of(e as u32)).into_owned());
        path.unwrap_or_else(|| format!("inode {key}"))
    }
}

/// One file's data bytes, an extent (a verified chunk's slice) at a time.
struct FileReader {
    flist: Arc<Flist>,
    router: Arc<Router>,
    hashes: Hashes,
    index: u32,
    extents: std::vec::IntoIter<Extent>,
    /// The chunk being read out, and the range of it still to give.
    piece: Option<(Verified, std::ops::Range<usize>)>,
    hasher: blake3::Hasher,
}

impl FileReader {
    fn finish(&self) {
        crate::durable::lock(&self.hashes).insert(self.index, self.hasher.finalize());
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some((chunk, range)) = &mut self.piece {
                if range.start < range.end {
                    let n = buf.len().min(range.len());
                    let bytes =
                        chunk.get(range.start..range.start + n).ok_or_else(|| io::Error::other("short chunk"))?;
                    buf.get_mut(..n).unwrap_or_default().copy_from_slice(bytes);
                    self.hasher.update(bytes);
                    range.start += n;
                    // Readers stop at the file's length without asking past it: the hash is
                    // complete with the last byte.
                    if range.start == range.end && self.extents.as_slice().is_empty() {
                        self.finish();
                    }
                    return Ok(n);
                }
            }
            match self.extents.next() {
                Some(Extent::Data { chunk, offset, len }) => {
                    let r = crate::read::chunk_ref(&self.flist, chunk).map_err(io::Error::other)?;
                    let verified = self.router.fetch(r).map_err(io::Error::other)?;
                    let (start, end) = (offset as usize, offset as usize + len as usize);
                    if end > verified.len() {
                        return Err(io::Error::other("an extent outside its chunk"));
                    }
                    self.piece = Some((verified, start..end));
                }
                Some(Extent::Hole { .. }) => {}
                None => {
                    self.finish();
                    return Ok(0);
                }
            }
        }
    }
}

/// The tree of `flist` with its files' bytes read from `data`: one node per inode, so hard
/// links stay hard links.
pub fn tree(flist: &Flist, data: Arc<FlistData>) -> Tree {
    let root_inode = flist.entries.first().map_or(0, |e| e.inode);
    // Node ids: the root's inode first (nodes[0] is the root), then every other in index order.
    let mut node_of: HashMap<u32, NodeId> = HashMap::from([(root_inode, 0)]);
    let mut order = vec![root_inode];
    for index in 0..flist.inodes.len() as u32 {
        if index != root_inode {
            node_of.insert(index, order.len());
            order.push(index);
        }
    }
    let mut nodes: Vec<Node> = order
        .iter()
        .map(|&index| {
            let Some(inode) = flist.inodes.get(index as usize) else {
                return Node { meta: Meta::default_dir(), content: Content::Special };
            };
            let meta = Meta {
                mode: inode.mode,
                uid: inode.uid,
                gid: inode.gid,
                mtime: inode.mtime,
                ctime: inode.ctime,
                xattrs: inode.xattrs.iter().cloned().collect(),
            };
            let content = match &inode.data {
                InodeData::Dir { .. } => Content::Dir(BTreeMap::new()),
                InodeData::File { size, regions, .. } => {
                    Content::File { size: *size, regions: regions.clone(), data: Data::External(u64::from(index)) }
                }
                InodeData::Symlink(t) => Content::Symlink(t.clone()),
                InodeData::Device(d) => Content::Device(*d),
                InodeData::Special => Content::Special,
            };
            Node { meta, content }
        })
        .collect();
    for entry in flist.entries.iter().skip(1) {
        let (Some(&parent), Some(&child)) =
            (flist.entries.get(entry.parent as usize).and_then(|p| node_of.get(&p.inode)), node_of.get(&entry.inode))
        else {
            continue;
        };
        if let Some(Node { content: Content::Dir(children), .. }) = nodes.get_mut(parent) {
            children.insert(entry.name.clone(), child);
        }
    }
    let mut tree = Tree::new(Meta::default_dir());
    tree.nodes = nodes;
    tree.external = Some(data);
    tree
}
