//! Requests a node signs with its own ed25519 key, and the boot server's check of them.
//!
//! A node signs every report, upload and manifest request over what it sends or asks for (method,
//! path and query, a BLAKE3 of the body), its boot id and a sequence number. The boot id is a
//! counter the node advances (on its disk) at every boot; the sequence starts at 0 on each boot
//! and counts per *stream* (`report`, `manifest`, `logs`), because each stream is sent by a
//! thread of its own and their requests may reach the server in any order. A request is a replay
//! when its (key, stream, boot, sequence) is not above the last one the server accepted. The
//! time it carries is information only: the node's clock may not be trusted.
//!
//! On the wire, HTTP headers: `flint-node` (the public key, hex), `flint-boot`, `flint-stream`,
//! `flint-seq`, `flint-time` and `flint-signature` (hex).

use std::collections::HashMap;

use crate::ed25519::{Signature, SigningKey, VerifyingKey};

/// The public key.
pub const NODE: &str = "flint-node";
/// The boot counter.
pub const BOOT: &str = "flint-boot";
/// Which stream of the node's requests.
pub const STREAM: &str = "flint-stream";
/// The sequence number within the stream and boot.
pub const SEQ: &str = "flint-seq";
/// The node's clock, seconds since the epoch (information only).
pub const TIME: &str = "flint-time";
/// The signature.
pub const SIGNATURE: &str = "flint-signature";

/// The longest stream name.
const MAX_STREAM: usize = 16;

/// What a signature covers, besides the body's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The node's public key.
    pub key: [u8; 32],
    /// Its boot counter.
    pub boot: u64,
    /// `report`, `manifest`, `logs`, …
    pub stream: String,
    /// The sequence number within stream and boot.
    pub seq: u64,
    /// The node's clock when it signed.
    pub time: u64,
}

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Some of the headers are there, not all, or one is malformed.
    #[error("malformed node signature headers: {0}")]
    Malformed(String),
    /// The signature does not match: forged, altered, or signed by another key.
    #[error("bad node signature: forged or altered")]
    Forged,
    /// Not above the last request accepted from this node and stream.
    #[error(
        "replayed: {stream} request {boot}.{seq} of node {node} is not above the last accepted, {last_boot}.{last_seq}"
    )]
    Replayed {
        /// The node id.
        node: String,
        /// The stream.
        stream: String,
        /// What came.
        boot: u64,
        /// What came.
        seq: u64,
        /// The last accepted.
        last_boot: u64,
        /// The last accepted.
        last_seq: u64,
    },
    /// The server already tracks as many nodes as it will.
    #[error("too many nodes: the server tracks at most {0} node streams")]
    Full(usize),
}

/// The bytes signed for a request.
pub fn message(envelope: &Envelope, method: &str, target: &str, body: &[u8]) -> Vec<u8> {
    format!(
        "flint-request-1\n{method}\n{target}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        hex::encode(envelope.key),
        envelope.boot,
        envelope.stream,
        envelope.seq,
        envelope.time,
        blake3::hash(body).to_hex()
    )
    .into_bytes()
}

/// The headers that sign a request of `method` for `target` (path and query) with `body`.
pub fn sign(
    key: &SigningKey,
    envelope: &Envelope,
    method: &str,
    target: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let signature = key.sign(&message(envelope, method, target, body));
    vec![
        (NODE, hex::encode(envelope.key)),
        (BOOT, envelope.boot.to_string()),
        (STREAM, envelope.stream.clone()),
        (SEQ, envelope.seq.to_string()),
        (TIME, envelope.time.to_string()),
        (SIGNATURE, hex::encode(signature.to_bytes())),
    ]
}

/// Checks the signature headers (`header` gives each by its lower-case name): `Ok(None)` when
/// the request carries none (unsigned), the envelope when they verify.
pub fn check(
    header: impl Fn(&str) -> Option<String>,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<Option<Envelope>, Refusal> {
    let names = [NODE, BOOT, STREAM, SEQ, TIME, SIGNATURE];
    let values: Vec<Option<String>> = names.iter().map(|n| header(n)).collect();
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    let get = |i: usize| {
        values
            .get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| Refusal::Malformed(format!("{} is missing", names.get(i).copied().unwrap_or_default())))
    };
    let bad = |what: &str| Refusal::Malformed(what.to_string());
    let key: [u8; 32] =
        hex::decode(get(0)?).ok().and_then(|k| k.try_into().ok()).ok_or_else(|| bad("the key is not 64 hex digits"))?;
    let number = |i: usize| -> Result<u64, Refusal> {
        let text = get(i)?;
        if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(&format!("{} is not a number", names.get(i).copied().unwrap_or_default())));
        }
        text.parse().map_err(|_| bad(&format!("{} is out of range", names.get(i).copied().unwrap_or_default())))
    };
    let stream = get(2)?;
    if stream.is_empty() || stream.len() > MAX_STREAM || !stream.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(bad("the stream is not 1 to 16 lower-case letters"));
    }
    let envelope = Envelope { key, boot: number(1)?, stream, seq: number(3)?, time: number(4)? };
    let signature: [u8; 64] = hex::decode(get(5)?)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| bad("the signature is not 128 hex digits"))?;
    let public = VerifyingKey::from_bytes(&key).map_err(|_| Refusal::Forged)?;
    public
        .verify(&message(&envelope, method, target, body), &Signature::from_bytes(&signature))
        .map_err(|_| Refusal::Forged)?;
    Ok(Some(envelope))
}

/// A node's id: short, printable, stable, derived from its public key: 16 characters of
/// lower-case base32 (80 bits) of a BLAKE3 of the key.
pub fn node_id(key: &[u8; 32]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"flint node id\n");
    hasher.update(key);
    base32(hasher.finalize().as_bytes().get(..10).unwrap_or_default())
}

/// RFC 4648 base32, lower case, no padding (a dozen lines: not worth a crate in PID 1).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.extend(ALPHABET.get(((buffer >> bits) & 31) as usize).map(|&c| char::from(c)));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.extend(ALPHABET.get(((buffer << (5 - bits)) & 31) as usize).map(|&c| char::from(c)));
    }
    out
}

/// The server's memory of the last request accepted per node and stream, bounded.
#[derive(Debug)]
pub struct Replays {
    last: HashMap<([u8; 32], String), (u64, u64)>,
    capacity: usize,
}

impl Replays {
    /// Remembers at most `capacity` (node, stream) pairs.
    pub fn new(capacity: usize) -> Replays {
        Replays { last: HashMap::new(), capacity }
    }

    /// Remembers what a server accepted before it restarted, or what another server on the
    /// same state accepted (within the capacity); an entry only ever goes up.
    pub fn restore(&mut self, key: [u8; 32], stream: String, boot: u64, seq: u64) {
        let full = self.last.len() >= self.capacity;
        match self.last.entry((key, stream)) {
            std::collections::hash_map::Entry::Occupied(mut held) => {
                let higher = (*held.get()).max((boot, seq));
                held.insert(higher);
            }
            std::collections::hash_map::Entry::Vacant(slot) if !full => {
                slot.insert((boot, seq));
            }
            std::collections::hash_map::Entry::Vacant(_) => {}
        }
    }

    /// Accepts `envelope` if it is above the last accepted of its node and stream, and records it.
    pub fn accept(&mut self, envelope: &Envelope) -> Result<(), Refusal> {
        self.check(envelope)?;
        self.record(envelope);
        Ok(())
    }

    /// Whether `envelope` would be accepted, without recording it: a server records it with
    /// [`Replays::record`] once what the request asked is stored, so that a request refused for
    /// a failed write can be sent again.
    pub fn check(&self, envelope: &Envelope) -> Result<(), Refusal> {
        let now = (envelope.boot, envelope.seq);
        match self.last.get(&(envelope.key, envelope.stream.clone())) {
            Some(&last) if now <= last => Err(Refusal::Replayed {
                node: node_id(&envelope.key),
                stream: envelope.stream.clone(),
                boot: now.0,
                seq: now.1,
                last_boot: last.0,
                last_seq: last.1,
            }),
            None if self.last.len() >= self.capacity => Err(Refusal::Full(self.capacity)),
            _ => Ok(()),
        }
    }

    /// Records `envelope` as the last accepted of its node and stream (checked first).
    pub fn record(&mut self, envelope: &Envelope) {
        if self.check(envelope).is_ok() {
            self.last.insert((envelope.key, envelope.stream.clone()), (envelope.boot, envelope.seq));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn envelope(key: &SigningKey, boot: u64, seq: u64) -> Envelope {
        Envelope { key: key.verifying_key().to_bytes(), boot, stream: "report".into(), seq, time: 1_700_000_000 }
    }

    fn headers<'a>(h: &'a [(&'static str, String)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_is_forged() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let e = envelope(&key, 3, 9);
        let h = sign(&key, &e, "POST", "/report", b"{\"stage\":\"x\"}");
        assert_eq!(check(headers(&h), "POST", "/report", b"{\"stage\":\"x\"}").unwrap(), Some(e.clone()));
        assert_eq!(check(|_| None, "POST", "/report", b"").unwrap(), None);
        assert_eq!(check(headers(&h), "POST", "/report", b"{\"stage\":\"y\"}"), Err(Refusal::Forged));
        assert_eq!(check(headers(&h), "GET", "/report", b"{\"stage\":\"x\"}"), Err(Refusal::Forged));
        assert_eq!(check(headers(&h), "POST", "/report?x", b"{\"stage\":\"x\"}"), Err(Refusal::Forged));
        // Each header changed, or dropped, is refused.
        for i in 0..h.len() {
            let mut changed = h.clone();
            changed[i].1 = match changed[i].0 {
                NODE => hex::encode(SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes()),
                STREAM => "manifest".into(),
                SIGNATURE => "00".repeat(64),
                _ => "4".into(),
            };
            assert_eq!(check(headers(&changed), "POST", "/report", b"{\"stage\":\"x\"}"), Err(Refusal::Forged), "{i}");
            let mut dropped = h.clone();
            dropped.remove(i);
            assert!(matches!(check(headers(&dropped), "POST", "/report", b""), Err(Refusal::Malformed(_))), "{i}");
        }
        for (name, value) in [(SEQ, "-1"), (SEQ, "99999999999999999999"), (SEQ, ""), (STREAM, "Report"), (NODE, "zz")] {
            let mut bad = h.clone();
            bad.iter_mut().find(|(n, _)| *n == name).unwrap().1 = value.into();
            assert!(
                matches!(check(headers(&bad), "POST", "/report", b""), Err(Refusal::Malformed(_))),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn replays_are_refused_and_a_new_boot_starts_again_from_zero() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut seen = Replays::new(2);
        seen.check(&envelope(&key, 1, 0)).unwrap();
        seen.check(&envelope(&key, 1, 0)).unwrap(); // checking records nothing
        seen.accept(&envelope(&key, 1, 0)).unwrap();
        seen.record(&envelope(&key, 1, 0)); // recording what is not above the last changes nothing
        seen.accept(&envelope(&key, 1, 1)).unwrap();
        assert!(matches!(seen.accept(&envelope(&key, 1, 1)), Err(Refusal::Replayed { .. })));
        assert!(matches!(seen.accept(&envelope(&key, 1, 0)), Err(Refusal::Replayed { .. })));
        seen.accept(&envelope(&key, 1, 5)).unwrap();
        seen.accept(&envelope(&key, 2, 0)).unwrap();
        assert!(matches!(seen.accept(&envelope(&key, 1, 9)), Err(Refusal::Replayed { .. })));
        // Streams are counted apart.
        seen.accept(&Envelope { stream: "manifest".into(), ..envelope(&key, 1, 0) }).unwrap();
        let other = SigningKey::from_bytes(&[9; 32]);
        assert_eq!(seen.accept(&envelope(&other, 1, 0)), Err(Refusal::Full(2)));
    }

    proptest::proptest! {
        /// Any header values, any body: a clear refusal or an envelope, never a panic; and only
        /// the untouched request verifies.
        #[test]
        fn hostile_headers_are_refused_without_a_panic(
            values in proptest::collection::vec(proptest::option::of(".{0,140}"), 6),
            keep in proptest::collection::vec(proptest::bool::ANY, 6),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let key = SigningKey::from_bytes(&[7; 32]);
            let good = sign(&key, &envelope(&key, 1, 2), "POST", "/report", &body);
            let mixed: Vec<(&'static str, Option<String>)> = good
                .iter()
                .zip(values.iter().zip(&keep))
                .map(|((n, v), (other, keep))| (*n, if *keep { Some(v.clone()) } else { other.clone() }))
                .collect();
            let header = |name: &str| mixed.iter().find(|(n, _)| *n == name).and_then(|(_, v)| v.clone());
            let untouched = keep.iter().all(|k| *k);
            match check(header, "POST", "/report", &body) {
                Ok(Some(_)) => proptest::prop_assert!(untouched || mixed.iter().zip(&good).all(|((_, a), (_, b))| a.as_deref() == Some(b.as_str()))),
                Ok(None) => proptest::prop_assert!(mixed.iter().all(|(_, v)| v.is_none())),
                Err(_) => proptest::prop_assert!(!untouched),
            }
        }
    }

    #[test]
    fn node_ids_are_short_stable_and_distinct() {
        let a = node_id(&[1; 32]);
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        assert_eq!(a, node_id(&[1; 32]));
        assert_ne!(a, node_id(&[2; 32]));
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "my");
    }
}
