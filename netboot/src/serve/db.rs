//! What the server learns, kept in a database, so that a restart — even a SIGKILL — forgets
//! nothing it answered for: every node's record, which address signed as which node, the replay
//! memory (the last accepted (boot, sequence) of each node and stream), the rollouts and the
//! audit log. SQLite (`STATE/netboot.db`) by default; PostgreSQL with `--db postgres://…`, where
//! several servers share one fleet ([`super::sql`]).
//!
//! Each acknowledged change is written (SQLite: WAL, `synchronous=FULL`) before the answer goes
//! out; request counters, which acknowledge nothing, are written a second later in one
//! transaction. Every node record written gets a new change number, so that servers sharing the
//! database pick up each other's changes ([`Db::node_versions`]). The schema is versioned and
//! migrated on start; a database made by a newer server is refused, not guessed at.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use flint_manifest::signed::Envelope;

use super::rollout::Rollout;
use super::sql::{Conn, Tx, Value};
use super::status::NodeRecord;

/// SQLite's schema, one step per version (`PRAGMA user_version`): a database at version N has
/// run the first N steps.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE nodes (key TEXT PRIMARY KEY, record TEXT NOT NULL);
     CREATE TABLE addresses (ip TEXT PRIMARY KEY, node TEXT NOT NULL);
     CREATE TABLE replays (node BLOB NOT NULL, stream TEXT NOT NULL, boot INTEGER NOT NULL,
                           seq INTEGER NOT NULL, PRIMARY KEY (node, stream));",
    "CREATE TABLE rollouts (id INTEGER PRIMARY KEY, rev INTEGER NOT NULL, doc TEXT NOT NULL);
     CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, who TEXT NOT NULL,
                         action TEXT NOT NULL, detail TEXT NOT NULL);",
    "ALTER TABLE nodes ADD COLUMN changed INTEGER NOT NULL DEFAULT 0;",
];

/// PostgreSQL's schema, one step per version (the `netboot_schema` table).
const PG_MIGRATIONS: &[&str] =
    &["CREATE TABLE nodes (key TEXT PRIMARY KEY, record TEXT NOT NULL, changed BIGINT NOT NULL);
     CREATE TABLE addresses (ip TEXT PRIMARY KEY, node TEXT NOT NULL);
     CREATE TABLE replays (node BYTEA NOT NULL, stream TEXT NOT NULL, boot BIGINT NOT NULL,
                           seq BIGINT NOT NULL, PRIMARY KEY (node, stream));
     CREATE TABLE rollouts (id BIGINT PRIMARY KEY, rev BIGINT NOT NULL, doc TEXT NOT NULL);
     CREATE TABLE audit (id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, who TEXT NOT NULL,
                         action TEXT NOT NULL, detail TEXT NOT NULL);
     CREATE SEQUENCE netboot_changes;"];

/// The database's file name in the state directory.
pub const FILE: &str = "netboot.db";

/// Audit entries kept: the oldest go past this many.
const AUDIT_KEPT: i64 = 100_000;

/// One entry of the audit log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditEntry {
    /// Seconds since the epoch.
    pub at: f64,
    /// Who: the admin token's holder and address, or `server` for what it did by itself.
    pub who: String,
    /// What: `accept`, `rollout start`, `rollout pause`, …
    pub action: String,
    /// On what, and the outcome.
    pub detail: String,
}

/// One replay-memory entry: node key, stream, boot, sequence.
pub type ReplayRow = ([u8; 32], String, u64, u64);

/// What servers on one database pick up from each other: addresses, replay memory, rollouts.
pub type Shared = (BTreeMap<String, String>, Vec<ReplayRow>, Vec<Rollout>);

/// Everything kept, as read at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Node records by key (node id, or an address for unsigned nodes), with their change numbers.
    pub nodes: BTreeMap<String, (NodeRecord, i64)>,
    /// Address → node id.
    pub addresses: BTreeMap<String, String>,
    /// The replay memory.
    pub replays: Vec<ReplayRow>,
    /// Every rollout, oldest first.
    pub rollouts: Vec<Rollout>,
}

/// The open database.
pub struct Db {
    conn: Conn,
    /// How long write transactions took (`/metrics`).
    writes: Mutex<super::metrics::Histogram>,
}

fn sql(what: &str) -> impl Fn(String) -> String + '_ {
    move |e| format!("the state database: {what}: {e}")
}

// SQL integers are i64: u64 values are stored as their bit pattern, so every value comes back.
fn to_sql(v: u64) -> Value {
    Value::Int(v as i64)
}
fn from_sql(v: &Value) -> u64 {
    v.int().unwrap_or(0) as u64
}

fn record_of(key: &str, text: Option<&str>) -> Option<NodeRecord> {
    match serde_json::from_str(text.unwrap_or_default()) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!("state database: node {key:?}: {e}; skipped");
            None
        }
    }
}

impl Db {
    /// Opens (or makes) the SQLite database in `state`, migrated to this server's schema.
    pub fn open(state: &Path) -> Result<Db, String> {
        std::fs::create_dir_all(state).map_err(|e| format!("{}: {e}", state.display()))?;
        let path = state.join(FILE);
        let e = |what: &'static str| move |e: rusqlite::Error| format!("the state database: {what}: {e}");
        let mut conn = rusqlite::Connection::open(&path).map_err(e("opening"))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(e("WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(e("synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(e("busy timeout"))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(e("version"))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(format!(
                "the state database {} is at schema version {version}, made by a newer netboot (this one knows {known})",
                path.display()
            ));
        }
        for (step, migration) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
            let tx = conn.transaction().map_err(e("migrating"))?;
            tx.execute_batch(migration).map_err(e("migrating"))?;
            tx.pragma_update(None, "user_version", step as i64 + 1).map_err(e("migrating"))?;
            tx.commit().map_err(e("migrating"))?;
            tracing::info!("state database {}: schema version {}", path.display(), step + 1);
        }
        Ok(Db { conn: Conn::Sqlite(Mutex::new(conn)), writes: Mutex::default() })
    }

    /// Connects to PostgreSQL at `url` and migrates it; servers starting at once migrate it once.
    pub fn open_postgres(url: &str) -> Result<Db, String> {
        let conn = Conn::postgres(url).map_err(sql("connecting"))?;
        conn.transaction(|tx| {
            // One server at a time past this point, until the migration is committed.
            tx.exec("SELECT pg_advisory_xact_lock(?1)", &[Value::Int(0x0066_6c69_6e74)])?;
            tx.exec("CREATE TABLE IF NOT EXISTS netboot_schema (version BIGINT NOT NULL)", &[])?;
            let version = tx
                .query("SELECT version FROM netboot_schema", &[])?
                .first()
                .and_then(|r| r.first()?.int())
                .unwrap_or(0);
            let known = PG_MIGRATIONS.len() as i64;
            if version > known {
                return Err(format!("schema version {version}, made by a newer netboot (this one knows {known})"));
            }
            for migration in PG_MIGRATIONS.iter().skip(usize::try_from(version).unwrap_or(0)) {
                for statement in migration.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    tx.exec(statement, &[])?;
                }
            }
            tx.exec("DELETE FROM netboot_schema", &[])?;
            tx.exec("INSERT INTO netboot_schema (version) VALUES (?1)", &[Value::Int(known)])?;
            Ok(())
        })
        .map_err(sql("migrating"))?;
        Ok(Db { conn, writes: Mutex::default() })
    }

    /// Whether other servers may write it too.
    pub fn shared(&self) -> bool {
        self.conn.shared()
    }

    /// A transaction, timed for `/metrics`.
    fn timed<T: Send>(&self, what: &str, f: impl FnOnce(&mut dyn Tx) -> Result<T, String> + Send) -> Result<T, String> {
        let started = std::time::Instant::now();
        let done = self.conn.transaction(f).map_err(sql(what));
        flist::durable::lock(&self.writes).observe(started.elapsed());
        done
    }

    /// A read, untimed.
    fn read<T: Send>(&self, what: &str, f: impl FnOnce(&mut dyn Tx) -> Result<T, String> + Send) -> Result<T, String> {
        self.conn.transaction(f).map_err(sql(what))
    }

    /// Everything kept. A record that does not parse (hand-edited, say) is skipped and named.
    pub fn load(&self) -> Result<Loaded, String> {
        self.read("reading", |tx| {
            let mut out = Loaded::default();
            for r in tx.query("SELECT key, record, changed FROM nodes", &[])? {
                let key = r.first().and_then(Value::text).unwrap_or_default().to_string();
                if let Some(record) = record_of(&key, r.get(1).and_then(Value::text)) {
                    out.nodes.insert(key, (record, r.get(2).and_then(Value::int).unwrap_or(0)));
                }
            }
            out.addresses = addresses(tx)?;
            out.replays = replays(tx)?;
            out.rollouts = rollouts(tx)?;
            Ok(out)
        })
    }

    /// Every node's change number.
    pub fn node_versions(&self) -> Result<BTreeMap<String, i64>, String> {
        self.read("reading nodes", |tx| {
            Ok(tx
                .query("SELECT key, changed FROM nodes", &[])?
                .into_iter()
                .map(|r| {
                    (
                        r.first().and_then(Value::text).unwrap_or_default().to_string(),
                        r.get(1).and_then(Value::int).unwrap_or(0),
                    )
                })
                .collect())
        })
    }

    /// One node's record and change number, as stored.
    pub fn node(&self, key: &str) -> Result<Option<(NodeRecord, i64)>, String> {
        self.read("reading a node", |tx| {
            let rows = tx.query("SELECT record, changed FROM nodes WHERE key = ?1", &[key.into()])?;
            Ok(rows.first().and_then(|r| {
                Some((record_of(key, r.first().and_then(Value::text))?, r.get(1).and_then(Value::int).unwrap_or(0)))
            }))
        })
    }

    /// The addresses, replay memory and rollouts as stored (what other servers wrote too).
    pub fn shared_state(&self) -> Result<Shared, String> {
        self.read("reading", |tx| Ok((addresses(tx)?, replays(tx)?, rollouts(tx)?)))
    }

    /// Forgets node `id`: its record, its addresses and its replay memory.
    pub fn forget(&self, id: &str) -> Result<(), String> {
        self.timed("forgetting a node", |tx| {
            let rows = tx.query("SELECT record FROM nodes WHERE key = ?1", &[id.into()])?;
            let public = rows
                .first()
                .and_then(|r| record_of(id, r.first().and_then(Value::text)))
                .and_then(|r| hex::decode(r.public_key?).ok());
            tx.exec("DELETE FROM nodes WHERE key = ?1", &[id.into()])?;
            tx.exec("DELETE FROM addresses WHERE node = ?1", &[id.into()])?;
            if let Some(public) = public {
                tx.exec("DELETE FROM replays WHERE node = ?1", &[Value::Blob(public)])?;
            }
            Ok(())
        })
    }

    /// Node `old`'s history moves to `new` (written as `record`), in one transaction: `new`'s
    /// change number.
    pub fn replace(&self, old: &str, new: &str, record: &NodeRecord) -> Result<i64, String> {
        self.timed("replacing a node", |tx| {
            tx.exec("DELETE FROM nodes WHERE key = ?1", &[old.into()])?;
            let changed = put_node(tx, self.shared(), new, record)?;
            tx.exec("UPDATE addresses SET node = ?1 WHERE node = ?2", &[new.into(), old.into()])?;
            Ok(changed)
        })
    }

    /// Writes a new rollout (its `rev` is 0); fails if its number is taken (another server
    /// made one first).
    pub fn insert_rollout(&self, rollout: &Rollout, audit: &AuditEntry) -> Result<(), String> {
        let doc = serde_json::to_string(rollout).map_err(|e| format!("the state database: a rollout: {e}"))?;
        self.timed("writing a rollout", |tx| {
            tx.exec(
                "INSERT INTO rollouts (id, rev, doc) VALUES (?1, ?2, ?3)",
                &[to_sql(rollout.id), to_sql(rollout.rev), doc.into()],
            )?;
            insert_audit(tx, audit)
        })
    }

    /// Writes `rollout` over revision `rollout.rev - 1`: `Ok(false)` when the stored revision
    /// is another (someone else changed it first: read it again).
    pub fn update_rollout(&self, rollout: &Rollout, audit: Option<&AuditEntry>) -> Result<bool, String> {
        let doc = serde_json::to_string(rollout).map_err(|e| format!("the state database: a rollout: {e}"))?;
        self.timed("writing a rollout", |tx| {
            let changed = tx.exec(
                "UPDATE rollouts SET rev = ?1, doc = ?2 WHERE id = ?3 AND rev = ?4",
                &[to_sql(rollout.rev), doc.into(), to_sql(rollout.id), to_sql(rollout.rev.wrapping_sub(1))],
            )?;
            if changed == 1 {
                if let Some(a) = audit {
                    insert_audit(tx, a)?;
                }
            }
            Ok(changed == 1)
        })
    }

    /// The rollout `id` as stored.
    pub fn rollout(&self, id: u64) -> Result<Option<Rollout>, String> {
        self.read("reading a rollout", |tx| {
            let rows = tx.query("SELECT doc FROM rollouts WHERE id = ?1", &[to_sql(id)])?;
            rows.first()
                .map(|r| {
                    serde_json::from_str(r.first().and_then(Value::text).unwrap_or_default())
                        .map_err(|e| format!("rollout {id}: {e}"))
                })
                .transpose()
        })
    }

    /// Appends to the audit log.
    pub fn audit(&self, entry: &AuditEntry) -> Result<(), String> {
        self.timed("writing the audit log", |tx| insert_audit(tx, entry))
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, String> {
        self.read("reading the audit log", |tx| {
            let rows = tx.query(
                "SELECT at, who, action, detail FROM audit ORDER BY id DESC LIMIT ?1",
                &[Value::Int(i64::try_from(limit).unwrap_or(i64::MAX))],
            )?;
            Ok(rows
                .into_iter()
                .map(|r| {
                    let text = |i: usize| r.get(i).and_then(Value::text).unwrap_or_default().to_string();
                    AuditEntry {
                        at: r.first().and_then(Value::real).unwrap_or(0.0),
                        who: text(1),
                        action: text(2),
                        detail: text(3),
                    }
                })
                .collect())
        })
    }

    /// Writes node records, address mappings and the request just accepted (its replay entry) in
    /// one transaction (one flush per acknowledged change): each record's new change number.
    pub fn save<'a>(
        &self,
        nodes: impl IntoIterator<Item = (&'a str, &'a NodeRecord)>,
        addresses: impl IntoIterator<Item = (&'a str, &'a str)>,
        accepted: Option<&Envelope>,
    ) -> Result<Vec<(String, i64)>, String> {
        let shared = self.shared();
        let (nodes, addresses): (Vec<_>, Vec<_>) = (nodes.into_iter().collect(), addresses.into_iter().collect());
        self.timed("writing nodes", |tx| {
            let mut changed = Vec::new();
            for (key, record) in nodes {
                changed.push((key.to_string(), put_node(tx, shared, key, record)?));
            }
            for (ip, node) in addresses {
                tx.exec(
                    "INSERT INTO addresses (ip, node) VALUES (?1, ?2) ON CONFLICT (ip) DO UPDATE SET node = excluded.node",
                    &[ip.into(), node.into()],
                )?;
            }
            if let Some(e) = accepted {
                tx.exec(
                    "INSERT INTO replays (node, stream, boot, seq) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (node, stream) DO UPDATE SET boot = excluded.boot, seq = excluded.seq",
                    &[Value::Blob(e.key.to_vec()), e.stream.as_str().into(), to_sql(e.boot), to_sql(e.seq)],
                )?;
            }
            Ok(changed)
        })
    }

    /// How long write transactions took, since the server started.
    pub fn write_latency(&self) -> super::metrics::Histogram {
        flist::durable::lock(&self.writes).clone()
    }
}

/// Writes one node record with a new change number (PostgreSQL: from a sequence all servers
/// share; SQLite: one above the highest).
fn put_node(tx: &mut dyn Tx, shared: bool, key: &str, record: &NodeRecord) -> Result<i64, String> {
    let text = serde_json::to_string(record).map_err(|e| format!("a node record: {e}"))?;
    let next =
        if shared { "SELECT nextval('netboot_changes')" } else { "SELECT COALESCE(MAX(changed), 0) + 1 FROM nodes" };
    let changed = tx.query(next, &[])?.first().and_then(|r| r.first()?.int()).unwrap_or(1);
    tx.exec(
        "INSERT INTO nodes (key, record, changed) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET record = excluded.record, changed = excluded.changed",
        &[key.into(), text.into(), Value::Int(changed)],
    )?;
    Ok(changed)
}

fn addresses(tx: &mut dyn Tx) -> Result<BTreeMap<String, String>, String> {
    Ok(tx
        .query("SELECT ip, node FROM addresses", &[])?
        .into_iter()
        .filter_map(|r| Some((r.first()?.text()?.to_string(), r.get(1)?.text()?.to_string())))
        .collect())
}

fn replays(tx: &mut dyn Tx) -> Result<Vec<ReplayRow>, String> {
    Ok(tx
        .query("SELECT node, stream, boot, seq FROM replays", &[])?
        .into_iter()
        .filter_map(|r| {
            let key = <[u8; 32]>::try_from(r.first()?.blob()?).ok()?;
            Some((key, r.get(1)?.text()?.to_string(), from_sql(r.get(2)?), from_sql(r.get(3)?)))
        })
        .collect())
}

fn rollouts(tx: &mut dyn Tx) -> Result<Vec<Rollout>, String> {
    let mut out = Vec::new();
    for r in tx.query("SELECT id, doc FROM rollouts ORDER BY id", &[])? {
        match serde_json::from_str(r.get(1).and_then(Value::text).unwrap_or_default()) {
            Ok(rollout) => out.push(rollout),
            Err(e) => tracing::warn!("state database: rollout {:?}: {e}; skipped", r.first()),
        }
    }
    Ok(out)
}

fn insert_audit(tx: &mut dyn Tx, entry: &AuditEntry) -> Result<(), String> {
    tx.exec(
        "INSERT INTO audit (at, who, action, detail) VALUES (?1, ?2, ?3, ?4)",
        &[entry.at.into(), entry.who.as_str().into(), entry.action.as_str().into(), entry.detail.as_str().into()],
    )?;
    tx.exec("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?1", &[Value::Int(AUDIT_KEPT)])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn what_is_written_is_read_back_by_the_next_server_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let record = NodeRecord { node: Some("abc".into()), boot: Some(u64::MAX), ..NodeRecord::default() };
        let accepted = |boot, seq| Envelope { key: [9; 32], boot, stream: "logs".into(), seq, time: 0 };
        let first = db.save([("abc", &record)], [("10.0.0.1", "abc")], Some(&accepted(u64::MAX, 7))).unwrap();
        let second = db.save([("abc", &record)], [], Some(&accepted(3, 8))).unwrap();
        assert!(second[0].1 > first[0].1, "every write gets a new change number");
        drop(db);
        let again = Db::open(dir.path()).unwrap();
        assert_eq!(again.node_versions().unwrap()["abc"], second[0].1);
        let again = again.load().unwrap();
        assert_eq!(again.nodes["abc"].0.boot, Some(u64::MAX));
        assert_eq!(again.addresses["10.0.0.1"], "abc");
        assert_eq!(again.replays, vec![([9; 32], "logs".to_string(), 3, 8)]);
        let conn = rusqlite::Connection::open(dir.path().join(FILE)).unwrap();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(Db::open(dir.path()).err().unwrap().contains("made by a newer netboot"));
    }
}
