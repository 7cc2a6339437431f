//! Nodes' logs and numbers, as they ship them (`POST /logs`, [`flint_manifest::logs`]): kept on
//! disk under the state directory, per node id, so that a restart of the server loses nothing
//! it answered for.
//!
//! - `logs/NODE.jsonl`: one line per log line, `{"b": BOOT, "n": N, "t": MS, "s": SOURCE, "l":
//!   LINE}`, in order; a gap in a node's numbers is written as `{"b", "n", "dropped": K}`. Past
//!   [`ROTATE_BYTES`] the file moves to `NODE.jsonl.1` (the one before is dropped).
//! - `logs/NODE.pos`: the position held (`BOOT NEXT`), written after the lines, before the answer.
//! - `metrics/NODE.prom`: the node's latest numbers.
//!
//! A line already held (a batch sent again after a lost answer) is skipped, so each is stored once.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use flint_manifest::logs::{Batch, Position};
use serde::Serialize;

/// A node's log file moves aside past this size.
pub const ROTATE_BYTES: u64 = 64 << 20;
/// The most lines `GET /logs/NODE` gives.
pub const MAX_TAIL: usize = 100_000;
/// Lines it gives unless asked for a number.
pub const DEFAULT_TAIL: usize = 1000;

/// The nodes' logs under a state directory.
pub struct LogStore {
    dir: PathBuf,
    /// Positions read or written since the server started (the rest are read from disk).
    positions: Mutex<HashMap<String, Position>>,
}

#[derive(Serialize)]
struct Line<'a> {
    b: u64,
    n: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    t: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    s: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    l: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped: Option<u64>,
}

/// What storing a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The position now held.
    pub position: Position,
    /// Lines written (the rest were held already).
    pub written: usize,
    /// Lines the node dropped before these, as far as the numbers show.
    pub dropped: u64,
}

impl LogStore {
    /// The store in `state` (made when missing).
    pub fn open(state: &Path) -> io::Result<LogStore> {
        for sub in ["logs", "metrics"] {
            std::fs::create_dir_all(state.join(sub))?;
        }
        Ok(LogStore { dir: state.to_path_buf(), positions: Mutex::new(HashMap::new()) })
    }

    fn log_path(&self, node: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{node}.jsonl"))
    }

    /// Where `node`'s log stood when the server last stopped. The lines are written before the
    /// position, so a server killed between the two holds lines its `.pos` does not count: the
    /// log's last line counts too, else those lines would be stored again when the node sends
    /// them again. A line torn by the kill is cut off first.
    fn position_of(&self, node: &str) -> io::Result<Position> {
        let kept = Position::from_line(
            &std::fs::read_to_string(self.dir.join("logs").join(format!("{node}.pos"))).unwrap_or_default(),
        );
        let logged = match std::fs::OpenOptions::new().read(true).write(true).open(self.log_path(node)) {
            Ok(mut file) => last_line_position(&mut file)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(logged.map_or(kept, |logged| logged.max(kept)))
    }

    /// Stores `batch` from `node` (a node id: checked, printable), which was signed by boot
    /// `signed_boot`; blocking (disk writes, synced before it returns).
    pub fn store(&self, node: &str, batch: &Batch, signed_boot: u64) -> Result<Taken, String> {
        batch.check(signed_boot)?;
        let io = |e: io::Error| format!("storing the logs of {node}: {e}");
        let mut positions = flist::durable::lock(&self.positions);
        let held = match positions.get(node) {
            Some(p) => *p,
            None => {
                let p = self.position_of(node).map_err(io)?;
                positions.insert(node.to_string(), p);
                p
            }
        };
        let mut text = String::new();
        let mut position = held;
        let (mut dropped, mut written) = (0u64, 0usize);
        for r in &batch.records {
            let at = Position { boot: batch.boot, next: r.n };
            if at < position {
                continue;
            }
            // A gap in one boot's numbers, or a later boot that does not start at 0.
            let gap = if batch.boot == position.boot { r.n.saturating_sub(position.next) } else { r.n };
            if gap > 0 {
                dropped = dropped.saturating_add(gap);
                push_json(&mut text, &Line { b: batch.boot, n: r.n, t: None, s: None, l: None, dropped: Some(gap) });
            }
            push_json(
                &mut text,
                &Line { b: batch.boot, n: r.n, t: Some(r.t), s: Some(&r.s), l: Some(&r.l), dropped: None },
            );
            position = Position { boot: batch.boot, next: r.n.saturating_add(1) };
            written += 1;
        }
        if !text.is_empty() {
            let path = self.log_path(node);
            if std::fs::metadata(&path).is_ok_and(|m| m.len() >= ROTATE_BYTES) {
                std::fs::rename(&path, path.with_extension("jsonl.1")).map_err(io)?;
            }
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
            file.write_all(text.as_bytes()).map_err(io)?;
            file.sync_data().map_err(io)?;
            flist::durable::write_whole(
                &self.dir.join("logs").join(format!("{node}.pos")),
                position.to_line().as_bytes(),
            )
            .map_err(io)?;
            positions.insert(node.to_string(), position);
        }
        drop(positions);
        if let Some(metrics) = &batch.metrics {
            flist::durable::write_whole(&self.dir.join("metrics").join(format!("{node}.prom")), metrics.as_bytes())
                .map_err(io)?;
        }
        Ok(Taken { position, written, dropped })
    }

    /// The last `tail` stored lines of `node` (a node id), as stored; `None` if it has none.
    pub fn tail(&self, node: &str, tail: usize) -> Option<String> {
        let path = self.log_path(node);
        let text = std::fs::read_to_string(&path).ok()?;
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(tail.min(MAX_TAIL));
        let mut out = lines.get(from..).unwrap_or_default().join("\n");
        out.push('\n');
        Some(out)
    }

    /// The latest numbers `node` sent.
    pub fn metrics(&self, node: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join("metrics").join(format!("{node}.prom"))).ok()
    }
}

/// The position after the last whole line of a log file, cutting off a torn last line.
fn last_line_position(file: &mut std::fs::File) -> io::Result<Option<Position>> {
    use std::io::{Read, Seek, SeekFrom};
    /// A stored line is at most a line of text and its source escaped (6 bytes a byte at
    /// worst) and the numbers around them.
    const LINE_MAX: u64 = ((flint_manifest::logs::MAX_LINE + flint_manifest::logs::MAX_SOURCE) * 6 + 256) as u64;
    let len = file.metadata()?.len();
    let from = len.saturating_sub(2 * LINE_MAX);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::new();
    file.take(len.saturating_sub(from)).read_to_end(&mut tail)?;
    let whole = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        // No line ends this near the end: not a file this server wrote; left as it is.
        None if from > 0 => return Ok(None),
        None => 0,
    };
    if whole < tail.len() {
        let cut = from + whole as u64;
        tracing::warn!("a log file ended in a torn line: {} bytes cut off", len.saturating_sub(cut));
        file.set_len(cut)?;
        file.sync_data()?;
    }
    let last = tail.get(..whole).unwrap_or_default().strip_suffix(b"\n").unwrap_or_default();
    let line = last.rsplit(|&b| b == b'\n').next().unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Numbers {
        b: u64,
        n: u64,
        #[serde(default)]
        dropped: Option<u64>,
    }
    // A gap's line comes before the line it precedes: that one is not held yet.
    Ok(serde_json::from_slice::<Numbers>(line)
        .ok()
        .map(|l| Position { boot: l.b, next: if l.dropped.is_some() { l.n } else { l.n.saturating_add(1) } }))
}

fn push_json(out: &mut String, value: &impl Serialize) {
    if let Ok(line) = serde_json::to_string(value) {
        out.push_str(&line);
        out.push('\n');
    }
}

/// Whether `id` can name a node's files: what [`flint_manifest::signed::node_id`] makes.
pub fn is_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use flint_manifest::logs::Record;

    fn batch(boot: u64, ns: &[u64]) -> Batch {
        Batch {
            boot,
            records: ns.iter().map(|&n| Record { n, t: 1, s: "web".into(), l: format!("b{boot} l{n}") }).collect(),
            metrics: None,
        }
    }

    #[test]
    fn each_line_is_stored_once_in_order_and_gaps_are_written_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let s = store.store("abc", &batch(1, &[0, 1, 2]), 1).unwrap();
        assert_eq!((s.position, s.written, s.dropped), (Position { boot: 1, next: 3 }, 3, 0));
        // Sent again after a lost answer, with one more: only the new one is written.
        let s = store.store("abc", &batch(1, &[1, 2, 3]), 1).unwrap();
        assert_eq!((s.position, s.written), (Position { boot: 1, next: 4 }, 1));
        // The node dropped 4 and 5; then it rebooted and its journal's first lines were lost.
        assert_eq!(store.store("abc", &batch(1, &[6]), 2).unwrap().dropped, 2);
        assert_eq!(store.store("abc", &batch(2, &[3, 4]), 2).unwrap().dropped, 3);
        // A server started again reads where it stood.
        let again = LogStore::open(dir.path()).unwrap();
        let s = again.store("abc", &batch(2, &[0, 4, 5]), 2).unwrap();
        assert_eq!((s.position, s.written), (Position { boot: 2, next: 6 }, 1));
        let lines: Vec<serde_json::Value> =
            again.tail("abc", 100).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let said: Vec<String> =
            lines.iter().map(|l| l["l"].as_str().map_or(format!("dropped {}", l["dropped"]), String::from)).collect();
        assert_eq!(
            said,
            ["b1 l0", "b1 l1", "b1 l2", "b1 l3", "dropped 2", "b1 l6", "dropped 3", "b2 l3", "b2 l4", "b2 l5"]
        );
        assert_eq!(again.tail("abc", 2).unwrap().lines().count(), 2);
        // Lines from a boot after the one that signed them are refused.
        assert!(again.store("abc", &batch(3, &[0]), 2).unwrap_err().contains("boot 3 sent by boot 2"));
        assert!(again.tail("nobody", 10).is_none());
    }

    /// The store's lines as "bBOOT lN" (or "dropped K").
    fn said(store: &LogStore, node: &str) -> Vec<String> {
        let text = store.tail(node, MAX_TAIL).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|l| l["l"].as_str().map_or(format!("dropped {}", l["dropped"]), String::from))
            .collect()
    }

    #[test]
    fn a_server_killed_between_the_lines_and_their_position_stores_each_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let pos = dir.path().join("logs/abc.pos");
        let log = dir.path().join("logs/abc.jsonl");
        let store = LogStore::open(dir.path()).unwrap();
        store.store("abc", &batch(1, &[0, 1]), 1).unwrap();
        let before = std::fs::read(&pos).unwrap();
        store.store("abc", &batch(1, &[2, 3]), 1).unwrap();
        // Killed after the lines, before their position: the node had no answer and sends them
        // again, with one more.
        std::fs::write(&pos, &before).unwrap();
        let again = LogStore::open(dir.path()).unwrap();
        let s = again.store("abc", &batch(1, &[2, 3, 4]), 1).unwrap();
        assert_eq!((s.position, s.written), (Position { boot: 1, next: 5 }, 1));
        assert_eq!(said(&again, "abc"), ["b1 l0", "b1 l1", "b1 l2", "b1 l3", "b1 l4"]);

        // Killed in the middle of a line, and with no position file at all.
        let whole = std::fs::read(&log).unwrap();
        let torn = br#"{"b":1,"n":5,"t":1,"s":"web","l":"b1 l"#;
        for cut in [1, torn.len() / 2, torn.len()] {
            let mut bytes = whole.clone();
            bytes.extend_from_slice(&torn[..cut]);
            std::fs::write(&log, &bytes).unwrap();
            std::fs::remove_file(&pos).ok();
            let again = LogStore::open(dir.path()).unwrap();
            let s = again.store("abc", &batch(1, &[3, 4, 5]), 1).unwrap();
            assert_eq!((s.position, s.written), (Position { boot: 1, next: 6 }, 1), "cut at {cut}");
            assert_eq!(said(&again, "abc"), ["b1 l0", "b1 l1", "b1 l2", "b1 l3", "b1 l4", "b1 l5"]);
            std::fs::write(&log, &whole).unwrap();
        }

        // A file that no line ends near its end is not this server's: it is left as it is, and
        // the position file is what counts.
        let mut bytes = whole.clone();
        bytes.extend(std::iter::repeat_n(b'x', 200 << 10));
        std::fs::write(&log, &bytes).unwrap();
        std::fs::write(&pos, Position { boot: 1, next: 5 }.to_line()).unwrap();
        let again = LogStore::open(dir.path()).unwrap();
        let s = again.store("abc", &batch(1, &[4, 5]), 1).unwrap();
        assert_eq!((s.position, s.written), (Position { boot: 1, next: 6 }, 1));
        assert!(std::fs::read(&log).unwrap().starts_with(&bytes));
        std::fs::write(&log, &whole).unwrap();

        // Killed after a gap's line, before the line that follows it: that line is still taken.
        let mut bytes = whole.clone();
        bytes.extend_from_slice(b"{\"b\":1,\"n\":9,\"dropped\":4}\n");
        std::fs::write(&log, &bytes).unwrap();
        std::fs::remove_file(&pos).ok();
        let again = LogStore::open(dir.path()).unwrap();
        let s = again.store("abc", &batch(1, &[9]), 1).unwrap();
        assert_eq!((s.position, s.written, s.dropped), (Position { boot: 1, next: 10 }, 1, 0));
        assert_eq!(said(&again, "abc"), ["b1 l0", "b1 l1", "b1 l2", "b1 l3", "b1 l4", "dropped 4", "b1 l9"]);
    }

    #[test]
    fn node_ids_name_files_and_nothing_else() {
        assert!(is_node_id("ryxbkshcjos7bchc"));
        for bad in ["", "../x", "a/b", "A", "x.y", &"a".repeat(65)] {
            assert!(!is_node_id(bad), "{bad}");
        }
    }
}
