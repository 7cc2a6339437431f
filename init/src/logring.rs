//! Bounded in-memory logs: each service keeps its recent output lines, numbered (across all
//! services, in order of arrival) so that a reader can follow one or all of them
//! (`init ctl log -f`) without the supervisor holding a connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The number of the next line, in any ring.
static NEXT_LINE: AtomicU64 = AtomicU64::new(0);

/// Bytes kept per ring; older lines are dropped first.
pub const RING_BYTES: usize = 256 * 1024;

/// Recent lines of one service.
#[derive(Default)]
pub struct Ring {
    inner: Mutex<Inner>,
    /// The service's name when its lines are also shipped to the boot server.
    shipped_as: Option<String>,
}

#[derive(Default)]
struct Inner {
    lines: VecDeque<(u64, String)>,
    bytes: usize,
}

impl Ring {
    /// The ring of service `name`, whose lines also go to the boot server ([`crate::logship`]).
    pub fn shipped(name: &str) -> Ring {
        Ring { inner: Mutex::default(), shipped_as: Some(name.to_string()) }
    }

    /// Appends a line, dropping the oldest beyond [`RING_BYTES`].
    pub fn push(&self, line: String) {
        if let Some(name) = &self.shipped_as {
            crate::logship::line(name, &line);
        }
        let mut r = flist::durable::lock(&self.inner);
        r.bytes += line.len();
        let seq = NEXT_LINE.fetch_add(1, Ordering::Relaxed);
        r.lines.push_back((seq, line));
        while r.bytes > RING_BYTES {
            match r.lines.pop_front() {
                Some((_, old)) => r.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// Lines numbered `from` and later, and the number the next line (of any ring) will get.
    pub fn since(&self, from: u64) -> (Vec<(u64, String)>, u64) {
        let r = flist::durable::lock(&self.inner);
        (r.lines.iter().filter(|(n, _)| *n >= from).cloned().collect(), NEXT_LINE.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn keeps_recent_lines_within_the_cap() {
        let ring = Ring::default();
        for i in 0..10_000 {
            ring.push(format!("line {i:05} {}", "x".repeat(100)));
        }
        let (lines, next) = ring.since(0);
        assert!(lines.iter().map(|(_, l)| l.len()).sum::<usize>() <= RING_BYTES);
        let last = lines.last().unwrap().0;
        assert!(next > last);
        assert_eq!(ring.since(last - 1).0.len(), 2);
        assert_eq!(lines.last().unwrap().1, format!("line 09999 {}", "x".repeat(100)));
    }
}
