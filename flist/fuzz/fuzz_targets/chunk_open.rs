//! Hostile stored objects: opening must fail or yield exactly the bytes the metadata names.
//! Flint chunks as stored; rfs blocks whose id and AES-GCM seal are right but whose Snappy
//! stream is hostile (so decompression and the length checks behind the seal are reached).
#![no_main]

use flist::chunk::{hash, open, plain_hash_of};
use flist::format::{ChunkRef, Format, Hash};
use libfuzzer_sys::fuzz_target;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let len = u32::from(sel) * 97 + 1;
    let chunk = if sel & 2 == 0 {
        let plain = hash(body);
        let id = hash(body);
        (ChunkRef { id, plain: (sel & 1 == 1).then_some(Hash(plain.0)), len, format: Format::Flint }, body.to_vec())
    } else {
        let key = flist::rfs::block::hash(&[sel]);
        let Ok(unbound) = UnboundKey::new(&AES_256_GCM, &key.0) else { return };
        let Ok(nonce) = Nonce::try_assume_unique_for_key(&key.0[..12]) else { return };
        let mut stored = body.to_vec();
        if LessSafeKey::new(unbound).seal_in_place_append_tag(nonce, Aad::empty(), &mut stored).is_err() {
            return;
        }
        let id = flist::rfs::block::hash(&stored);
        (ChunkRef { id, plain: Some(key), len, format: Format::Rfs }, stored)
    };
    let (chunk, stored) = chunk;
    if let Ok(v) = open(&chunk, &stored) {
        assert_eq!(plain_hash_of(chunk.format, &v), chunk.plain_hash());
        assert_eq!(v.len(), len as usize);
    }
});
