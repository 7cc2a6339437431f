//! What the server knows of its nodes: each request counted by the peer's address and by kind
//! of file, and the boot stages nodes report (`POST /report`). Shown at `/` (HTML) and
//! `/status.json`, with a summary of what the root serves.
//!
//! A node that signs its requests is keyed by its node id, and the unsigned requests from its
//! address (chunks, flists) are counted under it too; other nodes are keyed by IP address. A MAC
//! address is attached when the node's boot script or a report names it. Behind NAT (qemu's
//! user network) every unsigned node has the NAT's address.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::profiles::Profiles;

/// Stages kept per node; older ones are dropped so a node rebooting for weeks stays bounded.
const STAGES_KEPT: usize = 200;
/// Longest stage name or detail kept from a report.
const FIELD_MAX: usize = 500;

/// A node's report of a boot stage.
#[derive(Debug, Deserialize)]
pub struct Report {
    /// The reporting NIC's MAC address.
    #[serde(default)]
    pub mac: Option<String>,
    /// `network`, `manifest`, `applied`, `service`, …
    pub stage: String,
    /// Free text.
    #[serde(default)]
    pub detail: String,
}

/// One reported stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage {
    /// Seconds since the epoch, by the server's clock.
    pub at: f64,
    /// The stage.
    pub stage: String,
    /// What the node said.
    pub detail: String,
}

/// Requests and bytes.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Count {
    /// Requests answered.
    pub requests: u64,
    /// Body bytes answered (as sent: a client may stop reading early).
    pub bytes: u64,
}

/// One node as seen by the server.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeRecord {
    /// Its node id, when it signs its requests.
    pub node: Option<String>,
    /// Its public key (hex).
    pub public_key: Option<String>,
    /// The boot counter of its last signed request.
    pub boot: Option<u64>,
    /// The address its last request came from.
    pub address: Option<String>,
    /// Requests refused (forged, replayed, malformed or unsigned), by the peer's address.
    pub refused: u64,
    /// Why the last one was.
    pub last_refusal: Option<String>,
    /// Its MAC address, once known.
    pub mac: Option<String>,
    /// First and last request, seconds since the epoch.
    pub first_seen: f64,
    /// Last request.
    pub last_seen: f64,
    /// Everything it fetched.
    pub total: Count,
    /// By kind: script, kernel, initrd, manifest, flist, chunk, report, page.
    pub by_kind: BTreeMap<String, Count>,
    /// Reported stages, oldest first.
    pub stages: Vec<Stage>,
    /// Log lines it shipped that the server stored (`/logs/NODE-ID`).
    pub log_lines: u64,
}

/// Every node, by node id (or address, for nodes that do not sign), kept in the state database
/// when there is one ([`super::db`]).
#[derive(Default)]
pub struct Registry {
    nodes: BTreeMap<String, NodeRecord>,
    /// Address → the node id that last signed a request from it.
    signed_from: BTreeMap<String, String>,
    db: Option<Arc<super::db::Db>>,
    /// Records whose request counts changed since they were last written.
    dirty: BTreeSet<String>,
}

/// Most addresses remembered for their node id.
const ADDRESSES_KEPT: usize = 1 << 16;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn clip(s: &str) -> String {
    s.chars().take(FIELD_MAX).collect()
}

impl Registry {
    /// The registry kept in `db`, as it was left (`nodes` and `addresses` as loaded from it).
    pub fn restore(
        db: Arc<super::db::Db>,
        nodes: BTreeMap<String, NodeRecord>,
        addresses: BTreeMap<String, String>,
    ) -> Registry {
        Registry { nodes, signed_from: addresses, db: Some(db), dirty: BTreeSet::new() }
    }

    fn key_of(&self, ip: &str) -> String {
        self.signed_from.get(ip).cloned().unwrap_or_else(|| ip.to_string())
    }

    fn record(&mut self, key: &str, ip: &str) -> &mut NodeRecord {
        let t = now();
        let node =
            self.nodes.entry(key.to_string()).or_insert_with(|| NodeRecord { first_seen: t, ..Default::default() });
        node.last_seen = t;
        node.address = Some(ip.to_string());
        node
    }

    /// Writes the record of `key` now, before the answer.
    fn persist(&mut self, key: &str) -> Result<(), String> {
        self.persist_signed(key, None)
    }

    /// [`Registry::persist`], with the request `signed` from an address (its replay entry, and
    /// which node that address signed as), in the same transaction.
    fn persist_signed(
        &mut self,
        key: &str,
        signed: Option<(&str, &flint_manifest::signed::Envelope)>,
    ) -> Result<(), String> {
        let Some(db) = &self.db else { return Ok(()) };
        self.dirty.remove(key);
        let record = self.nodes.get(key).map(|r| (key, r));
        let address = signed.and_then(|(ip, _)| Some((ip, self.signed_from.get(ip)?.as_str())));
        db.save(record, address, signed.map(|(_, e)| e))
    }

    /// Writes every record whose counts changed; the server calls it each second.
    pub fn flush(&mut self) -> Result<(), String> {
        let Some(db) = &self.db else { return Ok(()) };
        if self.dirty.is_empty() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.dirty);
        db.save(dirty.iter().filter_map(|k| Some((k.as_str(), self.nodes.get(k)?))), [], None)
    }

    /// A request from `ip` signed (and checked, not a replay) with `envelope`'s key: kept, with its
    /// replay entry, before the answer, so a restarted server still refuses it again.
    pub fn signed_by(&mut self, ip: &str, envelope: &flint_manifest::signed::Envelope) -> Result<(), String> {
        let id = flint_manifest::signed::node_id(&envelope.key);
        if self.signed_from.len() < ADDRESSES_KEPT || self.signed_from.contains_key(ip) {
            self.signed_from.insert(ip.to_string(), id.clone());
        }
        let node = self.record(&id, ip);
        node.node = Some(id.clone());
        node.public_key = Some(hex::encode(envelope.key));
        node.boot = Some(envelope.boot);
        self.persist_signed(&id, Some((ip, envelope)))
    }

    /// Log lines stored for node `id`.
    pub fn logged(&mut self, id: &str, lines: u64) {
        if let Some(node) = self.nodes.get_mut(id) {
            node.log_lines = node.log_lines.saturating_add(lines);
            self.dirty.insert(id.to_string());
        }
    }

    /// A request from `ip` refused: counted under the address, never under the node it claims.
    pub fn refused(&mut self, ip: &str, why: &str) -> Result<(), String> {
        let key = format!("refused {ip}");
        let node = self.record(&key, ip);
        node.refused += 1;
        node.last_refusal = Some(clip(why));
        self.persist(&key)
    }

    /// Counts one answered request.
    pub fn request(&mut self, ip: &str, kind: &'static str, bytes: u64) {
        let key = self.key_of(ip);
        let node = self.record(&key, ip);
        for c in [&mut node.total, node.by_kind.entry(kind.to_string()).or_default()] {
            c.requests += 1;
            c.bytes += bytes;
        }
        self.dirty.insert(key);
    }

    /// Attaches a MAC address to the node at `ip`.
    pub fn saw_mac(&mut self, ip: &str, mac: &str) -> Result<(), String> {
        let key = self.key_of(ip);
        self.record(&key, ip).mac = Some(mac.to_string());
        self.persist(&key)
    }

    /// Records a report.
    pub fn report(&mut self, ip: &str, report: &Report) -> Result<(), String> {
        let key = self.key_of(ip);
        let node = self.record(&key, ip);
        if let Some(mac) = report.mac.as_deref().and_then(super::profiles::normalize_mac) {
            node.mac = Some(mac);
        }
        if node.stages.len() >= STAGES_KEPT {
            node.stages.remove(0);
        }
        node.stages.push(Stage { at: now(), stage: clip(&report.stage), detail: clip(&report.detail) });
        self.persist(&key)
    }

    /// A copy of every node.
    pub fn nodes(&self) -> BTreeMap<String, NodeRecord> {
        self.nodes.clone()
    }

    /// `/metrics`: the nodes as held now, with the server's `counters`.
    pub fn metrics(&self, counters: &super::metrics::Counters) -> String {
        super::metrics::render(&self.nodes, counters, self.db.as_ref().map(|db| db.write_latency()).as_ref())
    }
}

/// What the root holds, by kind.
#[derive(Debug, Default, Serialize)]
pub struct Served {
    /// Signed manifests: name → whether `NAME.sig` is beside it.
    pub manifests: BTreeMap<String, bool>,
    /// Flist metadata files and their sizes.
    pub flists: BTreeMap<String, u64>,
    /// Everything else (the chunk store, kernels): files and bytes.
    pub other: Count,
}

/// Walks the root (hidden files skipped, as they are never served).
pub fn served(root: &Path) -> Served {
    let mut out = Served::default();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(meta) = e.metadata() else { continue };
            if name.starts_with('.') {
                continue;
            }
            if meta.is_dir() {
                dirs.push(e.path());
                continue;
            }
            let rel = e.path().strip_prefix(root).map(|p| p.to_string_lossy().into_owned()).unwrap_or(name.clone());
            if name.ends_with(".json") && name != super::profiles::CONFIG {
                out.manifests.insert(rel.clone(), e.path().with_extension("json.sig").exists());
            } else if name.ends_with(".fl") {
                out.flists.insert(rel, meta.len());
            } else if !name.ends_with(".sig") {
                out.other.requests += 1;
                out.other.bytes += meta.len();
            }
        }
    }
    out
}

/// The kind of a served path, for the per-node counts.
pub fn kind_of(path: &str, profiles: Option<&Profiles>) -> &'static str {
    let rel = path.trim_start_matches('/');
    if let Some(kind) = profiles.and_then(|p| p.boot_file(rel)) {
        return kind;
    }
    match Path::new(rel).extension().and_then(|e| e.to_str()) {
        Some("json" | "sig") => "manifest",
        Some("fl") => "flist",
        Some("ipxe") => "script",
        _ => "chunk",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
}

fn ago(t: f64) -> String {
    format!("{:.0} s ago", (now() - t).max(0.0))
}

/// The status page.
pub fn page(
    root: &Path,
    profiles: &Result<Profiles, String>,
    served: &Served,
    nodes: &BTreeMap<String, NodeRecord>,
) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5>\
         <title>flint netboot</title><style>body{font-family:sans-serif;margin:2em}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}\
         </style></head><body><h1>flint netboot</h1>",
    );
    h += &format!(
        "<p>Serving <code>{}</code>. Also as <a href=status.json>status.json</a>.</p>",
        escape(&root.display().to_string())
    );
    h += "<h2>Profiles</h2>";
    match profiles {
        Ok(p) => {
            h += "<table><tr><th>profile</th><th>kernel</th><th>initrd</th><th>command line</th><th>nodes</th></tr>";
            for (name, prof) in &p.profiles {
                let macs: Vec<&str> = p.nodes.iter().filter(|(_, n)| *n == name).map(|(m, _)| m.as_str()).collect();
                h += &format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                    escape(name),
                    escape(&prof.kernel),
                    escape(&prof.initrd),
                    escape(&prof.cmdline),
                    if macs.is_empty() { "every other".into() } else { escape(&macs.join(" ")) }
                );
            }
            h += "</table>";
        }
        Err(e) => h += &format!("<p><b>{}</b></p>", escape(e)),
    }
    h += "<h2>Manifests and flists</h2><ul>";
    for (m, signed) in &served.manifests {
        h += &format!(
            "<li>{} {}</li>",
            escape(m),
            if *signed { "(signed)" } else { "<b>(no .sig: nodes refuse it)</b>" }
        );
    }
    for (f, size) in &served.flists {
        h += &format!("<li>{} ({size} bytes)</li>", escape(f));
    }
    h += &format!("<li>{} other files (chunks, kernels), {}</li></ul>", served.other.requests, mib(served.other.bytes));
    h += "<h2>Nodes</h2><table><tr><th>address</th><th>MAC</th><th>seen</th><th>fetched</th><th>stages (newest last)</th></tr>";
    for (ip, n) in nodes {
        let kinds: Vec<String> =
            n.by_kind.iter().map(|(k, c)| format!("{k}: {} in {}", mib(c.bytes), c.requests)).collect();
        let stages: Vec<String> = n
            .stages
            .iter()
            .rev()
            .take(12)
            .rev()
            .map(|s| format!("{}: {}", escape(&s.stage), escape(&s.detail)))
            .collect();
        let logs = match &n.node {
            Some(id) => format!("<br><a href=\"/logs/{0}\">log</a> · <a href=\"/metrics/{0}\">metrics</a>", escape(id)),
            None => String::new(),
        };
        h += &format!(
            "<tr><td>{}{logs}</td><td>{}</td><td>{} – {}</td><td>{}<br>{}</td><td>{}</td></tr>",
            escape(ip),
            escape(n.mac.as_deref().unwrap_or("?")),
            ago(n.first_seen),
            ago(n.last_seen),
            mib(n.total.bytes),
            escape(&kinds.join(", ")),
            stages.join("<br>")
        );
    }
    h + "</table></body></html>\n"
}
