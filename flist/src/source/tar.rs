//! A tree from a tar archive (ustar, GNU and PAX, as GNU tar and `docker save` write them).
//! Data is not copied: nodes point at byte offsets in the archive, so packing reads it once more.
//! PAX records carry nanosecond times and xattrs (`SCHILY.xattr.*`, incl. `security.capability`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

use tar::EntryType;

use super::{components, Content, Data, Meta, Node, PathError, Tree};
use crate::format::Timestamp;

/// Reading an archive failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum TarError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("entry {entry:?} of {path}")]
    Path {
        path: String,
        entry: String,
        #[source]
        source: PathError,
    },
    #[error("entry {entry:?} of {path}: {why}")]
    Unsupported { path: String, entry: String, why: &'static str },
}

/// Parses `secs[.frac]` from a PAX time record.
fn pax_time(v: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos: u32 = if digits.is_empty() { 0 } else { format!("{digits:0<9}").parse().ok()? };
    // The fraction has the sign of the whole: -1.25 is 1.25 s before the epoch.
    if s.starts_with('-') && nanos > 0 {
        return Some(Timestamp { secs: secs - 1, nanos: 1_000_000_000 - nanos });
    }
    Some(Timestamp { secs, nanos })
}

/// Scans a tar archive, plain or compressed with gzip or zstd (detected by magic bytes). A
/// compressed archive is first decompressed to a temporary file in `$TMPDIR`, because the tree
/// points at byte offsets that packing reads back.
pub fn scan_any(archive_path: &Path) -> Result<Tree, TarError> {
    let mut tree = Tree::new(Meta::default_dir());
    apply_any(&mut tree, archive_path, Layer::Whole)?;
    Ok(tree)
}

/// How an archive's entries land on a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// A whole tree: `.wh.` names are ordinary files.
    Whole,
    /// A container image layer over the layers before it: `.wh.NAME` deletes NAME below, and
    /// `.wh..wh..opq` hides everything the lower layers had in its directory.
    Overlay,
}

/// Applies an archive (plain, gzip or zstd) on top of `tree`, as extracting it over the tree would.
pub fn apply_any(tree: &mut Tree, archive_path: &Path, layer: Layer) -> Result<(), TarError> {
    let name = archive_path.display().to_string();
    let read_err = |source: io::Error| TarError::Read { path: name.clone(), source };
    let mut magic = [0u8; 4];
    let mut file = File::open(archive_path).map_err(read_err)?;
    let n = io::Read::read(&mut file, &mut magic).map_err(read_err)?;
    let decoder: Box<dyn io::Read> = match magic.get(..n) {
        Some([0x1f, 0x8b, ..]) => {
            Box::new(flate2::read::MultiGzDecoder::new(File::open(archive_path).map_err(read_err)?))
        }
        Some([0x28, 0xb5, 0x2f, 0xfd]) => {
            Box::new(zstd::Decoder::new(File::open(archive_path).map_err(read_err)?).map_err(read_err)?)
        }
        _ => return apply(tree, archive_path, layer),
    };
    let mut spool = tempfile::NamedTempFile::new().map_err(read_err)?;
    io::copy(&mut io::BufReader::new(decoder), &mut spool).map_err(read_err)?;
    let spool = spool.into_temp_path();
    apply(tree, &spool, layer)?;
    tree.spools.push(std::sync::Arc::new(spool));
    Ok(())
}

/// Scans an uncompressed tar archive into a tree. Later entries replace earlier ones at the same
/// path, as extraction would.
pub fn scan(archive_path: &Path) -> Result<Tree, TarError> {
    let mut tree = Tree::new(Meta::default_dir());
    apply(&mut tree, archive_path, Layer::Whole)?;
    Ok(tree)
}

/// The marker of an opaque directory in an image layer.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// The prefix of a whiteout in an image layer.
const WHITEOUT: &[u8] = b".wh.";

/// What one entry of an archive does to the tree.
enum Change {
    Put(Vec<Vec<u8>>, Node),
    Link { path: Vec<Vec<u8>>, target: Vec<Vec<u8>>, shown: String },
}

/// The most bytes a metadata-only member (PAX header, GNU long name or link) may hold: Linux
/// caps one xattr value at 64 KiB, so this leaves room for many, and a hostile archive can't make
/// us hold more.
const MAX_EXTENSION: u64 = 16 << 20;

/// What metadata-only members said about the next entry.
#[derive(Default)]
struct Pending {
    pax: Option<Vec<u8>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pax.is_none() && self.long_name.is_none() && self.long_link.is_none()
    }
}

/// A PAX record: key, value.
type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// The records of a PAX extended header, each `LEN KEY=VALUE\n` where LEN counts the whole
/// record. They are read by that length, so a value may hold any byte — a newline or NUL in an
/// xattr value (capability sets have them) — and can't be taken for a record of its own. (The
/// `tar` crate splits records at newlines, which refuses such values and would read a forged
/// `path` record out of one; so members are read raw and their extensions here.)
fn pax_records(data: &[u8]) -> Result<Vec<PaxRecord<'_>>, &'static str> {
    let mut records = Vec::new();
    let mut rest = data;
    // Some writers pad the header's data with NULs.
    while rest.iter().any(|&b| b != 0) {
        let space = rest.iter().position(|&b| b == b' ').ok_or("a PAX record without a length")?;
        let digits = rest.get(..space).unwrap_or_default();
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .ok_or("a PAX record length that is not a number")?;
        let (record, next) = rest.split_at_checked(len).ok_or("a PAX record longer than its header")?;
        let body = record
            .get(space + 1..)
            .and_then(|b| b.strip_suffix(b"\n"))
            .ok_or("a PAX record not ended by a newline where its length says")?;
        let eq = body.iter().position(|&b| b == b'=').ok_or("a PAX record without '='")?;
        let (key, value) = body.split_at(eq);
        records.push((key, value.get(1..).unwrap_or_default()));
        rest = next;
    }
    Ok(records)
}

/// A GNU long name or link member's data: the name and its terminating NUL.
fn gnu_name(mut data: Vec<u8>) -> Vec<u8> {
    while data.last() == Some(&0) {
        data.pop();
    }
    data
}

/// Tar's block: headers and the padding of every member's data.
const BLOCK: u64 = 512;

/// The member headers of an uncompressed archive, one after another, each with the offset of its
/// data; the data is skipped by seeking. Written here rather than taken from the `tar` crate's
/// iterator because the length a member's data takes may come from its PAX `size` record (Go's
/// writer, umoci's, leaves the header's field 0 for files over 8 GiB): the crate honours that only
/// while it also parses the records itself, by splitting at newlines. Headers are still decoded by
/// `tar::Header`.
struct Members {
    reader: BufReader<File>,
    /// Where the reader is.
    pos: u64,
    /// The archive's length: no member's data may run past it.
    len: u64,
    /// Where the next header is.
    next: u64,
}

impl Members {
    /// Moves the reader to `at`, within its buffer when it can (members are mostly small).
    fn go_to(&mut self, at: u64) -> io::Result<()> {
        if at != self.pos {
            let delta = i64::try_from(i128::from(at) - i128::from(self.pos)).map_err(io::Error::other)?;
            self.reader.seek_relative(delta)?;
            self.pos = at;
        }
        Ok(())
    }

    /// The next header and its data's offset, or `None` at the end (a zero block, or the end of
    /// the file at a block boundary, as some writers leave it).
    fn next_header(&mut self) -> io::Result<Option<(tar::Header, u64)>> {
        let mut header = tar::Header::new_old();
        self.go_to(self.next)?;
        let block = header.as_mut_bytes();
        let mut filled = 0;
        while filled < block.len() {
            match io::Read::read(&mut self.reader, block.get_mut(filled..).unwrap_or_default())? {
                0 if filled == 0 => return Ok(None),
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the archive ends inside a header")),
                n => filled += n,
            }
        }
        self.pos += BLOCK;
        if block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        // The checksum field counts as spaces.
        let sum: u32 =
            block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) }).sum();
        if header.cksum()? != sum {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a header's checksum does not match"));
        }
        let data = self.next.checked_add(BLOCK).ok_or_else(|| io::Error::other("the archive is too large"))?;
        Ok(Some((header, data)))
    }

    /// Steps past `size` bytes of data at `data`, padded to a block.
    fn skip(&mut self, data: u64, size: u64) -> io::Result<()> {
        if data.checked_add(size).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the archive ends inside a member's data"));
        }
        self.next = size
            .div_ceil(BLOCK)
            .checked_mul(BLOCK)
            .and_then(|padded| data.checked_add(padded))
            .ok_or_else(|| io::Error::other("a member's size is past any archive"))?;
        Ok(())
    }

    /// The `size` bytes of data at `data` (a metadata member's), and steps past them.
    fn read(&mut self, data: u64, size: u64) -> io::Result<Vec<u8>> {
        self.skip(data, size)?;
        self.go_to(data)?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(&mut self.reader, size), &mut bytes)?;
        self.pos = data.saturating_add(bytes.len() as u64);
        Ok(bytes)
    }
}

/// Applies an uncompressed tar archive on top of `tree`. An image layer's whiteouts apply to
/// the layers below only, so they all go first, then the entries in archive order.
fn apply(tree: &mut Tree, archive_path: &Path, layer: Layer) -> Result<(), TarError> {
    let name = archive_path.display().to_string();
    let read_err = |source: io::Error| TarError::Read { path: name.clone(), source };
    let file = File::open(archive_path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    let mut members = Members { reader: BufReader::new(file), pos: 0, len, next: 0 };
    let default_dir = Meta::default_dir();
    let index = tree.archives.len();
    tree.archives.push(archive_path.to_path_buf());
    let (mut changes, mut hidden, mut opaque) = (Vec::new(), Vec::new(), Vec::new());
    let mut pending = Pending::default();

    // Metadata-only members are folded into the next entry below.
    while let Some((header, data_offset)) = members.next_header().map_err(read_err)? {
        let kind = header.entry_type();
        let header_size = header.entry_size().map_err(read_err)?;
        let header_path = String::from_utf8_lossy(&header.path_bytes()).into_owned();
        let unsupported_at =
            |entry: &str, why| TarError::Unsupported { path: name.clone(), entry: entry.to_string(), why };
        if matches!(
            kind,
            EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink | EntryType::XGlobalHeader
        ) {
            if header_size > MAX_EXTENSION {
                return Err(unsupported_at(&header_path, "a metadata member over 16 MiB"));
            }
            let data = members.read(data_offset, header_size).map_err(read_err)?;
            let slot = match kind {
                EntryType::XHeader => &mut pending.pax,
                EntryType::GNULongName => &mut pending.long_name,
                EntryType::GNULongLink => &mut pending.long_link,
                // Global records (a comment, a default mtime) describe no entry of ours.
                _ => continue,
            };
            if slot.replace(data).is_some() {
                return Err(unsupported_at(&header_path, "two metadata members of one kind for one entry"));
            }
            continue;
        }
        let ext = std::mem::take(&mut pending);
        let records = match &ext.pax {
            Some(data) => pax_records(data).map_err(|why| unsupported_at(&header_path, why))?,
            None => Vec::new(),
        };
        let record = |key: &[u8]| records.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let raw_path = match (record(b"path"), ext.long_name) {
            (Some(p), _) => p.to_vec(),
            (None, Some(long)) => gnu_name(long),
            (None, None) => header.path_bytes().into_owned(),
        };
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let unsupported = |why| unsupported_at(&shown, why);
        let path_err = |source| TarError::Path { path: name.clone(), entry: shown.clone(), source };
        let size = match record(b"size") {
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| unsupported("a PAX size that is not a number"))?,
            None => header_size,
        };
        members.skip(data_offset, size).map_err(read_err)?;
        if records.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) {
            return Err(unsupported("GNU sparse entries are not supported yet"));
        }
        let path = components(&raw_path).map_err(path_err)?;
        if let (Layer::Overlay, Some((last, parent))) = (layer, path.split_last()) {
            if last.as_slice() == OPAQUE {
                opaque.push(parent.to_vec());
                continue;
            }
            if let Some(gone) = last.strip_prefix(WHITEOUT) {
                hidden.push([parent, &[gone.to_vec()]].concat());
                continue;
            }
        }
        // A PAX record wins over the header's field, which is then not read at all (writers
        // leave it zero or blank when the value does not fit).
        let id = |key: &[u8], from_header: &dyn Fn() -> io::Result<u64>| -> Result<u32, TarError> {
            let value = match record(key) {
                Some(v) => std::str::from_utf8(v).ok().and_then(|v| v.parse::<u64>().ok()),
                None => Some(from_header().map_err(read_err)?),
            };
            value
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| unsupported("a uid or gid that is not a 32-bit number"))
        };
        let mtime = match record(b"mtime").and_then(pax_time) {
            Some(t) => t,
            None => Timestamp { secs: header.mtime().map_err(read_err)?.try_into().unwrap_or(i64::MAX), nanos: 0 },
        };
        let mut meta = Meta {
            mode: header.mode().map_err(read_err)? & 0o7777,
            uid: id(b"uid", &|| header.uid())?,
            gid: id(b"gid", &|| header.gid())?,
            mtime,
            ctime: Timestamp::default(),
            xattrs: BTreeMap::new(),
        };
        meta.ctime = record(b"ctime").and_then(pax_time).unwrap_or(meta.mtime);
        for (key, value) in &records {
            if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.").filter(|a| !a.is_empty()) {
                meta.xattrs.insert(attr.to_vec(), value.to_vec());
            }
        }
        let link = match (record(b"linkpath"), ext.long_link) {
            (Some(l), _) => Some(l.to_vec()),
            (None, Some(long)) => Some(gnu_name(long)),
            (None, None) => header.link_name_bytes().map(|l| l.into_owned()),
        };
        let rdev = match (header.device_major(), header.device_minor()) {
            (Ok(Some(ma)), Ok(Some(mi))) => libc::makedev(ma, mi),
            _ => 0,
        };
        let offset = data_offset;
        let (type_bits, content) = match kind {
            EntryType::Regular | EntryType::Continuous => {
                (libc::S_IFREG, Content::File { size, regions: None, data: Data::Archive { archive: index, offset } })
            }
            EntryType::Directory => (libc::S_IFDIR, Content::Dir(BTreeMap::new())),
            EntryType::Symlink => (libc::S_IFLNK, Content::Symlink(link.unwrap_or_default())),
            EntryType::Char => (libc::S_IFCHR, Content::Device(rdev)),
            EntryType::Block => (libc::S_IFBLK, Content::Device(rdev)),
            EntryType::Fifo => (libc::S_IFIFO, Content::Special),
            EntryType::Link => {
                let target = components(&link.unwrap_or_default()).map_err(path_err)?;
                changes.push(Change::Link { path, target, shown });
                continue;
            }
            EntryType::GNUSparse => return Err(unsupported("GNU sparse entries are not supported yet")),
            _ => return Err(unsupported("unknown entry type")),
        };
        meta.mode |= type_bits;
        if path.is_empty() && type_bits != libc::S_IFDIR {
            return Err(unsupported("the archive root is not a directory"));
        }
        changes.push(Change::Put(path, Node { meta, content }));
    }
    if !pending.is_empty() {
        return Err(TarError::Unsupported {
            path: name.clone(),
            entry: String::new(),
            why: "metadata members at the end describe no entry",
        });
    }
    for dir in &opaque {
        tree.clear_dir(dir);
    }
    for path in &hidden {
        tree.remove(path);
    }
    for change in changes {
        match change {
            Change::Put(path, node) => {
                tree.insert(&path, node, &default_dir);
            }
            Change::Link { path, target, shown } => tree
                .hardlink(&path, &target, &default_dir)
                .map_err(|source| TarError::Path { path: name.clone(), entry: shown, source })?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse() {
        assert_eq!(pax_time(b"1700000000.5"), Some(Timestamp { secs: 1_700_000_000, nanos: 500_000_000 }));
        assert_eq!(pax_time(b"12"), Some(Timestamp { secs: 12, nanos: 0 }));
        assert_eq!(pax_time(b"1.123456789123"), Some(Timestamp { secs: 1, nanos: 123_456_789 }));
        assert_eq!(pax_time(b"-86400.999999999"), Some(Timestamp { secs: -86401, nanos: 1 }));
        assert_eq!(pax_time(b"-5"), Some(Timestamp { secs: -5, nanos: 0 }));
        assert_eq!(pax_time(b"x"), None);
    }
}

#[cfg(test)]
mod layer_tests {
    use super::*;

    /// A layer from (path, kind) entries: "file:TEXT", "dir", "link:TARGET" (hardlink), or an
    /// empty file for whiteouts.
    fn layer(dir: &Path, name: &str, entries: &[(&str, &str)]) -> std::path::PathBuf {
        let path = dir.join(name);
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        for (p, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_600_000_000);
            if *kind == "dir" {
                h.set_entry_type(EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, p, io::empty()).unwrap();
            } else if let Some(target) = kind.strip_prefix("link:") {
                h.set_entry_type(EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            } else {
                let text = kind.strip_prefix("file:").unwrap_or("");
                h.set_size(text.len() as u64);
                b.append_data(&mut h, p, text.as_bytes()).unwrap();
            }
        }
        b.finish().unwrap();
        path
    }

    fn names(tree: &Tree, path: &str) -> Vec<String> {
        let id = tree.lookup(&components(path.as_bytes()).unwrap()).unwrap();
        match &tree.nodes[id].content {
            Content::Dir(children) => children.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect(),
            _ => panic!("{path} is not a directory"),
        }
    }

    #[test]
    fn image_layers_apply_whiteouts_opaque_dirs_and_cross_layer_hardlinks() {
        let dir = tempfile::tempdir().unwrap();
        let lower = layer(
            dir.path(),
            "1.tar",
            &[
                ("d", "dir"),
                ("d/a", "file:a"),
                ("d/b", "file:b"),
                ("keep", "dir"),
                ("keep/x", "file:x"),
                ("gone", "file:g"),
                ("h", "file:shared"),
                (".wh.literal", "file:"),
            ],
        );
        let upper = layer(
            dir.path(),
            "2.tar",
            &[
                ("d", "dir"),
                ("d/c", "file:c"),
                ("d/.wh..wh..opq", "file:"),
                (".wh.gone", "file:"),
                ("keep/y", "file:y"),
                ("hl", "link:h"),
                ("keep/.wh.nothing", "file:"),
            ],
        );
        let mut tree = Tree::new(Meta::default_dir());
        apply(&mut tree, &lower, Layer::Overlay).unwrap();
        assert_eq!(names(&tree, "/"), ["d", "gone", "h", "keep"], "a whiteout in the first layer hides nothing");
        apply(&mut tree, &upper, Layer::Overlay).unwrap();
        assert_eq!(names(&tree, "/d"), ["c"], "the opaque dir keeps only this layer's entries, whatever their order");
        assert_eq!(names(&tree, "/keep"), ["x", "y"], "a plain directory merges");
        assert_eq!(names(&tree, "/"), ["d", "h", "hl", "keep"], "the whiteout removed gone");
        let h = tree.lookup(&components(b"h").unwrap());
        assert_eq!(h, tree.lookup(&components(b"hl").unwrap()), "a hardlink to a lower layer's file");

        // Read as a plain archive, whiteouts are files like any other.
        let whole = scan(&lower).unwrap();
        assert!(names(&whole, "/").contains(&".wh.literal".to_string()));
    }
}

#[cfg(test)]
mod pax_tests;
