//! Bytes → validated Flist. Every structural promise the rest of the code relies on is checked
//! here, once: the tree is a tree, names are safe path components and sorted, hardlinks never
//! name directories, sparse regions fit their files, and the chunks cover the data stream exactly.

use std::collections::BTreeMap;

use super::wire::Reader;
use super::{
    ChunkRef, DecodeError, Entry, Flist, Format, Hash, Inode, InodeData, Kind, Region, Route, Timestamp,
    FLAG_ENCRYPTED, MAGIC, MAX_BODY_LEN, MAX_CHUNK_LEN, VERSION,
};

const HEADER_LEN: usize = 16;

fn corrupt(section: &'static str, what: &'static str) -> DecodeError {
    DecodeError::Corrupt { section, what }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Flist, DecodeError> {
    let header: [u8; HEADER_LEN] =
        bytes.get(..HEADER_LEN).and_then(|h| h.try_into().ok()).ok_or(DecodeError::BadMagic)?;
    let [m0, m1, m2, m3, m4, m5, m6, m7, v0, v1, f0, f1, l0, l1, l2, l3] = header;
    if [m0, m1, m2, m3, m4, m5, m6, m7] != *MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u16::from_le_bytes([v0, v1]);
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let flags = u16::from_le_bytes([f0, f1]);
    if flags & !FLAG_ENCRYPTED != 0 {
        return Err(DecodeError::UnknownFlags(flags));
    }
    let body_len = u32::from_le_bytes([l0, l1, l2, l3]);
    if body_len > MAX_BODY_LEN {
        return Err(DecodeError::BodyTooLarge(body_len));
    }
    let body = zstd::bulk::decompress(bytes.get(HEADER_LEN..).unwrap_or_default(), body_len as usize)
        .map_err(|e| DecodeError::Decompress(e.to_string()))?;
    if body.len() != body_len as usize {
        return Err(DecodeError::Decompress("length differs from the header".into()));
    }
    let mut f = parse_body(&body, flags & FLAG_ENCRYPTED != 0)?;
    f.digest = Hash(*blake3::hash(bytes).as_bytes());
    Ok(f)
}

fn utf8(b: &[u8], section: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| corrupt(section, "not UTF-8"))
}

fn parse_body(body: &[u8], encrypted: bool) -> Result<Flist, DecodeError> {
    let mut top = Reader::new(body, "body");

    let mut r = top.section("tags")?;
    let mut tags = BTreeMap::new();
    for _ in 0..r.count(2)? {
        let k = utf8(r.bytes()?, "tags")?;
        let v = utf8(r.bytes()?, "tags")?;
        if tags.insert(k, v).is_some() {
            return Err(corrupt("tags", "duplicate tag"));
        }
    }
    r.end()?;

    let mut r = top.section("routes")?;
    let mut routes = Vec::new();
    for _ in 0..r.count(3)? {
        let range = r.raw(2)?;
        let (start, end) = (range.first().copied().unwrap_or(0), range.get(1).copied().unwrap_or(0));
        if start > end {
            return Err(corrupt("routes", "range start after end"));
        }
        routes.push(Route { start, end, url: utf8(r.bytes()?, "routes")? });
    }
    r.end()?;

    let chunks = parse_chunks(&mut top, encrypted)?;
    let (entries, refs) = parse_entries(&mut top)?;
    let inodes = parse_inodes(&mut top)?;
    top.end()?;

    let mut f = Flist {
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
    link(&mut f, &refs)?;
    Ok(f)
}

/// Derives and checks what the parts imply: the tree, then the data stream.
pub(super) fn link(f: &mut Flist, refs: &[u32]) -> Result<(), DecodeError> {
    link_tree(f, refs)?;
    link_stream(f)
}

fn parse_chunks(top: &mut Reader, encrypted: bool) -> Result<Vec<ChunkRef>, DecodeError> {
    let mut lens = top.section("chunk lengths")?;
    let mut ids = top.section("chunk ids")?;
    let mut plains = top.section("chunk plain hashes")?;
    let n = lens.count(1)?;
    let mut chunks = Vec::with_capacity(n);
    for _ in 0..n {
        let len = lens.u32()?;
        if len == 0 || len > MAX_CHUNK_LEN {
            return Err(corrupt("chunk lengths", "chunk length out of range"));
        }
        let id = Hash(ids.array32()?);
        let plain = if encrypted { Some(Hash(plains.array32()?)) } else { None };
        chunks.push(ChunkRef { id, plain, len, format: Format::Flint });
    }
    lens.end()?;
    ids.end()?;
    plains.end()?;
    Ok(chunks)
}

fn parse_entries(top: &mut Reader) -> Result<(Vec<Entry>, Vec<u32>), DecodeError> {
    let mut names = top.section("entry names")?;
    let mut refs = top.section("entry inodes")?;
    let n = names.count(1)?;
    let mut entries = Vec::with_capacity(n);
    let mut inode_refs = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(Entry { name: names.bytes()?.to_vec(), inode: 0, parent: 0 });
        inode_refs.push(refs.u32()?);
    }
    names.end()?;
    refs.end()?;
    Ok((entries, inode_refs))
}

fn parse_time(r: &mut Reader, prev: &mut i64) -> Result<Timestamp, DecodeError> {
    let secs = prev.wrapping_add(r.i64()?);
    let nanos = r.u32()?;
    if nanos >= 1_000_000_000 {
        return Err(corrupt(r.section, "nanoseconds out of range"));
    }
    *prev = secs;
    Ok(Timestamp { secs, nanos })
}

fn parse_inodes(top: &mut Reader) -> Result<Vec<Inode>, DecodeError> {
    let mut modes = top.section("inode modes")?;
    let mut owners = top.section("inode owners")?;
    let mut mtimes = top.section("inode mtimes")?;
    let mut ctimes = top.section("inode ctimes")?;
    let mut payload = top.section("inode payload")?;
    let mut xattrs = top.section("inode xattrs")?;
    let n = modes.count(1)?;
    let mut inodes = Vec::with_capacity(n);
    let (mut prev_m, mut prev_c) = (0i64, 0i64);
    for _ in 0..n {
        let mode = modes.u32()?;
        let kind = Kind::from_mode(mode).ok_or_else(|| corrupt("inode modes", "unknown file type"))?;
        let uid = owners.u32()?;
        let gid = owners.u32()?;
        let mtime = parse_time(&mut mtimes, &mut prev_m)?;
        let ctime = parse_time(&mut ctimes, &mut prev_c)?;
        let data = match kind {
            Kind::Dir => {
                let count = payload.u32()?;
                InodeData::Dir { children: 0..count }
            }
            Kind::File => parse_file(&mut payload)?,
            Kind::Symlink => InodeData::Symlink(payload.bytes()?.to_vec()),
            Kind::CharDev | Kind::BlockDev => InodeData::Device(payload.u64()?),
            Kind::Fifo | Kind::Socket => InodeData::Special,
        };
        let mut attrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for _ in 0..xattrs.count(2)? {
            let k = xattrs.bytes()?.to_vec();
            if k.is_empty() || attrs.last().is_some_and(|(prev, _)| *prev >= k) {
                return Err(corrupt("inode xattrs", "names empty, unsorted or repeated"));
            }
            attrs.push((k, xattrs.bytes()?.to_vec()));
        }
        inodes.push(Inode { mode, uid, gid, mtime, ctime, xattrs: attrs, data, nlink: 0 });
    }
    for r in [modes, owners, mtimes, ctimes, payload, xattrs] {
        r.end()?;
    }
    Ok(inodes)
}

fn parse_file(payload: &mut Reader) -> Result<InodeData, DecodeError> {
    let size = payload.u64()?;
    let sparse = payload.u64()?;
    if sparse == 0 {
        return Ok(InodeData::File { size, regions: None, stream_offset: 0 });
    }
    let n = usize::try_from(sparse - 1).map_err(|_| corrupt("inode payload", "region count"))?;
    if n > payload.remaining() / 2 {
        return Err(corrupt("inode payload", "region count larger than the data"));
    }
    let mut regions = Vec::with_capacity(n);
    let mut prev_end = 0u64;
    for _ in 0..n {
        let gap = payload.u64()?;
        let len = payload.u64()?;
        let offset = prev_end.checked_add(gap);
        let end = offset.and_then(|o| o.checked_add(len));
        match (offset, end) {
            (Some(offset), Some(end)) if len > 0 && end <= size && (gap > 0 || regions.is_empty()) => {
                regions.push(Region { offset, len });
                prev_end = end;
            }
            _ => return Err(corrupt("inode payload", "sparse region out of range")),
        }
    }
    Ok(InodeData::File { size, regions: Some(regions), stream_offset: 0 })
}

fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// Assigns inodes to entries, children ranges to directories, parents and link counts, checking
/// that the entries form one breadth-first tree with sorted, safe names.
fn link_tree(f: &mut Flist, refs: &[u32]) -> Result<(), DecodeError> {
    const S: &str = "entries";
    let n = f.entries.len();
    if n == 0 || n > u32::MAX as usize {
        return Err(corrupt(S, "no root"));
    }
    let mut next_new: u32 = 0;
    let mut cursor: usize = 1;
    for i in 0..n {
        if i > 0 && i >= cursor {
            return Err(corrupt(S, "entry outside every directory"));
        }
        let inode = match refs.get(i).copied().unwrap_or(0) {
            0 => {
                next_new = next_new.checked_add(1).ok_or_else(|| corrupt(S, "too many inodes"))?;
                next_new - 1
            }
            k => {
                let target = k - 1;
                let is_dir = matches!(f.inodes.get(target as usize).map(|x| &x.data), Some(InodeData::Dir { .. }));
                if target >= next_new || is_dir {
                    return Err(corrupt(S, "hardlink to an unknown inode or a directory"));
                }
                target
            }
        };
        let ino = f.inodes.get_mut(inode as usize).ok_or_else(|| corrupt(S, "more inodes named than stored"))?;
        if i == 0 && !matches!(ino.data, InodeData::Dir { .. }) {
            return Err(corrupt(S, "root is not a directory"));
        }
        ino.nlink = ino.nlink.saturating_add(1);
        if let InodeData::Dir { children } = &mut ino.data {
            let count = (children.end - children.start) as usize;
            let end =
                cursor.checked_add(count).filter(|&e| e <= n).ok_or_else(|| corrupt(S, "children past the end"))?;
            *children = cursor as u32..end as u32;
            ino.nlink = 2;
            cursor = end;
        }
        let entry = f.entries.get_mut(i).ok_or_else(|| corrupt(S, "entry index"))?;
        entry.inode = inode;
        if (i == 0) != entry.name.is_empty() || (i > 0 && !valid_name(&entry.name)) {
            return Err(corrupt(S, "invalid name"));
        }
    }
    if cursor != n || next_new as usize != f.inodes.len() {
        return Err(corrupt(S, "entries and inodes do not match"));
    }
    // Parents, sorted names, and subdirectory link counts.
    for dir in 0..n {
        let Some(range) = f.inode_of(dir as u32).and_then(|ino| match &ino.data {
            InodeData::Dir { children } => Some(children.clone()),
            _ => None,
        }) else {
            continue;
        };
        let mut subdirs = 0u32;
        for c in range.clone() {
            let prev_name = (c > range.start).then(|| f.entries.get(c as usize - 1).map(|e| e.name.clone())).flatten();
            let is_dir = f.inode_of(c).is_some_and(|i| i.kind() == Kind::Dir);
            let e = f.entries.get_mut(c as usize).ok_or_else(|| corrupt(S, "child index"))?;
            if prev_name.is_some_and(|p| p >= e.name) {
                return Err(corrupt(S, "names unsorted or repeated"));
            }
            e.parent = dir as u32;
            subdirs += u32::from(is_dir);
        }
        let dir_inode = f.entries.get(dir).map(|e| e.inode as usize).unwrap_or(usize::MAX);
        if let Some(ino) = f.inodes.get_mut(dir_inode) {
            ino.nlink = ino.nlink.saturating_add(subdirs);
        }
    }
    Ok(())
}

/// Places each file in the data stream and checks the chunks cover it exactly.
fn link_stream(f: &mut Flist) -> Result<(), DecodeError> {
    let mut pos = 0u64;
    f.chunk_ends = Vec::with_capacity(f.chunks.len());
    for c in &f.chunks {
        pos += u64::from(c.len);
        f.chunk_ends.push(pos);
    }
    let total = pos;
    let mut offset = 0u64;
    for ino in &mut f.inodes {
        let len = ino.data_len();
        if let InodeData::File { stream_offset, .. } = &mut ino.data {
            *stream_offset = offset;
            offset = offset
                .checked_add(len)
                .filter(|&o| o <= total)
                .ok_or_else(|| corrupt("chunks", "files exceed the data stream"))?;
        }
    }
    if offset != total {
        return Err(corrupt("chunks", "data stream longer than its files"));
    }
    Ok(())
}
