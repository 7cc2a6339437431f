//! `s3://` and `s3+http://`: any S3-compatible server (AWS, garage, MinIO, s3s-fs), path-style.
//! Requests are presigned URLs (`sigv4`, sans-IO, so no async runtime or SDK is pulled into
//! PID 1) sent with the same blocking HTTP agent as the HTTP store.

use std::time::{SystemTime, UNIX_EPOCH};

use super::http::{agent, body_into, body_within, file_status, status, transport, MAX_OBJECT_LEN};
use super::sigv4::{Credentials, Endpoint, Request};
use super::{flat_object_path, object_path, percent_decode, Received, Store, StoreError};
use crate::format::Hash;

/// How long a presigned URL stays valid: it is used at once.
const SIGNATURE_LIFETIME_SECS: u64 = 600;

pub(crate) struct S3Store {
    endpoint: Endpoint,
    bucket: String,
    /// Decoded; empty or ending in `/`.
    prefix: String,
    credentials: Option<Credentials>,
    url: String,
    agent: ureq::Agent,
}

impl S3Store {
    /// Credentials come from the URL's user info, else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
    /// (and `AWS_SESSION_TOKEN`), else requests go unsigned (a public bucket).
    pub(crate) fn new(url: &url::Url) -> Result<Self, String> {
        let scheme = if url.scheme() == "s3+http" { "http" } else { "https" };
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("no host")?;
        // The port only when it is not the scheme's own, as the HTTP client writes `Host`.
        let host = match url.port() {
            Some(port) if !matches!((scheme, port), ("http", 80) | ("https", 443)) => format!("{host}:{port}"),
            _ => host.to_string(),
        };
        let mut path = url.path().trim_matches('/').splitn(2, '/');
        let bucket = path.next().filter(|b| !b.is_empty()).ok_or("no bucket in the path")?.to_string();
        if bucket.len() > 255 || !bucket.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            return Err(format!("{bucket:?} is not a bucket name (letters, digits, '-', '.', '_')"));
        }
        let prefix = path.next().map(|p| format!("{}/", percent_decode(p.trim_end_matches('/')))).unwrap_or_default();
        let region =
            url.query_pairs().find(|(k, _)| k == "region").map_or_else(|| "us-east-1".into(), |(_, v)| v.into_owned());
        let credentials = match (url.username(), url.password()) {
            ("", None) => Credentials::from_env(),
            (key, secret) => Some(Credentials {
                key: percent_decode(key),
                secret: percent_decode(secret.unwrap_or_default()),
                token: None,
            }),
        };
        Ok(S3Store {
            endpoint: Endpoint { scheme, host, region },
            bucket,
            prefix,
            credentials,
            url: super::display_url(url.as_str()),
            agent: agent(),
        })
    }

    /// A presigned URL for `method` on `key` (under the bucket; empty for the bucket itself).
    fn signed(&self, method: &str, key: &str, query: &[(&str, &str)]) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let path = format!("/{}/{key}", self.bucket);
        let request = Request { method, path: &path, query };
        self.endpoint.presign(&request, self.credentials.as_ref(), now, SIGNATURE_LIFETIME_SECS)
    }

    fn key(&self, id: &Hash) -> String {
        format!("{}{}", self.prefix, object_path(id))
    }

    /// Where reads look, in order: flint's key, then rfs's flat `hex(id)`.
    fn read_keys(&self, id: &Hash) -> [String; 2] {
        [self.key(id), format!("{}{}", self.prefix, flat_object_path(id))]
    }

    /// Creates the bucket; for tests and first-time setup. An existing bucket is not an error.
    pub(crate) fn create_bucket(&self) -> Result<(), StoreError> {
        if self.credentials.is_none() {
            return Err(StoreError::Failed {
                store: self.url.clone(),
                why: "creating a bucket needs credentials".into(),
            });
        }
        let url = self.signed("PUT", "", &[]);
        let resp = self.agent.put(&url).send_empty().map_err(|e| transport(&self.url, e))?;
        match resp.status().as_u16() {
            200 | 409 => Ok(()),
            code => Err(StoreError::Failed { store: self.url.clone(), why: format!("create bucket: HTTP {code}") }),
        }
    }
}

impl Store for S3Store {
    fn get(&self, id: &Hash) -> Result<Vec<u8>, StoreError> {
        let mut into = Received::default();
        self.get_into(id, &mut into)?;
        Ok(into.into_vec())
    }

    fn get_into(&self, id: &Hash, into: &mut Received) -> Result<(), StoreError> {
        for key in self.read_keys(id) {
            let url = self.signed("GET", &key, &[]);
            let resp = self.agent.get(&url).call().map_err(|e| transport(&self.url, e))?;
            match resp.status().as_u16() {
                200 => return body_into(&self.url, resp, MAX_OBJECT_LEN, into),
                404 => continue,
                code => return Err(status(&self.url, id, code)),
            }
        }
        Err(status(&self.url, id, 404))
    }

    fn has(&self, id: &Hash) -> Result<bool, StoreError> {
        for key in self.read_keys(id) {
            let url = self.signed("HEAD", &key, &[]);
            let resp = self.agent.head(&url).call().map_err(|e| transport(&self.url, e))?;
            match resp.status().as_u16() {
                200 => return Ok(true),
                404 => continue,
                code => return Err(status(&self.url, id, code)),
            }
        }
        Ok(false)
    }

    fn put(&self, id: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        let key = self.key(id);
        let url = self.signed("PUT", &key, &[]);
        let resp = self.agent.put(&url).send(bytes).map_err(|e| transport(&self.url, e))?;
        match resp.status().as_u16() {
            200 | 201 | 204 => Ok(()),
            code => Err(status(&self.url, id, code)),
        }
    }

    fn url(&self) -> &str {
        &self.url
    }

    /// ListObjectsV2 under the prefix, page by page.
    #[cfg(feature = "tools")]
    fn list(&self) -> Result<Vec<Hash>, StoreError> {
        let mut ids = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", self.prefix.as_str())];
            if let Some(t) = &token {
                query.push(("continuation-token", t.as_str()));
            }
            let url = self.signed("GET", "", &query);
            let resp = self.agent.get(&url).call().map_err(|e| transport(&self.url, e))?;
            let code = resp.status().as_u16();
            let text = String::from_utf8_lossy(&body_within(&self.url, resp, MAX_OBJECT_LEN)?).into_owned();
            if code != 200 {
                return Err(StoreError::Failed { store: self.url.clone(), why: format!("listing: HTTP {code}") });
            }
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| StoreError::Failed { store: self.url.clone(), why: format!("listing: {e}") })?;
            ids.extend(page.contents.iter().filter_map(|o| super::id_of_name(&o.key)));
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => return Ok(ids),
            }
        }
    }

    #[cfg(feature = "tools")]
    fn delete(&self, id: &Hash) -> Result<(), StoreError> {
        let key = self.key(id);
        let url = self.signed("DELETE", &key, &[]);
        let resp = self.agent.delete(&url).call().map_err(|e| transport(&self.url, e))?;
        match resp.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            code => Err(status(&self.url, id, code)),
        }
    }
}

/// GETs the object an `s3://HOST/BUCKET/KEY` URL names, of at most `limit` bytes.
pub(crate) fn get_file(url: &url::Url, limit: u64) -> Result<Vec<u8>, StoreError> {
    let s3 = S3Store::new(url).map_err(|why| StoreError::BadUrl { url: super::display_url(url.as_str()), why })?;
    let key = s3.prefix.trim_end_matches('/');
    if key.is_empty() {
        return Err(StoreError::BadUrl { url: s3.url, why: "no object key after the bucket".into() });
    }
    let signed = s3.signed("GET", key, &[]);
    let resp = s3.agent.get(&signed).call().map_err(|e| transport(&s3.url, e))?;
    match resp.status().as_u16() {
        200 => body_within(&s3.url, resp, limit),
        code => Err(file_status(&s3.url, code)),
    }
}

/// Creates the bucket an `s3://` URL names (tests and first-time setup).
pub fn create_bucket(url: &str) -> Result<(), StoreError> {
    let parsed =
        url::Url::parse(url).map_err(|e| StoreError::BadUrl { url: super::display_url(url), why: e.to_string() })?;
    S3Store::new(&parsed).map_err(|why| StoreError::BadUrl { url: super::display_url(url), why })?.create_bucket()
}
