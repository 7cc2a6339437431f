//! Content-addressed object stores and the router that spreads chunks over them.
//!
//! A store keeps sealed chunks (see [`crate::chunk`]) under their id, at `ab/abcdef…` (the
//! first id byte as a fan-out directory) in every backend, so a `dir://` store can be served by
//! any HTTP server or synced to a bucket as it is. Reads also find an object at `abcdef…`, the
//! flat layout of rfs v2.0.6's stores (newer rfs writes the fanned-out one, as flint does). Stores speak bytes only; verification is the
//! router's job, because only it knows which replica to try next.
//!
//! URLs: `dir:///path` (or a bare path), `http://…`/`https://…` (read-only),
//! `s3://[KEY:SECRET@]HOST[:PORT]/BUCKET[/PREFIX][?region=R]` (TLS) and `s3+http://…` (plain),
//! and two of rfs's: `zdb://[:PASSWORD@]HOST[:PORT][/NAMESPACE]` (0-db, or Redis for the default
//! namespace) and `server://http(s)://HOST[:PORT]` (rfs's fl-server).
//! Credentials never leave the process: [`display_url`] strips them before anything is recorded.

mod dir;
mod http;
mod router;
mod s3;
mod sigv4;
mod zdb;

pub use http::CONNECTIONS_PER_HOST;
pub use s3::create_bucket;

use std::sync::Arc;

pub use router::{release_received, FetchError, Missed, PutOutcome, RetryPolicy, Router, StoreHealth};

use crate::format::Hash;

/// What a store says went wrong.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum StoreError {
    #[error("{store} has no chunk {id}")]
    NotFound { store: String, id: Hash },
    /// Worth retrying: timeouts, refused connections, 5xx.
    #[error("{store} is unavailable: {why}")]
    Unavailable { store: String, why: String },
    /// Not worth retrying: 4xx other than 404, local I/O errors.
    #[error("{store} failed: {why}")]
    Failed { store: String, why: String },
    #[error("{0} is read-only")]
    ReadOnly(String),
    #[error("store URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
}

impl StoreError {
    /// Whether trying the same store again may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// Bytes received into a buffer kept initialized from one use to the next: reading into it
/// again neither allocates nor clears it. (Reading each chunk into a fresh buffer cleared it
/// first, a pass over every byte of a cold read.)
#[derive(Default)]
pub struct Received {
    buf: Vec<u8>,
    len: usize,
}

impl Received {
    /// A buffer larger than this is not kept for the next use.
    const KEPT: usize = 2 << 20;

    /// What was received.
    pub fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    /// Replaces what it holds by `bytes`.
    pub fn set(&mut self, bytes: Vec<u8>) {
        self.len = bytes.len();
        self.buf = bytes;
    }

    /// What was received, as a vector of its own.
    pub fn into_vec(mut self) -> Vec<u8> {
        self.buf.truncate(self.len);
        self.buf
    }

    /// Forgets what it holds; keeps the buffer unless it grew large (a rare big object must
    /// not pin its size in every thread that once fetched one).
    pub fn clear(&mut self) {
        self.len = 0;
        if self.buf.len() > Self::KEPT {
            self.buf = Vec::new();
        }
    }

    /// Replaces what it holds by everything `from` gives, about `expected` bytes: the buffer
    /// grows (doubling) only past what it had.
    pub fn read_from(&mut self, from: &mut dyn std::io::Read, expected: usize) -> std::io::Result<()> {
        self.clear();
        if self.buf.len() < expected {
            self.buf.resize(expected, 0);
        }
        loop {
            if self.len == self.buf.len() {
                let grown = self.buf.len().saturating_mul(2).max(64 << 10);
                self.buf.resize(grown, 0);
            }
            let Some(room) = self.buf.get_mut(self.len..) else { return Ok(()) };
            match from.read(room) {
                Ok(0) => return Ok(()),
                Ok(n) => self.len = self.len.saturating_add(n).min(self.buf.len()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A place that keeps sealed chunks by id.
pub trait Store: Send + Sync {
    /// The stored object for `id`.
    fn get(&self, id: &Hash) -> Result<Vec<u8>, StoreError>;
    /// The stored object for `id`, into `into` (see [`Received`]); by default [`Store::get`].
    fn get_into(&self, id: &Hash, into: &mut Received) -> Result<(), StoreError> {
        into.set(self.get(id)?);
        Ok(())
    }
    /// Whether `id` is present.
    fn has(&self, id: &Hash) -> Result<bool, StoreError>;
    /// Stores `bytes` under `id`; idempotent.
    fn put(&self, id: &Hash, bytes: &[u8]) -> Result<(), StoreError>;
    /// The URL, without credentials.
    fn url(&self) -> &str;
    /// Every object id in the store (garbage collection); not every backend can. Tools only,
    /// as is [`Store::delete`]: a node never lists or deletes (and PID 1 links no XML reader).
    #[cfg(feature = "tools")]
    fn list(&self) -> Result<Vec<Hash>, StoreError> {
        Err(StoreError::Failed { store: self.url().to_string(), why: "this store cannot list its objects".into() })
    }
    /// Deletes an object; one already gone is not an error.
    #[cfg(feature = "tools")]
    fn delete(&self, id: &Hash) -> Result<(), StoreError> {
        let _ = id;
        Err(StoreError::ReadOnly(self.url().to_string()))
    }
}

/// The id of an object named `ab/abcdef…` (or just `abcdef…`), if the name is one.
pub fn id_of_name(name: &str) -> Option<Hash> {
    Hash::from_hex(name.rsplit('/').next()?)
}

/// Where an object lives relative to a store's root.
pub fn object_path(id: &Hash) -> String {
    let hex = id.to_hex();
    format!("{}/{}", hex.get(..2).unwrap_or_default(), hex)
}

/// Where an object may also be found: the flat layout of rfs v2.0.6's stores.
pub fn flat_object_path(id: &Hash) -> String {
    id.to_hex()
}

/// Opens the store a URL names.
pub fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let bad = |why: &str| StoreError::BadUrl { url: display_url(url), why: why.into() };
    if let Some(path) = url.strip_prefix("dir://") {
        return Ok(Arc::new(dir::DirStore::new(path)));
    }
    if !url.contains("://") {
        return Ok(Arc::new(dir::DirStore::new(url)));
    }
    if let Some(inner) = url.strip_prefix("server://") {
        let parsed = url::Url::parse(inner).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("server:// takes an http(s):// URL of an fl-server (server://http://host:port)"));
        }
        return Ok(Arc::new(http::HttpStore::new(&parsed, http::Layout::FlServer)));
    }
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => Ok(Arc::new(http::HttpStore::new(&parsed, http::Layout::Files))),
        "s3" | "s3+http" => Ok(Arc::new(s3::S3Store::new(&parsed).map_err(|why| bad(&why))?)),
        "zdb" => Ok(Arc::new(zdb::ZdbStore::new(&parsed).map_err(|why| bad(&why))?)),
        other => Err(bad(&format!(
            "unknown scheme {other}:// (use dir://, http(s)://, s3://, s3+http://, zdb://, server://http(s)://)"
        ))),
    }
}

/// Fetches a whole file by URL, such as an flist by reference: `http(s)://…`, or `s3://…` /
/// `s3+http://…` naming `BUCKET/KEY` (credentials as for a store). At most `limit` bytes;
/// transient failures are retried under `policy`.
pub fn fetch_file(url: &str, policy: &RetryPolicy, limit: u64) -> Result<Vec<u8>, StoreError> {
    let bad = |why: &str| StoreError::BadUrl { url: display_url(url), why: why.into() };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => policy.run(|| http::get_file(&parsed, limit)),
        "s3" | "s3+http" => policy.run(|| s3::get_file(&parsed, limit)),
        other => Err(bad(&format!("cannot fetch a file over {other}:// (use http(s)://, s3://, s3+http://)"))),
    }
}

/// A store URL in rfs's syntax, in flint's: rfs's `s3://` is plain HTTP (flint's `s3+http://`)
/// and its `s3s://` is TLS (flint's `s3://`); every other scheme means the same in both.
pub fn from_rfs_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("s3://") {
        return format!("s3+http://{rest}");
    }
    if let Some(rest) = url.strip_prefix("s3s://") {
        return format!("s3://{rest}");
    }
    url.to_string()
}

/// A URL's percent-encoded part (user, password, path) as text; `+` stays `+`.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// A URL with any user name and password removed, safe to print and to record in an flist.
pub fn display_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.scheme() != "dir" && (!u.username().is_empty() || u.password().is_some()) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Parses a `--store` argument: `URL`, or `START-END=URL` with hex id-byte bounds
/// (`00-7f=http://a`) for prefix routing. Stores with overlapping ranges are replicas.
pub fn parse_route(spec: &str) -> Result<(u8, u8, String), StoreError> {
    let bad = |why: &str| StoreError::BadUrl { url: display_url(spec), why: why.into() };
    let Some((range, url)) = spec.split_once('=').filter(|(r, _)| r.len() == 5 && r.as_bytes().get(2) == Some(&b'-'))
    else {
        return Ok((0x00, 0xff, spec.to_string()));
    };
    let byte = |s: &str| u8::from_str_radix(s, 16).map_err(|_| bad("range bounds are two hex digits"));
    let (start, end) = (byte(range.get(..2).unwrap_or(""))?, byte(range.get(3..).unwrap_or(""))?);
    if start > end {
        return Err(bad("range start after end"));
    }
    Ok((start, end, url.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Gives its bytes in pieces of the sizes asked, then an error if asked.
    struct Pieces<'a> {
        bytes: &'a [u8],
        sizes: Vec<usize>,
        fail_at_end: bool,
    }

    impl std::io::Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.bytes.is_empty() {
                return if self.fail_at_end { Err(std::io::Error::other("cut")) } else { Ok(0) };
            }
            let want = self.sizes.pop().unwrap_or(usize::MAX).max(1);
            let n = want.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    proptest! {
        /// One buffer reused for objects of any sizes, given in any pieces, with any expected
        /// size (right, short, long, zero): each time it holds exactly the object, never a byte
        /// of one before; a cut-off read is an error.
        #[test]
        fn a_reused_receive_buffer_holds_exactly_each_object(
            objects in prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 0..300_000), prop::collection::vec(1usize..70_000, 0..8), prop_oneof![0usize..400_000, 2_000_000usize..3_000_000], any::<bool>()),
                1..6,
            )
        ) {
            let mut into = Received::default();
            for (bytes, sizes, expected, fail) in &objects {
                let mut from = Pieces { bytes, sizes: sizes.clone(), fail_at_end: *fail };
                let result = into.read_from(&mut from, *expected);
                prop_assert_eq!(result.is_err(), *fail);
                if !fail {
                    prop_assert_eq!(into.bytes(), bytes.as_slice());
                }
                into.clear();
                prop_assert!(into.bytes().is_empty());
                prop_assert!(into.buf.len() <= Received::KEPT);
            }
        }
    }

    #[test]
    fn credentials_are_stripped() {
        assert_eq!(display_url("s3://key:secret@127.0.0.1:9000/bucket"), "s3://127.0.0.1:9000/bucket");
        assert_eq!(display_url("http://example.org/store"), "http://example.org/store");
        assert_eq!(display_url("dir:///srv/store"), "dir:///srv/store");
    }

    #[test]
    fn host_names_are_ascii_or_refused_with_an_error() {
        // No IDNA in the build (idna_adapter 1.0): punycode works, Unicode names are an error.
        assert!(open("http://xn--bcher-kva.example/store").is_ok());
        let refused = open("http://bücher.example/store").err().map(|e| e.to_string());
        assert!(refused.is_some_and(|e| e.contains("bücher.example")), "a Unicode host name was accepted");
    }

    #[test]
    fn routes_parse() {
        assert_eq!(parse_route("http://a").unwrap(), (0, 255, "http://a".into()));
        assert_eq!(parse_route("00-7f=http://a").unwrap(), (0, 0x7f, "http://a".into()));
        assert!(parse_route("80-10=http://a").is_err());
        // An '=' inside a URL's query is not a range.
        assert_eq!(parse_route("s3://h/b?region=x").unwrap().2, "s3://h/b?region=x");
    }
}
