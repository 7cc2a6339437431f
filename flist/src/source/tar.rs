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

/// Applies an uncompressed tar archive on top of `tree`. An image layer's whiteouts apply to
/// the layers below only, so they all go first, then the entries in archive order.
fn apply(tree: &mut Tree, archive_path: &Path, layer: Layer) -> Result<(), TarError> {
    let name = archive_path.display().to_string();
    let read_err = |source: io::Error| TarError::Read { path: name.clone(), source };
    let file = File::open(archive_path).map_err(read_err)?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let default_dir = Meta::default_dir();
    let index = tree.archives.len();
    tree.archives.push(archive_path.to_path_buf());
    let (mut changes, mut hidden, mut opaque) = (Vec::new(), Vec::new(), Vec::new());

    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let path_err = |source| TarError::Path { path: name.clone(), entry: shown.clone(), source };
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
        let header = entry.header();
        let perm = header.mode().map_err(read_err)? & 0o7777;
        let mut meta = Meta {
            mode: perm,
            uid: header.uid().map_err(read_err)? as u32,
            gid: header.gid().map_err(read_err)? as u32,
            mtime: Timestamp { secs: header.mtime().map_err(read_err)? as i64, nanos: 0 },
            ctime: Timestamp::default(),
            xattrs: BTreeMap::new(),
        };
        let kind = header.entry_type();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let rdev = match (header.device_major(), header.device_minor()) {
            (Ok(Some(ma)), Ok(Some(mi))) => libc::makedev(ma, mi),
            _ => 0,
        };
        let size = entry.size();
        let offset = entry.raw_file_position();
        let mut ctime = None;
        if let Some(pax) = entry.pax_extensions().map_err(read_err)? {
            for ext in pax {
                let ext = ext.map_err(read_err)?;
                let key = ext.key_bytes();
                if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                    meta.xattrs.insert(attr.to_vec(), ext.value_bytes().to_vec());
                } else if key == b"mtime" {
                    meta.mtime = pax_time(ext.value_bytes()).unwrap_or(meta.mtime);
                } else if key == b"ctime" {
                    ctime = pax_time(ext.value_bytes());
                }
            }
        }
        meta.ctime = ctime.unwrap_or(meta.mtime);
        let unsupported = |why| TarError::Unsupported { path: name.clone(), entry: shown.clone(), why };
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
            // Metadata-only records (long names, PAX headers) are folded into the next entry by
            // the tar crate; anything else is unknown.
            _ => return Err(unsupported("unknown entry type")),
        };
        meta.mode |= type_bits;
        if path.is_empty() && type_bits != libc::S_IFDIR {
            return Err(unsupported("the archive root is not a directory"));
        }
        changes.push(Change::Put(path, Node { meta, content }));
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
