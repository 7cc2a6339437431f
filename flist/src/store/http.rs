//! `http(s)://BASE`: a read-only store behind any HTTP server (rustls, with the webpki roots
//! compiled in, so it works in an initramfs without a CA bundle).

use std::time::Duration;

use super::{object_path, Store, StoreError};
use crate::format::{Hash, MAX_CHUNK_LEN};

/// A stored object is at most the plain chunk plus compression and AEAD overhead.
pub(crate) const MAX_OBJECT_LEN: u64 = MAX_CHUNK_LEN as u64 + (1 << 20);

pub(crate) struct HttpStore {
    base: String,
    url: String,
    agent: ureq::Agent,
}

/// An agent that never waits forever: a stalled server costs at most the global timeout.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into()
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

/// Reads a response body, refusing anything larger than an object can be.
pub(crate) fn body(store: &str, resp: ureq::http::Response<ureq::Body>) -> Result<Vec<u8>, StoreError> {
    let mut resp = resp;
    resp.body_mut().with_config().limit(MAX_OBJECT_LEN).read_to_vec().map_err(|e| transport(store, e))
}

impl HttpStore {
    pub(crate) fn new(url: &url::Url) -> Self {
        let display = super::display_url(url.as_str());
        HttpStore { base: url.as_str().trim_end_matches('/').to_string(), url: display, agent: agent() }
    }
}

impl Store for HttpStore {
    fn get(&self, id: &Hash) -> Result<Vec<u8>, StoreError> {
        let resp =
            self.agent.get(format!("{}/{}", self.base, object_path(id))).call().map_err(|e| transport(&self.url, e))?;
        match resp.status().as_u16() {
            200 => body(&self.url, resp),
            code => Err(status(&self.url, id, code)),
        }
    }

    fn has(&self, id: &Hash) -> Result<bool, StoreError> {
        let resp = self
            .agent
            .head(format!("{}/{}", self.base, object_path(id)))
            .call()
            .map_err(|e| transport(&self.url, e))?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            code => Err(status(&self.url, id, code)),
        }
    }

    fn put(&self, _id: &Hash, _bytes: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::ReadOnly(self.url.clone()))
    }

    fn url(&self) -> &str {
        &self.url
    }
}
