//! Hostile manifests, validly signed (a compromised or buggy signer must not crash a node):
//! verification and validation return a plan or an error, never a panic. Unsigned bytes are
//! also fed, to the signature check alone.
#![no_main]

use flint_manifest::ed25519::SigningKey;
use flint_manifest::{sign, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let signature = sign(data, &key);
    if let Ok(plan) = verify(data, Some(signature.as_bytes()), &key.verifying_key()) {
        let _ = plan.newer_than(Some((plan.version, plan.digest)));
    }
    let _ = verify(data, Some(data), &key.verifying_key());
});
