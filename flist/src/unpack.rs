//! flist → a real directory tree, with every attribute the format keeps.
//!
//! Three passes: create every object (breadth first, so parents exist), fill file data chunk by
//! chunk in parallel (each chunk fetched once, its bytes written to every file it holds), then set
//! owners, modes, xattrs and times deepest first (so writing a child never bumps its parent's
//! mtime afterwards, and `chown` cannot clear setuid bits or capabilities set before it).

use std::ffi::OsStr;
use std::fs::{self, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use rayon::prelude::*;

use crate::format::{Flist, Inode, InodeData, Kind, Timestamp};
use crate::read::ChunkSource;
use crate::store::FetchError;

/// Why unpacking failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum UnpackError {
    #[error("{} exists and is not an empty directory", .0.display())]
    DestNotEmpty(PathBuf),
    #[error("creating {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("setting attributes of {}", path.display())]
    Attributes {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("fetching content")]
    Fetch(#[source] FetchError),
    #[error("starting worker threads")]
    Threads(#[source] rayon::ThreadPoolBuildError),
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Unpacks `flist` into `dest`, which must be missing or empty.
pub fn unpack(
    flist: &Flist,
    source: &dyn ChunkSource,
    dest: &Path,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), UnpackError> {
    fn create(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
        move |source| UnpackError::Create { path: path.to_path_buf(), source }
    }
    match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(UnpackError::DestNotEmpty(dest.to_path_buf()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dest).map_err(create(dest))?,
        Err(e) => return Err(create(dest)(e)),
    }

    // Pass 1: objects. `first_path[inode]` is where each inode was created.
    let mut first_path: Vec<Option<PathBuf>> = vec![None; flist.inodes.len()];
    for (index, entry) in flist.entries.iter().enumerate() {
        let rel = flist.path_of(index as u32);
        let path = dest.join(OsStr::from_bytes(rel.strip_prefix(b"/").unwrap_or(&rel)));
        let Some(inode) = flist.inodes.get(entry.inode as usize) else {
            continue;
        };
        let Some(slot) = first_path.get_mut(entry.inode as usize) else {
            continue;
        };
        if let Some(original) = slot {
            fs::hard_link(&*original, &path).map_err(create(&path))?;
            continue;
        }
        if index > 0 {
            create_object(&path, inode).map_err(create(&path))?;
        }
        *slot = Some(path);
    }

    // Pass 2: data, chunk by chunk.
    let files: Vec<(u64, u64, &Inode, &Path)> = flist
        .inodes
        .iter()
        .zip(&first_path)
        .filter_map(|(inode, path)| match (&inode.data, path) {
            (InodeData::File { stream_offset, .. }, Some(p)) if inode.data_len() > 0 => {
                Some((*stream_offset, stream_offset + inode.data_len(), inode, p.as_path()))
            }
            _ => None,
        })
        .collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build().map_err(UnpackError::Threads)?;
    pool.install(|| {
        (0..flist.chunks.len()).into_par_iter().try_for_each(|index| {
            let bytes = source.chunk(flist, index as u32).map_err(UnpackError::Fetch)?;
            let start = flist.chunk_start(index);
            let end = start + bytes.len() as u64;
            let first = files.partition_point(|f| f.1 <= start);
            for &(f_start, f_end, inode, path) in files.get(first..).unwrap_or_default() {
                if f_start >= end {
                    break;
                }
                let (s, e) = (start.max(f_start), end.min(f_end));
                let data = bytes.get((s - start) as usize..(e - start) as usize).unwrap_or_default();
                write_stream_range(path, inode, s - f_start, data)
                    .map_err(|source| UnpackError::Write { path: path.to_path_buf(), source })?;
            }
            progress(bytes.len() as u64);
            Ok(())
        })
    })?;

    // Pass 3: attributes, deepest first.
    for (inode, path) in flist.inodes.iter().zip(&first_path).rev() {
        if let Some(path) = path {
            set_attributes(path, inode).map_err(|source| UnpackError::Attributes { path: path.clone(), source })?;
        }
    }
    Ok(())
}

fn create_object(path: &Path, inode: &Inode) -> io::Result<()> {
    let perm = Mode::from_bits_truncate(0o600);
    match (&inode.data, inode.kind()) {
        (InodeData::Dir { .. }, _) => fs::create_dir(path),
        (InodeData::File { size, .. }, _) => OpenOptions::new().write(true).create_new(true).open(path)?.set_len(*size),
        (InodeData::Symlink(target), _) => std::os::unix::fs::symlink(OsStr::from_bytes(target), path),
        (InodeData::Device(rdev), Kind::BlockDev) => mknod(path, SFlag::S_IFBLK, perm, *rdev).map_err(errno),
        (InodeData::Device(rdev), _) => mknod(path, SFlag::S_IFCHR, perm, *rdev).map_err(errno),
        (_, Kind::Socket) => mknod(path, SFlag::S_IFSOCK, perm, 0).map_err(errno),
        _ => mknod(path, SFlag::S_IFIFO, perm, 0).map_err(errno),
    }
}

/// Writes `data`, which starts `offset` bytes into the file's data stream, at its file offsets.
fn write_stream_range(path: &Path, inode: &Inode, offset: u64, data: &[u8]) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    let InodeData::File { regions: Some(regions), .. } = &inode.data else {
        return file.write_all_at(data, offset);
    };
    // Sparse: stream offsets skip the holes, so walk the regions.
    let (mut stream_pos, mut data) = (0u64, data);
    let mut offset = offset;
    for r in regions {
        if data.is_empty() {
            break;
        }
        if offset < stream_pos + r.len {
            let into = offset - stream_pos;
            let n = ((r.len - into) as usize).min(data.len());
            let (head, rest) = data.split_at(n);
            file.write_all_at(head, r.offset + into)?;
            data = rest;
            offset += n as u64;
        }
        stream_pos += r.len;
    }
    Ok(())
}

fn timespec(t: Timestamp) -> TimeSpec {
    TimeSpec::new(t.secs, i64::from(t.nanos))
}

fn set_attributes(path: &Path, inode: &Inode) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(inode.uid), Some(inode.gid))?;
    if inode.kind() != Kind::Symlink {
        fs::set_permissions(path, Permissions::from_mode(inode.mode & 0o7777))?;
    }
    for (name, value) in &inode.xattrs {
        xattr::set(path, OsStr::from_bytes(name), value)?;
    }
    let mtime = timespec(inode.mtime);
    utimensat(None, path, &mtime, &mtime, UtimensatFlags::NoFollowSymlink).map_err(errno)
}
