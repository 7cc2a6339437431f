//! Logs leave the node: the console log and every service's output, numbered in order of
//! arrival, kept in a bounded backlog and shipped to the boot server (`POST /logs` beside
//! `flint.report=`) in signed batches, with the node's numbers (`init ctl metrics`' text) every
//! [`METRICS_EVERY`] ([`flint_manifest::logs`] is the wire format).
//!
//! - Nothing that logs waits: a line is appended to the backlog in memory under a short lock,
//!   and one thread (`logship`) does all disk and network work.
//! - In order, none lost across an outage: lines leave the backlog only once the server has
//!   said it holds them (it answers with its position, so a batch sent again is stored once).
//! - Bounded: with a cache disk the backlog is a journal there ([`DISK_BYTES`] in segments), so
//!   it also outlives a reboot; without one it is memory ([`MEMORY_BYTES`]). Beyond the bound
//!   the oldest lines go first and are counted; the server sees the gap in the numbers.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flint_manifest::logs::{self, Batch, Position, Record};

use crate::fetch::Fetcher;

/// The journal's directory in the node's state directory.
pub const JOURNAL_DIR: &str = "logs";

/// The backlog in memory: lines wait here until the journal or the server takes them.
pub const MEMORY_BYTES: usize = 2 << 20;
/// The backlog on the cache disk.
pub const DISK_BYTES: u64 = 64 << 20;
/// One journal file; the oldest whole file is dropped when the journal is full.
const SEGMENT_BYTES: u64 = 1 << 20;
/// A batch's lines, as sent.
const BATCH_BYTES: usize = 256 << 10;
/// The longest a line waits for others to go with it.
const LINGER: Duration = Duration::from_secs(1);
/// The longest wait between tries while the server does not take the logs.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How often the node's numbers go out.
pub const METRICS_EVERY: Duration = Duration::from_secs(30);
/// One upload's time limit.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a line costs in memory besides its text.
const RECORD_OVERHEAD: usize = 64;

/// The lines not yet handed on, and what goes with them.
struct Backlog {
    /// Whether lines are kept at all (from the start of the process until it is known that no
    /// server takes them).
    capturing: bool,
    lines: VecDeque<Record>,
    bytes: usize,
    /// The number of the next line of this boot.
    next: u64,
    /// Lines dropped because the backlog was full, in all.
    dropped: u64,
    /// The latest numbers not yet sent, and when they were last asked for.
    metrics: Option<String>,
    metrics_at: Option<Instant>,
    /// Whether a thread ships the backlog.
    shipping: bool,
    /// Lines delivered, in all.
    delivered: u64,
}

static BACKLOG: Mutex<Backlog> = Mutex::new(Backlog {
    capturing: false,
    lines: VecDeque::new(),
    bytes: 0,
    next: 0,
    dropped: 0,
    metrics: None,
    metrics_at: None,
    shipping: false,
    delivered: 0,
});
static WAKE: Condvar = Condvar::new();

fn backlog() -> std::sync::MutexGuard<'static, Backlog> {
    flist::durable::lock(&BACKLOG)
}

/// What a line costs the memory backlog.
fn cost(r: &Record) -> usize {
    r.l.len() + r.s.len() + RECORD_OVERHEAD
}

fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Keeps every line from now on, until [`start`] ships them or [`discard`] says nothing will.
pub fn capture() {
    backlog().capturing = true;
}

/// No server takes the logs: stop keeping them.
pub fn discard() {
    let mut b = backlog();
    if !b.shipping {
        b.capturing = false;
        b.lines.clear();
        b.bytes = 0;
    }
}

/// A line of `source` (`console` or a service), cut to [`logs::MAX_LINE`]. Never waits on
/// anything but the backlog's lock.
pub fn line(source: &str, line: &str) {
    let line = logs::cut(line.strip_suffix('\n').unwrap_or(line));
    let source: String = source.chars().filter(|c| !c.is_control()).take(logs::MAX_SOURCE).collect();
    let mut b = backlog();
    if !b.capturing {
        return;
    }
    let n = b.next;
    b.next = n.saturating_add(1);
    let record = Record { n, t: unix_millis(), s: source, l: line.to_string() };
    b.bytes = b.bytes.saturating_add(cost(&record));
    b.lines.push_back(record);
    while b.bytes > MEMORY_BYTES {
        let Some(old) = b.lines.pop_front() else { break };
        b.bytes = b.bytes.saturating_sub(cost(&old));
        b.dropped = b.dropped.saturating_add(1);
    }
    if b.bytes >= BATCH_BYTES {
        WAKE.notify_one();
    }
}

/// A console write (one log event, as formatted), without its terminal colours.
pub fn console(buf: &[u8]) {
    let text = String::from_utf8_lossy(buf);
    for l in strip_colours(&text).lines() {
        line("console", l);
    }
}

/// `text` without ANSI escape sequences (CSI: ESC `[` … final byte).
fn strip_colours(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\u{1b}') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
        } else if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out.into()
}

/// A log writer that also keeps what it writes for shipping: `init run`'s stderr.
pub struct Shipped<W>(pub W);

impl<W: Write> Write for Shipped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        console(buf);
        self.0.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Whether the node's numbers are due (the node loop then renders them for [`metrics`]).
pub fn metrics_due(now: Instant) -> bool {
    let b = backlog();
    b.shipping && b.metrics_at.is_none_or(|at| now.saturating_duration_since(at) >= METRICS_EVERY)
}

/// The node's numbers, to go with the next batch.
pub fn metrics(text: String, now: Instant) {
    let mut b = backlog();
    b.metrics = Some(text);
    b.metrics_at = Some(now);
    WAKE.notify_one();
}

/// Lines delivered and dropped so far, and lines waiting in memory.
pub fn counts() -> (u64, u64, usize) {
    let b = backlog();
    (b.delivered, b.dropped, b.lines.len())
}

/// `POST` beside the report URL: `http://h/report` ships to `http://h/logs`.
pub fn url_beside(report: &str) -> String {
    match report.rfind('/') {
        Some(i) if i > report.find("://").map_or(0, |s| s + 2) => format!("{}/logs", &report[..i]),
        _ => format!("{}/logs", report.trim_end_matches('/')),
    }
}

/// Ships the backlog to `url` from a thread of its own, through a journal in `disk` when there
/// is one. Once per process.
pub fn start(url: String, fetcher: Fetcher, disk: Option<PathBuf>) {
    {
        let mut b = backlog();
        if b.shipping {
            return;
        }
        b.shipping = true;
        b.capturing = true;
    }
    let spawned = std::thread::Builder::new().name("logship".into()).spawn(move || {
        // Batches are signed: wait for the key, as reports do.
        let boot = crate::identity::wait(Duration::from_secs(60)).map_or(0, |i| i.boot);
        let mut journal = disk.and_then(|dir| match Journal::open(&dir) {
            Ok(j) => Some(j),
            Err(e) => {
                tracing::error!("logs: the journal in {}: {e}; the backlog stays in memory", dir.display());
                None
            }
        });
        let mut shipper = Shipper { url, fetcher, boot, failures: 0, retry_at: Instant::now(), down_since: None };
        crate::guard::guard("logship", || shipper.run(&mut journal));
    });
    if let Err(e) = spawned {
        tracing::warn!("logs: no thread to ship them: {e}");
        let mut b = backlog();
        b.shipping = false;
    }
}

struct Shipper {
    url: String,
    fetcher: Fetcher,
    boot: u64,
    failures: u32,
    retry_at: Instant,
    /// When the server stopped taking the logs, and how many lines waited then.
    down_since: Option<Instant>,
}

impl Shipper {
    fn run(&mut self, journal: &mut Option<Journal>) {
        loop {
            flist::faults::hit("init", "logship");
            let (lines, metrics) = self.wait_for_work(journal.as_ref());
            if let Some(j) = journal.as_mut() {
                if let Err(e) = j.append(self.boot, &lines) {
                    tracing::error!("logs: writing the journal: {e}; the backlog stays in memory from now on");
                    *journal = None;
                    put_back(lines);
                }
            }
            self.send(journal, metrics);
        }
    }

    /// Waits until lines or the numbers are due and the retry time has come. Takes the numbers,
    /// and the lines in memory when there is a journal to hold them.
    fn wait_for_work(&self, journal: Option<&Journal>) -> (Vec<Record>, Option<String>) {
        let mut b = backlog();
        loop {
            let now = Instant::now();
            let lines_due = b.bytes >= BATCH_BYTES
                || b.lines.front().is_some_and(|r| unix_millis().saturating_sub(r.t) >= LINGER.as_millis() as u64);
            let due = lines_due || b.metrics.is_some() || journal.is_some_and(|j| j.unsent);
            if due && now >= self.retry_at {
                let lines = match journal {
                    Some(_) => {
                        b.bytes = 0;
                        b.lines.drain(..).collect()
                    }
                    None => Vec::new(),
                };
                return (lines, b.metrics.take());
            }
            let wait = if due { self.retry_at.saturating_duration_since(now) } else { LINGER };
            b = WAKE
                .wait_timeout(b, wait.clamp(Duration::from_millis(10), LINGER))
                .map_or_else(|e| e.into_inner().0, |r| r.0);
        }
    }

    /// Sends one batch (and more while the server keeps up), from the journal or from memory.
    fn send(&mut self, journal: &mut Option<Journal>, mut metrics: Option<String>) {
        loop {
            let (boot, records) = match journal.as_mut() {
                Some(j) => j.next_batch().unwrap_or_else(|e| {
                    tracing::error!("logs: reading the journal: {e}");
                    (self.boot, Vec::new())
                }),
                None => (self.boot, memory_batch()),
            };
            if records.is_empty() && metrics.is_none() {
                return;
            }
            let sent = records.len();
            let batch = Batch { boot, records, metrics: metrics.take() };
            let body = match serde_json::to_string(&batch) {
                Ok(b) => b,
                Err(e) => return tracing::error!("logs: encoding a batch: {e}"),
            };
            match self.fetcher.post_json_answered(&self.url, &body, TIMEOUT, "logs") {
                Ok(answer) => {
                    let position = serde_json::from_slice::<Position>(&answer)
                        .unwrap_or(Position { boot, next: batch.records.last().map_or(0, |r| r.n.saturating_add(1)) });
                    let last = batch.records.last().map(|r| Position { boot, next: r.n });
                    self.delivered(journal, position, sent);
                    // More only while the server takes what it is sent (else at the next turn).
                    if last.is_none_or(|last| position <= last) {
                        return;
                    }
                }
                Err(e) => {
                    self.failed(&crate::error_chain(&e));
                    if let Some(text) = batch.metrics {
                        backlog().metrics.get_or_insert(text);
                    }
                    return;
                }
            }
        }
    }

    fn delivered(&mut self, journal: &mut Option<Journal>, position: Position, sent: usize) {
        match journal.as_mut() {
            Some(j) => {
                if let Err(e) = j.ack(position) {
                    tracing::error!("logs: recording what the server holds: {e}");
                }
            }
            None => {
                let mut b = backlog();
                while b.lines.front().is_some_and(|r| Position { boot: self.boot, next: r.n } < position) {
                    if let Some(old) = b.lines.pop_front() {
                        b.bytes = b.bytes.saturating_sub(cost(&old));
                    }
                }
            }
        }
        let (delivered, dropped) = {
            let mut b = backlog();
            b.delivered = b.delivered.saturating_add(sent as u64);
            (b.delivered, b.dropped)
        };
        if let Some(since) = self.down_since.take() {
            tracing::info!(
                "logs: {} takes them again after {:.0} s ({delivered} lines delivered, {dropped} dropped in all)",
                self.url,
                since.elapsed().as_secs_f64()
            );
        }
        self.failures = 0;
        self.retry_at = Instant::now();
    }

    fn failed(&mut self, why: &str) {
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            tracing::warn!("logs: {why}; they wait in the backlog and go out when the server takes them");
        } else {
            tracing::debug!("logs: {why}");
        }
        let delay = Duration::from_secs(1).saturating_mul(1 << self.failures.min(5)).min(RETRY_MAX);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = crate::later(Instant::now(), delay);
    }
}

/// Lines taken for the journal go back to the front of memory when it cannot hold them.
fn put_back(lines: Vec<Record>) {
    if lines.is_empty() {
        return;
    }
    let mut b = backlog();
    let added: usize = lines.iter().map(cost).sum();
    for r in lines.into_iter().rev() {
        b.lines.push_front(r);
    }
    b.bytes = b.bytes.saturating_add(added);
    while b.bytes > MEMORY_BYTES {
        let Some(old) = b.lines.pop_front() else { break };
        b.bytes = b.bytes.saturating_sub(cost(&old));
        b.dropped = b.dropped.saturating_add(1);
    }
}

/// The oldest lines in memory, up to a batch, without taking them: they go once delivered.
fn memory_batch() -> Vec<Record> {
    let b = backlog();
    take_batch(b.lines.iter())
}

fn take_batch<'a>(records: impl Iterator<Item = &'a Record>) -> Vec<Record> {
    let mut size = 0usize;
    let mut out = Vec::new();
    for r in records {
        // As JSON: escapes can make a line up to six times longer.
        let cost = serde_json::to_string(r).map_or(usize::MAX, |t| t.len() + 1);
        if !out.is_empty() && (size.saturating_add(cost) > BATCH_BYTES || out.len() >= logs::MAX_RECORDS) {
            break;
        }
        size = size.saturating_add(cost);
        out.push(r.clone());
    }
    out
}

/// The backlog on the cache disk: files `BOOT-FIRST.jsonl` (zero-padded, so names sort as
/// positions do) of one record per line, and `acked` (what the server holds).
struct Journal {
    dir: PathBuf,
    acked: Position,
    /// The file appended to: its path, handle, size, boot.
    current: Option<(PathBuf, File, u64, u64)>,
    /// Whether it may hold lines the server lacks.
    unsent: bool,
}

const ACKED: &str = "acked";

impl Journal {
    fn open(dir: &Path) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let acked = Position::from_line(&std::fs::read_to_string(dir.join(ACKED)).unwrap_or_default());
        let mut journal = Journal { dir: dir.to_path_buf(), acked, current: None, unsent: false };
        journal.unsent = !journal.segments()?.is_empty();
        Ok(journal)
    }

    /// The journal's files, oldest first: (boot, first line, path, size).
    fn segments(&self) -> io::Result<Vec<(u64, u64, PathBuf, u64)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some((boot, first)) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")?.split_once('-')) else {
                continue;
            };
            let (Ok(boot), Ok(first)) = (boot.parse(), first.parse()) else { continue };
            out.push((boot, first, entry.path(), entry.metadata()?.len()));
        }
        out.sort();
        Ok(out)
    }

    /// Appends `lines` of `boot`, durably, dropping the oldest files beyond [`DISK_BYTES`].
    fn append(&mut self, boot: u64, lines: &[Record]) -> io::Result<()> {
        let Some(first) = lines.first() else { return Ok(()) };
        let mut text = String::new();
        for r in lines {
            text.push_str(&serde_json::to_string(r).map_err(io::Error::other)?);
            text.push('\n');
        }
        let full = self.current.as_ref().is_none_or(|(_, _, size, b)| *size >= SEGMENT_BYTES || *b != boot);
        if full {
            let path = self.dir.join(format!("{boot:020}-{:020}.jsonl", first.n));
            let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            let size = file.metadata()?.len();
            self.current = Some((path, file, size, boot));
        }
        if let Some((_, file, size, _)) = self.current.as_mut() {
            file.write_all(text.as_bytes())?;
            file.sync_data()?;
            *size = size.saturating_add(text.len() as u64);
        }
        self.unsent = true;
        self.enforce_bound()
    }

    fn enforce_bound(&mut self) -> io::Result<()> {
        let segments = self.segments()?;
        let mut total: u64 = segments.iter().map(|s| s.3).sum();
        let current = self.current.as_ref().map(|c| c.0.clone());
        for (_, _, path, size) in &segments {
            if total <= DISK_BYTES {
                break;
            }
            if Some(path) == current.as_ref() {
                continue;
            }
            let lines = std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64);
            std::fs::remove_file(path)?;
            total = total.saturating_sub(*size);
            let mut b = backlog();
            b.dropped = b.dropped.saturating_add(lines);
        }
        Ok(())
    }

    /// The oldest lines the server does not hold yet, up to a batch, all of one boot. Files
    /// the server holds all of are removed on the way (not the one appended to).
    fn next_batch(&mut self) -> io::Result<(u64, Vec<Record>)> {
        let current = self.current.as_ref().map(|c| c.0.clone());
        for (boot, _, path, _) in self.segments()? {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            // A line torn by a power cut does not parse, and is skipped.
            let unsent: Vec<Record> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Record>(l).ok())
                .filter(|r| Position { boot, next: r.n } >= self.acked)
                .collect();
            if unsent.is_empty() {
                if Some(&path) != current.as_ref() {
                    std::fs::remove_file(&path)?;
                }
                continue;
            }
            return Ok((boot, take_batch(unsent.iter())));
        }
        self.unsent = false;
        Ok((0, Vec::new()))
    }

    /// The server holds everything before `position`.
    fn ack(&mut self, position: Position) -> io::Result<()> {
        if position > self.acked {
            self.acked = position;
            flist::durable::write_whole(&self.dir.join(ACKED), position.to_line().as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn record(n: u64, l: &str) -> Record {
        Record { n, t: 0, s: "web".into(), l: l.into() }
    }

    #[test]
    fn the_journal_gives_back_what_the_server_lacks_in_order_across_boots_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.append(1, &(0..10).map(|n| record(n, &format!("boot 1 line {n}"))).collect::<Vec<_>>()).unwrap();
        j.append(2, &(0..5).map(|n| record(n, &format!("boot 2 line {n}"))).collect::<Vec<_>>()).unwrap();
        let (boot, batch) = j.next_batch().unwrap();
        assert_eq!((boot, batch.len(), batch[0].n), (1, 10, 0));
        j.ack(Position { boot: 1, next: 4 }).unwrap();
        assert_eq!(j.next_batch().unwrap().1[0].n, 4);
        // A reboot: the journal is read back with what the server held.
        let mut again = Journal::open(dir.path()).unwrap();
        assert_eq!(again.acked, Position { boot: 1, next: 4 });
        again.ack(Position { boot: 1, next: 10 }).unwrap();
        let (boot, batch) = again.next_batch().unwrap();
        assert_eq!((boot, batch.len()), (2, 5));
        assert_eq!(again.segments().unwrap().len(), 1, "the file of boot 1 is removed once held");
        // A torn last line is skipped, and the lines after it are still read.
        let path = again.segments().unwrap()[0].2.clone();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"n\":5,\"t\"").unwrap();
        again.append(3, &[record(0, "boot 3")]).unwrap();
        again.ack(Position { boot: 2, next: 5 }).unwrap();
        assert_eq!(again.next_batch().unwrap(), (3, vec![record(0, "boot 3")]));
        again.ack(Position { boot: 3, next: 1 }).unwrap();
        assert_eq!(again.next_batch().unwrap().1, vec![]);
        assert!(!again.unsent);
    }

    #[test]
    fn the_journal_drops_its_oldest_files_beyond_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        let line = "x".repeat(1000);
        let before = counts().1;
        let per = 1000u64;
        for chunk in 0..(DISK_BYTES / (per * 1000) + 10) {
            let lines: Vec<Record> = (chunk * per..(chunk + 1) * per).map(|n| record(n, &line)).collect();
            j.append(1, &lines).unwrap();
        }
        let total: u64 = j.segments().unwrap().iter().map(|s| s.3).sum();
        assert!(total <= DISK_BYTES + SEGMENT_BYTES * 2, "{total}");
        assert!(counts().1 > before, "drops are counted");
        // What is left starts later than line 0, and runs to the last line in order.
        let (_, batch) = j.next_batch().unwrap();
        assert!(batch[0].n > 0);
        assert!(batch.windows(2).all(|w| w[1].n == w[0].n + 1));
    }

    #[test]
    fn batches_stay_within_their_bound_whatever_the_lines_hold() {
        let lines: Vec<Record> = (0..2000).map(|n| record(n, &"\u{1}\"".repeat(200))).collect();
        let batch = take_batch(lines.iter());
        let size = serde_json::to_string(&Batch { boot: 0, records: batch.clone(), metrics: None }).unwrap().len();
        assert!(!batch.is_empty() && size <= BATCH_BYTES + 1024, "{size}");
        assert!(size < logs::MAX_BATCH);
        // One line larger than a batch still goes, alone.
        let huge = [record(0, &"\u{1}".repeat(logs::MAX_LINE))];
        assert_eq!(take_batch(huge.iter()).len(), 1);
    }

    #[test]
    fn the_memory_backlog_drops_its_oldest_lines_beyond_its_bound_and_counts_them() {
        capture();
        let before = counts().1;
        for i in 0..40_000 {
            line("we\nb", &format!("{i:06} {}\n", "y".repeat(100)));
        }
        line("web", &"z".repeat(logs::MAX_LINE * 2));
        let b = backlog();
        assert!(b.bytes <= MEMORY_BYTES && b.bytes > MEMORY_BYTES / 2, "{}", b.bytes);
        assert!(b.dropped >= before + 20_000, "{} dropped", b.dropped - before);
        let ours: Vec<&Record> = b.lines.iter().filter(|r| r.s == "web").collect();
        assert!(ours.windows(2).all(|w| w[0].n < w[1].n), "in order");
        assert_eq!(
            ours[ours.len() - 2].l,
            format!("039999 {}", "y".repeat(100)),
            "the newest kept, without its newline"
        );
        assert_eq!(ours[ours.len() - 1].l.len(), logs::MAX_LINE, "cut");
    }

    #[test]
    fn colours_are_stripped_and_nothing_else() {
        assert_eq!(strip_colours("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"), "2026  INFO x");
        assert_eq!(strip_colours("plain ünïcode"), "plain ünïcode");
        assert_eq!(strip_colours("cut \u{1b}"), "cut ");
    }

    #[test]
    fn the_url_is_beside_the_reports() {
        assert_eq!(url_beside("http://10.0.2.2:8080/report"), "http://10.0.2.2:8080/logs");
        assert_eq!(url_beside("https://boot.example/flint/report"), "https://boot.example/flint/logs");
        assert_eq!(url_beside("http://host:1"), "http://host:1/logs");
    }
}
