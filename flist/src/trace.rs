//! Recorded prefetch: which chunks of an flist a start read, in the order it read them (a
//! *trace*), so that the next start on a cold cache fetches them ahead of its readers.
//!
//! A trace is a hint and nothing more: it names chunks by their index in the flist's own chunk
//! table, so what is fetched is still verified against the flist's hashes, and a hostile trace
//! can waste bandwidth (up to the replay's byte cap) but never change a byte that is served. It
//! names the BLAKE3 digest of the flist file it was recorded against, and is ignored for any
//! other.
//!
//! Layout: `FLTRACE1`, the flist digest (32 bytes), the chunk count (u32 LE), the chunk indices
//! (u32 LE each). Same reads, same bytes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::format::Hash;

const MAGIC: &[u8; 8] = b"FLTRACE1";
/// The most chunks a trace may name (a 4 MiB file).
pub const MAX_CHUNKS: usize = 1 << 20;
/// The longest a trace file may be: its header and [`MAX_CHUNKS`] indices.
pub const MAX_LEN: u64 = 44 + 4 * MAX_CHUNKS as u64;

/// A decoded trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The digest of the flist file it belongs to.
    pub flist: Hash,
    /// Chunk indices, first read first, each once.
    pub chunks: Vec<u32>,
}

/// Why a trace is not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    /// Not a trace at all, or cut short.
    #[error("not a trace (bad header or length)")]
    Malformed,
    /// Names more chunks than any trace may.
    #[error("names {0} chunks, more than {MAX_CHUNKS}")]
    TooLarge(usize),
    /// Recorded against another flist.
    #[error("recorded for flist {0}, not this one")]
    Foreign(Hash),
}

impl Trace {
    /// The bytes of the trace.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(44 + 4 * self.chunks.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.flist.0);
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    /// Decodes a trace of any flist.
    pub fn decode(bytes: &[u8]) -> Result<Trace, TraceError> {
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or(TraceError::Malformed)?;
        let (digest, rest) = rest.split_first_chunk::<32>().ok_or(TraceError::Malformed)?;
        let (count, rest) = rest.split_first_chunk::<4>().ok_or(TraceError::Malformed)?;
        let count = u32::from_le_bytes(*count) as usize;
        if count > MAX_CHUNKS {
            return Err(TraceError::TooLarge(count));
        }
        if rest.len() != count.saturating_mul(4) {
            return Err(TraceError::Malformed);
        }
        let chunks = rest.chunks_exact(4).filter_map(|c| c.try_into().ok()).map(u32::from_le_bytes).collect();
        Ok(Trace { flist: Hash(*digest), chunks })
    }

    /// Decodes a trace for the flist whose file has `digest`, keeping only chunks it has
    /// (`chunk_count`), each once.
    pub fn decode_for(bytes: &[u8], digest: &Hash, chunk_count: usize) -> Result<Trace, TraceError> {
        let mut trace = Trace::decode(bytes)?;
        if trace.flist != *digest {
            return Err(TraceError::Foreign(trace.flist));
        }
        let mut seen = HashSet::new();
        trace.chunks.retain(|&c| (c as usize) < chunk_count && seen.insert(c));
        Ok(trace)
    }
}

/// Records the chunks read during the first `window` after a mount.
#[derive(Debug)]
pub struct Recorder {
    flist: Hash,
    until: Instant,
    seen: HashSet<u32>,
    chunks: Vec<u32>,
}

impl Recorder {
    /// A recorder for the flist whose file has `digest`, from now for `window`.
    pub fn new(flist: Hash, window: Duration) -> Recorder {
        let now = Instant::now();
        Recorder { flist, until: now.checked_add(window).unwrap_or(now), seen: HashSet::new(), chunks: Vec::new() }
    }

    /// Notes that chunk `index` was read; `false` once the window is over.
    pub fn read(&mut self, index: u32) -> bool {
        if Instant::now() >= self.until {
            return false;
        }
        if self.chunks.len() < MAX_CHUNKS && self.seen.insert(index) {
            self.chunks.push(index);
        }
        true
    }

    /// Whether the window is over.
    pub fn over(&self) -> bool {
        Instant::now() >= self.until
    }

    /// What was recorded.
    pub fn trace(&self) -> Trace {
        Trace { flist: self.flist, chunks: self.chunks.clone() }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn traces_round_trip_and_hostile_ones_are_refused() {
        let digest = Hash([7; 32]);
        let trace = Trace { flist: digest, chunks: vec![5, 0, 3, 5, 900] };
        let bytes = trace.encode();
        assert_eq!(Trace::decode(&bytes).unwrap(), trace);
        // Out of range and repeated chunks are dropped for a given flist.
        assert_eq!(Trace::decode_for(&bytes, &digest, 10).unwrap().chunks, [5, 0, 3]);
        assert_eq!(Trace::decode_for(&bytes, &Hash([8; 32]), 10), Err(TraceError::Foreign(digest)));
        for cut in 0..bytes.len() {
            assert_eq!(Trace::decode(&bytes[..cut]), Err(TraceError::Malformed), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Trace::decode(&longer), Err(TraceError::Malformed));
        let mut huge = bytes[..40].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Trace::decode(&huge), Err(TraceError::TooLarge(u32::MAX as usize)));
        assert_eq!(Trace::decode(b"garbage garbage garbage garbage garbage garbage"), Err(TraceError::Malformed));
        assert_eq!(Trace::decode(&[]), Err(TraceError::Malformed));
    }

    #[test]
    fn the_recorder_keeps_first_reads_in_order_within_its_window() {
        let mut r = Recorder::new(Hash([1; 32]), Duration::from_secs(60));
        for c in [4, 2, 4, 9, 2] {
            assert!(r.read(c));
        }
        assert_eq!(r.trace().chunks, [4, 2, 9]);
        let mut over = Recorder::new(Hash([1; 32]), Duration::ZERO);
        assert!(!over.read(1) && over.over() && over.trace().chunks.is_empty());
    }
}
