//! A client of OCI registries (the distribution API): pulls an image into a local OCI image
//! layout, which [`crate::source::oci`] then reads like any other. Blobs stream to disk and are
//! checked against their digest as they arrive; a blob already in the layout is not fetched
//! again. Authentication: anonymous, HTTP basic, or a bearer token from the registry's token
//! service (Docker Hub, GHCR, Harbor), with credentials from the caller.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::source::oci::{file_sha256, platform_matches, Descriptor};

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum RegistryError {
    #[error("{0:?} is not an image reference (REGISTRY/REPOSITORY[:TAG|@DIGEST])")]
    Reference(String),
    #[error("{url}: {why}")]
    Http { url: String, why: String },
    #[error("{url}: the blob's sha256 is {actual}, {expected} was asked for")]
    Digest { url: String, expected: String, actual: String },
    #[error("{0}")]
    Image(String),
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// `registry/repository:tag` or `registry/repository@sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Host and port.
    pub registry: String,
    /// `library/debian`, `flint/node`.
    pub repository: String,
    /// A tag or a digest.
    pub reference: String,
}

impl Reference {
    /// Parses a reference the way docker does: a first component with a dot, a colon or
    /// `localhost` is the registry, else Docker Hub (`library/` for one-component names).
    pub fn parse(text: &str) -> Result<Reference, RegistryError> {
        let bad = || RegistryError::Reference(text.to_string());
        let (first, rest) = text.split_once('/').unwrap_or(("", text));
        let (registry, path) = if first.contains(['.', ':']) || first == "localhost" {
            (first.to_string(), rest.to_string())
        } else if first.is_empty() {
            ("registry-1.docker.io".to_string(), format!("library/{rest}"))
        } else {
            ("registry-1.docker.io".to_string(), text.to_string())
        };
        let (repository, reference) = match path.split_once('@') {
            Some((repo, digest)) => (repo.to_string(), digest.to_string()),
            None => match path.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
                _ => (path.clone(), "latest".to_string()),
            },
        };
        let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c));
        if !valid(&repository) || !valid(&reference) || repository.contains("..") {
            return Err(bad());
        }
        Ok(Reference { registry, repository, reference })
    }

    /// The tag, or a name made from the digest, for the layout's index.
    pub fn tag(&self) -> String {
        self.reference.replace(':', "-")
    }
}

type Response = ureq::http::Response<ureq::Body>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Post,
    Put,
}

/// The media type of an flist pushed to a registry (as the artifact's single layer).
pub const FLIST_MEDIA_TYPE: &str = "application/vnd.flint.flist.v1";
/// OCI's empty config (`{}`), for artifacts.
const EMPTY_CONFIG: &[u8] = b"{}";

/// Talks to one registry.
pub struct Client {
    agent: ureq::Agent,
    scheme: &'static str,
    credentials: Option<(String, String)>,
    token: Mutex<Option<String>>,
}

#[derive(Deserialize)]
struct Listing {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// `key="value"` pairs of a `WWW-Authenticate: Bearer …` challenge (values may hold commas).
fn challenge(header: &str) -> Option<BTreeMap<String, String>> {
    let mut rest = header.strip_prefix("Bearer ")?;
    let mut out = BTreeMap::new();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (quoted.get(..end)?, quoted.get(end + 1..)?)
            }
            None => after.split_once(',').map_or((after, ""), |(v, n)| (v, n)),
        };
        out.insert(key.trim().trim_start_matches(',').trim().to_string(), value.to_string());
        rest = next;
    }
    Some(out)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What [`Client::pull`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum PullProgress<'a> {
    /// A layer starts (1-based `number` of `of`); already present, it is done at once.
    Layer {
        /// Which.
        number: usize,
        /// Of how many.
        of: usize,
        /// Its digest.
        digest: &'a str,
        /// Its compressed size.
        size: u64,
    },
    /// Bytes of the current layer arrived.
    Bytes(u64),
}

impl Client {
    /// A client; `insecure` speaks plain HTTP (a local registry), `credentials` are user and
    /// password (or token) for basic auth or the token service.
    pub fn new(insecure: bool, credentials: Option<(String, String)>) -> Client {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_body(Some(Duration::from_secs(600)))
            .http_status_as_error(false)
            .build()
            .into();
        Client { agent, scheme: if insecure { "http" } else { "https" }, credentials, token: Mutex::new(None) }
    }

    fn basic(&self) -> Option<String> {
        use base64::Engine;
        let (user, password) = self.credentials.as_ref()?;
        Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))))
    }

    /// The Authorization header to send, if any.
    fn authorization(&self) -> Option<String> {
        let token = crate::durable::lock(&self.token).clone();
        token.map(|t| format!("Bearer {t}")).or_else(|| self.basic())
    }

    /// A request with the current authorization; on 401, authenticates as the challenge says
    /// and sends it once more. Any other answer is the caller's to judge.
    fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, RegistryError> {
        let failed = |why: String| RegistryError::Http { url: url.to_string(), why };
        for attempt in 0..2 {
            let auth = self.authorization();
            let resp = match method {
                Method::Get | Method::Head => {
                    let mut req = if method == Method::Get { self.agent.get(url) } else { self.agent.head(url) };
                    for (k, v) in headers.iter().chain(auth.as_deref().map(|a| ("Authorization", a)).iter()) {
                        req = req.header(*k, *v);
                    }
                    req.call()
                }
                Method::Post | Method::Put => {
                    let mut req = if method == Method::Post { self.agent.post(url) } else { self.agent.put(url) };
                    for (k, v) in headers.iter().chain(auth.as_deref().map(|a| ("Authorization", a)).iter()) {
                        req = req.header(*k, *v);
                    }
                    req.send(body)
                }
            }
            .map_err(|e| failed(e.to_string()))?;
            if resp.status().as_u16() != 401 || attempt > 0 {
                return Ok(resp);
            }
            let header = resp.headers().get("www-authenticate").and_then(|h| h.to_str().ok()).unwrap_or("");
            match challenge(header) {
                Some(params) => self.fetch_token(&params)?,
                None if self.credentials.is_some() && header.starts_with("Basic") => {
                    return Err(failed("the credentials were refused".into()))
                }
                None => return Err(failed(format!("authentication required ({header})"))),
            }
        }
        Err(failed("authentication failed".into()))
    }

    /// A GET that must answer 200.
    fn get(&self, url: &str, accept: &str) -> Result<Response, RegistryError> {
        let resp = self.send(Method::Get, url, &[("Accept", accept)], &[])?;
        match resp.status().as_u16() {
            200 => Ok(resp),
            code => Err(RegistryError::Http { url: url.to_string(), why: format!("HTTP {code}") }),
        }
    }

    fn fetch_token(&self, params: &BTreeMap<String, String>) -> Result<(), RegistryError> {
        let realm = params.get("realm").cloned().unwrap_or_default();
        let mut url =
            url::Url::parse(&realm).map_err(|e| RegistryError::Http { url: realm.clone(), why: e.to_string() })?;
        for key in ["service", "scope"] {
            if let Some(v) = params.get(key) {
                url.query_pairs_mut().append_pair(key, v);
            }
        }
        let mut req = self.agent.get(url.as_str());
        if let Some(b) = self.basic() {
            req = req.header("Authorization", &b);
        }
        let failed = |why: String| RegistryError::Http { url: url.to_string(), why };
        let mut resp = req.call().map_err(|e| failed(e.to_string()))?;
        match (resp.status().as_u16(), self.credentials.is_some()) {
            (200, _) => {}
            (401 | 403, false) => {
                return Err(failed(
                    "the token service wants credentials (authentication required): pass --creds".into(),
                ))
            }
            (401 | 403, true) => {
                return Err(failed("the token service refused the credentials (authentication failed)".into()))
            }
            (code, _) => return Err(failed(format!("token service: HTTP {code}"))),
        }
        let text = resp.body_mut().with_config().limit(1 << 20).read_to_string().map_err(|e| failed(e.to_string()))?;
        let body: serde_json::Value = serde_json::from_str(&text).map_err(|e| failed(e.to_string()))?;
        let token = body.get("token").or_else(|| body.get("access_token")).and_then(|t| t.as_str());
        *crate::durable::lock(&self.token) =
            Some(token.ok_or_else(|| failed("no token in the answer".into()))?.to_string());
        Ok(())
    }

    fn url(&self, r: &Reference, kind: &str, what: &str) -> String {
        format!("{}://{}/v2/{}/{kind}/{what}", self.scheme, r.registry, r.repository)
    }

    /// A manifest or index (small, in memory), its digest checked when it was asked by digest.
    fn manifest(&self, r: &Reference, reference: &str) -> Result<(Vec<u8>, String), RegistryError> {
        let url = self.url(r, "manifests", reference);
        let mut resp = self.get(&url, ACCEPT)?;
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_vec()
            .map_err(|e| RegistryError::Http { url: url.clone(), why: e.to_string() })?;
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        if reference.starts_with("sha256:") && reference != digest {
            return Err(RegistryError::Digest { url, expected: reference.into(), actual: digest });
        }
        Ok((bytes, digest))
    }

    /// Streams a blob into `layout`'s blob directory (unless already there and intact).
    fn blob(&self, r: &Reference, d: &Descriptor, layout: &Path, progress: &dyn Fn(u64)) -> Result<(), RegistryError> {
        let path = blob_path(layout, &d.digest)?;
        if path.exists() && file_sha256(&path).is_ok_and(|h| format!("sha256:{h}") == d.digest) {
            progress(d.size);
            return Ok(());
        }
        let url = self.url(r, "blobs", &d.digest);
        let resp = self.get(&url, "*/*")?;
        let write_err = |source| RegistryError::Write { path: path.display().to_string(), source };
        let tmp = path.with_extension("part");
        let mut out = std::fs::File::create(&tmp).map_err(write_err)?;
        let mut hasher = Sha256::new();
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(|e| RegistryError::Http { url: url.clone(), why: e.to_string() })?;
            if n == 0 {
                break;
            }
            let data = buf.get(..n).unwrap_or_default();
            hasher.update(data);
            out.write_all(data).map_err(write_err)?;
            progress(n as u64);
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != d.digest {
            let _ = std::fs::remove_file(&tmp);
            return Err(RegistryError::Digest { url, expected: d.digest.clone(), actual });
        }
        std::fs::rename(&tmp, &path).map_err(write_err)
    }

    /// Pulls the image `r` for `platform` (`os/arch[/variant]`) into the OCI image layout at
    /// `layout` (created if needed), tagged [`Reference::tag`]. `progress` hears of each layer
    /// as it starts, then of its bytes.
    pub fn pull(
        &self,
        r: &Reference,
        platform: &str,
        layout: &Path,
        progress: &dyn Fn(PullProgress<'_>),
    ) -> Result<(), RegistryError> {
        std::fs::create_dir_all(layout.join("blobs/sha256"))
            .map_err(|source| RegistryError::Write { path: layout.display().to_string(), source })?;
        let (mut bytes, mut digest) = self.manifest(r, &r.reference)?;
        let mut listing: Listing =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Image(format!("manifest: {e}")))?;
        if !listing.manifests.is_empty() || listing.media_type.contains("index") || listing.media_type.contains("list")
        {
            let chosen = listing
                .manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| platform_matches(p, platform)))
                .ok_or_else(|| RegistryError::Image(format!("{}: no {platform} image", r.repository)))?;
            let wanted = chosen.digest.clone();
            (bytes, digest) = self.manifest(r, &wanted)?;
            listing = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Image(format!("manifest: {e}")))?;
        }
        let write = |path: PathBuf, data: &[u8]| {
            std::fs::write(&path, data)
                .map_err(|source| RegistryError::Write { path: path.display().to_string(), source })
        };
        write(blob_path(layout, &digest)?, &bytes)?;
        let config = listing.config.ok_or_else(|| RegistryError::Image("the manifest names no config".into()))?;
        self.blob(r, &config, layout, &|_| {})?;
        for (i, layer) in listing.layers.iter().enumerate() {
            tracing::info!("layer {} ({} bytes)", layer.digest, layer.size);
            let of = listing.layers.len();
            progress(PullProgress::Layer { number: i + 1, of, digest: &layer.digest, size: layer.size });
            self.blob(r, layer, layout, &|n| progress(PullProgress::Bytes(n)))?;
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": if listing.media_type.is_empty() { "application/vnd.oci.image.manifest.v1+json".to_string() } else { listing.media_type },
                "digest": digest,
                "size": bytes.len(),
                "annotations": {"org.opencontainers.image.ref.name": r.tag()},
            }],
        });
        write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        write(layout.join("index.json"), index.to_string().as_bytes())
    }
}

impl Client {
    /// Uploads `bytes` as a blob of `r`'s repository, unless it is there already.
    fn push_blob(&self, r: &Reference, bytes: &[u8]) -> Result<String, RegistryError> {
        let digest = format!("sha256:{}", sha256_hex(bytes));
        let blob_url = self.url(r, "blobs", &digest);
        if self.send(Method::Head, &blob_url, &[], &[])?.status().as_u16() == 200 {
            return Ok(digest);
        }
        let uploads = format!("{}://{}/v2/{}/blobs/uploads/", self.scheme, r.registry, r.repository);
        let started = self.send(Method::Post, &uploads, &[], &[])?;
        let failed = |url: &str, why: String| RegistryError::Http { url: url.to_string(), why };
        if started.status().as_u16() != 202 {
            return Err(failed(&uploads, format!("starting an upload: HTTP {}", started.status().as_u16())));
        }
        let location = started.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or_default();
        let base = url::Url::parse(&uploads).map_err(|e| failed(&uploads, e.to_string()))?;
        let mut target = base.join(location).map_err(|e| failed(location, e.to_string()))?;
        target.query_pairs_mut().append_pair("digest", &digest);
        let done = self.send(Method::Put, target.as_str(), &[("Content-Type", "application/octet-stream")], bytes)?;
        match done.status().as_u16() {
            201 | 204 => Ok(digest),
            code => Err(failed(target.as_str(), format!("uploading: HTTP {code}"))),
        }
    }

    /// Pushes an flist file to `r` as an OCI artifact: the flist as its one layer, `annotations`
    /// (the flist's tags, its BLAKE3 digest) on the manifest. Returns the manifest's digest.
    pub fn push_flist(
        &self,
        r: &Reference,
        flist: &[u8],
        title: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<String, RegistryError> {
        let config = self.push_blob(r, EMPTY_CONFIG)?;
        let layer = self.push_blob(r, flist)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": FLIST_MEDIA_TYPE,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": EMPTY_CONFIG.len()},
            "layers": [{"mediaType": FLIST_MEDIA_TYPE, "digest": layer, "size": flist.len(),
                        "annotations": {"org.opencontainers.image.title": title}}],
            "annotations": annotations,
        })
        .to_string();
        let url = self.url(r, "manifests", &r.reference);
        let resp = self.send(
            Method::Put,
            &url,
            &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            manifest.as_bytes(),
        )?;
        match resp.status().as_u16() {
            201 | 204 => Ok(format!("sha256:{}", sha256_hex(manifest.as_bytes()))),
            code => Err(RegistryError::Http { url, why: format!("pushing the manifest: HTTP {code}") }),
        }
    }

    /// The flist file pushed to `r` by [`Client::push_flist`], checked against its digest.
    pub fn pull_flist(&self, r: &Reference) -> Result<Vec<u8>, RegistryError> {
        let (bytes, _) = self.manifest(r, &r.reference)?;
        let listing: Listing =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Image(format!("manifest: {e}")))?;
        let layer = listing
            .layers
            .iter()
            .find(|l| l.media_type == FLIST_MEDIA_TYPE)
            .ok_or_else(|| RegistryError::Image(format!("{}:{} is not an flist", r.repository, r.reference)))?;
        let url = self.url(r, "blobs", &layer.digest);
        let mut resp = self.get(&url, "*/*")?;
        let data = resp
            .body_mut()
            .with_config()
            .limit(u64::from(crate::format::MAX_BODY_LEN))
            .read_to_vec()
            .map_err(|e| RegistryError::Http { url: url.clone(), why: e.to_string() })?;
        let actual = format!("sha256:{}", sha256_hex(&data));
        if actual != layer.digest {
            return Err(RegistryError::Digest { url, expected: layer.digest.clone(), actual });
        }
        Ok(data)
    }
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, RegistryError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| RegistryError::Image(format!("unsupported digest {digest:?}")))?;
    Ok(layout.join("blobs/sha256").join(hex))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What a registry sends in WWW-Authenticate, and what a user types as a reference,
        /// never panics; a challenge made of quoted pairs reads back as those pairs.
        #[test]
        fn outside_text_never_panics(header in ".{0,80}", reference in "[a-z0-9:/@._-]{0,40}") {
            let _ = challenge(&header);
            let _ = Reference::parse(&reference);
        }

        #[test]
        fn quoted_challenges_read_back(pairs in prop::collection::btree_map("[a-z]{1,8}", "[a-z0-9:/,. -]{0,20}", 1..4)) {
            let header = format!("Bearer {}", pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect::<Vec<_>>().join(","));
            prop_assert_eq!(challenge(&header).unwrap(), pairs);
        }
    }

    #[test]
    fn references_parse_as_docker_does() {
        let r = Reference::parse("127.0.0.1:5000/flint/test:v2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "flint/test", "v2")
        );
        let r = Reference::parse("debian").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("registry-1.docker.io", "library/debian", "latest")
        );
        let r = Reference::parse("ghcr.io/o/img@sha256:abcd").unwrap();
        assert_eq!((r.repository.as_str(), r.reference.as_str()), ("o/img", "sha256:abcd"));
        assert_eq!(r.tag(), "sha256-abcd");
        let r = Reference::parse("localhost/x").unwrap();
        assert_eq!((r.registry.as_str(), r.reference.as_str()), ("localhost", "latest"));
        assert!(Reference::parse("reg.io/a b:c").is_err());
        assert!(Reference::parse("reg.io/../x").is_err());
    }

    #[test]
    fn basic_auth_is_base64() {
        let c = Client::new(true, Some(("Aladdin".into(), "open sesame".into())));
        assert_eq!(c.basic().unwrap(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
    }

    #[test]
    fn bearer_challenges_parse() {
        let p = challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull,push""#).unwrap();
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/debian:pull,push");
        assert!(challenge("Basic realm=x").is_none());
    }
}
