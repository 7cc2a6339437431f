//! A tree from a directory on disk: `lstat` attributes, xattrs (never following symlinks),
//! hardlinks by (device, inode), and sparse files by `SEEK_DATA`/`SEEK_HOLE`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{lseek, Whence};

use super::{Content, Data, Meta, Node, NodeId, Tree};
use crate::format::{Region, Timestamp};

/// Reading the source failed; the path says where.
#[derive(Debug, thiserror::Error)]
#[error("reading {}", path.display())]
pub struct ScanError {
    /// What could not be read.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> ScanError + '_ {
    move |source| ScanError { path: path.to_path_buf(), source }
}

/// Scans `root` recursively.
pub fn scan(root: &Path) -> Result<Tree, ScanError> {
    let md = fs::symlink_metadata(root).map_err(err(root))?;
    if !md.is_dir() {
        return Err(ScanError { path: root.to_path_buf(), source: std::io::Error::other("not a directory") });
    }
    let mut tree = Tree::new(meta(root, &md)?);
    let mut links: HashMap<(u64, u64), NodeId> = HashMap::new();
    let mut stack = vec![(0usize, root.to_path_buf())];
    while let Some((dir_id, dir_path)) = stack.pop() {
        let mut children = BTreeMap::new();
        for entry in fs::read_dir(&dir_path).map_err(err(&dir_path))? {
            let entry = entry.map_err(err(&dir_path))?;
            let path = entry.path();
            let md = fs::symlink_metadata(&path).map_err(err(&path))?;
            let name = entry.file_name().as_bytes().to_vec();
            let key = (md.dev(), md.ino());
            if !md.is_dir() && md.nlink() > 1 {
                if let Some(&id) = links.get(&key) {
                    children.insert(name, id);
                    continue;
                }
            }
            let node = Node { meta: meta(&path, &md)?, content: content(&path, &md)? };
            let id = tree.nodes.len();
            tree.nodes.push(node);
            if md.is_dir() {
                stack.push((id, path));
            } else if md.nlink() > 1 {
                links.insert(key, id);
            }
            children.insert(name, id);
        }
        if let Some(Node { content: Content::Dir(c), .. }) = tree.nodes.get_mut(dir_id) {
            *c = children;
        }
    }
    Ok(tree)
}

fn meta(path: &Path, md: &fs::Metadata) -> Result<Meta, ScanError> {
    let mut xattrs = BTreeMap::new();
    // Sockets, fifos and devices can carry xattrs too; `xattr` uses the l* calls, so symlinks
    // are not followed.
    let names = match xattr::list(path) {
        Ok(names) => names.collect::<Vec<_>>(),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
        Err(e) => return Err(ScanError { path: path.to_path_buf(), source: e }),
    };
    for name in names {
        if let Some(value) = xattr::get(path, &name).map_err(err(path))? {
            xattrs.insert(name.as_bytes().to_vec(), value);
        }
    }
    Ok(Meta {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime: Timestamp { secs: md.mtime(), nanos: md.mtime_nsec() as u32 },
        ctime: Timestamp { secs: md.ctime(), nanos: md.ctime_nsec() as u32 },
        xattrs,
    })
}

fn content(path: &Path, md: &fs::Metadata) -> Result<Content, ScanError> {
    let ft = md.file_type();
    Ok(if ft.is_dir() {
        Content::Dir(BTreeMap::new())
    } else if ft.is_file() {
        // Only files with fewer blocks than their size can have holes; skip the seeks otherwise.
        let regions = if md.blocks() * 512 < md.size() { data_regions(path, md.size())? } else { None };
        Content::File { size: md.size(), regions, data: Data::Path(path.to_path_buf()) }
    } else if ft.is_symlink() {
        Content::Symlink(fs::read_link(path).map_err(err(path))?.as_os_str().as_bytes().to_vec())
    } else if md.mode() & libc::S_IFMT == libc::S_IFCHR || md.mode() & libc::S_IFMT == libc::S_IFBLK {
        Content::Device(md.rdev())
    } else {
        Content::Special
    })
}

/// The data regions of a file with holes, or `None` if it turns out to be all data.
fn data_regions(path: &Path, size: u64) -> Result<Option<Vec<Region>>, ScanError> {
    let file = File::open(path).map_err(err(path))?;
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    let mut regions = Vec::new();
    let mut pos = 0i64;
    while pos < size {
        let start = match lseek(file.as_raw_fd(), pos, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break,
            // File systems without SEEK_DATA: treat the file as all data.
            Err(nix::errno::Errno::EINVAL) => return Ok(None),
            Err(e) => return Err(ScanError { path: path.to_path_buf(), source: e.into() }),
        };
        let end = lseek(file.as_raw_fd(), start, Whence::SeekHole)
            .map_err(|e| ScanError { path: path.to_path_buf(), source: e.into() })?;
        let end = end.min(size);
        if end > start {
            regions.push(Region { offset: start as u64, len: (end - start) as u64 });
        }
        pos = end;
    }
    let dense = matches!(regions.as_slice(), [only] if only.offset == 0 && only.len == size as u64);
    Ok(if dense { None } else { Some(regions) })
}
