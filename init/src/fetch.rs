//! Getting the manifest, its signature and flist files: `http://`, `https://` (rustls, with the
//! CA bundle of the initramfs or one pinned CA) or a local path (`file://` or plain).
//!
//! Every fetch is bounded in time and size, so a slow or hostile server costs a retry, never a
//! hung or exhausted PID 1.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server or file says there is no such thing.
    #[error("{url}: not found")]
    NotFound {
        /// What was asked for.
        url: String,
    },
    /// Anything else: network, TLS, status, size, local I/O.
    #[error("{url}: {why}")]
    Failed {
        /// What was asked for.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// The CA file given is unusable.
    #[error("CA certificates in {path}: {why}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// Which certificate authorities an `https://` server may present.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// The Mozilla roots compiled into the binary.
    #[default]
    BuiltIn,
    /// The certificates of a PEM bundle (e.g. the initramfs's `/etc/ssl/certs/ca-certificates.crt`),
    /// or of one pinned CA: no other CA is accepted then.
    Pem(PathBuf),
}

/// The largest answer to a POST that is read.
pub const ANSWER_MAX: u64 = 64 << 10;

/// Fetches URLs; one connection pool for everything init downloads.
#[derive(Clone)]
pub struct Fetcher {
    agent: ureq::Agent,
}

impl Fetcher {
    /// A fetcher trusting `trust` for HTTPS.
    pub fn new(trust: &Trust) -> Result<Fetcher, FetchError> {
        let roots = match trust {
            Trust::BuiltIn => ureq::tls::RootCerts::WebPki,
            Trust::Pem(path) => {
                let bad = |why: String| FetchError::Ca { path: path.clone(), why };
                let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
                let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect();
                if certs.is_empty() {
                    return Err(bad("no certificate in the file".into()));
                }
                ureq::tls::RootCerts::Specific(Arc::new(certs))
            }
        };
        let tls = ureq::tls::TlsConfig::builder().root_certs(roots).build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(120)))
            .http_status_as_error(false)
            .user_agent(concat!("flint-init/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Fetcher { agent })
    }

    /// The whole body of `url`, at most `limit` bytes.
    pub fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        self.get_as(url, limit, None)
    }

    /// Like [`Fetcher::get`], signed by the node's identity as a request of `stream` (when the
    /// node has one and `url` is a network URL).
    pub fn get_signed(&self, url: &str, limit: u64, stream: &'static str) -> Result<Vec<u8>, FetchError> {
        self.get_as(url, limit, Some(stream))
    }

    fn get_as(&self, url: &str, limit: u64, stream: Option<&'static str>) -> Result<Vec<u8>, FetchError> {
        let failed = |why: String| FetchError::Failed { url: url.to_string(), why };
        if let Some(path) = local_path(url) {
            return match std::fs::metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FetchError::NotFound { url: url.into() }),
                Ok(m) if m.len() > limit => Err(failed(format!("larger than {limit} bytes"))),
                _ => std::fs::read(path).map_err(|e| failed(e.to_string())),
            };
        }
        let mut request = self.agent.get(url);
        for (name, value) in stream.map(|s| signature(s, "GET", url, b"")).unwrap_or_default() {
            request = request.header(name, value);
        }
        let mut resp = request.call().map_err(|e| failed(untrusted_clock(e.to_string())))?;
        if let Some(date) = resp.headers().get("date").and_then(|d| d.to_str().ok()) {
            if let Ok(date) = httpdate::parse_http_date(date) {
                crate::clock::server_date(date, url);
            }
        }
        match resp.status().as_u16() {
            200 => resp.body_mut().with_config().limit(limit).read_to_vec().map_err(|e| failed(e.to_string())),
            404 | 410 => Err(FetchError::NotFound { url: url.into() }),
            code => Err(failed(format!("HTTP {code}"))),
        }
    }

    /// POSTs a JSON document to `url` as a request of `stream`, signed when the node has an
    /// identity, giving up after `timeout`; any 2xx is success.
    pub fn post_json(&self, url: &str, body: &str, timeout: Duration, stream: &'static str) -> Result<(), FetchError> {
        self.post_json_answered(url, body, timeout, stream).map(drop)
    }

    /// Like [`Fetcher::post_json`], and the answer's body (at most [`ANSWER_MAX`] bytes); the
    /// error carries the start of a refusal's body, which says why.
    pub fn post_json_answered(
        &self,
        url: &str,
        body: &str,
        timeout: Duration,
        stream: &'static str,
    ) -> Result<Vec<u8>, FetchError> {
        let failed = |why: String| FetchError::Failed { url: url.to_string(), why };
        let mut request = self
            .agent
            .post(url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("content-type", "application/json");
        for (name, value) in signature(stream, "POST", url, body.as_bytes()) {
            request = request.header(name, value);
        }
        let mut resp = request.send(body).map_err(|e| failed(e.to_string()))?;
        let answer = resp.body_mut().with_config().limit(ANSWER_MAX).read_to_vec().unwrap_or_default();
        match resp.status().as_u16() {
            200..=299 => Ok(answer),
            code => {
                let said: String = String::from_utf8_lossy(&answer).trim().chars().take(200).collect();
                Err(failed(format!("HTTP {code}: {said}")))
            }
        }
    }

    /// Like [`Fetcher::get_signed`], but a missing object is `None`.
    pub fn get_optional_signed(
        &self,
        url: &str,
        limit: u64,
        stream: &'static str,
    ) -> Result<Option<Vec<u8>>, FetchError> {
        Self::optional(self.get_signed(url, limit, stream))
    }

    /// Like [`Fetcher::get`], but a missing object is `None`.
    pub fn get_optional(&self, url: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchError> {
        Self::optional(self.get(url, limit))
    }

    fn optional(got: Result<Vec<u8>, FetchError>) -> Result<Option<Vec<u8>>, FetchError> {
        match got {
            Ok(b) => Ok(Some(b)),
            Err(FetchError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The headers signing a request for `url` by the node's identity; none without one. The target
/// signed is the path and query as sent.
fn signature(stream: &'static str, method: &str, url: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let Some(identity) = crate::identity::get() else { return Vec::new() };
    let target = ureq::http::Uri::try_from(url)
        .ok()
        .and_then(|u| u.path_and_query().map(|p| p.as_str().to_string()))
        .unwrap_or_else(|| "/".into());
    identity.sign(stream, method, &target, body)
}

/// A transport error, with the clock's state when a certificate may have been judged against a
/// clock nothing vouches for.
fn untrusted_clock(why: String) -> String {
    let clock = crate::clock::now();
    match clock.trust {
        crate::clock::Trust::Trusted => why,
        _ if why.contains("ertificate") => {
            format!("{why} (the clock is {clock}: certificate validity was not checked against a trusted time)")
        }
        _ => why,
    }
}

/// The path of a `file://` URL or of a plain path; `None` for network URLs.
fn local_path(url: &str) -> Option<&Path> {
    match url.strip_prefix("file://") {
        Some(path) => Some(Path::new(path)),
        None if !url.contains("://") => Some(Path::new(url)),
        None => None,
    }
}

/// `url` with `suffix` appended to its path (before any query), e.g. the signature's URL.
pub fn with_suffix(url: &str, suffix: &str) -> String {
    match url.split_once('?') {
        Some((path, query)) => format!("{path}{suffix}?{query}"),
        None => format!("{url}{suffix}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn local_files_and_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.json");
        std::fs::write(&f, b"{}").unwrap();
        let fetcher = Fetcher::new(&Trust::BuiltIn).unwrap();
        assert_eq!(fetcher.get(f.to_str().unwrap(), 10).unwrap(), b"{}");
        assert_eq!(fetcher.get(&format!("file://{}", f.display()), 10).unwrap(), b"{}");
        assert!(matches!(fetcher.get(f.to_str().unwrap(), 1), Err(FetchError::Failed { .. })));
        let missing = dir.path().join("none");
        assert!(fetcher.get_optional(missing.to_str().unwrap(), 10).unwrap().is_none());
    }

    #[test]
    fn signature_urls() {
        assert_eq!(with_suffix("http://a/m.json", ".sig"), "http://a/m.json.sig");
        assert_eq!(with_suffix("http://a/m.json?node=1", ".sig"), "http://a/m.json.sig?node=1");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, b"not a certificate").unwrap();
        assert!(matches!(Fetcher::new(&Trust::Pem(f)), Err(FetchError::Ca { .. })));
    }
}
