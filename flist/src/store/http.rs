//! `http(s)://BASE`: a read-only store behind any HTTP server (rustls, with the webpki roots
//! compiled in, so it works in an initramfs without a CA bundle).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use super::{flat_object_path, object_path, Received, Store, StoreError};
use crate::format::{Hash, MAX_CHUNK_LEN};

/// A stored object is at most the plain chunk plus compression and AEAD overhead.
pub(crate) const MAX_OBJECT_LEN: u64 = MAX_CHUNK_LEN as u64 + (1 << 20);

pub(crate) struct HttpStore {
    base: String,
    url: String,
    agent: ureq::Agent,
    layout: Layout,
}

/// Where an HTTP server keeps objects.
#[derive(Clone, Copy)]
pub(crate) enum Layout {
    /// Files: `BASE/ab/abcd…`, then `BASE/abcd…` (rfs's order).
    Files,
    /// rfs's fl-server (`server://`): `BASE/api/v1/block/abcd…`.
    FlServer,
}

impl Layout {
    fn paths(self, id: &Hash) -> Vec<String> {
        match self {
            Layout::Files => vec![object_path(id), flat_object_path(id)],
            Layout::FlServer => vec![format!("api/v1/block/{}", id.to_hex())],
        }
    }
}

/// Connections kept open per host between requests: as many as fetch from one store at once.
pub const CONNECTIONS_PER_HOST: usize = 16;

/// How long a host name's addresses are reused before it is looked up again.
const RESOLVED_FOR: Duration = Duration::from_secs(60);

/// Looks a host up once a minute, not before every request: ureq's own resolver runs each lookup
/// on a thread of its own when a timeout is set (a thread per chunk). Addresses are taken as
/// they are; IP literals need no lookup at all.
#[derive(Debug, Default)]
struct CachingResolver {
    known: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let authority = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
        let scheme_port = if uri.scheme_str() == Some("https") { 443 } else { 80 };
        let literal = uri.host().map(|h| h.trim_start_matches('[').trim_end_matches(']')).and_then(|h| h.parse().ok());
        if let Some(ip) = literal {
            let mut out = self.empty();
            out.push(SocketAddr::new(ip, uri.port_u16().unwrap_or(scheme_port)));
            return Ok(out);
        }
        if let Some((at, addrs)) = crate::durable::lock(&self.known).get(&authority) {
            if at.elapsed() < RESOLVED_FOR {
                return Ok(addrs.clone());
            }
        }
        let addrs = DefaultResolver::default().resolve(uri, config, timeout)?;
        crate::durable::lock(&self.known).insert(authority, (Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

/// An agent that never waits forever (a stalled server costs at most the global timeout), keeps
/// connections to a host open for the next request, and looks host names up once a minute.
pub(crate) fn agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .max_idle_connections(4 * CONNECTIONS_PER_HOST)
        .max_idle_connections_per_host(CONNECTIONS_PER_HOST)
        .build();
    ureq::Agent::with_parts(config, DefaultConnector::default(), CachingResolver::default())
}

/// Maps a transport error: everything at this level is worth a retry.
pub(crate) fn transport(store: &str, e: ureq::Error) -> StoreError {
    StoreError::Unavailable { store: store.to_string(), why: e.to_string() }
}

/// Maps a status that is not 2xx.
pub(crate) fn status(store: &str, id: &Hash, code: u16) -> StoreError {
    match code {
        404 => StoreError::NotFound { store: store.to_string(), id: *id },
        408 | 429 | 500..=599 => StoreError::Unavailable { store: store.to_string(), why: format!("HTTP {code}") },
        _ => StoreError::Failed { store: store.to_string(), why: format!("HTTP {code}") },
    }
}

/// Reads a response body of at most `limit` bytes.
pub(crate) fn body_within(
    store: &str,
    resp: ureq::http::Response<ureq::Body>,
    limit: u64,
) -> Result<Vec<u8>, StoreError> {
    let mut into = Received::default();
    body_into(store, resp, limit, &mut into)?;
    Ok(into.into_vec())
}

/// Reads a response body of at most `limit` bytes into `into`.
pub(crate) fn body_into(
    store: &str,
    mut resp: ureq::http::Response<ureq::Body>,
    limit: u64,
    into: &mut Received,
) -> Result<(), StoreError> {
    // Sized by the announced length (within the limit) up front: growing the buffer as the body
    // came copied each object about once more, a tenth of a cold read's CPU.
    let announced = resp.body().content_length().unwrap_or(0).min(limit).min(MAX_OBJECT_LEN);
    into.read_from(&mut resp.body_mut().with_config().limit(limit).reader(), usize::try_from(announced).unwrap_or(0))
        .map_err(|e| transport(store, e.into()))
}

/// A status that is not 2xx, for a file rather than an object.
pub(crate) fn file_status(url: &str, code: u16) -> StoreError {
    let why = format!("HTTP {code}{}", if code == 404 { " (not found)" } else { "" });
    match code {
        408 | 429 | 500..=599 => StoreError::Unavailable { store: url.to_string(), why },
        _ => StoreError::Failed { store: url.to_string(), why },
    }
}

/// GETs a whole file of at most `limit` bytes.
pub(crate) fn get_file(url: &url::Url, limit: u64) -> Result<Vec<u8>, StoreError> {
    let display = super::display_url(url.as_str());
    let resp = agent().get(url.as_str()).call().map_err(|e| transport(&display, e))?;
    match resp.status().as_u16() {
        200 => body_within(&display, resp, limit),
        code => Err(file_status(&display, code)),
    }
}

impl HttpStore {
    pub(crate) fn new(url: &url::Url, layout: Layout) -> Self {
        let display = super::display_url(url.as_str());
        let display = match layout {
            Layout::Files => display,
            Layout::FlServer => format!("server://{display}"),
        };
        HttpStore { base: url.as_str().trim_end_matches('/').to_string(), url: display, agent: agent(), layout }
    }
}

impl Store for HttpStore {
    fn get(&self, id: &Hash) -> Result<Vec<u8>, StoreError> {
        let mut into = Received::default();
        self.get_into(id, &mut into)?;
        Ok(into.into_vec())
    }

    fn get_into(&self, id: &Hash, into: &mut Received) -> Result<(), StoreError> {
        for path in self.layout.paths(id) {
            let resp = self.agent.get(format!("{}/{path}", self.base)).call().map_err(|e| transport(&self.url, e))?;
            match resp.status().as_u16() {
                200 => return body_into(&self.url, resp, MAX_OBJECT_LEN, into),
                404 => continue,
                code => return Err(status(&self.url, id, code)),
            }
        }
        Err(status(&self.url, id, 404))
    }

    fn has(&self, id: &Hash) -> Result<bool, StoreError> {
        for path in self.layout.paths(id) {
            let resp = self.agent.head(format!("{}/{path}", self.base)).call().map_err(|e| transport(&self.url, e))?;
            match resp.status().as_u16() {
                200 => return Ok(true),
                404 => continue,
                code => return Err(status(&self.url, id, code)),
            }
        }
        Ok(false)
    }

    fn put(&self, _id: &Hash, _bytes: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::ReadOnly(self.url.clone()))
    }

    fn url(&self) -> &str {
        &self.url
    }
}
