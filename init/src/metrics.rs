//! The node's numbers in Prometheus's text format (`init ctl metrics`): bytes fetched per flist
//! and store, cache hits and size, service starts, readiness and memory, the manifest's
//! versions, and init's own memory and threads.

use std::fmt::Write;

use flist::cache::CacheStats;
use flist::fetch::FetchStats;
use flist::store::StoreHealth;

use crate::control::protocol::ServiceRow;

/// One flist in service and what it fetched.
pub struct FlistTraffic {
    /// Its name in the manifest.
    pub name: String,
    /// Its fetcher's counters.
    pub fetch: FetchStats,
    /// Its stores.
    pub stores: Vec<StoreHealth>,
}

/// Everything shown.
#[derive(Default)]
pub struct Snapshot {
    /// Flists in service.
    pub flists: Vec<FlistTraffic>,
    /// The chunk cache, if there is one.
    pub cache: Option<CacheStats>,
    /// Services, as the supervisor shows them.
    pub services: Vec<ServiceRow>,
    /// The manifest in force, the last good one, the highest failed one.
    pub version: Option<u64>,
    /// The last good version.
    pub good: Option<u64>,
    /// The highest failed version.
    pub failed: Option<u64>,
    /// Whether the node is stale.
    pub stale: bool,
    /// Rollbacks since init started.
    pub rollbacks: u64,
    /// Log lines the boot server took, and lines dropped from a full backlog, since init started.
    pub log_delivered: u64,
    /// See `log_delivered`.
    pub log_dropped: u64,
    /// Log lines waiting in memory.
    pub log_waiting: usize,
}

/// A label value, escaped as the format asks (`\`, `"` and newlines).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
        let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
        let _ = writeln!(self.0, "{name}{labels} {value}");
    }
}

/// `key:   N kB` of `/proc/self/status`, in bytes (or as is, without a unit).
fn own_status(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    let mut words = line.split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    Some(if words.next() == Some("kB") { n.saturating_mul(1024) } else { n })
}

/// The text.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out(String::new());
    type Field = fn(&FetchStats) -> u64;
    let per_flist: [(&str, &str, &str, Field); 5] = [
        ("flint_flist_fetched_bytes_total", "counter", "Plain bytes fetched from stores.", |f| f.fetched_bytes),
        ("flint_flist_fetched_chunks_total", "counter", "Chunks fetched from stores.", |f| f.fetched),
        ("flint_flist_memory_hits_total", "counter", "Chunk requests answered from memory.", |f| f.memory_hits),
        ("flint_flist_disk_hits_total", "counter", "Chunk requests answered from the disk cache.", |f| f.disk_hits),
        ("flint_flist_waited_total", "counter", "Reads that waited for a download.", |f| f.waited),
    ];
    for (name, kind, help, field) in per_flist {
        o.family(name, kind, help);
        for f in &s.flists {
            o.sample(name, &[("flist", &f.name)], field(&f.fetch));
        }
    }
    type StoreField = fn(&StoreHealth) -> u64;
    let per_store: [(&str, &str, &str, StoreField); 4] = [
        ("flint_store_fetched_chunks_total", "counter", "Verified chunks a store served.", |h| h.fetched),
        ("flint_store_bytes_total", "counter", "Bytes a store served, as stored.", |h| h.bytes),
        ("flint_store_errors_total", "counter", "Failed or unverifiable fetches from a store.", |h| h.errors),
        ("flint_store_down", "gauge", "1 while a store is tried last.", |h| u64::from(h.down)),
    ];
    for (name, kind, help, field) in per_store {
        o.family(name, kind, help);
        for f in &s.flists {
            for h in &f.stores {
                o.sample(name, &[("flist", &f.name), ("store", &h.url)], field(h));
            }
        }
    }
    if let Some(c) = &s.cache {
        for (name, kind, help, value) in [
            ("flint_cache_bytes", "gauge", "Bytes in the chunk cache.", c.bytes),
            ("flint_cache_quota_bytes", "gauge", "The chunk cache's quota.", c.quota),
            ("flint_cache_entries", "gauge", "Entries in the chunk cache.", c.entries),
            ("flint_cache_pinned_chunks", "gauge", "Chunks of the last good version kept against eviction.", c.pinned),
            ("flint_cache_hits_total", "counter", "Chunk cache hits.", c.hits),
            ("flint_cache_misses_total", "counter", "Chunk cache misses.", c.misses),
            ("flint_cache_corrupt_total", "counter", "Cache entries found corrupt and dropped.", c.corrupt),
            ("flint_cache_evicted_total", "counter", "Cache entries evicted.", c.evicted),
        ] {
            o.family(name, kind, help);
            o.sample(name, &[], value);
        }
    }
    o.family("flint_service_starts_total", "counter", "Times a service was started.");
    for r in &s.services {
        o.sample("flint_service_starts_total", &[("service", &r.name)], u64::from(r.starts));
    }
    o.family("flint_service_ready", "gauge", "1 while a service is ready (a oneshot: done).");
    for r in &s.services {
        o.sample(
            "flint_service_ready",
            &[("service", &r.name)],
            u64::from(matches!(r.state.as_str(), "running" | "done")),
        );
    }
    o.family("flint_service_memory_bytes", "gauge", "Memory a service's cgroup uses.");
    for r in &s.services {
        if let Some(bytes) = r.cgroup.as_ref().and_then(|c| c.usage.memory) {
            o.sample("flint_service_memory_bytes", &[("service", &r.name)], bytes);
        }
    }
    for (name, help, value) in [
        ("flint_manifest_version", "The manifest version in force.", s.version),
        ("flint_manifest_good_version", "The last good manifest version.", s.good),
        ("flint_manifest_failed_version", "The highest version that failed its health check.", s.failed),
    ] {
        o.family(name, "gauge", help);
        if let Some(v) = value {
            o.sample(name, &[], v);
        }
    }
    o.family("flint_node_stale", "gauge", "1 while the manifest in force has expired and no fresh one is served.");
    o.sample("flint_node_stale", &[], u64::from(s.stale));
    o.family("flint_rollbacks_total", "counter", "Rollbacks to the last good version since init started.");
    o.sample("flint_rollbacks_total", &[], s.rollbacks);
    for (name, kind, help, value) in [
        ("flint_log_lines_delivered_total", "counter", "Log lines the boot server took.", s.log_delivered),
        ("flint_log_lines_dropped_total", "counter", "Log lines dropped from a full backlog.", s.log_dropped),
        ("flint_log_lines_waiting", "gauge", "Log lines waiting in memory.", s.log_waiting as u64),
    ] {
        o.family(name, kind, help);
        o.sample(name, &[], value);
    }
    for (name, key, help) in [
        ("flint_init_resident_bytes", "VmRSS", "Init's resident memory."),
        ("flint_init_threads", "Threads", "Init's threads."),
    ] {
        if let Some(v) = own_status(key) {
            o.family(name, "gauge", help);
            o.sample(name, &[], v);
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_sample_is_one_well_formed_line_whatever_the_labels_hold() {
        let store =
            |url: &str| StoreHealth { url: url.into(), failures: 0, down: true, fetched: 3, bytes: 900, errors: 1 };
        let s = Snapshot {
            flists: vec![FlistTraffic {
                name: "sys".into(),
                fetch: FetchStats { fetched_bytes: 1234, ..FetchStats::default() },
                stores: vec![store("http://h/s\"x\\y\nz"), store("dir:///srv")],
            }],
            version: Some(7),
            stale: true,
            ..Snapshot::default()
        };
        let text = render(&s);
        assert!(text.contains("flint_flist_fetched_bytes_total{flist=\"sys\"} 1234\n"), "{text}");
        assert!(
            text.contains("flint_store_bytes_total{flist=\"sys\",store=\"http://h/s\\\"x\\\\y\\nz\"} 900\n"),
            "{text}"
        );
        assert!(text.contains("flint_store_down{flist=\"sys\",store=\"dir:///srv\"} 1\n"));
        assert!(text.contains("flint_manifest_version 7\n") && text.contains("flint_node_stale 1\n"));
        assert!(text.contains("flint_init_threads "), "{text}");
        for line in text.lines() {
            if line.starts_with('#') {
                assert!(line.starts_with("# HELP flint_") || line.starts_with("# TYPE flint_"), "{line}");
            } else {
                let (_, value) = line.rsplit_once(' ').unwrap();
                assert!(value.parse::<u64>().is_ok(), "{line}");
                assert!(line.starts_with("flint_"), "{line}");
            }
        }
    }
}
