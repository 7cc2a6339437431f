//! Hostile flist metadata: decoding must return an error or a flist that every accessor can walk
//! without panicking. Inputs are also fed as a raw body behind a valid header, so the fuzzer
//! reaches the structural checks rather than stopping at zstd.
#![no_main]

use flist::format::{Flist, MAGIC, VERSION};
use libfuzzer_sys::fuzz_target;

fn exercise(f: &Flist) {
    for e in 0..f.entries.len() as u32 {
        let path = f.path_of(e);
        let _ = f.resolve(&path);
        let _ = f.children(e);
        if let Some(i) = f.inode_of(e) {
            let _ = f.extents(i, 0, u64::MAX);
            let _ = f.extents(i, i.size() / 2, 4096);
        }
    }
    let _ = f.encode();
}

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = Flist::decode(data) {
        exercise(&f);
    }
    let Some((&flags, body)) = data.split_first() else { return };
    let mut framed = MAGIC.to_vec();
    framed.extend_from_slice(&VERSION.to_le_bytes());
    framed.extend_from_slice(&u16::from(flags & 1).to_le_bytes());
    framed.extend_from_slice(&(body.len() as u32).to_le_bytes());
    framed.extend_from_slice(&zstd_frame(body));
    if let Ok(f) = Flist::decode(&framed) {
        exercise(&f);
    }
});

/// A zstd frame of raw (uncompressed) blocks, built by hand so the target needs no zstd encoder.
fn zstd_frame(body: &[u8]) -> Vec<u8> {
    // Magic, then a frame header descriptor: single segment, 4-byte content size.
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0b1010_0000];
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let mut chunks = body.chunks(128 * 1024).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0]); // last, raw, size 0
    }
    while let Some(c) = chunks.next() {
        let last = u32::from(chunks.peek().is_none());
        let header = last | ((c.len() as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(c);
    }
    out
}
