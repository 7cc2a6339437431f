//! The flist metadata format: the data model of an image and its byte encoding.
//!
//! This layer is pure: no I/O, no stores. [`Flist::decode`] turns bytes (from disk, a server or a
//! fuzzer) into a validated [`Flist`]; [`Flist::encode`] is its deterministic inverse. Everything
//! above (`store`, `pack`, `read`, the FUSE server) works on the validated model. The byte layout
//! is documented in `flist/FORMAT.md`.
//!
//! The model in one paragraph: `entries` are names in breadth-first order, each directory's
//! children contiguous and sorted by raw bytes (so lookup is a binary search); each entry points
//! at an `inode` (several entries may share one: hardlinks). The content of every regular file,
//! holes left out, concatenated in inode order, forms one *data stream*, and `chunks` cut that
//! stream into content-addressed pieces. A file's place in the stream is implied by the order, so
//! files carry no chunk lists at all.

mod decode;
mod encode;
mod wire;

use std::collections::BTreeMap;
use std::ops::Range;

/// Magic bytes at the start of every flist.
pub const MAGIC: &[u8; 8] = b"FLINTFL\n";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Header flag: chunks are stored encrypted (convergent encryption).
pub const FLAG_ENCRYPTED: u16 = 1;
/// Largest decompressed body accepted, so a hostile header cannot make us allocate without bound.
pub const MAX_BODY_LEN: u32 = 1 << 30;
/// Largest plain chunk accepted.
pub const MAX_CHUNK_LEN: u32 = 16 << 20;

/// Why bytes are not a valid flist.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum DecodeError {
    #[error("not an flist (bad magic)")]
    BadMagic,
    #[error("flist format version {0} is not supported (this build reads {VERSION})")]
    UnsupportedVersion(u16),
    #[error("unknown header flags {0:#x}")]
    UnknownFlags(u16),
    #[error("metadata body of {0} bytes is over the limit")]
    BodyTooLarge(u32),
    #[error("metadata body does not decompress: {0}")]
    Decompress(String),
    #[error("corrupt metadata in {section}: {what}")]
    Corrupt { section: &'static str, what: &'static str },
}

/// Why parts do not make a valid flist.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// zstd failed on the body.
    #[error("compressing the metadata")]
    Compress(#[source] std::io::Error),
    /// The parts break a rule of the format (a packer bug, or bad input to the library).
    #[error("the parts do not form a valid flist")]
    Invalid(#[source] DecodeError),
}

/// A 32-byte BLAKE3 hash.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// Lower-case hex, the form used in store paths and on the command line.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Hash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Hash(out))
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Which system made an flist, and so how its chunks are sealed, named and checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// flint's own: chunks named by BLAKE3, zstd, optional convergent ChaCha20-Poly1305.
    #[default]
    Flint,
    /// A Zero-OS rfs `.fl`: BLAKE2b-256 names and keys, Snappy, AES-256-GCM (see [`crate::rfs`]).
    Rfs,
}

/// One piece of the data stream, as the metadata knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// Name of the stored object: BLAKE3 of the plain bytes, or of the ciphertext when encrypted.
    pub id: Hash,
    /// BLAKE3 of the plain bytes when encrypted (the key derives from it); `None` otherwise, where
    /// it equals `id`.
    pub plain: Option<Hash>,
    /// Length of the plain bytes.
    pub len: u32,
    /// How the chunk is sealed; its hashes are BLAKE3 for flint, BLAKE2b-256 for rfs.
    pub format: Format,
}

impl ChunkRef {
    /// The hash the plain bytes must have.
    pub fn plain_hash(&self) -> Hash {
        self.plain.unwrap_or(self.id)
    }
}

/// Seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since 1970-01-01 UTC; negative before.
    pub secs: i64,
    /// Nanoseconds, below 1e9.
    pub nanos: u32,
}

/// A byte range of a sparse file that holds data; bytes outside every region are holes (zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes, never zero.
    pub len: u64,
}

/// Bytes of a file that are data: all of it when dense, else the sum of its regions.
pub fn data_len(size: u64, regions: Option<&[Region]>) -> u64 {
    regions.map_or(size, |r| r.iter().map(|r| r.len).sum())
}

/// File types, taken from the `S_IFMT` bits of the mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

impl Kind {
    /// The kind encoded in a full `st_mode`, if it is one we know.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            _ => return None,
        })
    }
}

/// What an inode holds besides its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InodeData {
    /// A directory: its children are `entries[children]`.
    Dir {
        /// Index range of the children in [`Flist::entries`]; derived, not stored.
        children: Range<u32>,
    },
    /// A regular file.
    File {
        /// Apparent size in bytes.
        size: u64,
        /// Data regions when sparse (possibly none: all hole); `None` means all data.
        regions: Option<Vec<Region>>,
        /// Where the file's data starts in the data stream; derived, not stored.
        stream_offset: u64,
    },
    /// A symbolic link and its target, as raw bytes.
    Symlink(Vec<u8>),
    /// A character or block device number.
    Device(u64),
    /// A fifo or socket: nothing beyond its attributes.
    Special,
}

/// Attributes and content of one inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Full `st_mode`: type bits, setuid/setgid/sticky and permissions.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Status change time.
    pub ctime: Timestamp,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Type-specific content.
    pub data: InodeData,
    /// Number of entries naming this inode (directories: 2 + subdirectories); derived.
    pub nlink: u32,
}

impl Inode {
    /// The file type.
    pub fn kind(&self) -> Kind {
        // Validated at construction, so the fallback is never taken.
        Kind::from_mode(self.mode).unwrap_or(Kind::File)
    }

    /// Apparent size: file length, symlink target length, else 0.
    pub fn size(&self) -> u64 {
        match &self.data {
            InodeData::File { size, .. } => *size,
            InodeData::Symlink(t) => t.len() as u64,
            _ => 0,
        }
    }

    /// Bytes of the data stream this inode owns (its size less its holes).
    pub fn data_len(&self) -> u64 {
        match &self.data {
            InodeData::File { size, regions, .. } => data_len(*size, regions.as_deref()),
            _ => 0,
        }
    }
}

/// A name in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name, raw bytes (never empty, no `/`, not `.` or `..`; empty only for the root).
    pub name: Vec<u8>,
    /// Index into [`Flist::inodes`].
    pub inode: u32,
    /// Index of the parent directory's entry (the root is its own parent); derived.
    pub parent: u32,
}

/// Where chunks whose id starts with a byte in `start..=end` can be fetched.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    /// First id byte served.
    pub start: u8,
    /// Last id byte served.
    pub end: u8,
    /// Store URL, never with credentials.
    pub url: String,
}

/// A piece of a file read, mapped onto the data stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// `len` bytes from chunk `chunk` starting at `offset` in its plain bytes.
    Data {
        /// Index into [`Flist::chunks`].
        chunk: u32,
        /// Offset in the chunk's plain bytes.
        offset: u32,
        /// Length.
        len: u32,
    },
    /// `len` bytes of zeros.
    Hole {
        /// Length.
        len: u64,
    },
}

/// A decoded and validated flist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flist {
    /// Free-form tags (`name`, `version`, `author`, `description`, image config, ...), sorted.
    pub tags: BTreeMap<String, String>,
    /// Stores recorded at pack time, with prefix routing.
    pub routes: Vec<Route>,
    /// Whether chunks are encrypted.
    pub encrypted: bool,
    /// Which system made it: only flint's own can be encoded again.
    pub format: Format,
    /// The chunks of the data stream, in order.
    pub chunks: Vec<ChunkRef>,
    /// Names, breadth first; `entries[0]` is the root.
    pub entries: Vec<Entry>,
    /// Inodes, in order of first appearance in `entries`.
    pub inodes: Vec<Inode>,
    /// `chunk_ends[i]` is where chunk `i` ends in the data stream; derived.
    chunk_ends: Vec<u64>,
    /// BLAKE3 of the encoded bytes; what a manifest pins.
    digest: Hash,
}

/// Entry index of the root directory.
pub const ROOT: u32 = 0;

impl Flist {
    /// Decodes and validates an encoded flist.
    pub fn decode(bytes: &[u8]) -> Result<Flist, DecodeError> {
        decode::decode(bytes)
    }

    /// Builds a flist from its stored parts and returns it with its encoding. Derived fields of
    /// the input (`Entry::parent`, `nlink`, stream offsets, children ranges other than their
    /// length) are ignored and recomputed, so the result is exactly what a reader will decode.
    pub fn build(
        tags: BTreeMap<String, String>,
        routes: Vec<Route>,
        encrypted: bool,
        chunks: Vec<ChunkRef>,
        entries: Vec<Entry>,
        inodes: Vec<Inode>,
    ) -> Result<(Flist, Vec<u8>), BuildError> {
        let draft = Flist {
            tags,
            routes,
            encrypted,
            format: Format::Flint,
            chunks,
            entries,
            inodes,
            chunk_ends: Vec::new(),
            digest: Hash([0; 32]),
        };
        let bytes = encode::encode(&draft).map_err(BuildError::Compress)?;
        let flist = decode::decode(&bytes).map_err(BuildError::Invalid)?;
        Ok((flist, bytes))
    }

    /// Encodes again; the same bytes [`Flist::build`] returned. An rfs flist has no flint
    /// encoding: its chunks are rfs blocks (`flist convert` re-chunks it).
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        if self.format != Format::Flint {
            return Err(std::io::Error::other("an rfs flist cannot be encoded as it is: convert it"));
        }
        encode::encode(self)
    }

    /// A flist read from another system's metadata (an rfs `.fl`): `entries` breadth first with
    /// each directory's children contiguous and sorted, `inodes` one per entry in the same order
    /// (no hardlinks), directories holding their child count as `0..count`. The same checks as
    /// [`Flist::decode`] apply; `digest` is that of the file it was read from.
    pub(crate) fn assemble(
        format: Format,
        tags: BTreeMap<String, String>,
        routes: Vec<Route>,
        chunks: Vec<ChunkRef>,
        entries: Vec<Entry>,
        inodes: Vec<Inode>,
        digest: Hash,
    ) -> Result<Flist, DecodeError> {
        let refs = vec![0; entries.len()];
        let mut f =
            Flist { tags, routes, encrypted: false, format, chunks, entries, inodes, chunk_ends: Vec::new(), digest };
        decode::link(&mut f, &refs)?;
        Ok(f)
    }

    /// BLAKE3 of the encoded metadata.
    pub fn digest(&self) -> Hash {
        self.digest
    }

    /// Length of the whole data stream.
    pub fn stream_len(&self) -> u64 {
        self.chunk_ends.last().copied().unwrap_or(0)
    }

    /// The entry at `index`, if any.
    pub fn entry(&self, index: u32) -> Option<&Entry> {
        self.entries.get(index as usize)
    }

    /// The inode an entry names.
    pub fn inode_of(&self, entry: u32) -> Option<&Inode> {
        self.inodes.get(self.entry(entry)?.inode as usize)
    }

    /// Entry indices of a directory's children (empty for anything else).
    pub fn children(&self, entry: u32) -> Range<u32> {
        match self.inode_of(entry).map(|i| &i.data) {
            Some(InodeData::Dir { children }) => children.clone(),
            _ => 0..0,
        }
    }

    /// Finds `name` in directory `dir` by binary search.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Option<u32> {
        let range = self.children(dir);
        let slice = self.entries.get(range.start as usize..range.end as usize)?;
        let pos = slice.binary_search_by(|e| e.name.as_slice().cmp(name)).ok()?;
        Some(range.start + pos as u32)
    }

    /// Resolves a `/`-separated path from the root without following symlinks.
    pub fn resolve(&self, path: &[u8]) -> Option<u32> {
        path.split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .try_fold(ROOT, |dir, name| self.lookup(dir, name))
    }

    /// The path of an entry from the root, starting with `/`.
    pub fn path_of(&self, mut entry: u32) -> Vec<u8> {
        let mut parts = Vec::new();
        while entry != ROOT {
            let Some(e) = self.entry(entry) else { break };
            parts.push(e.name.as_slice());
            entry = e.parent;
        }
        let mut path = Vec::new();
        for part in parts.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(part);
        }
        if path.is_empty() {
            path.push(b'/');
        }
        path
    }

    /// Index of the chunk holding stream byte `pos`.
    fn chunk_at(&self, pos: u64) -> usize {
        self.chunk_ends.partition_point(|&end| end <= pos)
    }

    /// Start of chunk `index` in the data stream.
    pub fn chunk_start(&self, index: usize) -> u64 {
        index.checked_sub(1).and_then(|i| self.chunk_ends.get(i)).copied().unwrap_or(0)
    }

    /// Maps `len` bytes at `offset` of a regular file onto chunks and holes. Reads past the end
    /// are cut at the file size; anything but a regular file maps to nothing.
    pub fn extents(&self, inode: &Inode, offset: u64, len: u64) -> Vec<Extent> {
        let InodeData::File { size, regions, stream_offset } = &inode.data else {
            return Vec::new();
        };
        let end = offset.saturating_add(len).min(*size);
        let dense = [Region { offset: 0, len: *size }];
        let regions: &[Region] = regions.as_deref().unwrap_or(&dense);
        let mut out = Vec::new();
        let mut pos = offset;
        let mut region_stream = *stream_offset;
        for r in regions {
            let r_end = r.offset + r.len;
            if pos >= end {
                break;
            }
            if r_end <= pos {
                region_stream += r.len;
                continue;
            }
            if pos < r.offset {
                let hole = r.offset.min(end) - pos;
                out.push(Extent::Hole { len: hole });
                pos += hole;
                if pos >= end {
                    break;
                }
            }
            let take_end = r_end.min(end);
            self.push_stream_extents(region_stream + (pos - r.offset), take_end - pos, &mut out);
            pos = take_end;
            region_stream += r.len;
        }
        if pos < end {
            out.push(Extent::Hole { len: end - pos });
        }
        out
    }

    fn push_stream_extents(&self, mut pos: u64, mut len: u64, out: &mut Vec<Extent>) {
        let mut index = self.chunk_at(pos);
        while len > 0 && index < self.chunks.len() {
            let start = self.chunk_start(index);
            let end = self.chunk_ends.get(index).copied().unwrap_or(start);
            let take = (end - pos).min(len);
            out.push(Extent::Data { chunk: index as u32, offset: (pos - start) as u32, len: take as u32 });
            pos += take;
            len -= take;
            index += 1;
        }
    }
}

#[cfg(test)]
mod tests;
