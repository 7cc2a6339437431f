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
use flint_manifest::ed25519::VerifyingKey;
use flist::durable::lock;
use flist::Hash;

use crate::control::protocol::{Answer, ManifestState, Metrics, NodeRequest, Reloaded, ServiceRequest, ServiceRow};
use crate::control::{NodeCall, ServiceCall};
use crate::error_chain;
use crate::fetch::{with_suffix, FetchError, Fetcher};
use crate::health::{Seen, Verdict, Window};
use crate::kept::{Signed, Versions, MAX_TRIES};
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
    /// Not newer than a version that failed its health window.
    #[error("refusing manifest version {version}: version {failed} failed its health check, so only a newer version is applied")]
    FailedBefore {
        /// The refused version.
        version: u64,
        /// The highest failed version.
        failed: u64,
    },
    /// Expired, by a trusted clock.
    #[error("refusing manifest version {version}: it expired at {at} (the clock is trusted); the node keeps what it runs and is stale")]
    Expired {
        /// The refused version.
        version: u64,
        /// When it expired (RFC 3339).
        at: String,
    },
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
    /// The supervisor's requests, for the health window's view of the services.
    pub services: Sender<ServiceCall>,
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
    let bytes = fetcher.get_signed(url, MAX_MANIFEST_LEN, "manifest")?;
    let signature = fetcher.get_optional_signed(&with_suffix(url, ".sig"), MAX_SIGNATURE_LEN, "manifest")?;
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
    /// The versions kept: floor, last good, trial, failed.
    versions: Versions,
    /// The health window of the version applied last, while it is open.
    window: Option<Window>,
    /// The manifest in its health window, to become the last good one.
    pending_good: Option<Signed>,
    /// Rollbacks since init started.
    rollbacks: u64,
    /// The node loop has run (the start-up steps are done).
    started: bool,
    /// The last health verdict or rollback, for `init ctl manifest`.
    health: Option<String>,
    /// Why the node is stale (its manifest expired), if it is.
    stale: Option<String>,
    last_check: Option<SystemTime>,
    last_error: Option<String>,
    power: Option<Power>,
    /// An update handed to the supervisor and not yet in place (its leaving services stopping).
    in_flight: Option<InFlight>,
}

/// A manifest whose update the supervisor is carrying out: recorded as applied once `done`.
struct InFlight {
    plan: Plan,
    signed: Signed,
    origin: Origin,
    done: Receiver<()>,
}

/// Why a manifest is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// Fetched and newer: an upgrade, judged by its health window.
    Upgrade,
    /// The one kept on the state disk, while the server cannot be reached.
    Kept,
    /// Back to the last good version, and why.
    Rollback(String),
}

/// Every service's row, asked of the supervisor (which answers between two events).
fn service_rows(services: &Sender<ServiceCall>) -> Option<Vec<ServiceRow>> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    services.send((ServiceRequest::List, reply)).ok()?;
    match answer.recv_timeout(Duration::from_secs(2)) {
        Ok(Answer::Services(rows)) => Some(rows),
        _ => None,
    }
}

/// How often the node loop looks whether its numbers are due at the boot server.
const METRICS_TICK: Duration = Duration::from_secs(5);
/// How often an open health window looks at the services.
const HEALTH_TICK: Duration = Duration::from_secs(1);

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
        let versions = Versions::load(cfg.state_dir.clone());
        Node {
            versions,
            window: None,
            pending_good: None,
            rollbacks: 0,
            started: false,
            health: None,
            stale: None,
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

    /// The floor kept on the state disk, else the manifest in force.
    fn floor(&self) -> Option<(u64, Hash)> {
        self.versions.floor().or(self.applied.as_ref().map(|p| (p.version, p.digest)))
    }

    /// Fetches, verifies and applies the manifest. `Ok(true)` if the node changed.
    pub fn reconcile(&mut self) -> Result<bool, NodeError> {
        self.last_check = Some(SystemTime::now());
        let f = fetch_verified(&self.fetcher, &self.cfg.manifest_url, &self.cfg.key)?;
        self.apply(f.plan, Signed { bytes: f.bytes, signature: f.signature }, Origin::Upgrade)
    }

    /// Applies the last good manifest kept on the state disk, else the one running when the node
    /// stopped (verified again: the disk is not trusted).
    fn apply_kept(&mut self) -> Result<bool, NodeError> {
        let Some(kept) = self.versions.good().cloned().or_else(|| self.versions.kept_running()) else {
            return Ok(false);
        };
        let plan = verify(&kept.bytes, kept.signature.as_deref(), &self.cfg.key)?;
        tracing::warn!("running the last good manifest (version {}) kept on the state disk", plan.version);
        self.apply(plan, kept, Origin::Kept)
    }

    /// Whether `plan`, fetched, may be applied: newer than the floor, newer than any failed
    /// version, not expired by a trusted clock. Sets or clears the node's staleness.
    fn admit(&mut self, plan: &Plan, same: bool) -> Result<(), NodeError> {
        if !same {
            if let Some(failed) = self.versions.failed.filter(|f| plan.version <= *f) {
                return Err(NodeError::FailedBefore { version: plan.version, failed });
            }
            plan.newer_than(self.floor())?;
        }
        let Some(at) = plan.expires.filter(|_| flint_manifest::health::expired(plan.expires, SystemTime::now())) else {
            self.stale = None;
            return Ok(());
        };
        let at = flist::utc::rfc3339(at);
        let clock = crate::clock::now();
        if clock.trust != crate::clock::Trust::Trusted {
            tracing::warn!(
                "manifest version {} expired at {at}, but the clock is {clock}: not refused on expiry",
                plan.version
            );
            return Ok(());
        }
        let why = format!("manifest version {} expired at {at}; no fresh manifest is served", plan.version);
        if self.stale.as_ref() != Some(&why) {
            crate::report::stage("stale", why.clone());
        }
        self.stale = Some(why);
        Err(NodeError::Expired { version: plan.version, at })
    }

    /// Hands `plan` to the supervisor, its new flists mounted on staging directories; `Ok(true)`
    /// if that changes the node (the update is then in flight).
    fn apply(&mut self, plan: Plan, signed: Signed, origin: Origin) -> Result<bool, NodeError> {
        let same = self.applied.as_ref().is_some_and(|a| a.digest == plan.digest);
        if origin == Origin::Upgrade {
            self.admit(&plan, same)?;
        }
        if same {
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
        if origin == Origin::Upgrade {
            // Kept before the switch: a power loss from here on counts as a failed try.
            let trial = self.versions.start_trial(plan.version, plan.digest);
            tracing::info!("manifest version {}: try {} of {MAX_TRIES}", plan.version, trial.tries);
        }
        self.window = None;
        self.in_flight = Some(InFlight { plan, signed, origin, done });
        Ok(true)
    }

    /// Whether a manifest is in force or on its way.
    fn has_manifest(&self) -> bool {
        self.applied.is_some() || self.in_flight.is_some()
    }

    /// The update in flight is in place: records its manifest as the one applied, and opens
    /// the health window of an upgrade.
    fn applied_in_flight(&mut self) {
        let Some(InFlight { plan, signed, origin, .. }) = self.in_flight.take() else { return };
        self.versions.running(&signed);
        match &origin {
            Origin::Upgrade => {
                self.versions.raise_floor(plan.version, plan.digest);
                tracing::info!(
                    "manifest version {}: health window of {} s for {} (to stay ready for {} s)",
                    plan.version,
                    plan.health.window.as_secs_f64(),
                    plan.health.require.join(", "),
                    plan.health.settle.as_secs_f64()
                );
                self.window = Some(Window::open(plan.health.clone(), Instant::now()));
                self.pending_good = Some(signed);
            }
            Origin::Rollback(why) => {
                let message = format!("rolled back to manifest version {}: {why}", plan.version);
                tracing::warn!("{message}");
                crate::report::stage("rollback", message.clone());
                self.health = Some(message);
            }
            Origin::Kept => {}
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

    /// One look at the services for the open health window, and what follows from its verdict:
    /// the upgrade becomes the last good version, or the node goes back to it.
    fn watch_health(&mut self, services: &Sender<ServiceCall>) {
        let Some(window) = self.window.as_mut() else { return };
        let Some(rows) = service_rows(services) else { return };
        let seen: Vec<Seen> =
            rows.into_iter().map(|r| Seen { name: r.name, state: r.state, starts: r.starts }).collect();
        let verdict = window.step(Instant::now(), &seen);
        if window.all_ready() {
            // The services are up: the traces of their start end here, without the reads of
            // the settle time (what a replay fetched of those only competed with the next start).
            lock(&self.mounts).finish_traces();
        }
        let Some(plan) = self.applied.clone() else { return };
        match verdict {
            Verdict::Watching => {}
            Verdict::Healthy => {
                self.window = None;
                self.versions.end_trial();
                if let Some(good) = self.pending_good.take() {
                    self.versions.set_good(good);
                }
                self.pin_good();
                let message = format!(
                    "manifest version {} is healthy: {} ready for {} s",
                    plan.version,
                    plan.health.require.join(", "),
                    plan.health.settle.as_secs_f64()
                );
                tracing::info!("{message}");
                crate::report::stage("healthy", message.clone());
                self.health = Some(message);
                // Also with no service required: the start is over by now.
                lock(&self.mounts).finish_traces();
            }
            Verdict::Failed(cause) => {
                self.window = None;
                self.pending_good = None;
                self.versions.end_trial();
                self.versions.fail(plan.version);
                let message = format!("manifest version {} failed its health check: {cause}", plan.version);
                tracing::error!("{message}");
                crate::report::stage("unhealthy", message.clone());
                self.health = Some(message);
                self.roll_back(&format!("version {} failed its health check: {cause}", plan.version));
            }
        }
    }

    /// Pins the chunks of the last good version's flists in the cache, so that a rollback to it
    /// works with the stores down.
    fn pin_good(&self) {
        let Some(good) = self.versions.good() else { return };
        match verify(&good.bytes, good.signature.as_deref(), &self.cfg.key) {
            Ok(plan) => {
                let pinned = lock(&self.mounts).pin(&plan.flists);
                tracing::info!("last good manifest version {}: {pinned} chunks pinned in the cache", plan.version);
            }
            Err(e) => tracing::error!("the last good manifest kept on the state disk: {e}"),
        }
    }

    /// Goes back to the last good manifest, kept on the state disk (or in memory).
    fn roll_back(&mut self, why: &str) {
        self.rollbacks = self.rollbacks.saturating_add(1);
        let Some(good) = self.versions.good().cloned() else {
            let message = format!("no earlier good version to go back to ({why}); the node keeps what it runs");
            tracing::error!("{message}");
            crate::report::stage("rollback", message.clone());
            self.health = Some(message);
            return;
        };
        let result = verify(&good.bytes, good.signature.as_deref(), &self.cfg.key)
            .map_err(NodeError::from)
            .and_then(|plan| self.apply(plan, good, Origin::Rollback(why.to_string())));
        if let Err(e) = result {
            let message = format!("rolling back ({why}): {}", error_chain(&e));
            tracing::error!("{message}");
            crate::report::stage("rollback", message.clone());
            self.health = Some(message);
        }
    }

    /// At start: a health window cut short (power was lost) counts as a failed try; the node
    /// starts from the last good version, and a version tried [`MAX_TRIES`] times is failed.
    fn resume_after_interrupted_trial(&mut self) {
        let Some(trial) = self.versions.trial else { return };
        let why = format!(
            "the health window of version {} was cut short (power lost?): try {} of {MAX_TRIES} failed",
            trial.version, trial.tries
        );
        tracing::warn!("{why}");
        if trial.tries >= MAX_TRIES {
            self.versions.end_trial();
            self.versions.fail(trial.version);
        }
        if self.versions.good().is_some_and(|g| blake3::hash(&g.bytes).as_bytes() != &trial.digest.0) {
            self.roll_back(&why);
        }
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
            Ok(_) => {
                // The boot server shows the node in error until it hears otherwise.
                if self.last_error.take().is_some() {
                    crate::report::stage("recovered", "the manifest check works again");
                }
            }
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
        // Once per process: the guard runs this loop again after a panic, from its last state,
        // and an open window is then still open, not cut short.
        if !self.started {
            self.started = true;
            self.pin_good();
            self.resume_after_interrupted_trial();
        }
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
            self.watch_health(&inputs.services);
            if crate::logship::metrics_due(Instant::now()) {
                crate::logship::metrics(self.metrics_text(&inputs.services), Instant::now());
            }
            let mut wait = next.saturating_duration_since(Instant::now()).min(METRICS_TICK);
            if self.window.is_some() {
                wait = wait.min(HEALTH_TICK);
            }
            let in_place = self.in_flight.as_ref().map_or_else(crossbeam_channel::never, |f| f.done.clone());
            select! {
                recv(in_place) -> done => match done {
                    Ok(()) => self.applied_in_flight(),
                    // The supervisor is shutting down: the update will not be completed.
                    Err(_) => self.in_flight = None,
                },
                recv(inputs.calls) -> call => if let Ok((request, reply)) = call {
                    let answer = self.answer(request, &inputs.services);
                    let _ = reply.send(answer);
                },
                recv(inputs.hup) -> _ => next = Instant::now(),
                recv(inputs.power) -> power => if let Ok(power) = power {
                    // A last look first: an upgrade whose services are all ready now is good,
                    // not a cut-short try at the next boot.
                    self.watch_health(&inputs.services);
                    self.shut_down(power);
                },
                recv(inputs.finished) -> _ => return Ok(self.power.unwrap_or(Power::Exit)),
                default(wait) => {}
            }
        }
    }

    /// The node's numbers, in Prometheus's text format.
    fn metrics_text(&self, services: &Sender<ServiceCall>) -> String {
        let (flists, cache) = {
            let mounts = lock(&self.mounts);
            (mounts.traffic(), mounts.cache_stats())
        };
        let (log_delivered, log_dropped, log_waiting) = crate::logship::counts();
        let snapshot = crate::metrics::Snapshot {
            flists,
            cache,
            services: service_rows(services).unwrap_or_default(),
            version: self.applied.as_ref().map(|p| p.version),
            good: self.good_version(),
            failed: self.versions.failed,
            stale: self.stale.is_some(),
            rollbacks: self.rollbacks,
            log_delivered,
            log_dropped,
            log_waiting,
        };
        crate::metrics::render(&snapshot)
    }

    /// The last good manifest's version.
    fn good_version(&self) -> Option<u64> {
        let good = self.versions.good()?;
        serde_json::from_slice::<flint_manifest::RawManifest>(&good.bytes).ok().map(|m| m.version)
    }

    fn shut_down(&mut self, power: Power) {
        tracing::info!("{power:?}: stopping every service");
        crate::report::stage("power", format!("{power:?}"));
        self.power.get_or_insert(power);
        let _ = self.stop.try_send(());
    }

    fn answer(&mut self, request: NodeRequest, services: &Sender<ServiceCall>) -> Answer {
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
                expires: self.applied.as_ref().and_then(|p| p.expires).map(flist::utc::rfc3339),
                stale: self.stale.clone(),
                health: self.health.clone(),
                health_window: self.window.as_ref().map(|w| w.length().as_secs()),
                floor: self.versions.floor().map(|(v, _)| v),
                failed: self.versions.failed,
                good: self.good_version(),
                identity: crate::identity::get().map(|i| i.describe()),
            })),
            NodeRequest::Mounts => Answer::Mounts(lock(&self.mounts).describe()),
            NodeRequest::Metrics => Answer::Metrics(Metrics { text: self.metrics_text(services) }),
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
