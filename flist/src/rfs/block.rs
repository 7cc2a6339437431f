//! rfs blocks as stored: plain bytes → Snappy (raw) → AES-256-GCM keyed by the BLAKE2b-256 of the
//! plain bytes, nonce its first 12 bytes, the 16-byte tag after the ciphertext. The object is
//! named by the BLAKE2b-256 of what is stored. Convergent like flint's own chunks, so the fixed
//! nonce is safe: a key only ever encrypts the one plaintext it was derived from.
//!
//! Both hashes are checked: the stored bytes against the id (a mismatch is that replica's fault),
//! the plain bytes against the key (a mismatch means the `.fl` itself is wrong).

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::chunk::{ChunkError, Sealed};
use crate::format::{ChunkRef, Format, Hash};

/// BLAKE2b with a 32-byte digest (not a truncated BLAKE2b-512), as rfs hashes.
pub fn hash(bytes: &[u8]) -> Hash {
    Hash(Blake2b::<U32>::digest(bytes).into())
}

fn cipher(key: &Hash) -> Result<(LessSafeKey, Nonce), ChunkError> {
    let unbound = UnboundKey::new(&AES_256_GCM, &key.0).map_err(|_| ChunkError::Decrypt(*key))?;
    let nonce =
        Nonce::try_assume_unique_for_key(key.0.get(..12).unwrap_or_default()).map_err(|_| ChunkError::Decrypt(*key))?;
    Ok((LessSafeKey::new(unbound), nonce))
}

/// Seals plain bytes as rfs does (the test writer of the format uses it).
pub fn seal(plain: &[u8]) -> Result<Sealed, ChunkError> {
    seal_under(plain, hash(plain))
}

/// Seals plain bytes under any key: a block whose key is not its plain bytes' hash is what a
/// wrong `.fl` points at, and tests need one.
pub fn seal_under(plain: &[u8], key: Hash) -> Result<Sealed, ChunkError> {
    let mut bytes =
        snap::raw::Encoder::new().compress_vec(plain).map_err(|e| ChunkError::Compress(std::io::Error::other(e)))?;
    let (cipher, nonce) = cipher(&key)?;
    cipher.seal_in_place_append_tag(nonce, Aad::empty(), &mut bytes).map_err(|_| ChunkError::Decrypt(key))?;
    let len = u32::try_from(plain.len()).map_err(|_| ChunkError::Compress(std::io::Error::other("block too large")))?;
    Ok(Sealed { chunk: ChunkRef { id: hash(&bytes), plain: Some(key), len, format: Format::Rfs }, bytes })
}

/// Opens a stored block: checks it against its id, decrypts, and decompresses exactly the plain
/// length the index expects. The caller checks the plain bytes against the key.
pub fn open(chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let actual = hash(stored);
    if actual != chunk.id {
        return Err(ChunkError::IdMismatch { id: chunk.id, actual });
    }
    let key = chunk.plain.ok_or(ChunkError::NoKey(chunk.id))?;
    let (cipher, nonce) = cipher(&key)?;
    let mut buf = stored.to_vec();
    let compressed = cipher.open_in_place(nonce, Aad::empty(), &mut buf).map_err(|_| ChunkError::Decrypt(chunk.id))?;
    // The header says how long the plain bytes are: checked before anything is allocated for them.
    let plain_len = snap::raw::decompress_len(compressed).map_err(|_| ChunkError::Decompress(chunk.id))?;
    if plain_len as u64 != u64::from(chunk.len) {
        return Err(ChunkError::Length { id: chunk.id, expected: chunk.len, actual: plain_len as u64 });
    }
    snap::raw::Decoder::new().decompress_vec(compressed).map_err(|_| ChunkError::Decompress(chunk.id))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// BLAKE2b-256 of "abc" (RFC 7693's BLAKE2b with a 32-byte digest, from b2sum -l 256).
    #[test]
    fn the_hash_is_blake2b_with_a_32_byte_digest() {
        assert_eq!(hash(b"abc").to_hex(), "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319");
    }

    #[test]
    fn blocks_round_trip_and_every_flipped_bit_is_refused() {
        let plain: Vec<u8> = (0..3000u32).map(|i| (i * 13 % 251) as u8).collect();
        let sealed = seal(&plain).unwrap();
        assert_eq!(open(&sealed.chunk, &sealed.bytes).unwrap(), plain);
        assert_eq!(sealed.chunk.plain, Some(hash(&plain)));
        for i in 0..sealed.bytes.len() {
            let mut bad = sealed.bytes.clone();
            bad[i] ^= 0x01;
            assert!(matches!(open(&sealed.chunk, &bad), Err(ChunkError::IdMismatch { .. })), "flip at {i}");
        }
        let short = ChunkRef { len: sealed.chunk.len - 1, ..sealed.chunk };
        assert!(matches!(open(&short, &sealed.bytes), Err(ChunkError::Length { actual: 3000, .. })));
    }
}
