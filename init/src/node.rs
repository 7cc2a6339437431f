//! The node loop: keeps the node at the newest valid manifest.
//!
//! It fetches the manifest and its signature (at start, every `interval`, on SIGHUP and on
//! `init ctl reload`), verifies them, refuses anything older than the version recorded on the
//! state disk, mounts the flists that changed on staging directories while the old version keeps
//! running, and hands the supervisor an [`Update`] that stops what leaves or changes, swaps the
//! mounts and starts what is new. Any failure before that hand-over leaves the node exactly as it
//! was. The loop does not wait for the update: while services stop (each within its stop
//! timeout) it keeps answering control and power requests, and records the version once the
//! supervisor says the update is in place. The last good manifest is kept on the state disk, so
//! a node whose server is unreachable at boot runs it (verified again) while it keeps retrying.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};
use ed25519_dalek::VerifyingKey;
use flist::durable::lock;
use flist::Hash;

use crate::control::protocol::{Answer, ManifestState, NodeRequest, Reloaded};
use crate::control::NodeCall;
use crate::error_chain;
use crate::fetch::{with_suffix, FetchError, Fetcher};
use crate::mounts::{prepare, MountConfig, MountError, Mounts, Prepared};
use crate::supervisor::Update;
use flint_manifest::{verify, ManifestError, Plan, ServicePlan};

/// Largest manifest accepted.
const MAX_MANIFEST_LEN: u64 = 4 << 20;
/// Largest signature file (128 hex digits and a newline, or 64 raw bytes).
const MAX_SIGNATURE_LEN: u64 = 1024;
/// First retry delay after a failed reconcile; doubles up to the reconcile interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Why a reconcile did not apply a manifest.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Getting the manifest or its signature.
    #[error("fetching the manifest")]
    Fetch(#[from] FetchError),
    /// Refused: unsigned, tampered, invalid, or a rollback.
    #[error("refusing the manifest")]
    Refused(#[from] ManifestError),
    /// A flist it names could not be mounted; nothing was changed.
    #[error("mounting the manifest's flists; the node keeps its current state")]
    Mount(#[from] MountError),
    /// A service cannot be run as its image says; nothing was changed.
    #[error("refusing the manifest: {0}")]
    Image(String),
    /// The supervisor is shutting down.
    #[error("the supervisor is shutting down")]
    ShuttingDown,
}

/// What to do once every service is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Leave (`init run`); PID 1 powers off instead.
    Exit,
    /// reboot(2).
    Reboot,
    /// Power off.
    Poweroff,
}

/// How the node gets its manifest.
pub struct NodeConfig {
    /// The manifest's URL (or path); the signature is at the same URL plus `.sig`.
    pub manifest_url: String,
    /// The operator's public key.
    pub key: VerifyingKey,
    /// Where the version counter and the last good manifest are kept; nothing is kept if `None`.
    pub state_dir: Option<PathBuf>,
    /// Time between two fetches.
    pub interval: Duration,
    /// Set the host name the manifest names (PID 1).
    pub set_hostname: bool,
}

/// Channels the node loop listens on.
pub struct NodeInputs {
    /// Control requests for the node.
    pub calls: Receiver<NodeCall>,
    /// SIGHUP: reconcile now.
    pub hup: Receiver<()>,
    /// The power keeper: stop, reboot or power off ([`crate::power`]).
    pub power: Receiver<Power>,
    /// The supervisor has returned.
    pub finished: Receiver<()>,
}

/// A manifest as fetched and verified.
pub struct Fetched {
    /// What it says.
    pub plan: Plan,
    /// Its bytes, as signed.
    pub bytes: Vec<u8>,
    /// Its signature.
    pub signature: Option<Vec<u8>>,
}

/// The manifest at `url` and its signature, verified against `key` (not checked against the
/// version in force).
pub fn fetch_verified(fetcher: &Fetcher, url: &str, key: &VerifyingKey) -> Result<Fetched, NodeError> {
    let bytes = fetcher.get(url, MAX_MANIFEST_LEN)?;
    let signature = fetcher.get_optional(&with_suffix(url, ".sig"), MAX_SIGNATURE_LEN)?;
    let plan = verify(&bytes, signature.as_deref(), key)?;
    Ok(Fetched { plan, bytes, signature })
}

/// The node: its manifest, its mounts, and the way to the supervisor.
pub struct Node {
    cfg: NodeConfig,
    fetcher: Fetcher,
    mount_cfg: MountConfig,
    mounts: Arc<Mutex<Mounts>>,
    updates: Sender<Update>,
    stop: Sender<()>,
    applied: Option<Plan>,
    last_check: Option<SystemTime>,
    last_error: Option<String>,
    power: Option<Power>,
    /// An update handed to the supervisor and not yet in place (its leaving services stopping).
    in_flight: Option<InFlight>,
}

/// A manifest whose update the supervisor is carrying out: recorded as applied once `done`.
struct InFlight {
    plan: Plan,
    bytes: Vec<u8>,
    signature: Option<Vec<u8>>,
    done: Receiver<()>,
}

/// `url` as written in the manifest, resolved against the manifest's own URL.
fn resolve(base: &str, url: &str) -> String {
    if url.contains("://") || url.starts_with('/') {
        return url.to_string();
    }
    if base.contains("://") && !base.starts_with("file://") {
        return url::Url::parse(base).and_then(|b| b.join(url)).map_or_else(|_| url.to_string(), |u| u.to_string());
    }
    let base = base.strip_prefix("file://").unwrap_or(base);
    Path::new(base).parent().unwrap_or(Path::new("/")).join(url).to_string_lossy().into_owned()
}

/// A store spec of the manifest (`URL` or `RANGE=URL`) with a relative URL resolved against
/// the manifest's URL, so one served tree works at whatever address nodes reach it.
fn resolve_store(base: &str, spec: &str) -> String {
    let (range, url) = match spec.split_once('=') {
        Some((range, url)) if !range.contains(['/', ':']) => (Some(range), url),
        _ => (None, spec),
    };
    let mut url = resolve(base, url);
    if !url.contains("://") {
        url = format!("dir://{url}");
    }
    range.map_or(url.clone(), |r| format!("{r}={url}"))
}

impl Node {
    /// A node with nothing applied yet.
    pub fn new(
        cfg: NodeConfig,
        fetcher: Fetcher,
        mount_cfg: MountConfig,
        updates: Sender<Update>,
        stop: Sender<()>,
    ) -> Node {
        let mounts = Arc::new(Mutex::new(Mounts::new(mount_cfg.clone())));
        Node {
            cfg,
            fetcher,
            mount_cfg,
            mounts,
            updates,
            stop,
            applied: None,
            last_check: None,
            last_error: None,
            power: None,
            in_flight: None,
        }
    }

    /// The mounts, for unmounting them at shutdown.
    pub fn mounts(&self) -> Arc<Mutex<Mounts>> {
        self.mounts.clone()
    }

    fn kept(&self, file: &str) -> Option<PathBuf> {
        self.cfg.state_dir.as_ref().map(|d| d.join(file))
    }

    /// The version and digest recorded on the state disk, else of the manifest in force.
    fn recorded(&self) -> Option<(u64, Hash)> {
        let on_disk = self.kept("manifest.version").and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| {
            let (version, digest) = t.trim().split_once(' ')?;
            Some((version.parse().ok()?, Hash::from_hex(digest)?))
        });
        on_disk.or(self.applied.as_ref().map(|p| (p.version, p.digest)))
    }

    /// Records `plan` as applied: the version counter and the manifest itself, each written whole.
    fn record(&self, plan: &Plan, bytes: &[u8], signature: Option<&[u8]>) -> std::io::Result<()> {
        let Some(dir) = &self.cfg.state_dir else { return Ok(()) };
        let write = |name: &str, data: &[u8]| flist::durable::write_whole(&dir.join(name), data);
        write("manifest.json", bytes)?;
        write("manifest.json.sig", signature.unwrap_or_default())?;
        write("manifest.version", format!("{} {}\n", plan.version, plan.digest.to_hex()).as_bytes())
    }

    /// Fetches, verifies and applies the manifest. `Ok(true)` if the node changed.
    pub fn reconcile(&mut self) -> Result<bool, NodeError> {
        self.last_check = Some(SystemTime::now());
        let f = fetch_verified(&self.fetcher, &self.cfg.manifest_url, &self.cfg.key)?;
        self.apply(f.plan, &f.bytes, f.signature.as_deref())
    }

    /// Applies the manifest kept on the state disk (verified again: the disk is not trusted).
    fn apply_kept(&mut self) -> Result<bool, NodeError> {
        let read = |name| self.kept(name).and_then(|p| std::fs::read(p).ok());
        let (Some(bytes), signature) = (read("manifest.json"), read("manifest.json.sig")) else {
            return Ok(false);
        };
        let plan = verify(&bytes, signature.as_deref(), &self.cfg.key)?;
        tracing::warn!("running the last good manifest (version {}) kept on the state disk", plan.version);
        self.apply(plan, &bytes, signature.as_deref())
    }

    /// Hands `plan` to the supervisor, its new flists mounted on staging directories; `Ok(true)`
    /// if that changes the node (the update is then in flight).
    fn apply(&mut self, plan: Plan, bytes: &[u8], signature: Option<&[u8]>) -> Result<bool, NodeError> {
        plan.newer_than(self.recorded())?;
        if self.applied.as_ref().is_some_and(|a| a.digest == plan.digest) {
            return Ok(false);
        }
        let missing: Vec<_> = lock(&self.mounts).missing(&plan.flists).into_iter().cloned().collect();
        let mut prepared: Vec<Prepared> = Vec::new();
        for f in &missing {
            let url = resolve(&self.cfg.manifest_url, &f.url);
            let stores: Vec<String> = f.stores.iter().map(|s| resolve_store(&self.cfg.manifest_url, s)).collect();
            // By convention NAME.trace beside NAME.fl, unless the manifest names one.
            let trace = match &f.trace {
                Some(t) => resolve(&self.cfg.manifest_url, t),
                None => format!("{}.trace", url.strip_suffix(".fl").unwrap_or(&url)),
            };
            match prepare(&self.mount_cfg, &self.fetcher, f, &url, &stores, &trace) {
                Ok(p) => prepared.push(p),
                Err(e) => {
                    prepared.into_iter().for_each(Prepared::discard);
                    return Err(e.into());
                }
            }
        }
        let services = match self.with_images(&plan, &prepared) {
            Ok(s) => s,
            Err(e) => {
                prepared.into_iter().for_each(Prepared::discard);
                return Err(e);
            }
        };
        let changed: BTreeSet<&str> = prepared.iter().map(|p| p.name()).collect();
        let restart = plan
            .services
            .iter()
            .filter(|s| s.flists().iter().any(|f| changed.contains(f)))
            .map(|s| s.name.clone())
            .collect();
        let roots = plan.flists.iter().map(|f| (f.name.clone(), f.mountpoint.clone())).collect();
        let (mounts, flists) = (self.mounts.clone(), plan.flists.clone());
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let update = Update {
            services,
            restart,
            roots,
            switch: Box::new(move || lock(&mounts).switch(&flists, prepared)),
            done: done_tx,
        };
        // A refused update drops the prepared mounts with it (their sessions unmount on drop).
        self.updates.send(update).map_err(|_| NodeError::ShuttingDown)?;
        // The supervisor stops what leaves (each within its stop timeout) before it switches;
        // the node loop keeps answering meanwhile and records the version once it is in place.
        tracing::info!("manifest version {}: handed to the supervisor", plan.version);
        self.in_flight = Some(InFlight { plan, bytes: bytes.to_vec(), signature: signature.map(<[u8]>::to_vec), done });
        Ok(true)
    }

    /// Whether a manifest is in force or on its way.
    fn has_manifest(&self) -> bool {
        self.applied.is_some() || self.in_flight.is_some()
    }

    /// The update in flight is in place: records its manifest as the one applied.
    fn applied_in_flight(&mut self) {
        let Some(InFlight { plan, bytes, signature, .. }) = self.in_flight.take() else { return };
        if let Err(e) = self.record(&plan, &bytes, signature.as_deref()) {
            tracing::error!("recording manifest version {} on the state disk: {e}", plan.version);
        }
        if let Some(name) = plan.hostname.as_deref().filter(|_| self.cfg.set_hostname) {
            if let Err(e) = nix::unistd::sethostname(name) {
                tracing::error!("setting the host name to {name}: {e}");
            }
        }
        tracing::info!("manifest version {} applied ({})", plan.version, plan.digest);
        crate::report::stage(
            "applied",
            format!(
                "manifest version {}: {} flists mounted, {} services",
                plan.version,
                plan.flists.len(),
                plan.services.len()
            ),
        );
        self.applied = Some(plan);
    }

    /// The plan's services, those running a container image completed from its run
    /// configuration (the flist's tags: freshly prepared, or of the mount in service).
    fn with_images(&self, plan: &Plan, prepared: &[Prepared]) -> Result<Vec<ServicePlan>, NodeError> {
        let mounts = lock(&self.mounts);
        plan.services
            .iter()
            .map(|s| match (s.image, &s.root) {
                (true, Some(image)) => {
                    let tags = prepared
                        .iter()
                        .find(|p| p.name() == image)
                        .map(Prepared::tags)
                        .or_else(|| mounts.tags(image))
                        .ok_or_else(|| NodeError::Image(format!("service {}: image {image} is not mounted", s.name)))?;
                    s.with_image_config(tags).map_err(NodeError::Image)
                }
                _ => Ok(s.clone()),
            })
            .collect()
    }

    /// One reconcile, logged; falls back to the kept manifest while nothing runs yet.
    fn attempt(&mut self) -> Result<bool, NodeError> {
        let result = self.reconcile();
        match &result {
            Ok(_) => self.last_error = None,
            Err(e) => {
                let message = error_chain(e);
                tracing::error!("{message}");
                crate::report::stage("error", message.clone());
                self.last_error = Some(message);
                if !self.has_manifest() {
                    if let Err(e) = self.apply_kept() {
                        tracing::error!("the kept manifest: {}", error_chain(&e));
                    }
                }
            }
        }
        result
    }

    /// Runs until the supervisor has returned, then says what to do next. The first manifest
    /// is fetched at once; with `must_start`, failing to get one (and having none kept) is an
    /// error instead of a retry (`init run` on a host; PID 1 retries forever).
    pub fn run(&mut self, inputs: &NodeInputs, must_start: bool) -> Result<Power, NodeError> {
        let mut failures = 0u32;
        let mut next = Instant::now();
        loop {
            // One update at a time: the next fetch waits until the one in flight is in place.
            if self.power.is_none() && self.in_flight.is_none() && Instant::now() >= next {
                match self.attempt() {
                    Ok(_) => {
                        failures = 0;
                        next = crate::later(Instant::now(), self.cfg.interval);
                    }
                    Err(e) if must_start && !self.has_manifest() => {
                        let _ = self.stop.send(());
                        let _ = inputs.finished.recv();
                        return Err(e);
                    }
                    Err(_) => {
                        let delay = FIRST_RETRY.saturating_mul(1 << failures.min(16)).min(self.cfg.interval);
                        failures = failures.saturating_add(1);
                        next = crate::later(Instant::now(), delay);
                    }
                }
            }
            flist::faults::hit("init", "node");
            let wait = next.saturating_duration_since(Instant::now());
            let in_place = self.in_flight.as_ref().map_or_else(crossbeam_channel::never, |f| f.done.clone());
            select! {
                recv(in_place) -> done => match done {
                    Ok(()) => self.applied_in_flight(),
                    // The supervisor is shutting down: the update will not be completed.
                    Err(_) => self.in_flight = None,
                },
                recv(inputs.calls) -> call => if let Ok((request, reply)) = call {
                    let answer = self.answer(request);
                    let _ = reply.send(answer);
                },
                recv(inputs.hup) -> _ => next = Instant::now(),
                recv(inputs.power) -> power => if let Ok(power) = power {
                    self.shut_down(power);
                },
                recv(inputs.finished) -> _ => return Ok(self.power.unwrap_or(Power::Exit)),
                default(wait) => {}
            }
        }
    }

    fn shut_down(&mut self, power: Power) {
        tracing::info!("{power:?}: stopping every service");
        crate::report::stage("power", format!("{power:?}"));
        self.power.get_or_insert(power);
        let _ = self.stop.try_send(());
    }

    fn answer(&mut self, request: NodeRequest) -> Answer {
        let version = self.applied.as_ref().map(|p| p.version);
        let applying = self.in_flight.as_ref().map(|f| f.plan.version);
        match request {
            NodeRequest::Reload if applying.is_some() => Answer::Reloaded(Reloaded {
                ok: true,
                changed: false,
                version,
                applying,
                note: Some("an update is in flight: reload again once it is in place".into()),
            }),
            NodeRequest::Reload => match self.attempt() {
                Ok(changed) => Answer::Reloaded(Reloaded {
                    ok: true,
                    changed,
                    version: self.applied.as_ref().map(|p| p.version),
                    applying: self.in_flight.as_ref().map(|f| f.plan.version),
                    note: None,
                }),
                Err(e) => Answer::refused(error_chain(&e)),
            },
            NodeRequest::Manifest => Answer::Manifest(Box::new(ManifestState {
                url: self.cfg.manifest_url.clone(),
                version,
                applying,
                digest: self.applied.as_ref().map(|p| p.digest.to_hex()),
                hostname: self.applied.as_ref().and_then(|p| p.hostname.clone()),
                services: self.applied.as_ref().map(|p| p.services.iter().map(|s| s.name.clone()).collect()),
                flists: self.applied.as_ref().map(|p| p.flists.iter().map(|f| f.name.clone()).collect()),
                last_check: self
                    .last_check
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                last_error: self.last_error.clone(),
            })),
            NodeRequest::Mounts => Answer::Mounts(lock(&self.mounts).describe()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{resolve, resolve_store};

    #[test]
    fn flist_urls_resolve_against_the_manifest() {
        assert_eq!(resolve("http://srv:8000/n/manifest.json", "sys.fl"), "http://srv:8000/n/sys.fl");
        assert_eq!(resolve("http://srv/n/manifest.json", "../f/sys.fl"), "http://srv/f/sys.fl");
        assert_eq!(resolve("http://srv/n/manifest.json", "https://o/x.fl"), "https://o/x.fl");
        assert_eq!(resolve("/etc/flint/manifest.json", "sys.fl"), "/etc/flint/sys.fl");
        assert_eq!(resolve("file:///etc/flint/manifest.json", "sys.fl"), "/etc/flint/sys.fl");
        assert_eq!(resolve("/etc/flint/manifest.json", "/srv/sys.fl"), "/srv/sys.fl");
        let m = "http://srv:8000/n/manifest.json";
        assert_eq!(resolve_store(m, "store"), "http://srv:8000/n/store");
        assert_eq!(resolve_store(m, "00-7f=../store"), "00-7f=http://srv:8000/store");
        assert_eq!(resolve_store(m, "s3://k:s@h/b"), "s3://k:s@h/b");
        assert_eq!(resolve_store(m, "00-ff=http://o/s"), "00-ff=http://o/s");
        assert_eq!(resolve_store("/etc/flint/manifest.json", "store"), "dir:///etc/flint/store");
    }
}
