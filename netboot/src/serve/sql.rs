//! The state database's two engines behind one small interface: SQLite (a file under the state
//! directory: one server) or PostgreSQL (`--db postgres://…`: several servers on one fleet).
//! The statements are written once, with `?N` placeholders and the SQL both understand
//! (`INSERT … ON CONFLICT … DO UPDATE`); values cross as [`Value`]s.
//!
//! PostgreSQL's client runs its own small runtime, so its calls run on a thread of their own
//! (the caller blocks on them, as SQLite's calls block it).

use std::sync::Mutex;

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// The integer, if it is one.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// The float (an integer too).
    pub fn real(&self) -> Option<f64> {
        match self {
            Value::Real(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    /// The text, if it is some.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }
    /// The bytes, if they are.
    pub fn blob(&self) -> Option<&[u8]> {
        match self {
            Value::Blob(b) => Some(b),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Real(f)
    }
}
impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Value {
        Value::Blob(b.to_vec())
    }
}

/// One row.
pub type Row = Vec<Value>;

/// What a transaction can do.
pub trait Tx {
    /// Runs a statement: the rows it changed.
    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<usize, String>;
    /// Runs a query: its rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, String>;
}

/// An open database.
pub enum Conn {
    /// SQLite, one connection.
    Sqlite(Mutex<rusqlite::Connection>),
    /// PostgreSQL, one connection (always there; an `Option` only so that it can be dropped
    /// off the runtime).
    Postgres(Mutex<Option<postgres::Client>>),
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Conn::Postgres(c) = self {
            // Its drop closes the connection with a runtime of its own.
            let client = flist::durable::lock(c).take();
            off_runtime(move || drop(client));
        }
    }
}

/// Runs `f` on a thread of its own: PostgreSQL's client drives its connection with a runtime of
/// its own, which cannot run on a thread of the server's runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

struct SqliteTx<'a>(rusqlite::Transaction<'a>);

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl Tx for SqliteTx<'_> {
    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<usize, String> {
        self.0.execute(sql, rusqlite::params_from_iter(params)).map_err(|e| e.to_string())
    }
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, String> {
        let mut q = self.0.prepare_cached(sql).map_err(|e| e.to_string())?;
        let width = q.column_count();
        let rows = q
            .query_map(rusqlite::params_from_iter(params), |r| {
                (0..width)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => Value::Null,
                            rusqlite::types::ValueRef::Integer(i) => Value::Int(i),
                            rusqlite::types::ValueRef::Real(f) => Value::Real(f),
                            rusqlite::types::ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                            rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                        })
                    })
                    .collect::<rusqlite::Result<Row>>()
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<rusqlite::Result<Vec<Row>>>().map_err(|e| e.to_string())
    }
}

struct PgTx<'a>(postgres::Transaction<'a>);

/// `?N` placeholders as PostgreSQL's `$N`.
fn pg_sql(sql: &str) -> String {
    sql.replace('?', "$")
}

fn pg_params(params: &[Value]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    params
        .iter()
        .map(|v| -> Box<dyn postgres::types::ToSql + Sync> {
            match v {
                Value::Null => Box::new(Option::<String>::None),
                Value::Int(i) => Box::new(*i),
                Value::Real(f) => Box::new(*f),
                Value::Text(t) => Box::new(t.clone()),
                Value::Blob(b) => Box::new(b.clone()),
            }
        })
        .collect()
}

impl Tx for PgTx<'_> {
    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<usize, String> {
        let boxed = pg_params(params);
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        let n = self.0.execute(pg_sql(sql).as_str(), &refs).map_err(|e| e.to_string())?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, String> {
        use postgres::types::Type;
        let boxed = pg_params(params);
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        let rows = self.0.query(pg_sql(sql).as_str(), &refs).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut row = Vec::with_capacity(r.len());
            for (i, c) in r.columns().iter().enumerate() {
                let ty = c.type_();
                let v = if *ty == Type::INT8 {
                    r.try_get::<_, Option<i64>>(i).map(|v| v.map_or(Value::Null, Value::Int))
                } else if *ty == Type::INT4 {
                    r.try_get::<_, Option<i32>>(i).map(|v| v.map_or(Value::Null, |v| Value::Int(v.into())))
                } else if *ty == Type::FLOAT8 {
                    r.try_get::<_, Option<f64>>(i).map(|v| v.map_or(Value::Null, Value::Real))
                } else if *ty == Type::BYTEA {
                    r.try_get::<_, Option<Vec<u8>>>(i).map(|v| v.map_or(Value::Null, Value::Blob))
                } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
                    r.try_get::<_, Option<String>>(i).map(|v| v.map_or(Value::Null, Value::Text))
                } else {
                    // A type no statement here reads (void, say).
                    Ok(Value::Null)
                };
                row.push(v.map_err(|e| e.to_string())?);
            }
            out.push(row);
        }
        Ok(out)
    }
}

impl Conn {
    /// Whether several servers may share it (PostgreSQL).
    pub fn shared(&self) -> bool {
        matches!(self, Conn::Postgres(_))
    }

    /// Runs `f` in one transaction (SQLite: `BEGIN IMMEDIATE`, so that a write is never refused
    /// half-way for a lock): committed if it returns `Ok`, rolled back otherwise.
    pub fn transaction<T: Send>(&self, f: impl FnOnce(&mut dyn Tx) -> Result<T, String> + Send) -> Result<T, String> {
        match self {
            Conn::Sqlite(c) => {
                let mut c = flist::durable::lock(c);
                let tx =
                    c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| e.to_string())?;
                let mut tx = SqliteTx(tx);
                let out = f(&mut tx)?;
                tx.0.commit().map_err(|e| e.to_string())?;
                Ok(out)
            }
            Conn::Postgres(c) => off_runtime(|| {
                let mut c = flist::durable::lock(c);
                let c = c.as_mut().ok_or("the connection is closed")?;
                let tx = c.transaction().map_err(|e| e.to_string())?;
                let mut tx = PgTx(tx);
                let out = f(&mut tx)?;
                tx.0.commit().map_err(|e| e.to_string())?;
                Ok(out)
            }),
        }
    }

    /// Opens PostgreSQL at `url` (`postgres://USER@HOST:PORT/DB`), without TLS: a database on
    /// the server's own network.
    pub fn postgres(url: &str) -> Result<Conn, String> {
        let client =
            off_runtime(|| postgres::Client::connect(url, postgres::NoTls)).map_err(|e| format!("{url}: {e}"))?;
        Ok(Conn::Postgres(Mutex::new(Some(client))))
    }
}
