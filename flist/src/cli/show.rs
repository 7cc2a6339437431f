//! Inspection commands: `inspect`, `ls`, `tree`, `stat`, `cat`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flist::format::{Extent, Flist, Inode, InodeData, Kind, Timestamp};
use flist::read::{copy_range, RouterSource};

use super::{load, print_json, StoreArgs};

/// Show an flist's tags, stores, digest and counts.
#[derive(clap::Args)]
pub(crate) struct InspectArgs {
    /// The flist file.
    flist: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// List a directory of an flist.
#[derive(clap::Args)]
pub(crate) struct LsArgs {
    /// The flist file.
    flist: PathBuf,
    /// Directory inside the flist.
    #[arg(default_value = "/")]
    path: String,
    /// Long format: mode, owner, size, mtime.
    #[arg(short, long)]
    long: bool,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// Print the tree under a path of an flist.
#[derive(clap::Args)]
pub(crate) struct TreeArgs {
    /// The flist file.
    flist: PathBuf,
    /// Directory inside the flist.
    #[arg(default_value = "/")]
    path: String,
}

/// Show every attribute of one path of an flist.
#[derive(clap::Args)]
pub(crate) struct StatArgs {
    /// The flist file.
    flist: PathBuf,
    /// Path inside the flist.
    path: String,
    /// Also list the chunks a file's content is made of (id, offset in the chunk, length).
    #[arg(long)]
    chunks: bool,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// Write a file's contents to stdout, fetching and verifying its chunks.
#[derive(clap::Args)]
pub(crate) struct CatArgs {
    /// The flist file.
    flist: PathBuf,
    /// File inside the flist.
    path: String,
    #[command(flatten)]
    stores: StoreArgs,
}

fn resolve(f: &Flist, path: &str) -> anyhow::Result<u32> {
    f.resolve(path.as_bytes()).with_context(|| format!("{path}: no such path in the flist"))
}

#[derive(serde::Serialize)]
struct Info {
    digest: String,
    /// flint's own or a Zero-OS rfs `.fl`.
    format: flist::format::Format,
    encrypted: bool,
    tags: std::collections::BTreeMap<String, String>,
    stores: Vec<flist::format::Route>,
    entries: usize,
    inodes: usize,
    files: usize,
    directories: usize,
    symlinks: usize,
    other: usize,
    data_bytes: u64,
    chunks: usize,
    distinct_chunks: usize,
    mean_chunk_bytes: u64,
}

pub(crate) fn inspect(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let f = load(&a.flist)?;
    let count = |k: Kind| f.inodes.iter().filter(|i| i.kind() == k).count();
    let distinct: std::collections::BTreeSet<_> = f.chunks.iter().map(|c| c.id).collect();
    let (files, directories, symlinks) = (count(Kind::File), count(Kind::Dir), count(Kind::Symlink));
    let info = Info {
        digest: f.digest().to_hex(),
        format: f.format,
        encrypted: f.encrypted,
        tags: f.tags.clone(),
        stores: f.routes.clone(),
        entries: f.entries.len(),
        inodes: f.inodes.len(),
        files,
        directories,
        symlinks,
        other: f.inodes.len() - files - directories - symlinks,
        data_bytes: f.stream_len(),
        chunks: f.chunks.len(),
        distinct_chunks: distinct.len(),
        mean_chunk_bytes: f.stream_len() / f.chunks.len().max(1) as u64,
    };
    if a.json {
        print_json(&info)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("digest     {}", info.digest);
    println!(
        "format     {}",
        match info.format {
            flist::format::Format::Flint => "flint",
            flist::format::Format::Rfs => "rfs .fl (Zero-OS): BLAKE2b-named, Snappy, AES-256-GCM blocks",
        }
    );
    for (k, v) in &info.tags {
        println!("tag        {k} = {v}");
    }
    for r in &info.stores {
        println!("store      {:02x}-{:02x} {}", r.start, r.end, r.url);
    }
    println!("encrypted  {}", info.encrypted);
    println!(
        "entries    {} ({} files, {} directories, {} symlinks, {} other; {} inodes)",
        info.entries, info.files, info.directories, info.symlinks, info.other, info.inodes
    );
    println!(
        "data       {} bytes in {} chunks ({} distinct, mean {} bytes)",
        info.data_bytes, info.chunks, info.distinct_chunks, info.mean_chunk_bytes
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct Stat {
    path: String,
    kind: Kind,
    mode: String,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u32,
    mtime: String,
    ctime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rdev: Option<(u32, u32)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_regions: Option<Vec<(u64, u64)>>,
    xattrs: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunks: Option<Vec<ChunkSpan>>,
}

/// A piece of a file's content in one chunk.
#[derive(serde::Serialize)]
struct ChunkSpan {
    id: String,
    offset: u32,
    len: u32,
}

/// The chunks of a file's content, in file order (holes left out).
fn chunk_spans(f: &Flist, inode: &Inode) -> Vec<ChunkSpan> {
    f.extents(inode, 0, inode.size())
        .into_iter()
        .filter_map(|e| match e {
            Extent::Data { chunk, offset, len } => {
                Some(ChunkSpan { id: f.chunks.get(chunk as usize)?.id.to_hex(), offset, len })
            }
            Extent::Hole { .. } => None,
        })
        .collect()
}

fn time(t: Timestamp) -> String {
    format!("{}.{:09}", t.secs, t.nanos)
}

fn stat_of(f: &Flist, entry: u32, inode: &Inode) -> Stat {
    Stat {
        path: String::from_utf8_lossy(&f.path_of(entry)).into_owned(),
        kind: inode.kind(),
        mode: format!("{:o}", inode.mode & 0o7777),
        uid: inode.uid,
        gid: inode.gid,
        size: inode.size(),
        nlink: inode.nlink,
        mtime: time(inode.mtime),
        ctime: time(inode.ctime),
        target: match &inode.data {
            InodeData::Symlink(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        },
        rdev: match &inode.data {
            InodeData::Device(d) => Some((libc::major(*d), libc::minor(*d))),
            _ => None,
        },
        data_regions: match &inode.data {
            InodeData::File { regions: Some(r), .. } => Some(r.iter().map(|r| (r.offset, r.len)).collect()),
            _ => None,
        },
        xattrs: inode.xattrs.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), hex::encode(v))).collect(),
        chunks: None,
    }
}

/// `ls -l`-style type and permission letters.
fn mode_string(mode: u32) -> String {
    let t = match Kind::from_mode(mode) {
        Some(Kind::Dir) => 'd',
        Some(Kind::Symlink) => 'l',
        Some(Kind::CharDev) => 'c',
        Some(Kind::BlockDev) => 'b',
        Some(Kind::Fifo) => 'p',
        Some(Kind::Socket) => 's',
        _ => '-',
    };
    let mut s = String::from(t);
    for (shift, special, lower, upper) in [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S'), (0, 0o1000, 't', 'T')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

pub(crate) fn ls(a: LsArgs) -> anyhow::Result<ExitCode> {
    let f = load(&a.flist)?;
    let target = resolve(&f, &a.path)?;
    let is_dir = f.inode_of(target).is_some_and(|i| i.kind() == Kind::Dir);
    let listed: Vec<u32> = if is_dir { f.children(target).collect() } else { vec![target] };
    let rows: Vec<(u32, &Inode, Stat)> =
        listed.into_iter().filter_map(|e| f.inode_of(e).map(|i| (e, i, stat_of(&f, e, i)))).collect();
    if a.json {
        print_json(&rows.iter().map(|r| &r.2).collect::<Vec<_>>())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    for (e, inode, row) in &rows {
        let name = match f.entry(*e) {
            Some(entry) if is_dir => String::from_utf8_lossy(&entry.name).into_owned(),
            _ => row.path.clone(),
        };
        if a.long {
            let arrow = row.target.as_ref().map(|t| format!(" -> {t}")).unwrap_or_default();
            let (mode, links, uid, gid, size, mtime) =
                (mode_string(inode.mode), row.nlink, row.uid, row.gid, row.size, &row.mtime);
            writeln!(out, "{mode} {links:>3} {uid:>5} {gid:>5} {size:>10} {mtime} {name}{arrow}")?;
        } else {
            writeln!(out, "{name}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn tree(a: TreeArgs) -> anyhow::Result<ExitCode> {
    let f = load(&a.flist)?;
    let start = resolve(&f, &a.path)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", a.path)?;
    let mut stack: Vec<(u32, String)> = f.children(start).rev().map(|c| (c, String::new())).collect();
    // Depth-first, printing each entry with box-drawing prefixes.
    while let Some((e, indent)) = stack.pop() {
        let Some(entry) = f.entry(e) else { continue };
        let is_last = f.children(entry.parent).end == e + 1;
        let name = String::from_utf8_lossy(&entry.name);
        let suffix = match f.inode_of(e).map(|i| &i.data) {
            Some(InodeData::Symlink(t)) => format!(" -> {}", String::from_utf8_lossy(t)),
            _ => String::new(),
        };
        writeln!(out, "{indent}{}{name}{suffix}", if is_last { "└── " } else { "├── " })?;
        let child_indent = format!("{indent}{}", if is_last { "    " } else { "│   " });
        for c in f.children(e).rev() {
            stack.push((c, child_indent.clone()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn stat(a: StatArgs) -> anyhow::Result<ExitCode> {
    let f = load(&a.flist)?;
    let e = resolve(&f, &a.path)?;
    let inode = f.inode_of(e).context("entry without inode")?;
    let mut s = stat_of(&f, e, inode);
    s.chunks = a.chunks.then(|| chunk_spans(&f, inode));
    if a.json {
        print_json(&s)?;
    } else {
        println!("  path  {}", s.path);
        println!("  type  {:?}   mode {} ({})   links {}", s.kind, s.mode, mode_string(inode.mode), s.nlink);
        println!("  owner {}:{}   size {}", s.uid, s.gid, s.size);
        println!("  mtime {}   ctime {}", s.mtime, s.ctime);
        if let Some(t) = &s.target {
            println!("  target {t}");
        }
        if let Some((ma, mi)) = s.rdev {
            println!("  device {ma},{mi}");
        }
        if let Some(r) = &s.data_regions {
            println!("  sparse, data regions (offset, len): {r:?}");
        }
        for (k, v) in &s.xattrs {
            println!("  xattr {k} = 0x{v}");
        }
        for c in s.chunks.iter().flatten() {
            println!("  chunk {} +{} {} bytes", c.id, c.offset, c.len);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn cat(a: CatArgs) -> anyhow::Result<ExitCode> {
    let f = load(&a.flist)?;
    let e = resolve(&f, &a.path)?;
    let inode = f.inode_of(e).context("entry without inode")?;
    anyhow::ensure!(inode.kind() == Kind::File, "{} is not a regular file", a.path);
    let router = a.stores.router(&f)?;
    let source = RouterSource::new(&router);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    copy_range(&f, &source, inode, 0, inode.size(), &mut out).with_context(|| format!("reading {}", a.path))?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
