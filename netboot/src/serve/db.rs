//! What the server learns, kept in SQLite (`STATE/netboot.db`), so that a restart — even a
//! SIGKILL — forgets nothing it answered for: every node's record, which address signed as which
//! node, and the replay memory (the last accepted (boot, sequence) of each node and stream).
//!
//! Each acknowledged change is written (WAL, `synchronous=FULL`) before the answer goes out;
//! request counters, which acknowledge nothing, are written a second later in one transaction.
//! The schema is versioned (`PRAGMA user_version`) and migrated on start; a database made by a
//! newer server is refused, not guessed at.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use flint_manifest::signed::Envelope;
use rusqlite::{params, Connection};

use super::rollout::Rollout;
use super::status::NodeRecord;

/// The schema, one step per version: a database at version N has run the first N steps.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE nodes (key TEXT PRIMARY KEY, record TEXT NOT NULL);
     CREATE TABLE addresses (ip TEXT PRIMARY KEY, node TEXT NOT NULL);
     CREATE TABLE replays (node BLOB NOT NULL, stream TEXT NOT NULL, boot INTEGER NOT NULL,
                           seq INTEGER NOT NULL, PRIMARY KEY (node, stream));",
    "CREATE TABLE rollouts (id INTEGER PRIMARY KEY, rev INTEGER NOT NULL, doc TEXT NOT NULL);
     CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, who TEXT NOT NULL,
                         action TEXT NOT NULL, detail TEXT NOT NULL);",
];

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

/// The database's file name in the state directory.
pub const FILE: &str = "netboot.db";

/// One replay-memory entry: node key, stream, boot, sequence.
pub type ReplayRow = ([u8; 32], String, u64, u64);

/// Everything kept, as read at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Node records by key (node id, or an address for unsigned nodes).
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Address → node id.
    pub addresses: BTreeMap<String, String>,
    /// The replay memory.
    pub replays: Vec<ReplayRow>,
    /// Every rollout, oldest first.
    pub rollouts: Vec<Rollout>,
}

/// The open database.
pub struct Db {
    conn: Mutex<Connection>,
    /// How long write transactions took (`/metrics`).
    writes: Mutex<super::metrics::Histogram>,
}

fn sql(what: &str) -> impl Fn(rusqlite::Error) -> String + '_ {
    move |e| format!("the state database: {what}: {e}")
}

// SQLite integers are i64: u64 values are stored as their bit pattern, so every value comes back.
fn to_sql(v: u64) -> i64 {
    v as i64
}
fn from_sql(v: i64) -> u64 {
    v as u64
}

impl Db {
    /// Opens (or makes) the database in `state`, migrated to this server's schema.
    pub fn open(state: &Path) -> Result<Db, String> {
        std::fs::create_dir_all(state).map_err(|e| format!("{}: {e}", state.display()))?;
        let path = state.join(FILE);
        let mut conn = Connection::open(&path).map_err(sql("opening"))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sql("WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(sql("synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql("busy timeout"))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sql("version"))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(format!(
                "the state database {} is at schema version {version}, made by a newer netboot (this one knows {known})",
                path.display()
            ));
        }
        for (step, migration) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
            let tx = conn.transaction().map_err(sql("migrating"))?;
            tx.execute_batch(migration).map_err(sql("migrating"))?;
            tx.pragma_update(None, "user_version", step as i64 + 1).map_err(sql("migrating"))?;
            tx.commit().map_err(sql("migrating"))?;
            tracing::info!("state database {}: schema version {}", path.display(), step + 1);
        }
        Ok(Db { conn: Mutex::new(conn), writes: Mutex::default() })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        flist::durable::lock(&self.conn)
    }

    /// Everything kept. A record that does not parse (hand-edited, say) is skipped and named.
    pub fn load(&self) -> Result<Loaded, String> {
        let conn = self.conn();
        let mut out = Loaded::default();
        let mut nodes = conn.prepare("SELECT key, record FROM nodes").map_err(sql("reading nodes"))?;
        let rows = nodes
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql("reading nodes"))?;
        for row in rows {
            let (key, record) = row.map_err(sql("reading nodes"))?;
            match serde_json::from_str(&record) {
                Ok(r) => {
                    out.nodes.insert(key, r);
                }
                Err(e) => tracing::warn!("state database: node {key:?}: {e}; skipped"),
            }
        }
        let mut addresses = conn.prepare("SELECT ip, node FROM addresses").map_err(sql("reading addresses"))?;
        let rows = addresses.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(sql("reading addresses"))?;
        for row in rows {
            let (ip, node) = row.map_err(sql("reading addresses"))?;
            out.addresses.insert(ip, node);
        }
        let mut replays =
            conn.prepare("SELECT node, stream, boot, seq FROM replays").map_err(sql("reading replays"))?;
        let rows = replays
            .query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
            })
            .map_err(sql("reading replays"))?;
        for row in rows {
            let (key, stream, boot, seq) = row.map_err(sql("reading replays"))?;
            if let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) {
                out.replays.push((key, stream, from_sql(boot), from_sql(seq)));
            }
        }
        let mut rollouts = conn.prepare("SELECT id, doc FROM rollouts ORDER BY id").map_err(sql("reading rollouts"))?;
        let rows = rollouts
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql("reading rollouts"))?;
        for row in rows {
            let (id, doc) = row.map_err(sql("reading rollouts"))?;
            match serde_json::from_str(&doc) {
                Ok(r) => out.rollouts.push(r),
                Err(e) => tracing::warn!("state database: rollout {id}: {e}; skipped"),
            }
        }
        Ok(out)
    }

    /// Forgets node `id`: its record, its addresses and its replay memory.
    pub fn forget(&self, id: &str) -> Result<(), String> {
        let key =
            self.conn().query_row("SELECT record FROM nodes WHERE key = ?1", [id], |r| r.get::<_, String>(0)).ok();
        let public: Option<Vec<u8>> =
            key.and_then(|k| serde_json::from_str::<NodeRecord>(&k).ok()).and_then(|r| hex::decode(r.public_key?).ok());
        self.timed(|conn| {
            let tx = conn.transaction().map_err(sql("forgetting a node"))?;
            tx.execute("DELETE FROM nodes WHERE key = ?1", [id]).map_err(sql("forgetting a node"))?;
            tx.execute("DELETE FROM addresses WHERE node = ?1", [id]).map_err(sql("forgetting a node"))?;
            if let Some(public) = &public {
                tx.execute("DELETE FROM replays WHERE node = ?1", [public]).map_err(sql("forgetting a node"))?;
            }
            tx.commit().map_err(sql("forgetting a node"))
        })
    }

    /// Node `old`'s history moves to `new` (written as `record`), in one transaction.
    pub fn replace(&self, old: &str, new: &str, record: &NodeRecord) -> Result<(), String> {
        let text = serde_json::to_string(record).map_err(|e| format!("the state database: a node record: {e}"))?;
        self.timed(|conn| {
            let tx = conn.transaction().map_err(sql("replacing a node"))?;
            tx.execute("DELETE FROM nodes WHERE key = ?1", [old]).map_err(sql("replacing a node"))?;
            tx.execute("INSERT OR REPLACE INTO nodes (key, record) VALUES (?1, ?2)", params![new, text])
                .map_err(sql("replacing a node"))?;
            tx.execute("UPDATE addresses SET node = ?1 WHERE node = ?2", params![new, old])
                .map_err(sql("replacing a node"))?;
            tx.commit().map_err(sql("replacing a node"))
        })
    }

    /// Writes a new rollout (its `rev` is 0); fails if its number is taken (another server
    /// made one first).
    pub fn insert_rollout(&self, rollout: &Rollout, audit: &AuditEntry) -> Result<(), String> {
        let doc = serde_json::to_string(rollout).map_err(|e| format!("the state database: a rollout: {e}"))?;
        self.timed(|conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql("writing a rollout"))?;
            tx.execute(
                "INSERT INTO rollouts (id, rev, doc) VALUES (?1, ?2, ?3)",
                params![to_sql(rollout.id), to_sql(rollout.rev), doc],
            )
            .map_err(sql("writing a rollout"))?;
            insert_audit(&tx, audit)?;
            tx.commit().map_err(sql("writing a rollout"))
        })
    }

    /// Writes `rollout` over revision `rollout.rev - 1`: `Ok(false)` when the stored revision
    /// is another (someone else changed it first: read it again).
    pub fn update_rollout(&self, rollout: &Rollout, audit: Option<&AuditEntry>) -> Result<bool, String> {
        let doc = serde_json::to_string(rollout).map_err(|e| format!("the state database: a rollout: {e}"))?;
        self.timed(|conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql("writing a rollout"))?;
            let changed = tx
                .execute(
                    "UPDATE rollouts SET rev = ?1, doc = ?2 WHERE id = ?3 AND rev = ?4",
                    params![to_sql(rollout.rev), doc, to_sql(rollout.id), to_sql(rollout.rev.wrapping_sub(1))],
                )
                .map_err(sql("writing a rollout"))?;
            if changed == 1 {
                if let Some(a) = audit {
                    insert_audit(&tx, a)?;
                }
            }
            tx.commit().map_err(sql("writing a rollout"))?;
            Ok(changed == 1)
        })
    }

    /// The rollout `id` as stored.
    pub fn rollout(&self, id: u64) -> Result<Option<Rollout>, String> {
        let doc: Option<String> = self
            .conn()
            .query_row("SELECT doc FROM rollouts WHERE id = ?1", [to_sql(id)], |r| r.get(0))
            .map(Some)
            .or_else(|e| if matches!(e, rusqlite::Error::QueryReturnedNoRows) { Ok(None) } else { Err(e) })
            .map_err(sql("reading a rollout"))?;
        doc.map(|d| serde_json::from_str(&d).map_err(|e| format!("the state database: rollout {id}: {e}"))).transpose()
    }

    /// Appends to the audit log.
    pub fn audit(&self, entry: &AuditEntry) -> Result<(), String> {
        self.timed(|conn| insert_audit(conn, entry))
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, String> {
        let conn = self.conn();
        let mut q = conn
            .prepare("SELECT at, who, action, detail FROM audit ORDER BY id DESC LIMIT ?1")
            .map_err(sql("reading the audit log"))?;
        let rows = q
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok(AuditEntry { at: r.get(0)?, who: r.get(1)?, action: r.get(2)?, detail: r.get(3)? })
            })
            .map_err(sql("reading the audit log"))?;
        rows.collect::<Result<_, _>>().map_err(sql("reading the audit log"))
    }

    /// Runs a write under the connection, timed for `/metrics`.
    fn timed<T>(&self, write: impl FnOnce(&mut Connection) -> Result<T, String>) -> Result<T, String> {
        let started = std::time::Instant::now();
        let done = write(&mut self.conn());
        flist::durable::lock(&self.writes).observe(started.elapsed());
        done
    }

    /// Writes node records, address mappings and the request just accepted (its replay entry) in
    /// one transaction: one flush per acknowledged change.
    pub fn save<'a>(
        &self,
        nodes: impl IntoIterator<Item = (&'a str, &'a NodeRecord)>,
        addresses: impl IntoIterator<Item = (&'a str, &'a str)>,
        accepted: Option<&Envelope>,
    ) -> Result<(), String> {
        self.timed(|conn| write(conn, nodes, addresses, accepted))
    }

    /// How long write transactions took, since the server started.
    pub fn write_latency(&self) -> super::metrics::Histogram {
        flist::durable::lock(&self.writes).clone()
    }
}

fn write<'a>(
    conn: &mut Connection,
    nodes: impl IntoIterator<Item = (&'a str, &'a NodeRecord)>,
    addresses: impl IntoIterator<Item = (&'a str, &'a str)>,
    accepted: Option<&Envelope>,
) -> Result<(), String> {
    let tx = conn.transaction().map_err(sql("writing nodes"))?;
    for (key, record) in nodes {
        let text = serde_json::to_string(record).map_err(|e| format!("the state database: a node record: {e}"))?;
        tx.execute("INSERT OR REPLACE INTO nodes (key, record) VALUES (?1, ?2)", params![key, text])
            .map_err(sql("writing a node"))?;
    }
    for (ip, node) in addresses {
        tx.execute("INSERT OR REPLACE INTO addresses (ip, node) VALUES (?1, ?2)", params![ip, node])
            .map_err(sql("writing an address"))?;
    }
    if let Some(e) = accepted {
        tx.execute(
            "INSERT OR REPLACE INTO replays (node, stream, boot, seq) VALUES (?1, ?2, ?3, ?4)",
            params![e.key.as_slice(), e.stream, to_sql(e.boot), to_sql(e.seq)],
        )
        .map_err(sql("writing the replay memory"))?;
    }
    tx.commit().map_err(sql("writing nodes"))
}

fn insert_audit(conn: &Connection, entry: &AuditEntry) -> Result<(), String> {
    conn.execute(
        "INSERT INTO audit (at, who, action, detail) VALUES (?1, ?2, ?3, ?4)",
        params![entry.at, entry.who, entry.action, entry.detail],
    )
    .map_err(sql("writing the audit log"))?;
    conn.execute("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?1", [AUDIT_KEPT])
        .map_err(sql("trimming the audit log"))?;
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
        let version: i64 = db.conn().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let record = NodeRecord { node: Some("abc".into()), boot: Some(u64::MAX), ..NodeRecord::default() };
        let accepted = |boot, seq| Envelope { key: [9; 32], boot, stream: "logs".into(), seq, time: 0 };
        db.save([("abc", &record)], [("10.0.0.1", "abc")], Some(&accepted(u64::MAX, 7))).unwrap();
        db.save([], [], Some(&accepted(3, 8))).unwrap();
        drop(db);
        let again = Db::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(again.nodes["abc"].boot, Some(u64::MAX));
        assert_eq!(again.addresses["10.0.0.1"], "abc");
        assert_eq!(again.replays, vec![([9; 32], "logs".to_string(), 3, 8)]);
        let conn = Connection::open(dir.path().join(FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(Db::open(dir.path()).err().unwrap().contains("made by a newer netboot"));
    }
}
