//! A reader of SQLite 3 database files, only as far as an rfs `.fl` needs: the schema, and each
//! table's rows in rowid order, their records decoded.
//!
//! Why not SQLite itself: PID 1 reads `.fl` files, and SQLite was 614 KB of its code (issue 16's
//! size bound), running a query engine over a file that may be hostile. This reads the file
//! format (<https://www.sqlite.org/fileformat2.html>) directly: it walks table b-trees, follows
//! overflow chains and decodes records, with no SQL but the column list of a `CREATE TABLE`.
//! Each page is read at most once (a page reached twice is an error), so the work is bounded by
//! the file's length, and every offset is checked against the page it is on.
//!
//! Not read: `WITHOUT ROWID` tables, UTF-16 databases, generated columns (all refused with an
//! error that says so); a column added by `ALTER TABLE` to rows written before reads as NULL, not
//! its `DEFAULT`. Indexes are never needed (rows are sorted by the caller).

use std::fmt;

/// Why a file is not a database this reader can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SqliteError(String);

fn bad(why: impl Into<String>) -> SqliteError {
    SqliteError(why.into())
}

/// The first bytes of every SQLite file.
pub const MAGIC: &[u8; 16] = b"SQLite format 3\0";
const HEADER_LEN: usize = 100;
const LEAF_TABLE: u8 = 0x0d;
const INTERIOR_TABLE: u8 = 0x05;

/// A value of a column.
#[derive(Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer (every integer serial type, and the constants 0 and 1).
    Integer(i64),
    /// A float.
    Real(f64),
    /// Text, as stored (UTF-8 in the databases this reads, not checked).
    Text(Vec<u8>),
    /// A blob.
    Blob(Vec<u8>),
}

impl Value {
    /// The SQL name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Integer(_) => "INTEGER",
            Value::Real(_) => "REAL",
            Value::Text(_) => "TEXT",
            Value::Blob(_) => "BLOB",
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => write!(f, "NULL"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Real(r) => write!(f, "{r:?}"),
            Value::Text(t) => write!(f, "{:?}", String::from_utf8_lossy(t)),
            Value::Blob(b) => write!(f, "x'{}'", hex::encode(b)),
        }
    }
}

/// One row of the schema table (`sqlite_schema`).
#[derive(Debug, Clone)]
pub struct SchemaRow {
    /// `table`, `index`, `view` or `trigger`.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// Its root page (0 for views, triggers and virtual tables).
    pub root: u32,
    /// The statement that made it, if any.
    pub sql: Option<String>,
}

/// A database file in memory.
pub struct Database<'a> {
    bytes: &'a [u8],
    page_len: usize,
    /// Bytes of each page b-trees may use (the page less its reserved tail).
    usable: usize,
    pages: u32,
    /// The schema table's rows, read once.
    schema: Vec<SchemaRow>,
}

impl<'a> Database<'a> {
    /// Checks the header of the file in `bytes` and reads its schema.
    pub fn open(bytes: &'a [u8]) -> Result<Database<'a>, SqliteError> {
        let header = bytes.get(..HEADER_LEN).ok_or_else(|| bad("shorter than a SQLite header"))?;
        if !header.starts_with(MAGIC) {
            return Err(bad("not a SQLite file (no magic)"));
        }
        let page_len = match be16(header, 16) {
            Some(1) => 65536,
            Some(n) if (512..=32768).contains(&n) && n.is_power_of_two() => usize::from(n),
            n => return Err(bad(format!("page size {} is not one SQLite writes", n.unwrap_or(0)))),
        };
        let reserved = usize::from(header.get(20).copied().unwrap_or(0));
        let usable = page_len.saturating_sub(reserved);
        if usable < 480 {
            return Err(bad(format!("{reserved} reserved bytes leave less than 480 of a {page_len} byte page")));
        }
        match be32(header, 56) {
            Some(0 | 1) => {}
            Some(2 | 3) => return Err(bad("a UTF-16 database (rfs writes UTF-8): not read")),
            e => return Err(bad(format!("text encoding {} is not one SQLite writes", e.unwrap_or(0)))),
        }
        let pages = u32::try_from(bytes.len() / page_len).map_err(|_| bad("more pages than SQLite can number"))?;
        let mut db = Database { bytes, page_len, usable, pages, schema: Vec::new() };
        db.schema = db.read_schema()?;
        Ok(db)
    }

    /// The schema table's rows.
    pub fn schema(&self) -> &[SchemaRow] {
        &self.schema
    }

    fn read_schema(&self) -> Result<Vec<SchemaRow>, SqliteError> {
        let mut out = Vec::new();
        self.scan(1, &mut |_, record| {
            let text = |i: usize| match record.get(i) {
                Some(Value::Text(t)) => Ok(Some(String::from_utf8_lossy(t).into_owned())),
                Some(Value::Null) | None => Ok(None),
                Some(v) => Err(bad(format!("a schema row's column {i} is {}", v.type_name()))),
            };
            let root = match record.get(3) {
                Some(Value::Integer(n)) => u32::try_from(*n).map_err(|_| bad(format!("root page {n}")))?,
                Some(Value::Null) | None => 0,
                Some(v) => return Err(bad(format!("a schema row's root page is {}", v.type_name()))),
            };
            out.push(SchemaRow {
                kind: text(0)?.unwrap_or_default(),
                name: text(1)?.unwrap_or_default(),
                root,
                sql: text(4)?,
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// The table named `name` (ASCII case ignored, as SQL does), its columns read from its
    /// `CREATE TABLE`. `None` if there is no such table; an error if the name is something else
    /// (a view, a virtual table) or its definition cannot be read.
    pub fn table(&self, name: &str) -> Result<Option<Table>, SqliteError> {
        let Some(row) = self.schema.iter().find(|r| r.name.eq_ignore_ascii_case(name)) else { return Ok(None) };
        if row.kind != "table" {
            return Err(bad(format!("{name} is a {}, not a plain table", row.kind)));
        }
        let sql = row.sql.as_deref().unwrap_or_default();
        if row.root == 0 {
            return Err(bad(format!("{name} is a virtual table, not a plain table")));
        }
        let columns = columns_of(sql).map_err(|why| bad(format!("table {name}: {why}")))?;
        Ok(Some(Table { root: row.root, columns }))
    }

    /// Calls `row` with each row of `table` in rowid order: its rowid and the values of
    /// `columns` (names, ASCII case ignored), a column the row does not have being NULL.
    pub fn rows(
        &self,
        table: &Table,
        columns: &[&str],
        row: &mut dyn FnMut(i64, Vec<Value>) -> Result<(), SqliteError>,
    ) -> Result<(), SqliteError> {
        let mut picks = Vec::with_capacity(columns.len());
        for name in columns {
            let found = table.columns.iter().position(|c| c.name.eq_ignore_ascii_case(name));
            let index = found.ok_or_else(|| bad(format!("no column {name}")))?;
            picks.push((index, table.columns.get(index).is_some_and(|c| c.rowid)));
        }
        self.scan(table.root, &mut |rowid, record| {
            let values = picks
                .iter()
                .map(|&(i, is_rowid)| match record.get(i).cloned() {
                    // An INTEGER PRIMARY KEY is the rowid, stored as NULL in the record.
                    Some(Value::Null) | None if is_rowid => Value::Integer(rowid),
                    Some(v) => v,
                    None => Value::Null,
                })
                .collect();
            row(rowid, values)
        })
    }

    /// Visits the table b-tree rooted at `root` in rowid order.
    fn scan(
        &self,
        root: u32,
        visit: &mut dyn FnMut(i64, Vec<Value>) -> Result<(), SqliteError>,
    ) -> Result<(), SqliteError> {
        let mut seen = vec![false; self.pages as usize];
        let mut stack = vec![root];
        while let Some(number) = stack.pop() {
            let page = self.take_page(number, &mut seen)?;
            let at = if number == 1 { HEADER_LEN } else { 0 };
            let kind = *page.get(at).ok_or_else(|| bad("page header"))?;
            let cells = usize::from(be16(page, at + 3).ok_or_else(|| bad("page header"))?);
            let pointers = match kind {
                LEAF_TABLE => at + 8,
                INTERIOR_TABLE => at + 12,
                k => return Err(bad(format!("page {number} is not a table b-tree page (type {k:#04x})"))),
            };
            let cell_at = |i: usize| -> Result<usize, SqliteError> {
                let off =
                    usize::from(be16(page, pointers + 2 * i).ok_or_else(|| bad(format!("page {number}: cells")))?);
                if off < pointers + 2 * cells || off >= self.usable {
                    return Err(bad(format!("page {number}: cell {i} at {off} is outside the page")));
                }
                Ok(off)
            };
            if kind == INTERIOR_TABLE {
                // Children left to right: push the right-most first so the left-most pops first.
                stack.push(be32(page, at + 8).ok_or_else(|| bad("page header"))?);
                for i in (0..cells).rev() {
                    let off = cell_at(i)?;
                    stack.push(be32(page, off).ok_or_else(|| bad(format!("page {number}: cell {i}")))?);
                }
                continue;
            }
            for i in 0..cells {
                let off = cell_at(i)?;
                let cell = page.get(off..self.usable).ok_or_else(|| bad(format!("page {number}: cell {i}")))?;
                let (len, n1) = varint(cell).ok_or_else(|| bad(format!("page {number}: cell {i}")))?;
                let (rowid, n2) =
                    cell.get(n1..).and_then(varint).ok_or_else(|| bad(format!("page {number}: cell {i}")))?;
                let payload = self.payload(cell.get(n1 + n2..).unwrap_or_default(), len, &mut seen)?;
                let record =
                    record(&payload).map_err(|why| bad(format!("page {number}: row {}: {why}", rowid as i64)))?;
                visit(rowid as i64, record)?;
            }
        }
        Ok(())
    }

    /// Page `number`, marked as read; an error if it was read before (a cycle, or two owners).
    fn take_page(&self, number: u32, seen: &mut [bool]) -> Result<&'a [u8], SqliteError> {
        let index = number.checked_sub(1).ok_or_else(|| bad("a pointer to page 0"))? as usize;
        let mark = seen.get_mut(index).ok_or_else(|| bad(format!("page {number} is past the end of the file")))?;
        if std::mem::replace(mark, true) {
            return Err(bad(format!("page {number} is reached twice (a cycle or a shared page)")));
        }
        let start = index * self.page_len;
        self.bytes.get(start..start + self.page_len).ok_or_else(|| bad(format!("page {number} is cut short")))
    }

    /// A leaf cell's payload of `len` bytes: what is on the page (`local` starts with it), then
    /// its overflow chain.
    fn payload(&self, local: &[u8], len: u64, seen: &mut [bool]) -> Result<Vec<u8>, SqliteError> {
        if len > self.bytes.len() as u64 {
            return Err(bad(format!("a payload of {len} bytes is larger than the file")));
        }
        let len = len as usize;
        let u = self.usable;
        let max_local = u - 35;
        if len <= max_local {
            return local.get(..len).map(<[u8]>::to_vec).ok_or_else(|| bad("a payload runs past its page"));
        }
        let min_local = (u - 12) * 32 / 255 - 23;
        let k = min_local + (len - min_local) % (u - 4);
        let on_page = if k <= max_local { k } else { min_local };
        // Grown as the chain is read: a claimed length is not trusted with memory up front.
        let mut out = Vec::with_capacity(len.min(1 << 20));
        out.extend_from_slice(local.get(..on_page).ok_or_else(|| bad("a payload runs past its page"))?);
        let mut next = be32(local, on_page).ok_or_else(|| bad("a payload's overflow pointer"))?;
        while out.len() < len {
            let page = self.take_page(next, seen)?;
            let take = (len - out.len()).min(u - 4);
            out.extend_from_slice(page.get(4..4 + take).ok_or_else(|| bad("an overflow page"))?);
            next = be32(page, 0).unwrap_or(0);
        }
        Ok(out)
    }
}

/// A table's definition.
#[derive(Debug, Clone)]
pub struct Table {
    root: u32,
    columns: Vec<Column>,
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    /// An `INTEGER PRIMARY KEY`: the rowid under another name.
    rowid: bool,
}

/// The values of a record (<https://www.sqlite.org/fileformat2.html#record_format>).
fn record(payload: &[u8]) -> Result<Vec<Value>, String> {
    let (header_len, mut at) = varint(payload).ok_or("no record header")?;
    let header_len =
        usize::try_from(header_len).ok().filter(|&h| h <= payload.len() && h >= at).ok_or("record header length")?;
    let mut body = header_len;
    let mut values = Vec::new();
    while at < header_len {
        let (serial, n) = payload.get(at..header_len).and_then(varint).ok_or("record header")?;
        at += n;
        let int = |len: usize| -> Result<(Value, usize), String> {
            let bytes = payload.get(body..body + len).ok_or("a value runs past its record")?;
            // Big-endian two's complement of `len` bytes, sign-extended.
            let first = i64::from(*bytes.first().unwrap_or(&0) as i8);
            Ok((Value::Integer(bytes.iter().skip(1).fold(first, |v, &b| (v << 8) | i64::from(b))), len))
        };
        let (value, len) = match serial {
            0 => (Value::Null, 0),
            1..=4 => int(serial as usize)?,
            5 => int(6)?,
            6 => int(8)?,
            7 => {
                let bytes = payload.get(body..body + 8).ok_or("a value runs past its record")?;
                let bits = bytes.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b));
                (Value::Real(f64::from_bits(bits)), 8)
            }
            8 => (Value::Integer(0), 0),
            9 => (Value::Integer(1), 0),
            10 | 11 => return Err(format!("serial type {serial} is reserved")),
            n => {
                let len = usize::try_from((n - 12) / 2).map_err(|_| "a value's length")?;
                let bytes = payload.get(body..body.saturating_add(len)).ok_or("a value runs past its record")?.to_vec();
                (if n % 2 == 0 { Value::Blob(bytes) } else { Value::Text(bytes) }, len)
            }
        };
        body += len;
        values.push(value);
    }
    Ok(values)
}

/// SQLite's varint: 1 to 9 bytes, big-endian, 7 bits a byte but all 8 of a ninth.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(9) {
        if i == 8 {
            return Some(((v << 8) | u64::from(b), 9));
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    bytes.get(at..at + 2)?.try_into().ok().map(u16::from_be_bytes)
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4)?.try_into().ok().map(u32::from_be_bytes)
}

/// A token of SQL, as far as a column list needs.
#[derive(Debug, PartialEq)]
enum Token {
    /// A name or keyword, unquoted.
    Word(String),
    /// A quoted name: never a keyword.
    Quoted(String),
    Open,
    Close,
    Comma,
    /// A string or number literal, or any other symbol.
    Other,
}

fn tokens(sql: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            ',' => out.push(Token::Comma),
            c if c.is_whitespace() => {}
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                loop {
                    match chars.next() {
                        Some('/') if last == '*' => break,
                        Some(c) => last = c,
                        None => return Err("an unterminated comment".into()),
                    }
                }
            }
            '"' | '`' | '[' | '\'' => {
                let close = if c == '[' { ']' } else { c };
                let mut word = String::new();
                loop {
                    match chars.next() {
                        // A doubled quote is one quote inside ("a""b"); brackets have no escape.
                        Some(q) if q == close && close != ']' && chars.peek() == Some(&close) => {
                            chars.next();
                            word.push(q);
                        }
                        Some(q) if q == close => break,
                        Some(q) => word.push(q),
                        None => return Err("an unterminated quote".into()),
                    }
                }
                out.push(if c == '\'' { Token::Other } else { Token::Quoted(word) });
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' => {
                let mut word = String::from(c);
                while let Some(&n) = chars.peek().filter(|n| n.is_alphanumeric() || **n == '_' || **n == '$') {
                    word.push(n);
                    chars.next();
                }
                out.push(Token::Word(word));
            }
            _ => out.push(Token::Other),
        }
    }
    Ok(out)
}

fn is_word(token: Option<&Token>, keyword: &str) -> bool {
    matches!(token, Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword))
}

/// The columns of a `CREATE TABLE name (…)`, in order, with which of them is the rowid.
fn columns_of(sql: &str) -> Result<Vec<Column>, String> {
    let tokens = tokens(sql)?;
    let open = tokens.iter().position(|t| *t == Token::Open).ok_or("no column list")?;
    // Split the list at its top-level commas.
    let (mut parts, mut part, mut depth, mut end) = (Vec::new(), Vec::new(), 0usize, None);
    for (i, t) in tokens.iter().enumerate().skip(open + 1) {
        match t {
            Token::Open => depth += 1,
            Token::Close if depth == 0 => {
                end = Some(i);
                break;
            }
            Token::Close => depth -= 1,
            Token::Comma if depth == 0 => {
                parts.push(std::mem::take(&mut part));
                continue;
            }
            _ => {}
        }
        part.push(t);
    }
    let end = end.ok_or("the column list is not closed")?;
    parts.push(part);
    let rest = tokens.get(end + 1..).unwrap_or_default();
    if rest.windows(2).any(|w| is_word(w.first(), "WITHOUT") && is_word(w.get(1), "ROWID")) {
        return Err("a WITHOUT ROWID table: not read".into());
    }
    let mut columns: Vec<(Column, bool)> = Vec::new();
    let mut table_key: Option<Vec<String>> = None;
    for part in parts {
        let first = part.first().copied();
        if ["CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"].iter().any(|k| is_word(first, k)) {
            if let Some(at) = part.iter().position(|t| is_word(Some(*t), "PRIMARY")) {
                let names = part
                    .iter()
                    .skip(at)
                    .skip_while(|t| ***t != Token::Open)
                    .skip(1)
                    .take_while(|t| ***t != Token::Close)
                    .filter_map(|t| match t {
                        Token::Word(w) | Token::Quoted(w) => Some(w.clone()),
                        _ => None,
                    })
                    .filter(|w| !["ASC", "DESC", "COLLATE"].iter().any(|k| w.eq_ignore_ascii_case(k)))
                    .collect();
                table_key = Some(names);
            }
            continue;
        }
        let Some(Token::Word(name) | Token::Quoted(name)) = first else { return Err("a column without a name".into()) };
        // Constraints are read at the top level only: `CHECK (CAST(x AS INT) > 0)` holds no AS.
        let mut depth = 0usize;
        let top: Vec<Option<&Token>> = part
            .iter()
            .skip(1)
            .map(|t| {
                let level = depth;
                match t {
                    Token::Open => depth += 1,
                    Token::Close => depth = depth.saturating_sub(1),
                    _ => {}
                }
                (level == 0).then_some(*t)
            })
            .collect();
        // The type is every token up to the first constraint keyword; the rowid's is exactly
        // the one word INTEGER (`INTEGER(10)` is another type to SQLite).
        let constraint = [
            "CONSTRAINT",
            "PRIMARY",
            "NOT",
            "NULL",
            "UNIQUE",
            "CHECK",
            "DEFAULT",
            "COLLATE",
            "REFERENCES",
            "GENERATED",
            "AS",
        ];
        let type_len = top.iter().position(|t| constraint.iter().any(|k| is_word(*t, k))).unwrap_or(top.len());
        let integer = type_len == 1 && is_word(top.first().copied().flatten(), "INTEGER");
        let rest = top.get(type_len..).unwrap_or_default();
        if rest.iter().any(|t| is_word(*t, "GENERATED") || is_word(*t, "AS")) {
            return Err(format!("column {name} is generated: not read"));
        }
        let key_at = rest.windows(2).position(|w| {
            is_word(w.first().copied().flatten(), "PRIMARY") && is_word(w.get(1).copied().flatten(), "KEY")
        });
        // SQLite's quirk: INTEGER PRIMARY KEY DESC is not the rowid.
        let keyed = key_at.is_some_and(|at| !is_word(rest.get(at + 2).copied().flatten(), "DESC"));
        columns.push((Column { name: name.clone(), rowid: integer && keyed }, integer));
    }
    if let Some([only]) = table_key.as_deref() {
        for (column, integer) in &mut columns {
            if *integer && column.name.eq_ignore_ascii_case(only) {
                column.rowid = true;
            }
        }
    }
    Ok(columns.into_iter().map(|(c, _)| c).collect())
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
