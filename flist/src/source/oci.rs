//! Container images as trees: an OCI image layout directory (`oci-layout:DIR[:TAG]`, as
//! `skopeo`, `umoci` and `buildah` write it) or a `docker save` archive (`docker-archive:FILE`).
//! Layers are applied in order as overlays ([`Layer::Overlay`]: whiteouts, opaque directories,
//! hardlinks across layers), every blob is checked against its digest first, and the image's run
//! configuration becomes the flist's tags ([`RunConfig::tags`]).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::tar::{apply_any, Layer, TarError};
use super::{Meta, Tree};

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum OciError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not the JSON expected")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Image(String),
    #[error("blob {path}: its sha256 is {actual}, the image says {expected}")]
    Digest { path: String, expected: String, actual: String },
    #[error("applying layer {layer}")]
    Layer {
        layer: String,
        #[source]
        source: TarError,
    },
}

/// How the image wants to be run (the `config` object of an image configuration).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// Entrypoint argv.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments (or argv without an entrypoint).
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` environment.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `user[:group]`.
    #[serde(default)]
    pub user: Option<String>,
    /// `PORT/PROTO` keys.
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// Labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl RunConfig {
    /// The configuration as flist tags (`oci.entrypoint`, `oci.cmd`, `oci.env` as JSON arrays;
    /// `oci.workdir`, `oci.user`; `oci.ports` space-separated; `oci.label.NAME` each).
    pub fn tags(&self) -> BTreeMap<String, String> {
        let mut tags = BTreeMap::new();
        let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_default();
        for (key, value) in [("oci.entrypoint", &self.entrypoint), ("oci.cmd", &self.cmd), ("oci.env", &self.env)] {
            if let Some(v) = value {
                tags.insert(key.to_string(), json(v));
            }
        }
        for (key, value) in [("oci.workdir", &self.working_dir), ("oci.user", &self.user)] {
            if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
                tags.insert(key.to_string(), v.clone());
            }
        }
        if let Some(ports) = self.exposed_ports.as_ref().filter(|p| !p.is_empty()) {
            tags.insert("oci.ports".into(), ports.keys().cloned().collect::<Vec<_>>().join(" "));
        }
        for (k, v) in self.labels.iter().flatten() {
            tags.insert(format!("oci.label.{k}"), v.clone());
        }
        tags
    }
}

/// An image's file tree and run configuration.
pub struct Image {
    /// The merged layers.
    pub tree: Tree,
    /// How to run it.
    pub config: RunConfig,
}

/// A content descriptor of the OCI image spec (also what registries answer with).
#[derive(Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    #[serde(default)]
    pub(crate) size: u64,
    #[serde(default)]
    pub(crate) annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
}

/// The platform of one image of a multi-platform index.
#[derive(Deserialize)]
pub(crate) struct Platform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: RunConfig,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> OciError + '_ {
    move |source| OciError::Read { path: path.display().to_string(), source }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, OciError> {
    let bytes = std::fs::read(path).map_err(read_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| OciError::Json { path: path.display().to_string(), source })
}

/// The sha256 of a file, in hex, read as a stream.
pub(crate) fn file_sha256(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Checks that the file at `path` has the sha256 `digest` (`sha256:HEX`).
fn check_digest(path: &Path, digest: &str) -> Result<(), OciError> {
    let expected =
        digest.strip_prefix("sha256:").ok_or_else(|| OciError::Image(format!("unsupported digest {digest}")))?;
    let actual = file_sha256(path).map_err(read_err(path))?;
    if actual != expected {
        return Err(OciError::Digest { path: path.display().to_string(), expected: expected.into(), actual });
    }
    Ok(())
}

/// Whether `p` is the wanted platform, `os/arch[/variant]`.
pub(crate) fn platform_matches(p: &Platform, wanted: &str) -> bool {
    let mut parts = wanted.split('/');
    let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
    Some(p.os.as_str()) == os
        && Some(p.architecture.as_str()) == arch
        && (variant.is_none() || p.variant.as_deref() == variant)
}

fn is_index(media_type: &str) -> bool {
    media_type.ends_with("image.index.v1+json") || media_type.ends_with("manifest.list.v2+json")
}

/// A layout's blob for a digest.
fn blob(dir: &Path, digest: &str) -> Result<PathBuf, OciError> {
    let (alg, hex) = digest.split_once(':').ok_or_else(|| OciError::Image(format!("bad digest {digest:?}")))?;
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) || alg.contains(['/', '.']) {
        return Err(OciError::Image(format!("bad digest {digest:?}")));
    }
    Ok(dir.join("blobs").join(alg).join(hex))
}

/// Reads the image `tag` (or the only one) for `platform` from an OCI image layout directory.
pub fn open_layout(dir: &Path, tag: Option<&str>, platform: &str) -> Result<Image, OciError> {
    let index: Index = read_json(&dir.join("index.json"))?;
    let name_of = |d: &Descriptor| d.annotations.get("org.opencontainers.image.ref.name").cloned();
    let mut chosen = match tag {
        Some(t) => index.manifests.into_iter().find(|d| name_of(d).as_deref() == Some(t)),
        None if index.manifests.len() == 1 => index.manifests.into_iter().next(),
        None => {
            let names: Vec<String> = index.manifests.iter().filter_map(name_of).collect();
            return Err(OciError::Image(format!(
                "{} holds several images; name one of: {}",
                dir.display(),
                names.join(" ")
            )));
        }
    }
    .ok_or_else(|| OciError::Image(format!("{}: no image tagged {:?}", dir.display(), tag.unwrap_or_default())))?;
    // A multi-platform image: an index of manifests, one per platform.
    while is_index(&chosen.media_type) {
        let path = blob(dir, &chosen.digest)?;
        check_digest(&path, &chosen.digest)?;
        let nested: Index = read_json(&path)?;
        let available: Vec<String> = nested
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture)))
            .collect();
        chosen = nested
            .manifests
            .into_iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| platform_matches(p, platform)))
            .ok_or_else(|| OciError::Image(format!("no {platform} image (there is: {})", available.join(" "))))?;
    }
    let manifest_path = blob(dir, &chosen.digest)?;
    check_digest(&manifest_path, &chosen.digest)?;
    let manifest: Manifest = read_json(&manifest_path)?;
    let config_path = blob(dir, &manifest.config.digest)?;
    check_digest(&config_path, &manifest.config.digest)?;
    let config: ImageConfig = read_json(&config_path)?;
    let mut layers = Vec::new();
    for layer in &manifest.layers {
        let path = blob(dir, &layer.digest)?;
        check_digest(&path, &layer.digest)?;
        layers.push(path);
    }
    build(&layers, config.config)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A `docker save` archive, unpacked (streamed) into `scratch` first; the layers are read from
/// there while packing, so `scratch` must outlive the tree.
pub fn open_docker_archive(file: &Path, tag: Option<&str>, scratch: &Path) -> Result<Image, OciError> {
    let archive = std::fs::File::open(file).map_err(read_err(file))?;
    tar::Archive::new(io::BufReader::new(archive)).unpack(scratch).map_err(read_err(file))?;
    let manifests: Vec<DockerManifest> = read_json(&scratch.join("manifest.json"))?;
    let wanted = match tag {
        Some(t) => manifests
            .into_iter()
            .find(|m| m.repo_tags.iter().flatten().any(|r| r == t || r.ends_with(&format!(":{t}")))),
        None => manifests.into_iter().next(),
    }
    .ok_or_else(|| OciError::Image(format!("{}: no image tagged {:?}", file.display(), tag.unwrap_or_default())))?;
    let inside = |rel: &str| -> Result<PathBuf, OciError> {
        let parts = super::components(rel.as_bytes()).map_err(|e| OciError::Image(format!("{rel:?}: {e}")))?;
        Ok(parts.iter().fold(scratch.to_path_buf(), |p, c| p.join(String::from_utf8_lossy(c).as_ref())))
    };
    let config: ImageConfig = read_json(&inside(&wanted.config)?)?;
    let diff_ids = config.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
    let mut layers = Vec::new();
    for (i, rel) in wanted.layers.iter().enumerate() {
        let path = inside(rel)?;
        // docker save writes layers uncompressed: their digests are the config's diff_ids.
        if let Some(diff_id) = diff_ids.get(i) {
            check_digest(&path, diff_id)?;
        }
        layers.push(path);
    }
    build(&layers, config.config)
}

fn build(layers: &[PathBuf], config: RunConfig) -> Result<Image, OciError> {
    let mut tree = Tree::new(Meta::default_dir());
    for path in layers {
        apply_any(&mut tree, path, Layer::Overlay)
            .map_err(|source| OciError::Layer { layer: path.display().to_string(), source })?;
    }
    Ok(Image { tree, config })
}
