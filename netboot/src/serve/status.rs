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
/// Stages kept of a node not (yet) accepted.
const STAGES_KEPT_PENDING: usize = 20;
/// Most pending nodes: past it, requests signed by keys never seen are refused unrecorded.
pub const MAX_PENDING: usize = 10_000;
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
    /// Whether the operator took it (signed nodes; a record from before enrollment: accepted).
    pub enrollment: Option<Standing>,
    /// Node ids it replaced (`netboot nodes replace`), oldest first.
    pub replaced: Vec<String>,
}

/// A signed node's enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Standing {
    /// Seen, not yet accepted: it boots and reports (bounded) but gets no manifest.
    Pending,
    /// Accepted: gets its manifest.
    Accepted,
    /// Refused: nothing it sends is taken.
    Rejected,
}

impl Standing {
    /// Lower case, as shown.
    pub fn name(self) -> &'static str {
        match self {
            Standing::Pending => "pending",
            Standing::Accepted => "accepted",
            Standing::Rejected => "rejected",
        }
    }
}

impl NodeRecord {
    /// Its enrollment as it stands under `profiles` (`allowed` and `open` accept a pending node).
    pub fn standing(&self, profiles: Option<&Profiles>) -> Standing {
        match self.enrollment {
            Some(Standing::Rejected) => Standing::Rejected,
            None | Some(Standing::Accepted) => Standing::Accepted,
            Some(Standing::Pending) => {
                let accepted = profiles.is_some_and(|p| {
                    p.enrollment == super::profiles::Enrollment::Open
                        || self.node.as_ref().is_some_and(|id| p.allowed.contains(id))
                });
                if accepted {
                    Standing::Accepted
                } else {
                    Standing::Pending
                }
            }
        }
    }
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
    /// When each node not accepted last wrote.
    pending_writes: std::collections::HashMap<String, std::time::Instant>,
    /// The change number of each record as last read or written.
    versions: BTreeMap<String, i64>,
    /// Counts not yet written, by record (added again to a record another server changed).
    deltas: BTreeMap<String, Delta>,
}

/// Counts a record gained since it was last written.
#[derive(Debug, Default)]
struct Delta {
    by_kind: BTreeMap<String, Count>,
    log_lines: u64,
}

impl Delta {
    fn add_to(&self, record: &mut NodeRecord) {
        for (kind, c) in &self.by_kind {
            for total in [&mut record.total, record.by_kind.entry(kind.clone()).or_default()] {
                total.requests = total.requests.saturating_add(c.requests);
                total.bytes = total.bytes.saturating_add(c.bytes);
            }
        }
        record.log_lines = record.log_lines.saturating_add(self.log_lines);
    }
}

/// How often a node not accepted may write.
pub const PENDING_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a signed request is not taken.
#[derive(Debug)]
pub enum Refused {
    /// A node not accepted wrote again within [`PENDING_EVERY`].
    TooOften,
    /// The state database failed, or too many nodes are pending: try later.
    Busy(String),
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
        nodes: BTreeMap<String, (NodeRecord, i64)>,
        addresses: BTreeMap<String, String>,
    ) -> Registry {
        let versions = nodes.iter().map(|(k, (_, v))| (k.clone(), *v)).collect();
        let nodes = nodes.into_iter().map(|(k, (r, _))| (k, r)).collect();
        Registry { nodes, signed_from: addresses, db: Some(db), versions, ..Default::default() }
    }

    /// Whether other servers write the same database.
    fn shared(&self) -> bool {
        self.db.as_ref().is_some_and(|db| db.shared())
    }

    /// Before a change to `key`'s record on a shared database: takes the stored record if another
    /// server wrote it since, with this server's counts not yet written added to it.
    fn sync(&mut self, key: &str) -> Result<(), String> {
        let Some(db) = self.db.as_ref().filter(|db| db.shared()) else { return Ok(()) };
        let Some((mut stored, changed)) = db.node(key)? else { return Ok(()) };
        if self.versions.get(key).is_some_and(|v| *v >= changed) {
            return Ok(());
        }
        if let Some(d) = self.deltas.get(key) {
            d.add_to(&mut stored);
        }
        if let Some(mine) = self.nodes.get(key) {
            stored.last_seen = stored.last_seen.max(mine.last_seen);
        }
        self.nodes.insert(key.to_string(), stored);
        self.versions.insert(key.to_string(), changed);
        Ok(())
    }

    /// On a shared database, once a second: the records other servers changed or removed.
    pub fn refresh(&mut self) -> Result<(), String> {
        let Some(db) = self.db.clone().filter(|db| db.shared()) else { return Ok(()) };
        let stored = db.node_versions()?;
        let gone: Vec<String> =
            self.versions.keys().filter(|k| !stored.contains_key(*k) && !self.dirty.contains(*k)).cloned().collect();
        for k in gone {
            self.nodes.remove(&k);
            self.versions.remove(&k);
            self.deltas.remove(&k);
        }
        for (key, changed) in stored {
            if self.versions.get(&key).is_none_or(|v| *v < changed) {
                self.sync(&key)?;
            }
        }
        Ok(())
    }

    /// The addresses other servers saw nodes sign from (a shared database).
    pub fn learn_addresses(&mut self, addresses: BTreeMap<String, String>) {
        for (ip, node) in addresses {
            if self.signed_from.len() < ADDRESSES_KEPT || self.signed_from.contains_key(&ip) {
                self.signed_from.insert(ip, node);
            }
        }
    }

    /// The node id that last signed from `ip`, else `ip`.
    pub fn key_of(&self, ip: &str) -> String {
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
        let record = self.nodes.get(key).map(|r| (key, r));
        let address = signed.and_then(|(ip, _)| Some((ip, self.signed_from.get(ip)?.as_str())));
        let written = db.save(record, address, signed.map(|(_, e)| e))?;
        self.dirty.remove(key);
        self.deltas.remove(key);
        self.versions.extend(written);
        Ok(())
    }

    /// Writes every record whose counts changed; the server calls it each second.
    pub fn flush(&mut self) -> Result<(), String> {
        let Some(db) = &self.db else { return Ok(()) };
        if self.dirty.is_empty() {
            return Ok(());
        }
        let db = db.clone();
        let dirty = std::mem::take(&mut self.dirty);
        for key in &dirty {
            self.sync(key)?;
        }
        let written = db.save(dirty.iter().filter_map(|k| Some((k.as_str(), self.nodes.get(k)?))), [], None);
        match written {
            Ok(written) => {
                for k in &dirty {
                    self.deltas.remove(k);
                }
                self.versions.extend(written);
                Ok(())
            }
            Err(e) => {
                self.dirty = dirty;
                Err(e)
            }
        }
    }

    /// A request from `ip` signed (and checked, not a replay) with `envelope`'s key: its node's
    /// standing under `profiles`. Kept, with its replay entry, before the answer, so a restarted
    /// server still refuses it again, except for a rejected node, whose requests write nothing.
    /// A node not accepted may write once per [`PENDING_EVERY`]; a key never seen is refused
    /// unrecorded once [`MAX_PENDING`] nodes are pending.
    pub fn signed_by(
        &mut self,
        ip: &str,
        envelope: &flint_manifest::signed::Envelope,
        profiles: Option<&Profiles>,
    ) -> Result<Standing, Refused> {
        let id = flint_manifest::signed::node_id(&envelope.key);
        self.sync(&id).map_err(Refused::Busy)?;
        let standing = match self.nodes.get(&id) {
            Some(record) => record.standing(profiles),
            None => {
                let fresh =
                    NodeRecord { node: Some(id.clone()), enrollment: Some(Standing::Pending), ..Default::default() };
                let standing = fresh.standing(profiles);
                if standing == Standing::Pending && self.pending() >= MAX_PENDING {
                    return Err(Refused::Busy(format!(
                        "{MAX_PENDING} nodes are pending already: accept or forget some"
                    )));
                }
                standing
            }
        };
        match standing {
            Standing::Rejected => return Ok(standing),
            Standing::Pending => {
                let now = std::time::Instant::now();
                if let Some(last) = self.pending_writes.get(&id) {
                    if now.duration_since(*last) < PENDING_EVERY {
                        return Err(Refused::TooOften);
                    }
                }
                if self.pending_writes.len() >= MAX_PENDING {
                    self.pending_writes.retain(|_, t| now.duration_since(*t) < PENDING_EVERY);
                }
                self.pending_writes.insert(id.clone(), now);
            }
            Standing::Accepted => {}
        }
        if self.signed_from.len() < ADDRESSES_KEPT || self.signed_from.contains_key(ip) {
            self.signed_from.insert(ip.to_string(), id.clone());
        }
        self.fold_unsigned(ip, &id)?;
        let node = self.record(&id, ip);
        node.node = Some(id.clone());
        node.public_key = Some(hex::encode(envelope.key));
        node.boot = Some(envelope.boot);
        node.enrollment = Some(standing);
        self.persist_signed(&id, Some((ip, envelope))).map_err(Refused::Busy)?;
        Ok(standing)
    }

    /// What `ip` fetched before it first signed (a PXE boot's scripts, kernel and initramfs)
    /// becomes node `id`'s: one node, not an address and a node.
    fn fold_unsigned(&mut self, ip: &str, id: &str) -> Result<(), Refused> {
        let Some(early) = self.nodes.get(ip).filter(|r| r.node.is_none()).cloned() else { return Ok(()) };
        if let Some(db) = &self.db {
            db.forget(ip).map_err(Refused::Busy)?;
        }
        self.nodes.remove(ip);
        self.versions.remove(ip);
        self.deltas.remove(ip);
        self.dirty.remove(ip);
        let node = self.record(id, ip);
        node.first_seen = if node.first_seen > 0.0 { node.first_seen.min(early.first_seen) } else { early.first_seen };
        node.mac = node.mac.take().or(early.mac);
        for (kind, c) in early.by_kind {
            let mine = node.by_kind.entry(kind).or_default();
            mine.requests = mine.requests.saturating_add(c.requests);
            mine.bytes = mine.bytes.saturating_add(c.bytes);
        }
        node.total.requests = node.total.requests.saturating_add(early.total.requests);
        node.total.bytes = node.total.bytes.saturating_add(early.total.bytes);
        let mut stages = early.stages;
        stages.append(&mut node.stages);
        node.stages = stages;
        Ok(())
    }

    /// Nodes pending now.
    fn pending(&self) -> usize {
        self.nodes.values().filter(|r| r.enrollment == Some(Standing::Pending)).count()
    }

    /// The operator's decision on node `id` (one ever seen signing).
    pub fn set_standing(&mut self, id: &str, standing: Standing) -> Result<(), String> {
        self.sync(id)?;
        let record = self.nodes.get_mut(id).filter(|r| r.node.is_some()).ok_or_else(|| format!("no node {id}"))?;
        record.enrollment = Some(standing);
        self.persist(id)
    }

    /// Forgets node `id`: its record and the addresses it signed from (its key may come back,
    /// as a new node).
    pub fn forget(&mut self, id: &str) -> Result<NodeRecord, String> {
        let record = self.nodes.get(id).filter(|r| r.node.is_some()).cloned().ok_or_else(|| format!("no node {id}"))?;
        if let Some(db) = &self.db {
            db.forget(id)?;
        }
        self.nodes.remove(id);
        self.versions.remove(id);
        self.deltas.remove(id);
        self.signed_from.retain(|_, n| n != id);
        self.dirty.remove(id);
        Ok(record)
    }

    /// Moves the history of node `old` to node `new` (its disk, and so its key, was replaced):
    /// `new` takes `old`'s stages, counts and standing, and remembers `old`'s id.
    pub fn replace(&mut self, old: &str, new: &str) -> Result<(), String> {
        if old == new {
            return Err("a node cannot replace itself".into());
        }
        let mut record =
            self.nodes.get(old).filter(|r| r.node.is_some()).cloned().ok_or_else(|| format!("no node {old}"))?;
        let fresh = self.nodes.get(new).cloned();
        if !super::logs::is_node_id(new) {
            return Err(format!("{new:?} is not a node id"));
        }
        record.replaced.push(old.to_string());
        record.node = Some(new.to_string());
        record.enrollment = Some(Standing::Accepted);
        if let Some(f) = fresh {
            // What the new key already said is kept after the old history.
            record.public_key = f.public_key;
            record.boot = f.boot;
            record.address = f.address.or(record.address);
            record.last_seen = f.last_seen.max(record.last_seen);
            record.stages.extend(f.stages);
            let over = record.stages.len().saturating_sub(STAGES_KEPT);
            record.stages.drain(..over);
        } else {
            record.public_key = None;
            record.boot = None;
        }
        if let Some(db) = &self.db {
            let changed = db.replace(old, new, &record)?;
            self.versions.insert(new.to_string(), changed);
        }
        self.versions.remove(old);
        self.nodes.remove(old);
        self.nodes.insert(new.to_string(), record);
        for n in self.signed_from.values_mut().filter(|n| n.as_str() == old) {
            *n = new.to_string();
        }
        self.dirty.remove(old);
        Ok(())
    }

    /// One node's record.
    pub fn node(&self, id: &str) -> Option<&NodeRecord> {
        self.nodes.get(id)
    }

    /// Log lines stored for node `id`.
    pub fn logged(&mut self, id: &str, lines: u64) {
        if let Some(node) = self.nodes.get_mut(id) {
            node.log_lines = node.log_lines.saturating_add(lines);
            if self.shared() {
                let d = self.deltas.entry(id.to_string()).or_default();
                d.log_lines = d.log_lines.saturating_add(lines);
            }
            self.dirty.insert(id.to_string());
        }
    }

    /// A request from `ip` refused: counted under the address, never under the node it claims.
    /// Written with the counts, a second later: a refusal acknowledges nothing, and a flood of
    /// them must not be a flood of writes.
    pub fn refused(&mut self, ip: &str, why: &str) {
        let key = format!("refused {ip}");
        if !self.nodes.contains_key(&key) && self.nodes.len() >= ADDRESSES_KEPT {
            return;
        }
        let node = self.record(&key, ip);
        node.refused = node.refused.saturating_add(1);
        node.last_refusal = Some(clip(why));
        self.dirty.insert(key);
    }

    /// Counts one answered request.
    pub fn request(&mut self, ip: &str, kind: &'static str, bytes: u64) {
        let key = self.key_of(ip);
        let node = self.record(&key, ip);
        for c in [&mut node.total, node.by_kind.entry(kind.to_string()).or_default()] {
            c.requests = c.requests.saturating_add(1);
            c.bytes = c.bytes.saturating_add(bytes);
        }
        if self.shared() {
            let d = self.deltas.entry(key.clone()).or_default().by_kind.entry(kind.to_string()).or_default();
            d.requests = d.requests.saturating_add(1);
            d.bytes = d.bytes.saturating_add(bytes);
        }
        self.dirty.insert(key);
    }

    /// Attaches a MAC address to the node at `ip`.
    pub fn saw_mac(&mut self, ip: &str, mac: &str) -> Result<(), String> {
        let key = self.key_of(ip);
        self.sync(&key)?;
        self.record(&key, ip).mac = Some(mac.to_string());
        self.persist(&key)
    }

    /// Records a report.
    pub fn report(&mut self, ip: &str, report: &Report) -> Result<(), String> {
        let key = self.key_of(ip);
        self.sync(&key)?;
        let node = self.record(&key, ip);
        if let Some(mac) = report.mac.as_deref().and_then(super::profiles::normalize_mac) {
            node.mac = Some(mac);
        }
        let kept =
            if node.enrollment.is_some_and(|e| e != Standing::Accepted) { STAGES_KEPT_PENDING } else { STAGES_KEPT };
        let over = (node.stages.len() + 1).saturating_sub(kept);
        node.stages.drain(..over.min(node.stages.len()));
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

/// `s` safe in HTML text and attribute values.
pub fn escape(s: &str) -> String {
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
