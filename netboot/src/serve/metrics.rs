//! `/metrics`: the fleet and the server in Prometheus text format (version 0.0.4).
//!
//! - `flint_nodes{state, version}`: nodes by the state their reports last put them in and the
//!   manifest version they last applied. Addresses that only sent refused requests are not
//!   nodes: they are `flint_refusing_addresses`.
//! - `flint_served_requests_total{kind}` and `flint_served_bytes_total{kind}`: what the server
//!   answered since it started, by kind (script, kernel, initrd, manifest, flist, chunk, report,
//!   logs, page).
//! - `flint_reports_total`, `flint_log_batches_total`, `flint_log_lines_total`: what nodes sent
//!   that was stored (a scraper's `rate()` is the ingest rate).
//! - `flint_refused_requests_total{reason}`: signed requests refused (forged, replayed, …).
//! - `flint_db_write_seconds`: a histogram of state database transactions.
//! - `flint_rollout{id, path, version, state}` (1 for each rollout), `flint_rollout_wave{id}`
//!   (the wave under way, from 1; 0 before the first) and `flint_rollout_nodes{id, standing}`
//!   (started nodes healthy, failed, waiting) for the newest rollout of each manifest path.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use super::status::{Count, NodeRecord};

/// Upper bounds of the database latency buckets, in seconds.
const DB_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A latency histogram with [`DB_BUCKETS`].
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    /// Observations at or under each bound (not cumulative; summed when written).
    buckets: [u64; DB_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&mut self, took: Duration) {
        let s = took.as_secs_f64();
        if let Some(slot) = DB_BUCKETS.iter().position(|&bound| s <= bound).and_then(|i| self.buckets.get_mut(i)) {
            *slot = slot.saturating_add(1);
        }
        self.count = self.count.saturating_add(1);
        self.sum += s;
    }
}

/// What the server counts while it runs (reset when it restarts, as Prometheus counters are).
#[derive(Debug, Default)]
pub struct Counters {
    served: BTreeMap<&'static str, Count>,
    refused: BTreeMap<&'static str, u64>,
    reports: u64,
    log_batches: u64,
    log_lines: u64,
}

impl Counters {
    /// One answered request of `kind`, `bytes` long.
    pub fn served(&mut self, kind: &'static str, bytes: u64) {
        let c = self.served.entry(kind).or_default();
        c.requests = c.requests.saturating_add(1);
        c.bytes = c.bytes.saturating_add(bytes);
    }

    /// One signed request refused for `reason`.
    pub fn refused(&mut self, reason: &'static str) {
        let n = self.refused.entry(reason).or_default();
        *n = n.saturating_add(1);
    }

    /// One report stored.
    pub fn report(&mut self) {
        self.reports = self.reports.saturating_add(1);
    }

    /// One batch of `lines` log lines stored.
    pub fn logs(&mut self, lines: u64) {
        self.log_batches = self.log_batches.saturating_add(1);
        self.log_lines = self.log_lines.saturating_add(lines);
    }
}

/// Stages that say what state a node is in; the last of them is its state.
const STATES: [&str; 6] = ["applied", "healthy", "unhealthy", "rollback", "error", "panic"];

/// A node's state: its last stateful stage, `booting` when it reported only other stages,
/// `seen` when it only fetched files. An `error` the node reported `recovered` from since is
/// over: the state is the one before it.
pub fn state(record: &NodeRecord) -> &'static str {
    match record.enrollment {
        Some(super::status::Standing::Pending) => return "pending",
        Some(super::status::Standing::Rejected) => return "rejected",
        _ => {}
    }
    let mut recovered = false;
    let last = record.stages.iter().rev().find_map(|s| {
        recovered |= s.stage == "recovered";
        if recovered && s.stage == "error" {
            return None;
        }
        STATES.iter().find(|&&st| st == s.stage)
    });
    match last {
        Some(state) => state,
        None if record.stages.is_empty() => "seen",
        None => "booting",
    }
}

/// The manifest version a node runs, from its last report that names one: `applied` ("manifest
/// version N: …"), `healthy` ("manifest version N is healthy: …") or `rollback` ("rolled back to
/// manifest version M: …"). Reports are best effort (one sent while the server was down is
/// lost), so any of them may be the one that says.
pub fn version(record: &NodeRecord) -> Option<u64> {
    record.stages.iter().rev().find_map(|s| {
        let rest = match s.stage.as_str() {
            "applied" | "healthy" => s.detail.strip_prefix("manifest version ")?,
            "rollback" => s.detail.strip_prefix("rolled back to manifest version ")?,
            _ => return None,
        };
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    })
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The page: `nodes` as the registry holds them, `counters` and `db` as counted since start.
pub fn render(nodes: &BTreeMap<String, NodeRecord>, counters: &Counters, db: Option<&Histogram>) -> String {
    let mut out = String::new();
    let mut by_state: BTreeMap<(&str, String), u64> = BTreeMap::new();
    let mut refusing = 0u64;
    for (key, record) in nodes {
        if key.starts_with("refused ") {
            refusing += 1;
            continue;
        }
        let version = version(record).map_or_else(|| "none".to_string(), |v| v.to_string());
        *by_state.entry((state(record), version)).or_default() += 1;
    }
    family(
        &mut out,
        "flint_nodes",
        "gauge",
        "Nodes by the state their reports put them in and the manifest version they applied.",
    );
    for ((state, version), n) in &by_state {
        let _ = writeln!(out, "flint_nodes{{state=\"{state}\",version=\"{version}\"}} {n}");
    }
    family(
        &mut out,
        "flint_refusing_addresses",
        "gauge",
        "Addresses whose requests were refused (not counted as nodes).",
    );
    let _ = writeln!(out, "flint_refusing_addresses {refusing}");
    family(&mut out, "flint_served_requests_total", "counter", "Requests answered since the server started, by kind.");
    for (kind, c) in &counters.served {
        let _ = writeln!(out, "flint_served_requests_total{{kind=\"{kind}\"}} {}", c.requests);
    }
    family(&mut out, "flint_served_bytes_total", "counter", "Body bytes answered since the server started, by kind.");
    for (kind, c) in &counters.served {
        let _ = writeln!(out, "flint_served_bytes_total{{kind=\"{kind}\"}} {}", c.bytes);
    }
    family(&mut out, "flint_refused_requests_total", "counter", "Requests refused, by reason.");
    for (reason, n) in &counters.refused {
        let _ = writeln!(out, "flint_refused_requests_total{{reason=\"{reason}\"}} {n}");
    }
    family(&mut out, "flint_reports_total", "counter", "Boot stage reports stored.");
    let _ = writeln!(out, "flint_reports_total {}", counters.reports);
    family(&mut out, "flint_log_batches_total", "counter", "Log batches stored.");
    let _ = writeln!(out, "flint_log_batches_total {}", counters.log_batches);
    family(&mut out, "flint_log_lines_total", "counter", "Log lines stored.");
    let _ = writeln!(out, "flint_log_lines_total {}", counters.log_lines);
    if let Some(h) = db {
        family(&mut out, "flint_db_write_seconds", "histogram", "State database write transactions, in seconds.");
        let mut below = 0u64;
        for (bound, n) in DB_BUCKETS.iter().zip(h.buckets) {
            below = below.saturating_add(n);
            let _ = writeln!(out, "flint_db_write_seconds_bucket{{le=\"{bound}\"}} {below}");
        }
        let _ = writeln!(out, "flint_db_write_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "flint_db_write_seconds_sum {}", h.sum);
        let _ = writeln!(out, "flint_db_write_seconds_count {}", h.count);
    }
    out
}

/// Appends the rollout families: every rollout's state, and the newest of each path's wave and
/// nodes.
pub fn rollouts(out: &mut String, all: &[super::rollout::Rollout], nodes: &BTreeMap<String, NodeRecord>) {
    use super::rollout::Verdict;
    family(out, "flint_rollout", "gauge", "Rollouts, by manifest path, version and state (1 each).");
    for r in all {
        let _ = writeln!(
            out,
            "flint_rollout{{id=\"{}\",path=\"{}\",version=\"{}\",state=\"{}\"}} 1",
            r.id,
            r.path.escape_default(),
            r.version,
            r.state.name()
        );
    }
    let mut newest: BTreeMap<&str, &super::rollout::Rollout> = BTreeMap::new();
    for r in all {
        newest.insert(&r.path, r);
    }
    family(out, "flint_rollout_wave", "gauge", "The wave under way of the newest rollout of each path (0: none yet).");
    for r in newest.values() {
        let _ = writeln!(out, "flint_rollout_wave{{id=\"{}\"}} {}", r.id, r.current().map_or(0, |w| w + 1));
    }
    family(out, "flint_rollout_nodes", "gauge", "Started nodes of the newest rollout of each path, by standing.");
    for r in newest.values() {
        let mut counts = [("healthy", 0u64), ("failed", 0), ("waiting", 0)];
        for v in r.standing(nodes).values() {
            let slot = match v {
                Verdict::Healthy => 0,
                Verdict::Failed(_) => 1,
                Verdict::Waiting => 2,
            };
            if let Some((_, n)) = counts.get_mut(slot) {
                *n += 1;
            }
        }
        for (standing, n) in counts {
            let _ = writeln!(out, "flint_rollout_nodes{{id=\"{}\",standing=\"{standing}\"}} {n}", r.id);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::serve::status::Stage;

    fn node(stages: &[(&str, &str)]) -> NodeRecord {
        let stages =
            stages.iter().map(|(s, d)| Stage { at: 0.0, stage: s.to_string(), detail: d.to_string() }).collect();
        NodeRecord { stages, ..Default::default() }
    }

    #[test]
    fn a_node_is_in_the_state_of_its_last_stateful_report_at_the_version_it_applied() {
        let n = node(&[("network", ""), ("applied", "manifest version 7: 2 flists mounted, 3 services")]);
        assert_eq!((state(&n), version(&n)), ("applied", Some(7)));
        let n = node(&[("applied", "manifest version 7: …"), ("healthy", "x"), ("service", "web ready")]);
        assert_eq!((state(&n), version(&n)), ("healthy", Some(7)));
        let n = node(&[("applied", "manifest version 7: …"), ("healthy", ""), ("applied", "manifest version 8")]);
        assert_eq!((state(&n), version(&n)), ("applied", Some(8)), "a new manifest is not healthy yet");
        assert_eq!((state(&node(&[("network", "")])), version(&node(&[]))), ("booting", None));
        // The `applied` report of 3 was lost: its `healthy` one says.
        let n = node(&[("applied", "manifest version 1: …"), ("healthy", "manifest version 3 is healthy: web ready")]);
        assert_eq!(version(&n), Some(3));
        let n = node(&[
            ("applied", "manifest version 2: …"),
            ("rollback", "rolled back to manifest version 1: version 2 failed"),
        ]);
        assert_eq!(version(&n), Some(1));
        let n = node(&[("applied", "manifest version 3: …"), ("healthy", ""), ("error", "fetching: refused")]);
        assert_eq!(state(&n), "error");
        let n = node(&[
            ("applied", "manifest version 3: …"),
            ("healthy", ""),
            ("error", "x"),
            ("error", "y"),
            ("recovered", ""),
        ]);
        assert_eq!(state(&n), "healthy", "an error it recovered from is over");
        let n = node(&[("healthy", ""), ("error", "x"), ("recovered", ""), ("error", "again")]);
        assert_eq!(state(&n), "error", "a new error after the recovery");
        assert_eq!(state(&node(&[])), "seen");
        for detail in
            ["manifest version ", "manifest version x", "version 3", "manifest version 99999999999999999999999"]
        {
            assert_eq!(version(&node(&[("applied", detail)])), None, "{detail}");
        }
    }

    #[test]
    fn the_page_is_prometheus_text_with_cumulative_buckets() {
        let mut nodes = BTreeMap::new();
        nodes.insert("a".to_string(), node(&[("applied", "manifest version 2: …"), ("healthy", "")]));
        nodes.insert("b".to_string(), node(&[("applied", "manifest version 2: …"), ("healthy", "")]));
        nodes.insert("c".to_string(), node(&[("rollback", "")]));
        nodes.insert("refused 10.0.0.9".to_string(), node(&[]));
        let mut counters = Counters::default();
        counters.served("chunk", 10);
        counters.served("chunk", 5);
        counters.refused("replayed");
        counters.logs(4);
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        let page = render(&nodes, &counters, Some(&h));
        for line in [
            "flint_nodes{state=\"healthy\",version=\"2\"} 2",
            "flint_nodes{state=\"rollback\",version=\"none\"} 1",
            "flint_refusing_addresses 1",
            "flint_served_requests_total{kind=\"chunk\"} 2",
            "flint_served_bytes_total{kind=\"chunk\"} 15",
            "flint_refused_requests_total{reason=\"replayed\"} 1",
            "flint_log_lines_total 4",
            "flint_db_write_seconds_bucket{le=\"0.0005\"} 1",
            "flint_db_write_seconds_bucket{le=\"0.025\"} 2",
            "flint_db_write_seconds_bucket{le=\"5\"} 2",
            "flint_db_write_seconds_bucket{le=\"+Inf\"} 3",
            "flint_db_write_seconds_count 3",
        ] {
            assert!(page.lines().any(|l| l == line), "{line} not in\n{page}");
        }
        assert!(!page.contains("refused 10"), "{page}");
    }
}
