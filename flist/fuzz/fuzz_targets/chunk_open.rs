//! Hostile stored objects: opening must fail or yield exactly the bytes the metadata names.
#![no_main]

use flist::chunk::{hash, open};
use flist::format::{ChunkRef, Format, Hash};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, stored)) = data.split_first() else { return };
    let len = u32::from(sel) * 97 + 1;
    let plain = hash(stored);
    let chunk = ChunkRef { id: hash(stored), plain: (sel & 1 == 1).then_some(Hash(plain.0)), len, format: Format::Flint };
    if let Ok(v) = open(&chunk, stored) {
        assert_eq!(hash(&v), chunk.plain_hash());
        assert_eq!(v.len(), len as usize);
    }
});
