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
        _ => return scan(archive_path),
    };
    let mut spool = tempfile::NamedTempFile::new().map_err(read_err)?;
    io::copy(&mut io::BufReader::new(decoder), &mut spool).map_err(read_err)?;
    let spool = spool.into_temp_path();
    let mut tree = scan(&spool)?;
    tree.spools.push(std::sync::Arc::new(spool));
    Ok(tree)
}

/// Scans an uncompressed tar archive into a tree. Later entries replace earlier ones at the same
/// path, as extraction would.
pub fn scan(archive_path: &Path) -> Result<Tree, TarError> {
    let name = archive_path.display().to_string();
    let read_err = |source: io::Error| TarError::Read { path: name.clone(), source };
    let file = File::open(archive_path).map_err(read_err)?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let default_dir = Meta { mode: libc::S_IFDIR | 0o755, ..Meta::default() };
    let mut tree = Tree::new(default_dir.clone());
    tree.archives.push(archive_path.to_path_buf());

    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let path_err = |source| TarError::Path { path: name.clone(), entry: shown.clone(), source };
        let path = components(&raw_path).map_err(path_err)?;
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
                (libc::S_IFREG, Content::File { size, regions: None, data: Data::Archive { archive: 0, offset } })
            }
            EntryType::Directory => (libc::S_IFDIR, Content::Dir(BTreeMap::new())),
            EntryType::Symlink => (libc::S_IFLNK, Content::Symlink(link.unwrap_or_default())),
            EntryType::Char => (libc::S_IFCHR, Content::Device(rdev)),
            EntryType::Block => (libc::S_IFBLK, Content::Device(rdev)),
            EntryType::Fifo => (libc::S_IFIFO, Content::Special),
            EntryType::Link => {
                let target = components(&link.unwrap_or_default()).map_err(path_err)?;
                tree.hardlink(&path, &target, &default_dir).map_err(path_err)?;
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
        tree.insert(&path, Node { meta, content }, &default_dir);
    }
    Ok(tree)
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
