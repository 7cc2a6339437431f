//! Flist → bytes. Deterministic: the model is already canonical (sorted children, sorted tags
//! and xattrs, inodes in first-appearance order), and every column is written in a fixed order
//! with a fixed zstd level.

use super::wire::Writer;
use super::{Flist, InodeData, Timestamp, FLAG_ENCRYPTED, MAGIC, VERSION};

/// zstd level for the metadata body: it is small and written once, so spend CPU on size.
const BODY_ZSTD_LEVEL: i32 = 19;

pub(crate) fn encode(f: &Flist) -> std::io::Result<Vec<u8>> {
    let mut body = Writer::default();

    let mut tags = Writer::default();
    tags.u64(f.tags.len() as u64);
    for (k, v) in &f.tags {
        tags.bytes(k.as_bytes());
        tags.bytes(v.as_bytes());
    }
    tags.finish_into(&mut body);

    let mut routes = Writer::default();
    routes.u64(f.routes.len() as u64);
    for r in &f.routes {
        routes.raw(&[r.start, r.end]);
        routes.bytes(r.url.as_bytes());
    }
    routes.finish_into(&mut body);

    let (mut lens, mut ids, mut plains) = (Writer::default(), Writer::default(), Writer::default());
    lens.u64(f.chunks.len() as u64);
    for c in &f.chunks {
        lens.u64(u64::from(c.len));
        ids.raw(&c.id.0);
        if let Some(p) = c.plain {
            plains.raw(&p.0);
        }
    }
    for column in [lens, ids, plains] {
        column.finish_into(&mut body);
    }

    // Entry inode references: 0 = the next new inode, k = hardlink to inode k-1.
    let (mut names, mut refs) = (Writer::default(), Writer::default());
    names.u64(f.entries.len() as u64);
    let mut next_new = 0u32;
    for e in &f.entries {
        names.bytes(&e.name);
        if e.inode == next_new {
            refs.u64(0);
            next_new += 1;
        } else {
            refs.u64(u64::from(e.inode) + 1);
        }
    }
    names.finish_into(&mut body);
    refs.finish_into(&mut body);

    let mut modes = Writer::default();
    let mut owners = Writer::default();
    let mut mtimes = Writer::default();
    let mut ctimes = Writer::default();
    let mut payload = Writer::default();
    let mut xattrs = Writer::default();
    modes.u64(f.inodes.len() as u64);
    let (mut prev_m, mut prev_c) = (0i64, 0i64);
    for ino in &f.inodes {
        modes.u64(u64::from(ino.mode));
        owners.u64(u64::from(ino.uid));
        owners.u64(u64::from(ino.gid));
        time(&mut mtimes, &mut prev_m, ino.mtime);
        time(&mut ctimes, &mut prev_c, ino.ctime);
        match &ino.data {
            InodeData::Dir { children } => payload.u64(u64::from(children.end - children.start)),
            InodeData::File { size, regions, .. } => {
                payload.u64(*size);
                // 0 = dense, else 1 + the number of data regions.
                let regions = regions.as_deref();
                payload.u64(regions.map_or(0, |r| r.len() as u64 + 1));
                let mut prev_end = 0;
                for r in regions.unwrap_or_default() {
                    payload.u64(r.offset - prev_end);
                    payload.u64(r.len);
                    prev_end = r.offset + r.len;
                }
            }
            InodeData::Symlink(target) => payload.bytes(target),
            InodeData::Device(rdev) => payload.u64(*rdev),
            InodeData::Special => {}
        }
        xattrs.u64(ino.xattrs.len() as u64);
        for (k, v) in &ino.xattrs {
            xattrs.bytes(k);
            xattrs.bytes(v);
        }
    }
    for column in [modes, owners, mtimes, ctimes, payload, xattrs] {
        column.finish_into(&mut body);
    }

    let compressed = zstd::bulk::compress(&body.buf, BODY_ZSTD_LEVEL)?;
    let mut out = Vec::with_capacity(16 + compressed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let flags = if f.encrypted { FLAG_ENCRYPTED } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(body.buf.len() as u32).to_le_bytes());
    out.extend_from_slice(&compressed);
    Ok(out)
}

/// Seconds as a zigzag delta from the previous inode's (neighbours share times), then nanos.
fn time(w: &mut Writer, prev: &mut i64, t: Timestamp) {
    w.i64(t.secs.wrapping_sub(*prev));
    w.u64(u64::from(t.nanos));
    *prev = t.secs;
}
