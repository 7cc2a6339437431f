//! Ed25519 keys and signatures (RFC 8032), on ring: PID 1 links ring for TLS anyway, and
//! ed25519-dalek brought another ~95 KB of curve arithmetic, tables and SHA-512 into it (issue
//! 16's size bound). The names follow ed25519-dalek's, which flint used before.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

/// A key that does not hold together (only possible for a public key: any 32 bytes are a seed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an ed25519 key")]
pub struct KeyError;

/// A signature that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the signature does not verify")]
pub struct SignatureError;

/// A signing key: its 32-byte seed and the key pair derived from it.
pub struct SigningKey {
    seed: [u8; 32],
    /// Always there: ring refuses a seed only for its length, which the type fixes. An `Option`
    /// rather than a panic path in PID 1: without it nothing is signed (see [`SigningKey::sign`]).
    pair: Option<Ed25519KeyPair>,
    public: VerifyingKey,
}

impl SigningKey {
    /// The key of a 32-byte seed (what `init identity new` and `netboot keygen` write).
    pub fn from_bytes(seed: &[u8; 32]) -> SigningKey {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).ok();
        let mut public = [0; 32];
        if let Some(p) = pair.as_ref().and_then(|p| p.public_key().as_ref().get(..32)) {
            public.copy_from_slice(p);
        }
        SigningKey { seed: *seed, pair, public: VerifyingKey(public) }
    }

    /// The seed.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.seed
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.public
    }

    /// Signs `message` (all zeros, which does not verify under this key, if the pair could not
    /// be made).
    pub fn sign(&self, message: &[u8]) -> Signature {
        let mut bytes = [0; 64];
        if let Some(sig) = self.pair.as_ref().map(|p| p.sign(message)) {
            if let Some(sig) = sig.as_ref().get(..64) {
                bytes.copy_from_slice(sig);
            }
        }
        Signature(bytes)
    }
}

impl Clone for SigningKey {
    fn clone(&self) -> Self {
        SigningKey::from_bytes(&self.seed)
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        write!(f, "SigningKey({:?})", self.public)
    }
}

/// A public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyingKey([u8; 32]);

impl VerifyingKey {
    /// The key of 32 bytes, if they are a point of the curve in its canonical encoding.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<VerifyingKey, KeyError> {
        if !canonical_point(bytes) {
            return Err(KeyError);
        }
        Ok(VerifyingKey(*bytes))
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The 32 bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Checks `signature` of `message`.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        UnparsedPublicKey::new(&ED25519, &self.0).verify(message, &signature.0).map_err(|_| SignatureError)
    }
}

/// A signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 64]);

impl Signature {
    /// The signature of 64 bytes (checked only when verified).
    pub fn from_bytes(bytes: &[u8; 64]) -> Signature {
        Signature(*bytes)
    }

    /// The 64 bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }
}

/// Whether 32 bytes encode a y coordinate below the field's prime p = 2^255 - 19 (with the sign
/// bit of x on top). ring checks the rest, that y is on the curve, when it verifies; a key that
/// fails here is a typo or garbage, refused when it is read rather than at each signature.
fn canonical_point(bytes: &[u8; 32]) -> bool {
    let mut y = *bytes;
    if let Some(top) = y.last_mut() {
        *top &= 0x7f;
    }
    // y < p unless y is in p..2^255: bytes 1..31 all 0xff (top 0x7f) and the lowest ≥ 0xed.
    let high_all_ones = y.iter().skip(1).take(30).all(|&b| b == 0xff) && y.last() == Some(&0x7f);
    !(high_all_ones && y.first().is_some_and(|&b| b >= 0xed))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// RFC 8032 section 7.1, test 2: the seed, public key and signature of the one-byte message 0x72.
    #[test]
    fn rfc_8032_test_vector() {
        let seed: [u8; 32] = hex::decode("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
            .unwrap()
            .try_into()
            .unwrap();
        let public = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
        let signature = "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
                         085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00";
        let key = SigningKey::from_bytes(&seed);
        assert_eq!(hex::encode(key.verifying_key().to_bytes()), public);
        let sig = key.sign(&[0x72]);
        assert_eq!(hex::encode(sig.to_bytes()), signature);
        let vk = VerifyingKey::from_bytes(&hex::decode(public).unwrap().try_into().unwrap()).unwrap();
        assert!(vk.verify(&[0x72], &sig).is_ok());
        assert_eq!(vk.verify(&[0x73], &sig), Err(SignatureError));
        let mut flipped = sig.to_bytes();
        flipped[5] ^= 1;
        assert!(vk.verify(&[0x72], &Signature::from_bytes(&flipped)).is_err());
        assert_eq!(key.clone().to_bytes(), seed);
        assert!(!format!("{key:?}").contains(&hex::encode(seed)));
    }

    #[test]
    fn non_canonical_keys_are_refused_when_read() {
        let mut p = [0xff; 32];
        p[31] = 0x7f;
        p[0] = 0xed;
        assert_eq!(VerifyingKey::from_bytes(&p), Err(KeyError));
        p[0] = 0xec;
        assert!(VerifyingKey::from_bytes(&p).is_ok());
        assert!(VerifyingKey::from_bytes(&[0; 32]).is_ok());
    }
}
