//! Chunks as stored: plain bytes → zstd → (optionally) convergent encryption, and back.
//!
//! Convergent encryption: the key is derived from the BLAKE3 of the plain bytes, which only the
//! flist holds, so a store alone reveals nothing while identical chunks still encrypt to identical
//! objects and dedup across images. A key is never reused for other plaintext, so the fixed nonce
//! is safe.
//!
//! [`open`] is the only way to get a [`Verified`] chunk: whatever a store, a cache or a network
//! hands back is checked against the metadata before anything can use it.

use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::format::{ChunkRef, Format, Hash};

const KEY_CONTEXT: &str = "flint 2026-11 convergent chunk key v1";

/// Why stored bytes are not the chunk the metadata names.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum ChunkError {
    #[error("compressing a chunk")]
    Compress(#[source] std::io::Error),
    #[error("chunk {0} does not decompress")]
    Decompress(Hash),
    #[error("chunk {0} does not decrypt (tampered or wrong key)")]
    Decrypt(Hash),
    #[error("chunk {id} is corrupt: its plain bytes hash to {actual}")]
    HashMismatch { id: Hash, actual: Hash },
    #[error("stored object {id} is corrupt: it hashes to {actual}")]
    IdMismatch { id: Hash, actual: Hash },
    #[error("rfs block {id} holds {actual} plain bytes where its file's index assumed {expected} (blocks of 512 KiB but the last); the read fails (EIO) rather than serve shifted bytes")]
    Length { id: Hash, expected: u32, actual: u64 },
    #[error("chunk {0} names no key to open it with")]
    NoKey(Hash),
    #[error("rfs block {id} is the object its id names, but its plain bytes hash to {actual}, not the key {key} the .fl gives: the .fl is wrong, and no replica can help")]
    KeyMismatch { id: Hash, key: Hash, actual: Hash },
}

impl ChunkError {
    /// Whether the metadata, not the replica, is wrong: an rfs block is checked against its id
    /// first, so once that passes every replica holds these same bytes and fails the same way.
    pub fn is_metadata_fault(&self, format: Format) -> bool {
        format == Format::Rfs && !matches!(self, ChunkError::IdMismatch { .. })
    }
}

/// A chunk ready for a store.
pub struct Sealed {
    /// What the metadata records.
    pub chunk: ChunkRef,
    /// The object to store under `chunk.id`.
    pub bytes: Vec<u8>,
}

/// Plain bytes that were checked against their hash. Cheap to clone. (An `Arc<Vec>`, not an
/// `Arc<[u8]>`: making the latter from the decompressed `Vec` copied every chunk once more.)
#[derive(Clone, Debug)]
pub struct Verified(Arc<Vec<u8>>);

impl std::ops::Deref for Verified {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// BLAKE3 of some bytes.
pub fn hash(bytes: &[u8]) -> Hash {
    Hash(*blake3::hash(bytes).as_bytes())
}

fn cipher(plain: &Hash) -> ChaCha20Poly1305 {
    let key = blake3::derive_key(KEY_CONTEXT, &plain.0);
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

/// Compresses (and encrypts when asked) one chunk of plain bytes.
pub fn seal(plain: &[u8], encrypt: bool, zstd_level: i32) -> Result<Sealed, ChunkError> {
    let plain_hash = hash(plain);
    let compressed = zstd::bulk::compress(plain, zstd_level).map_err(ChunkError::Compress)?;
    let len = plain.len() as u32;
    if !encrypt {
        return Ok(Sealed {
            chunk: ChunkRef { id: plain_hash, plain: None, len, format: Format::Flint },
            bytes: compressed,
        });
    }
    let bytes = cipher(&plain_hash)
        .encrypt(Nonce::from_slice(&[0; 12]), compressed.as_slice())
        .map_err(|_| ChunkError::Decrypt(plain_hash))?;
    Ok(Sealed { chunk: ChunkRef { id: hash(&bytes), plain: Some(plain_hash), len, format: Format::Flint }, bytes })
}

/// Decrypts and decompresses a stored object and checks it is exactly the chunk named.
pub fn open(chunk: &ChunkRef, stored: &[u8]) -> Result<Verified, ChunkError> {
    if chunk.format == Format::Rfs {
        return verify_plain(chunk, crate::rfs::block::open(chunk, stored)?);
    }
    let decrypted;
    let compressed = match &chunk.plain {
        None => stored,
        Some(plain) => {
            decrypted = cipher(plain)
                .decrypt(Nonce::from_slice(&[0; 12]), stored)
                .map_err(|_| ChunkError::Decrypt(chunk.id))?;
            decrypted.as_slice()
        }
    };
    // The capacity bounds what a hostile object can make us allocate.
    let plain = decompress(compressed, chunk.len as usize).map_err(|_| ChunkError::Decompress(chunk.id))?;
    verify_plain(chunk, plain)
}

thread_local! {
    /// One decompression context per thread: making one per chunk cost more than some chunks.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd-decompresses `compressed` into at most `capacity` bytes.
fn decompress(compressed: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(std::io::Error::other)?;
        let decompressor = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress(compressed, capacity)
    })
}

/// The hash a chunk's plain bytes are named by in its format: BLAKE3, or BLAKE2b-256 for rfs.
pub fn plain_hash_of(format: Format, plain: &[u8]) -> Hash {
    match format {
        Format::Flint => hash(plain),
        Format::Rfs => crate::rfs::block::hash(plain),
    }
}

/// Checks bytes that claim to be a chunk's plain content (a cache file, say).
pub fn verify_plain(chunk: &ChunkRef, plain: Vec<u8>) -> Result<Verified, ChunkError> {
    let actual = plain_hash_of(chunk.format, &plain);
    if actual != chunk.plain_hash() || plain.len() != chunk.len as usize {
        if chunk.format == Format::Rfs {
            return Err(ChunkError::KeyMismatch { id: chunk.id, key: chunk.plain_hash(), actual });
        }
        return Err(ChunkError::HashMismatch { id: chunk.id, actual });
    }
    Ok(Verified(Arc::new(plain)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_plain_and_encrypted() {
        let data = b"hello flint hello flint hello flint".repeat(100);
        for encrypt in [false, true] {
            let s = seal(&data, encrypt, 3).unwrap();
            assert_eq!(&*open(&s.chunk, &s.bytes).unwrap(), data.as_slice());
            assert_eq!(s.chunk.plain_hash(), hash(&data));
            // Convergent: the same plaintext always gives the same object.
            assert_eq!(seal(&data, encrypt, 3).unwrap().bytes, s.bytes);
        }
    }

    #[test]
    fn encrypted_object_hides_plaintext() {
        let data = b"secret secret secret secret".repeat(10);
        let s = seal(&data, true, 3).unwrap();
        let raw = seal(&data, false, 3).unwrap();
        assert_ne!(s.bytes, raw.bytes);
        assert_ne!(s.chunk.id, raw.chunk.id);
        assert_eq!(s.chunk.id, hash(&s.bytes));
    }

    /// A flipped bit never yields wrong plain bytes. Plain objects may survive a flip that zstd
    /// ignores (a reserved header bit) with the exact original bytes; AEAD refuses every flip.
    #[test]
    fn any_flipped_bit_is_refused_or_harmless() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        for encrypt in [false, true] {
            let s = seal(&data, encrypt, 3).unwrap();
            for i in 0..s.bytes.len() {
                let mut bad = s.bytes.clone();
                bad[i] ^= 0x10;
                match open(&s.chunk, &bad) {
                    Err(_) => {}
                    Ok(v) => assert!(!encrypt && *v == *data, "flip at {i} gave wrong bytes (encrypt={encrypt})"),
                }
            }
            assert!(open(&s.chunk, &s.bytes[..s.bytes.len() - 1]).is_err());
        }
    }
}
