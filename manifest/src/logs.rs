//! What a node ships to the boot server's `/logs`, and what the server answers: the node's log
//! lines (the console and every service's output) in signed batches, with its numbers.
//!
//! A line is named by (boot, n): `n` counts a boot's lines from 0, in order of arrival, and boot
//! ids only grow ([`crate::signed`]). The server answers with the position it holds up to, so a
//! batch that is sent again after a lost answer is stored once, and a gap in the numbers is a
//! count of lines the node had to drop.

use serde::{Deserialize, Serialize};

/// The longest line shipped; longer ones are cut (at a character boundary) on the node.
pub const MAX_LINE: usize = 8 << 10;
/// The largest batch body a node sends and the server takes (escaping included).
pub const MAX_BATCH: usize = 1 << 20;
/// Most lines in one batch.
pub const MAX_RECORDS: usize = 16 << 10;
/// The longest metrics text in a batch.
pub const MAX_METRICS: usize = 256 << 10;
/// The longest source name (`console`, or a service's name).
pub const MAX_SOURCE: usize = 64;

/// One line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Its number within its boot.
    pub n: u64,
    /// When, in milliseconds since the epoch by the node's clock (information only).
    pub t: u64,
    /// `console`, or the service it came from.
    pub s: String,
    /// The line, without its newline.
    pub l: String,
}

/// One upload: lines of one boot, in order, and the node's latest numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The boot the lines come from (earlier than the sender's when a journal outlived a boot).
    pub boot: u64,
    /// Its lines, numbers strictly increasing.
    #[serde(default)]
    pub records: Vec<Record>,
    /// `init ctl metrics`' text (Prometheus), when it changed since the last batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// Where a node's log stands at the server: every line before (boot, next) is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// The boot.
    pub boot: u64,
    /// The number of the next line of that boot.
    pub next: u64,
}

impl Position {
    /// The position as kept in a file (node's journal, server's store): `BOOT NEXT`.
    pub fn to_line(self) -> String {
        format!("{} {}\n", self.boot, self.next)
    }

    /// A position kept by [`Position::to_line`]; the start if `text` is anything else.
    pub fn from_line(text: &str) -> Position {
        text.trim()
            .split_once(' ')
            .and_then(|(boot, next)| Some(Position { boot: boot.parse().ok()?, next: next.parse().ok()? }))
            .unwrap_or_default()
    }
}

impl Batch {
    /// Checks what a server must before storing: `signed_boot` is the boot that signed it.
    pub fn check(&self, signed_boot: u64) -> Result<(), String> {
        if self.boot > signed_boot {
            return Err(format!("lines of boot {} sent by boot {signed_boot}", self.boot));
        }
        if self.records.len() > MAX_RECORDS {
            return Err(format!("{} lines: at most {MAX_RECORDS} in a batch", self.records.len()));
        }
        if self.metrics.as_ref().is_some_and(|m| m.len() > MAX_METRICS) {
            return Err(format!("metrics longer than {MAX_METRICS} bytes"));
        }
        let mut last = None;
        for r in &self.records {
            if last.is_some_and(|l| r.n <= l) {
                return Err(format!("line {} after line {}: numbers must increase", r.n, last.unwrap_or(0)));
            }
            last = Some(r.n);
            if r.l.len() > MAX_LINE || r.s.is_empty() || r.s.len() > MAX_SOURCE {
                return Err(format!("line {}: a line is at most {MAX_LINE} bytes from a named source", r.n));
            }
            if r.s.chars().any(char::is_control) {
                return Err(format!("line {}: control characters in its source", r.n));
            }
        }
        Ok(())
    }
}

/// `line` cut to at most [`MAX_LINE`] bytes, at a character boundary.
pub fn cut(line: &str) -> &str {
    if line.len() <= MAX_LINE {
        return line;
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn record(n: u64, s: &str, l: &str) -> Record {
        Record { n, t: 0, s: s.into(), l: l.into() }
    }

    #[test]
    fn a_batch_is_checked_before_it_is_stored() {
        let ok = Batch { boot: 3, records: vec![record(0, "console", "a"), record(5, "web", "b")], metrics: None };
        ok.check(3).unwrap();
        ok.check(4).unwrap();
        assert!(ok.check(2).unwrap_err().contains("boot 3 sent by boot 2"));
        let backwards = Batch { records: vec![record(5, "web", "b"), record(5, "web", "c")], ..ok.clone() };
        assert!(backwards.check(3).unwrap_err().contains("must increase"));
        let long = Batch { records: vec![record(0, "web", &"x".repeat(MAX_LINE + 1))], ..ok.clone() };
        assert!(long.check(3).is_err());
        let unnamed = Batch { records: vec![record(0, "", "x")], ..ok.clone() };
        assert!(unnamed.check(3).is_err());
        let forged = Batch { records: vec![record(0, "web\nconsole", "x")], ..ok };
        assert!(forged.check(3).is_err());
        assert!(serde_json::from_str::<Batch>(r#"{"boot": 1, "records": [], "extra": 1}"#).is_err());
        let p = Position { boot: u64::MAX, next: 7 };
        assert_eq!(Position::from_line(&p.to_line()), p);
        assert_eq!(Position::from_line("garbage"), Position::default());
    }

    proptest! {
        /// Any line is cut to a valid prefix within the bound.
        #[test]
        fn cutting_keeps_a_valid_prefix(line in ".{0,3000}", repeat in 1usize..8) {
            let line = line.repeat(repeat);
            let cut = cut(&line);
            prop_assert!(cut.len() <= MAX_LINE);
            prop_assert!(line.starts_with(cut));
            prop_assert!(line.len() <= MAX_LINE || cut.len() + 4 > MAX_LINE);
        }
    }
}
