//! # flint manifest
//!
//! The node manifest: what a node runs, signed by its operator. Shared by the node (`init`, which
//! verifies and applies it) and the boot server (`netboot`, which signs and serves it); it knows
//! neither.
//!
//! Three stages, as the data flows: the bytes fetched from the server with their detached
//! ed25519 signature are checked against the baked-in public key ([`verify`]); only then are
//! they parsed ([`RawManifest`], plain serde) and validated into a [`Plan`] with real types
//! (argv as `OsString`s, `Duration`s, signals, digests). Nothing downstream sees unverified bytes
//! or unvalidated strings. A manifest older than the last one applied is refused ([`Plan::newer_than`]),
//! so a replayed old manifest can't roll a node back.

#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::ed25519::{Signature, SigningKey, VerifyingKey};
use flist::Hash;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::vm::{RawVm, VmPlan};

pub mod caps;
pub mod ed25519;
pub mod health;
pub mod limits;
pub mod logs;
pub mod signed;
pub mod vm;

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// No signature came with it.
    #[error("the manifest is not signed")]
    Unsigned,
    /// The signature is not 64 bytes (hex or raw).
    #[error("the signature is malformed")]
    MalformedSignature,
    /// The signature does not match the bytes and key: tampered, or signed by someone else.
    #[error("bad signature: the manifest was altered or signed with another key")]
    BadSignature,
    /// The public key is not a valid ed25519 key.
    #[error("the public key is malformed")]
    MalformedKey,
    /// Signed, but not valid JSON of the right shape.
    #[error("parsing the manifest")]
    Parse(#[source] serde_json::Error),
    /// Signed and parsed, but inconsistent.
    #[error("invalid manifest: {0}")]
    Invalid(String),
    /// Older than (or as old as, but different from) the manifest already applied.
    #[error("manifest version {got} is older than the applied version {applied}: refused (rollback)")]
    Rollback {
        /// The refused version.
        got: u64,
        /// The version in force.
        applied: u64,
    },
}

/// An ed25519 public key, from 64 hex digits.
pub fn parse_key(hex_key: &str) -> Result<VerifyingKey, ManifestError> {
    let bytes: [u8; 32] =
        hex::decode(hex_key.trim()).ok().and_then(|b| b.try_into().ok()).ok_or(ManifestError::MalformedKey)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| ManifestError::MalformedKey)
}

/// Signs manifest bytes: the detached signature as 128 hex digits (what `netboot sign` writes).
pub fn sign(bytes: &[u8], key: &SigningKey) -> String {
    hex::encode(key.sign(bytes).to_bytes())
}

/// Checks the detached `signature` (hex, or 64 raw bytes) of `bytes`, then parses and validates
/// them.
pub fn verify(bytes: &[u8], signature: Option<&[u8]>, key: &VerifyingKey) -> Result<Plan, ManifestError> {
    let signature = signature.ok_or(ManifestError::Unsigned)?;
    let raw: [u8; 64] = match std::str::from_utf8(signature) {
        Ok(text) if text.trim().len() == 128 => hex::decode(text.trim()).ok().and_then(|b| b.try_into().ok()),
        _ => signature.try_into().ok(),
    }
    .ok_or(ManifestError::MalformedSignature)?;
    key.verify(bytes, &Signature::from_bytes(&raw)).map_err(|_| ManifestError::BadSignature)?;
    let raw: RawManifest = serde_json::from_slice(bytes).map_err(ManifestError::Parse)?;
    Plan::from_raw(raw, Hash(*blake3::hash(bytes).as_bytes()))
}

/// The manifest as written (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    /// Increases with every change; a node never goes back to a lower one.
    pub version: u64,
    /// Host name to set.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The cache disk.
    #[serde(default)]
    pub cache: Option<RawCache>,
    /// Images to mount.
    #[serde(default)]
    pub flists: Vec<RawFlist>,
    /// Services to run.
    #[serde(default)]
    pub services: Vec<RawService>,
    /// Virtual machines to run, their root filesystems flists.
    #[serde(default)]
    pub vms: Vec<RawVm>,
    /// When an upgrade to this manifest counts as good; otherwise the node rolls back.
    #[serde(default)]
    pub health: Option<health::RawHealth>,
    /// After this time (RFC 3339, or seconds since the epoch) a node with a trusted clock
    /// refuses the manifest.
    #[serde(default)]
    pub expires: Option<health::RawExpires>,
}

/// What to do with the cache disk (the GPT partition named `flint-cache`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Make a filesystem on it if it has none (first boot); one that has a filesystem is never
    /// formatted.
    #[serde(default)]
    pub format: bool,
    /// `ext4` (default), `btrfs` or `xfs`.
    #[serde(default)]
    pub fs: Option<String>,
}

/// An flist to mount, pinned by digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlist {
    /// Name services refer to (`root`).
    pub name: String,
    /// Where to fetch the flist file.
    pub url: String,
    /// BLAKE3 of the flist file (64 hex digits): anything else is refused.
    pub digest: String,
    /// Chunk stores (`URL` or `RANGE=URL`, a relative URL resolved against the manifest's); the
    /// flist's own routes when empty.
    #[serde(default)]
    pub stores: Vec<String>,
    /// Where to mount it.
    pub mountpoint: String,
    /// An overlay with a writable upper layer on top.
    #[serde(default)]
    pub writable: bool,
    /// Where a recorded prefetch trace of it is (relative to the manifest's URL); by default
    /// its URL with `.trace` for `.fl`. A missing or bad one is ignored.
    #[serde(default)]
    pub trace: Option<String>,
}

/// A service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Unique name.
    pub name: String,
    /// Program and arguments; with `image`, empty means the image's entrypoint and cmd.
    #[serde(default)]
    pub exec: Vec<String>,
    /// A container image's flist (by name) to run in, with the run configuration its `oci.*`
    /// tags carry (entrypoint, cmd, env, workdir, user); the service's own fields win.
    #[serde(default)]
    pub image: Option<String>,
    /// Services that must be up (or, for oneshots, done) first.
    #[serde(default)]
    pub after: Vec<String>,
    /// Runs once to completion instead of being kept running.
    #[serde(default)]
    pub oneshot: bool,
    /// Readiness check, run until it exits 0.
    #[serde(default)]
    pub test: Option<Vec<String>>,
    /// Readiness check init makes itself instead of a command: ready once a TCP connection to
    /// this port on the service's own loopback (127.0.0.1, else ::1) is accepted. Nothing is
    /// started for it, so it can be tried every 20 ms.
    #[serde(default)]
    pub test_port: Option<u16>,
    /// Seconds the readiness check may take in all before the service is restarted.
    #[serde(default)]
    pub test_timeout: Option<f64>,
    /// Environment variables (added to a minimal PATH/HOME/TERM).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default)]
    pub dir: Option<String>,
    /// User to run as (name resolved in the service's root, or numeric).
    #[serde(default)]
    pub user: Option<String>,
    /// Group to run as.
    #[serde(default)]
    pub group: Option<String>,
    /// The flist (by name) to run chrooted in, in a mount namespace of its own.
    #[serde(default)]
    pub root: Option<String>,
    /// Signal asking it to stop (default SIGTERM).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Seconds between the stop signal and SIGKILL (default 10).
    #[serde(default)]
    pub stop_timeout: Option<f64>,
    /// `ring` (default: memory only), `file` (also /var/log/NAME.log) or `null`.
    #[serde(default)]
    pub log: Option<String>,
    /// `always` (default), `on-failure` or `never`: whether it starts again once it ended.
    #[serde(default)]
    pub restart: Option<String>,
    /// Changes to the default capability bounding set ([`caps::DEFAULT`]).
    #[serde(default)]
    pub capabilities: caps::RawCapabilities,
    /// Whether programs it runs may gain privileges (setuid programs, file capabilities);
    /// default no (`no_new_privs`).
    #[serde(default)]
    pub new_privileges: bool,
    /// Its cgroup's limits (memory, pids, cpu, io).
    #[serde(default)]
    pub limits: limits::RawLimits,
    /// Namespaces of its own: any of `pid`, `uts`, `ipc`, `net` (loopback only).
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// Whether a service or VM that ended starts again (a oneshot's success always ends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Started again in every case, with backoff.
    Always,
    /// Started again only when it failed; a clean exit (a guest's power-off) leaves it done.
    OnFailure,
    /// Never started again by itself.
    Never,
}

impl RestartPolicy {
    /// From the manifest's word.
    pub fn parse(word: Option<&str>) -> Result<RestartPolicy, String> {
        match word {
            None | Some("always") => Ok(RestartPolicy::Always),
            Some("on-failure") => Ok(RestartPolicy::OnFailure),
            Some("never") => Ok(RestartPolicy::Never),
            Some(other) => Err(format!("restart {other:?} is not always, on-failure or never")),
        }
    }
}

/// Where a service's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LogTarget {
    /// Discarded.
    Null,
    /// A bounded ring in memory.
    Ring,
    /// The ring, and a file under the log directory.
    File,
}

/// A validated flist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlistPlan {
    /// Name.
    pub name: String,
    /// Where to fetch it.
    pub url: String,
    /// The digest it must have.
    pub digest: Hash,
    /// Stores to read chunks from.
    pub stores: Vec<String>,
    /// Mount point.
    pub mountpoint: PathBuf,
    /// Writable overlay on top.
    pub writable: bool,
    /// Its prefetch trace's URL, if the manifest names one.
    pub trace: Option<String>,
}

/// A validated service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    /// Name.
    pub name: String,
    /// argv.
    pub exec: Vec<OsString>,
    /// Dependencies, all existing services.
    pub after: Vec<String>,
    /// Run once.
    pub oneshot: bool,
    /// Readiness check argv.
    pub test: Option<Vec<OsString>>,
    /// Readiness check by port (see [`RawService::test_port`]); never with `test`.
    pub test_port: Option<u16>,
    /// Total time the check may take.
    pub test_timeout: Duration,
    /// Environment.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory.
    pub dir: Option<PathBuf>,
    /// User.
    pub user: Option<String>,
    /// Group.
    pub group: Option<String>,
    /// The flist it runs in.
    pub root: Option<String>,
    /// `root` is a container image whose run configuration fills what the service leaves out
    /// (see [`ServicePlan::with_image_config`]).
    pub image: bool,
    /// Stop signal.
    pub stop_signal: Signal,
    /// Grace before SIGKILL.
    pub stop_timeout: Duration,
    /// Output.
    pub log: LogTarget,
    /// Whether it starts again once it ended.
    pub restart: RestartPolicy,
    /// A virtual machine: the process is its runner (`init vm run`), made from this plan when
    /// it starts; `exec` is empty.
    pub vm: Option<Box<VmPlan>>,
    /// What it may do as root, and see.
    pub confinement: caps::Confinement,
    /// What it may use.
    pub limits: limits::Limits,
}

impl ServicePlan {
    /// Whether it has a readiness check (a command or a port).
    pub fn has_test(&self) -> bool {
        self.test.is_some() || self.test_port.is_some()
    }

    /// The flists it runs from (its root, or a VM's root, kernel and initrd): a new version of
    /// one restarts it.
    pub fn flists(&self) -> Vec<&str> {
        let mut names: Vec<&str> = match &self.vm {
            Some(vm) => vm.flists().collect(),
            None => self.root.iter().map(String::as_str).collect(),
        };
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The service that runs a VM.
    fn for_vm(vm: VmPlan) -> ServicePlan {
        ServicePlan {
            name: vm.name.clone(),
            exec: Vec::new(),
            after: Vec::new(),
            oneshot: false,
            test: None,
            test_port: None,
            test_timeout: Duration::from_secs(60),
            env: Vec::new(),
            dir: None,
            user: None,
            group: None,
            root: None,
            image: false,
            stop_signal: Signal::SIGTERM,
            // The runner's own grace, then its quit and kill steps.
            stop_timeout: vm.stop_timeout.saturating_add(Duration::from_secs(15)),
            log: LogTarget::File,
            restart: vm.restart,
            vm: Some(Box::new(vm)),
            // The runner makes taps and starts virtiofsd, which sandboxes itself.
            confinement: caps::Confinement::vm_runner(),
            limits: limits::Limits::default(),
        }
    }

    /// The service with what it leaves out taken from its image's run configuration (the
    /// `oci.*` tags `flist pack` writes for container images): argv from entrypoint and cmd,
    /// the image's environment under the service's, its working directory and user.
    pub fn with_image_config(&self, tags: &BTreeMap<String, String>) -> Result<ServicePlan, String> {
        let list = |key: &str| -> Result<Vec<String>, String> {
            tags.get(key).map_or(Ok(Vec::new()), |v| serde_json::from_str(v).map_err(|e| format!("tag {key}: {e}")))
        };
        let mut out = self.clone();
        if out.exec.is_empty() {
            out.exec = list("oci.entrypoint")?.into_iter().chain(list("oci.cmd")?).map(OsString::from).collect();
            if out.exec.is_empty() || out.exec.iter().any(|a| a.as_encoded_bytes().contains(&0)) {
                return Err(format!(
                    "service {}: the image has no entrypoint or cmd, and the service no exec",
                    self.name
                ));
            }
        }
        let mut env: Vec<(OsString, OsString)> = list("oci.env")?
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| !self.env.iter().any(|(own, _)| own == k))
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        env.extend(self.env.iter().cloned());
        out.env = env;
        out.dir = out.dir.or_else(|| tags.get("oci.workdir").map(PathBuf::from));
        if out.user.is_none() {
            if let Some(user) = tags.get("oci.user") {
                let (u, g) = user.split_once(':').map_or((user.as_str(), None), |(u, g)| (u, Some(g)));
                out.user = Some(u.to_string());
                out.group = out.group.or(g.map(String::from));
            }
        }
        Ok(out)
    }
}

/// A verified, validated manifest: what the node should be running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Version.
    pub version: u64,
    /// BLAKE3 of the signed bytes.
    pub digest: Hash,
    /// Host name.
    pub hostname: Option<String>,
    /// The filesystem to make on a blank cache disk, if the manifest asks for one.
    pub format_cache: Option<String>,
    /// Flists, in manifest order.
    pub flists: Vec<FlistPlan>,
    /// Services, in manifest order.
    pub services: Vec<ServicePlan>,
    /// When an upgrade to it counts as good.
    pub health: health::HealthPlan,
    /// Seconds since the epoch after which it is refused (by a node whose clock is trusted).
    pub expires: Option<u64>,
}

/// The longest time any manifest field may name (a day): every deadline the supervisor computes
/// from one stays far inside what an `Instant` can hold.
pub const MAX_SECONDS: f64 = 86_400.0;
/// At most this many services and VMs, and flists, in one manifest.
pub const MAX_SERVICES: usize = 1024;
/// At most this many flists in one manifest.
pub const MAX_FLISTS: usize = 256;

/// A duration field in seconds (`default` when absent), refused unless it is a number from 0 to
/// [`MAX_SECONDS`]; the error names the field and the bound.
pub fn seconds(what: &str, v: Option<f64>, default: f64) -> Result<Duration, String> {
    let v = v.unwrap_or(default);
    if !(0.0..=MAX_SECONDS).contains(&v) {
        return Err(format!("{what}: {v} s is out of range (0 to {MAX_SECONDS} s)"));
    }
    Duration::try_from_secs_f64(v).map_err(|_| format!("{what}: {v} is not a duration"))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

impl Plan {
    fn from_raw(raw: RawManifest, digest: Hash) -> Result<Plan, ManifestError> {
        let invalid = |msg: String| ManifestError::Invalid(msg);
        if raw.flists.len() > MAX_FLISTS {
            return Err(invalid(format!("{} flists: at most {MAX_FLISTS}", raw.flists.len())));
        }
        if raw.services.len().saturating_add(raw.vms.len()) > MAX_SERVICES {
            return Err(invalid(format!(
                "{} services and VMs: at most {MAX_SERVICES}",
                raw.services.len() + raw.vms.len()
            )));
        }
        let mut flist_names = BTreeSet::new();
        let mut flists = Vec::new();
        for f in raw.flists {
            if !valid_name(&f.name) || !flist_names.insert(f.name.clone()) {
                return Err(invalid(format!("flist name {:?} is invalid or repeated", f.name)));
            }
            let digest = Hash::from_hex(&f.digest)
                .ok_or_else(|| invalid(format!("flist {}: digest is not 64 hex digits", f.name)))?;
            if !f.mountpoint.starts_with('/') {
                return Err(invalid(format!("flist {}: mountpoint must be absolute", f.name)));
            }
            flists.push(FlistPlan {
                name: f.name,
                url: f.url,
                digest,
                stores: f.stores,
                mountpoint: PathBuf::from(f.mountpoint),
                writable: f.writable,
                trace: f.trace,
            });
        }
        let names: BTreeSet<&str> =
            raw.services.iter().map(|s| s.name.as_str()).chain(raw.vms.iter().map(|v| v.name.as_str())).collect();
        if names.len() != raw.services.len() + raw.vms.len() {
            return Err(invalid("service and VM names repeat".into()));
        }
        let mut services = Vec::new();
        for s in &raw.services {
            let name = &s.name;
            if !valid_name(name) {
                return Err(invalid(format!("service name {name:?} is invalid")));
            }
            if (s.exec.is_empty() && s.image.is_none()) || s.exec.iter().any(|a| a.contains('\0')) {
                return Err(invalid(format!("service {name}: exec must be a non-empty argv without NULs")));
            }
            if s.image.is_some() && s.root.is_some() {
                return Err(invalid(format!("service {name}: image and root both name the flist to run in")));
            }
            let root = s.image.clone().or_else(|| s.root.clone());
            if let Some(dep) = s.after.iter().find(|d| !names.contains(d.as_str())) {
                return Err(invalid(format!("service {name}: unknown dependency {dep:?}")));
            }
            if let Some(root) = root.as_ref().filter(|r| !flist_names.contains(*r)) {
                return Err(invalid(format!("service {name}: unknown root flist {root:?}")));
            }
            let stop_signal = match s.stop_signal.as_deref() {
                None => Signal::SIGTERM,
                Some(sig) => {
                    let full = if sig.starts_with("SIG") { sig.to_string() } else { format!("SIG{sig}") };
                    full.parse().map_err(|_| invalid(format!("service {name}: unknown signal {sig:?}")))?
                }
            };
            match (&s.test, s.test_port) {
                (Some(_), Some(_)) => {
                    return Err(invalid(format!(
                        "service {name}: test and test_port are two readiness checks: give one"
                    )))
                }
                (_, Some(0)) => return Err(invalid(format!("service {name}: test_port 0 is no port"))),
                (Some(argv), None) if argv.is_empty() || argv.iter().any(|a| a.contains('\0')) => {
                    return Err(invalid(format!("service {name}: test must be a non-empty argv without NULs")))
                }
                _ => {}
            }
            let log = match s.log.as_deref() {
                None | Some("ring") => LogTarget::Ring,
                Some("file") => LogTarget::File,
                Some("null") => LogTarget::Null,
                Some(other) => return Err(invalid(format!("service {name}: log {other:?} is not ring, file or null"))),
            };
            services.push(ServicePlan {
                name: name.clone(),
                exec: s.exec.iter().map(OsString::from).collect(),
                after: s.after.clone(),
                oneshot: s.oneshot,
                test: s.test.as_ref().map(|t| t.iter().map(OsString::from).collect()),
                test_port: s.test_port,
                test_timeout: seconds(&format!("service {name}: test_timeout"), s.test_timeout, 60.0)
                    .map_err(invalid)?,
                env: s.env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
                dir: s.dir.as_ref().map(PathBuf::from),
                user: s.user.clone(),
                group: s.group.clone(),
                root,
                image: s.image.is_some(),
                stop_signal,
                stop_timeout: seconds(&format!("service {name}: stop_timeout"), s.stop_timeout, 10.0)
                    .map_err(invalid)?,
                log,
                restart: RestartPolicy::parse(s.restart.as_deref())
                    .map_err(|e| invalid(format!("service {name}: {e}")))?,
                vm: None,
                confinement: caps::Confinement {
                    capabilities: s.capabilities.resolve().map_err(|e| invalid(format!("service {name}: {e}")))?,
                    no_new_privs: !s.new_privileges,
                    namespaces: limits::Namespaces::parse(&s.namespaces)
                        .map_err(|e| invalid(format!("service {name}: {e}")))?,
                },
                limits: s.limits.resolve().map_err(|e| invalid(format!("service {name}: {e}")))?,
            });
        }
        let mountpoints: BTreeMap<String, PathBuf> =
            flists.iter().map(|f| (f.name.clone(), f.mountpoint.clone())).collect();
        for v in &raw.vms {
            if !valid_name(&v.name) {
                return Err(invalid(format!("vm name {:?} is invalid", v.name)));
            }
            if let Some(dep) = v.after.iter().find(|d| !names.contains(d.as_str())) {
                return Err(invalid(format!("vm {}: unknown dependency {dep:?}", v.name)));
            }
            let plan = VmPlan::from_raw(v, &mountpoints).map_err(invalid)?;
            services.push(ServicePlan { after: v.after.clone(), ..ServicePlan::for_vm(plan) });
        }
        if let Some(cycle) = dependency_cycle(&services) {
            return Err(invalid(format!("services depend on each other in a cycle through {cycle}")));
        }
        let format_cache = match raw.cache {
            Some(RawCache { format: true, fs }) => {
                let fs = fs.unwrap_or_else(|| "ext4".into());
                if !["ext4", "btrfs", "xfs"].contains(&fs.as_str()) {
                    return Err(invalid(format!("cache: fs {fs:?} is not ext4, btrfs or xfs")));
                }
                Some(fs)
            }
            _ => None,
        };
        let health = raw.health.unwrap_or_default().resolve(&services).map_err(invalid)?;
        let expires = raw.expires.as_ref().map(health::RawExpires::resolve).transpose().map_err(invalid)?;
        Ok(Plan {
            version: raw.version,
            digest,
            hostname: raw.hostname,
            format_cache,
            flists,
            services,
            health,
            expires,
        })
    }

    /// Whether this plan may replace one at version `applied`: newer, or the same manifest again.
    pub fn newer_than(&self, applied: Option<(u64, Hash)>) -> Result<(), ManifestError> {
        match applied {
            Some((version, digest)) if self.version < version || (self.version == version && self.digest != digest) => {
                Err(ManifestError::Rollback { got: self.version, applied: version })
            }
            _ => Ok(()),
        }
    }
}

/// A service on a dependency cycle, if any.
fn dependency_cycle(services: &[ServicePlan]) -> Option<String> {
    let by_name: BTreeMap<&str, &ServicePlan> = services.iter().map(|s| (s.name.as_str(), s)).collect();
    // Repeatedly drop services whose dependencies are all dropped; whatever stays is on a cycle.
    let mut left: BTreeSet<&str> = by_name.keys().copied().collect();
    loop {
        let free: Vec<&str> = left
            .iter()
            .copied()
            .filter(|n| by_name.get(n).is_some_and(|s| s.after.iter().all(|d| !left.contains(d.as_str()))))
            .collect();
        if free.is_empty() {
            return left.first().map(|s| s.to_string());
        }
        for n in free {
            left.remove(n);
        }
    }
}

#[cfg(test)]
mod tests;
