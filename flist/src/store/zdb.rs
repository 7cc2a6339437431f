//! `zdb://[USER[:PASSWORD]@]HOST[:PORT][/NAMESPACE]` or `zdb:///path/to/socket`: a 0-db (rfs's
//! block store) spoken to in the Redis protocol, as rfs does: `SELECT NAMESPACE [PASSWORD]` on
//! each new connection unless the namespace is `default`, then `GET`/`EXISTS`/`SET` with the raw
//! 32-byte id as the key. Redis answers the default namespace the same way.
//!
//! Three commands and four reply types, so this is written here rather than taken from the
//! `redis` crate: that crate brings its own connection manager and URL rules and would weigh on
//! PID 1's size for what fits on a page. Every reply is bounded before it is read.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use super::http::MAX_OBJECT_LEN;
use super::{percent_decode, Store, StoreError, CONNECTIONS_PER_HOST};
use crate::format::Hash;

/// 0-db's port when the URL names none.
const DEFAULT_PORT: u16 = 9900;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A stalled server costs at most this per request.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Status and error lines are short; a longer one is not a Redis server talking.
const MAX_LINE: u64 = 4096;

enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix(std::path::PathBuf),
}

pub(crate) struct ZdbStore {
    endpoint: Endpoint,
    namespace: String,
    password: Option<String>,
    url: String,
    /// Connections that finished their last request cleanly, ready for the next one.
    idle: Mutex<Vec<Connection>>,
}

trait Stream: Read + Write + Send {}
impl Stream for TcpStream {}
impl Stream for UnixStream {}

struct Connection {
    stream: BufReader<Box<dyn Stream>>,
}

/// A reply, as far as these commands need.
enum Reply {
    Status,
    Integer(i64),
    Bulk(Option<Vec<u8>>),
}

impl ZdbStore {
    pub(crate) fn new(url: &url::Url) -> Result<Self, String> {
        let path = percent_decode(url.path());
        let (endpoint, namespace) = match url.host_str() {
            None | Some("") => {
                if path.is_empty() || path == "/" {
                    return Err("zdb:// needs a host (zdb://HOST[:PORT][/NAMESPACE]) or a socket path".into());
                }
                (Endpoint::Unix(path.into()), "default".to_string())
            }
            Some(host) => {
                let namespace = path.trim_matches('/');
                if namespace.contains('/') {
                    return Err(format!("the namespace {namespace:?} holds a '/'"));
                }
                let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
                let port = url.port().unwrap_or(DEFAULT_PORT);
                let namespace = if namespace.is_empty() { "default" } else { namespace };
                (Endpoint::Tcp { host, port }, namespace.to_string())
            }
        };
        let password = url.password().map(percent_decode);
        Ok(ZdbStore { endpoint, namespace, password, url: super::display_url(url.as_str()), idle: Mutex::default() })
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable { store: self.url.clone(), why: why.to_string() }
    }

    fn failed(&self, why: impl std::fmt::Display) -> StoreError {
        StoreError::Failed { store: self.url.clone(), why: why.to_string() }
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let stream: Box<dyn Stream> = match &self.endpoint {
            Endpoint::Tcp { host, port } => {
                let addrs = (host.as_str(), *port).to_socket_addrs().map_err(|e| self.unavailable(e))?;
                let mut last = None;
                let mut connected = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            connected = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = connected.ok_or_else(|| {
                    self.unavailable(last.map_or_else(|| "the host has no address".to_string(), |e| e.to_string()))
                })?;
                s.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| self.unavailable(e))?;
                s.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| self.unavailable(e))?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path).map_err(|e| self.unavailable(e))?;
                s.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| self.unavailable(e))?;
                s.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| self.unavailable(e))?;
                Box::new(s)
            }
        };
        let mut conn = Connection { stream: BufReader::new(stream) };
        if self.namespace != "default" {
            let mut select: Vec<&[u8]> = vec![b"SELECT", self.namespace.as_bytes()];
            if let Some(p) = &self.password {
                select.push(p.as_bytes());
            }
            match self.exchange(&mut conn, &select)? {
                Reply::Status => {}
                _ => return Err(self.failed("SELECT: an unexpected reply")),
            }
        }
        Ok(conn)
    }

    /// Sends one command and reads its reply. An error reply (`-ERR …`) is a failure that a retry
    /// will not mend; a broken or silent connection is worth one.
    fn exchange(&self, conn: &mut Connection, args: &[&[u8]]) -> Result<Reply, StoreError> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        conn.stream.get_mut().write_all(&out).map_err(|e| self.unavailable(e))?;
        let line = read_line(&mut conn.stream).map_err(|e| self.unavailable(e))?;
        let command = String::from_utf8_lossy(args.first().copied().unwrap_or_default()).into_owned();
        let (kind, rest) = line.split_at_checked(1).ok_or_else(|| self.unavailable("an empty reply"))?;
        match kind {
            "+" => Ok(Reply::Status),
            "-" => Err(self.failed(format!("{command} refused: {rest}"))),
            ":" => rest.parse().map(Reply::Integer).map_err(|_| self.unavailable(format!("bad integer {rest:?}"))),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| self.unavailable(format!("bad length {rest:?}")))?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = u64::try_from(len).unwrap_or(u64::MAX);
                if len > MAX_OBJECT_LEN {
                    return Err(self.failed(format!("a reply of {len} bytes, more than an object can be")));
                }
                let mut body = vec![0; len as usize + 2];
                conn.stream.read_exact(&mut body).map_err(|e| self.unavailable(e))?;
                if body.split_off(len as usize) != b"\r\n" {
                    return Err(self.unavailable("a bulk reply not ended by CRLF"));
                }
                Ok(Reply::Bulk(Some(body)))
            }
            _ => Err(self.unavailable(format!("not a Redis reply: {line:?}"))),
        }
    }

    /// Runs one command on an idle connection (or a new one), keeping the connection only when
    /// the exchange ended cleanly: after an error its state is unknown.
    fn command(&self, args: &[&[u8]]) -> Result<Reply, StoreError> {
        let idle = crate::durable::lock(&self.idle).pop();
        let mut conn = match idle {
            Some(c) => c,
            None => self.connect()?,
        };
        let reply = self.exchange(&mut conn, args)?;
        let mut idle = crate::durable::lock(&self.idle);
        if idle.len() < CONNECTIONS_PER_HOST {
            idle.push(conn);
        }
        Ok(reply)
    }
}

/// One CRLF-ended line, at most [`MAX_LINE`] bytes, without its CRLF.
fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = Vec::new();
    r.by_ref().take(MAX_LINE).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        let why = if line.is_empty() { "the connection closed" } else { "a reply line too long or cut off" };
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, why));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

impl Store for ZdbStore {
    fn get(&self, id: &Hash) -> Result<Vec<u8>, StoreError> {
        match self.command(&[b"GET", &id.0])? {
            Reply::Bulk(Some(bytes)) => Ok(bytes),
            Reply::Bulk(None) => Err(StoreError::NotFound { store: self.url.clone(), id: *id }),
            _ => Err(self.unavailable("GET: an unexpected reply")),
        }
    }

    fn has(&self, id: &Hash) -> Result<bool, StoreError> {
        match self.command(&[b"EXISTS", &id.0])? {
            Reply::Integer(n) => Ok(n > 0),
            _ => Err(self.unavailable("EXISTS: an unexpected reply")),
        }
    }

    fn put(&self, id: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        match self.command(&[b"SET", &id.0, bytes])? {
            // 0-db answers SET with the key as a bulk string; Redis with +OK.
            Reply::Status | Reply::Bulk(_) => Ok(()),
            Reply::Integer(_) => Err(self.unavailable("SET: an unexpected reply")),
        }
    }

    fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn store(url: &str) -> ZdbStore {
        ZdbStore::new(&url::Url::parse(url).unwrap()).unwrap()
    }

    #[test]
    fn urls_name_host_port_namespace_and_password() {
        let s = store("zdb://user:p%40ss@example.org:1234/ns1");
        assert!(matches!(&s.endpoint, Endpoint::Tcp { host, port: 1234 } if host == "example.org"));
        assert_eq!((s.namespace.as_str(), s.password.as_deref()), ("ns1", Some("p@ss")));
        assert!(!s.url.contains("p%40ss"), "{}", s.url);
        let s = store("zdb://127.0.0.1");
        assert!(matches!(&s.endpoint, Endpoint::Tcp { port: DEFAULT_PORT, .. }));
        assert_eq!((s.namespace.as_str(), s.password.as_deref()), ("default", None));
        assert!(matches!(store("zdb:///run/zdb.sock").endpoint, Endpoint::Unix(_)));
        assert!(ZdbStore::new(&url::Url::parse("zdb://h/a/b").unwrap()).is_err());
    }

    #[test]
    fn replies_are_bounded() {
        let mut long = std::io::Cursor::new(vec![b'+'; 10_000]);
        assert!(read_line(&mut long).is_err());
        let mut cut = std::io::Cursor::new(b"+OK".to_vec());
        assert!(read_line(&mut cut).is_err());
        let mut ok = std::io::Cursor::new(b"+OK\r\n".to_vec());
        assert_eq!(read_line(&mut ok).unwrap(), "+OK");
    }
}
