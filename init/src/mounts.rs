//! The manifest's flists, mounted by FUSE servers running as threads of this process (the same
//! code as `flist mount`).
//!
//! A flist is mounted in two steps, so that an upgrade never leaves a half-mounted node:
//! [`prepare`] fetches the flist file (or finds it among the files kept from earlier boots),
//! checks it against the digest the signed manifest pins, and mounts it on a staging directory
//! named after its digest; this is the slow part, done while the old version keeps running.
//! [`Mounts::switch`] then, with the services that use the changed flists stopped, moves the
//! mountpoints over (a bind mount, or an overlay with a persistent upper layer for writable ones)
//! and retires what the new manifest no longer names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::control::protocol::MountRow;
use flist::cache::Cache;
use flist::fetch::CachedSource;
use flist::fuse::{FlistFs, FsOptions, MountOptions};
use flist::overlay::Layers;
use flist::store::{RetryPolicy, Router};
use flist::Flist;
use nix::mount::{MntFlags, MsFlags};

use crate::fetch::Fetcher;
use flint_manifest::FlistPlan;

static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Largest flist file accepted (an OS image's metadata is a few hundred KB).
const MAX_FLIST_LEN: u64 = 256 << 20;

/// Why a flist could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Fetching the flist file.
    #[error("flist {name}: fetching")]
    Fetch {
        /// The flist.
        name: String,
        /// Why.
        #[source]
        source: crate::fetch::FetchError,
    },
    /// The file is not the one the manifest pins.
    #[error("flist {name}: digest is {got}, the manifest pins {want}: refused")]
    Digest {
        /// The flist.
        name: String,
        /// Pinned.
        want: String,
        /// Found.
        got: String,
    },
    /// The file does not decode.
    #[error("flist {name}: decoding")]
    Decode {
        /// The flist.
        name: String,
        /// Why.
        #[source]
        source: flist::metadata::MetadataError,
    },
    /// No usable store.
    #[error("flist {name}: stores: {why}")]
    Stores {
        /// The flist.
        name: String,
        /// Why.
        why: String,
    },
    /// A mount or directory operation.
    #[error("flist {name}: {what} {}", path.display())]
    Io {
        /// The flist.
        name: String,
        /// The operation.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where flists are mounted and cached.
#[derive(Clone)]
pub struct MountConfig {
    /// Staging mounts go to `run_dir/flists/NAME.DIGEST`.
    pub run_dir: PathBuf,
    /// Persistent state: flist files by digest (`flists/`), upper layers of writable flists
    /// (`layers/NAME/`). `None` keeps nothing across boots (upper layers go under `run_dir`).
    pub state_dir: Option<PathBuf>,
    /// The verified chunk cache shared by every mount.
    pub cache: Option<Arc<Cache>>,
    /// Memory for recently used chunks, per mount.
    pub memory: usize,
    /// Bytes fetched ahead of readers at most, per mount (`flint.prefetch=`).
    pub prefetch_bytes: u64,
    /// FUSE request threads, per mount.
    pub threads: usize,
    /// Background fetchers (one store connection each while they download), per mount.
    pub prefetch_threads: usize,
}

/// Where PID 1 (and `init run` by default) keeps its staging mounts and control socket.
pub const RUN_DIR: &str = "/run/flint";

impl MountConfig {
    /// Mounts under `run_dir`, keeping state in `state_dir`, with the per-mount memory and
    /// threads sized for a node (16 MiB of recent chunks, 8 MiB of them fetched ahead, 2 FUSE
    /// threads, 8 fetchers).
    pub fn new(run_dir: PathBuf, state_dir: Option<PathBuf>, cache: Option<Arc<Cache>>) -> MountConfig {
        MountConfig {
            run_dir,
            state_dir,
            cache,
            memory: 16 << 20,
            prefetch_bytes: crate::cmdline::DEFAULT_PREFETCH_BYTES,
            threads: 2,
            prefetch_threads: 8,
        }
    }
}

/// A flist mounted on its staging directory, not yet visible at its mountpoint.
pub struct Prepared {
    plan: FlistPlan,
    tags: BTreeMap<String, String>,
    staging: PathBuf,
    session: fuser::BackgroundSession,
    source: Arc<CachedSource>,
    /// Its trace recording, if this mount records one.
    recording: Option<flist::fuse::TraceRecording>,
}

/// A flist in service.
struct Active {
    plan: FlistPlan,
    tags: BTreeMap<String, String>,
    staging: PathBuf,
    session: fuser::BackgroundSession,
    /// Its chunk source, for the stores' health.
    source: Arc<CachedSource>,
    recording: Option<flist::fuse::TraceRecording>,
    /// Why its mountpoint is not in place, if it is not.
    problem: Option<String>,
}

/// Mounts `plan`'s flist on a staging directory. `url`, `stores` and `trace` are its URL, store
/// specs and prefetch trace's URL resolved against the manifest's URL; the plan keeps them as
/// written, and that identifies a mount.
pub fn prepare(
    cfg: &MountConfig,
    fetcher: &Fetcher,
    plan: &FlistPlan,
    url: &str,
    stores: &[String],
    trace: &str,
) -> Result<Prepared, MountError> {
    let name = &plan.name;
    let hex = plan.digest.to_hex();
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| MountError::Io { name: name.clone(), what, path, source }
    };
    let kept = cfg.state_dir.as_ref().map(|d| d.join("flists").join(format!("{hex}.fl")));
    // A kept file is only trusted if it still has the pinned digest; else it is fetched again.
    let bytes = match kept.as_ref().and_then(|k| std::fs::read(k).ok()) {
        Some(b) if blake3::hash(&b).as_bytes() == &plan.digest.0 => b,
        _ => {
            let b =
                fetcher.get(url, MAX_FLIST_LEN).map_err(|source| MountError::Fetch { name: name.clone(), source })?;
            let got = blake3::hash(&b);
            if got.as_bytes() != &plan.digest.0 {
                return Err(MountError::Digest { name: name.clone(), want: hex, got: got.to_hex().to_string() });
            }
            if let Some(k) = &kept {
                if let Err(e) = flist::durable::write_whole(k, &b) {
                    tracing::warn!("flist {name}: keeping a copy in {}: {e}", k.display());
                }
            }
            b
        }
    };
    let flist = flist::metadata::parse(&bytes).map_err(|source| MountError::Decode { name: name.clone(), source })?;
    let bad_stores = |why: String| MountError::Stores { name: name.clone(), why };
    let router = Router::for_flist(&flist, stores, RetryPolicy::default()).map_err(|e| bad_stores(e.to_string()))?;
    if router.is_empty() {
        return Err(bad_stores("neither the manifest nor the flist names one".into()));
    }
    // A generation number keeps a new staging mount off one still in service with the same digest
    // (when only the mountpoint changes).
    let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = cfg.run_dir.join("flists").join(format!("{name}.{}.{generation}", hex.get(..16).unwrap_or_default()));
    std::fs::create_dir_all(&staging).map_err(io("creating", &staging))?;
    let source = CachedSource::new(router, cfg.cache.clone(), cfg.memory);
    source.start_prefetchers(cfg.prefetch_threads, cfg.prefetch_bytes);
    let (tags, format) = (flist.tags.clone(), flist.format);
    let flist = Arc::new(flist);
    let kept_trace = cfg.state_dir.as_ref().map(|d| d.join("flists").join(format!("{hex}.trace")));
    replay_trace(name, fetcher, &source, &flist, &plan.digest, kept_trace.as_deref(), trace);
    let mut fs = FlistFs::new(flist, source.clone(), FsOptions::default());
    // The first seconds of this flist's use on this node, kept for the next cold start.
    let mut recording = None;
    if let Some(path) = kept_trace.filter(|p| !p.exists()) {
        fs = fs.record_trace(flist::trace::Recorder::new(plan.digest, TRACE_WINDOW), path);
        recording = Some(fs.trace_recording());
    }
    // FUSE (and overlayfs, for what switch() mounts next) may still be loading at boot.
    crate::modules::wait_for_late(LATE_MODULES_WAIT);
    let session = flist::fuse::mount(fs, &staging, &MountOptions { threads: cfg.threads, allow_other: true })
        .map_err(io("mounting on", &staging))?;
    std::fs::metadata(&staging).map_err(io("the mount does not answer at", &staging))?;
    let tags = with_rfs_run_config(name, format, tags, &staging);
    Ok(Prepared { plan: plan.clone(), tags, staging, session, source, recording })
}

/// An rfs `.fl` made from a Docker image keeps its run configuration in `/.startup.toml`, not in
/// tags: read it through the mount as the `oci.*` tags a service running the image uses. A bad
/// file is logged; the flist still mounts.
fn with_rfs_run_config(
    name: &str,
    format: flist::format::Format,
    mut tags: BTreeMap<String, String>,
    root: &Path,
) -> BTreeMap<String, String> {
    if format != flist::format::Format::Rfs || tags.keys().any(|k| k.starts_with("oci.")) {
        return tags;
    }
    match flist::rfs::startup::oci_tags_under(root) {
        Some(Ok(run)) => tags.extend(run),
        Some(Err(e)) => tracing::warn!("flist {name}: its run configuration is ignored: {e}"),
        None => {}
    }
    tags
}

/// The longest a mount waits for the modules loaded in the background at boot.
const LATE_MODULES_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long after a mount its reads are recorded into a trace, at most: the recording ends
/// sooner, once the services the health window requires are all ready
/// ([`Mounts::finish_traces`]).
const TRACE_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);
/// The most chunks a trace's replay has queued or in flight ahead of the readers: 2 keeps it
/// just ahead of a boot's reads (under qemu's emulation a deeper replay made the boot slower,
/// its chunks taking the CPU the first reads waited for).
const TRACE_DEPTH: usize = 2;
/// The most bytes a trace's replay fetches ahead.
const TRACE_BYTES: u64 = 256 << 20;

/// Replays the flist's prefetch trace in the background: the one this node kept for the digest,
/// else the one published at `url`. A missing, bad or foreign trace is logged and ignored.
fn replay_trace(
    name: &str,
    fetcher: &Fetcher,
    source: &Arc<CachedSource>,
    flist: &Arc<Flist>,
    digest: &flist::Hash,
    kept: Option<&Path>,
    url: &str,
) {
    let (name, fetcher, source, flist, digest) =
        (name.to_string(), fetcher.clone(), source.clone(), flist.clone(), *digest);
    let (kept, url) = (kept.map(Path::to_path_buf), url.to_string());
    let spawned = std::thread::Builder::new().name("trace".into()).spawn(move || {
        let (bytes, from) = match kept.as_ref().and_then(|k| std::fs::read(k).ok()) {
            Some(b) => (b, kept.as_ref().map_or(String::new(), |k| k.display().to_string())),
            None => match fetcher.get_optional(&url, flist::trace::MAX_LEN) {
                Ok(Some(b)) => (b, url),
                Ok(None) => return tracing::debug!("flist {name}: no trace at {url}"),
                Err(e) => return tracing::info!("flist {name}: no trace ({e})"),
            },
        };
        match flist::trace::Trace::decode_for(&bytes, &digest, flist.chunks.len()) {
            Ok(trace) => {
                tracing::info!("flist {name}: replaying the trace {from} ({} chunks)", trace.chunks.len());
                source.replay(flist, trace, TRACE_BYTES, TRACE_DEPTH);
            }
            Err(e) => tracing::warn!("flist {name}: trace {from} ignored: {e}"),
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("no trace thread: {e}");
    }
}

/// Unmounts a staging mount. Processes still inside keep it alive (lazy detach), so its FUSE
/// server is joined on a thread of its own rather than here.
fn retire(name: &str, staging: &Path, session: fuser::BackgroundSession) {
    if let Err(e) = nix::mount::umount2(staging, MntFlags::MNT_DETACH) {
        tracing::warn!("flist {name}: unmounting {}: {e}", staging.display());
    }
    let spawned = std::thread::Builder::new().name("fuse-retire".into()).spawn(move || drop(session.join()));
    if let Err(e) = spawned {
        tracing::warn!("flist {name}: its FUSE server is left running: {e}");
    }
    let _ = std::fs::remove_dir(staging);
}

impl Prepared {
    /// Unmounts a prepared flist that will not be used (the update it belonged to failed).
    pub fn discard(self) {
        retire(&self.plan.name, &self.staging, self.session);
    }

    /// The flist's name.
    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// The flist's tags (a container image's run configuration among them).
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.tags
    }
}

/// The flists in service.
pub struct Mounts {
    cfg: MountConfig,
    active: BTreeMap<String, Active>,
}

impl Mounts {
    /// None mounted yet.
    pub fn new(cfg: MountConfig) -> Mounts {
        Mounts { cfg, active: BTreeMap::new() }
    }

    /// The flists of `wanted` that are not in service exactly as planned: these need [`prepare`].
    pub fn missing<'a>(&self, wanted: &'a [FlistPlan]) -> Vec<&'a FlistPlan> {
        wanted.iter().filter(|f| self.active.get(&f.name).is_none_or(|a| a.plan != **f)).collect()
    }

    /// The tags of the flist `name` in service.
    pub fn tags(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.active.get(name).map(|a| &a.tags)
    }

    /// Makes `wanted` the flists in service: retires the ones it no longer names or names
    /// differently, and puts `prepared` at their mountpoints. Services using any of them must be
    /// stopped. A mountpoint that cannot be set up is reported, and the rest goes on.
    pub fn switch(&mut self, wanted: &[FlistPlan], prepared: Vec<Prepared>) {
        let leaving: Vec<String> = self
            .active
            .iter()
            .filter(|(name, a)| wanted.iter().find(|f| &f.name == *name).is_none_or(|f| *f != a.plan))
            .map(|(name, _)| name.clone())
            .collect();
        for name in leaving {
            if let Some(a) = self.active.remove(&name) {
                if a.problem.is_none() {
                    if let Err(e) = nix::mount::umount2(&a.plan.mountpoint, MntFlags::MNT_DETACH) {
                        tracing::warn!("flist {name}: unmounting {}: {e}", a.plan.mountpoint.display());
                    }
                }
                retire(&name, &a.staging, a.session);
                tracing::info!("flist {name}: retired version {}", a.plan.digest);
            }
        }
        for p in prepared {
            let problem = self.expose(&p).err().map(|e| {
                tracing::error!("{e}");
                e.to_string()
            });
            if problem.is_none() {
                tracing::info!(
                    "flist {}: version {} mounted on {}",
                    p.plan.name,
                    p.plan.digest,
                    p.plan.mountpoint.display()
                );
            }
            let Prepared { plan, tags, staging, session, source, recording } = p;
            self.active.insert(plan.name.clone(), Active { plan, tags, staging, session, source, recording, problem });
        }
    }

    /// Puts a staging mount at its mountpoint.
    fn expose(&self, p: &Prepared) -> Result<(), MountError> {
        let plan = &p.plan;
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            let name = plan.name.clone();
            move |e: std::io::Error| MountError::Io { name, what, path, source: e }
        };
        std::fs::create_dir_all(&plan.mountpoint).map_err(io("creating", &plan.mountpoint))?;
        if plan.writable {
            let base = self.cfg.state_dir.as_ref().unwrap_or(&self.cfg.run_dir);
            let root = base.join("layers").join(&plan.name);
            let layers = Layers::over(&p.staging, &root).map_err(io("creating the layers under", &root))?;
            layers.mount(&plan.mountpoint).map_err(io("mounting the overlay on", &plan.mountpoint))
        } else {
            nix::mount::mount(Some(&p.staging), &plan.mountpoint, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| io("bind-mounting on", &plan.mountpoint)(e.into()))
        }
    }

    /// Ends the trace recordings still going and writes their traces: the node is up, and
    /// what it reads from now on is not its start.
    pub fn finish_traces(&self) {
        for a in self.active.values() {
            if let Some(r) = &a.recording {
                r.finish();
            }
        }
    }

    /// Unmounts everything (shutdown).
    pub fn unmount_all(&mut self) {
        self.switch(&[], Vec::new());
    }

    /// Pins every chunk of `flists` (read from their files kept in the state directory) in the
    /// cache against eviction, replacing the pins before: the last good version's, so that a
    /// rollback to it works with the stores down. Returns how many chunks are pinned.
    pub fn pin(&self, flists: &[FlistPlan]) -> usize {
        let (Some(cache), Some(state)) = (&self.cfg.cache, &self.cfg.state_dir) else { return 0 };
        let mut chunks = std::collections::HashSet::new();
        for f in flists {
            let path = state.join("flists").join(format!("{}.fl", f.digest.to_hex()));
            let decoded = std::fs::read(&path)
                .ok()
                .filter(|b| blake3::hash(b).as_bytes() == &f.digest.0)
                .and_then(|b| flist::metadata::parse(&b).ok());
            match decoded {
                Some(flist) => chunks.extend(flist.chunks.iter().map(flist::format::ChunkRef::plain_hash)),
                None => tracing::warn!("flist {}: no kept copy in {} to pin its chunks by", f.name, path.display()),
            }
        }
        let pinned = chunks.len();
        if let Err(e) = cache.pin(chunks) {
            tracing::warn!("the cache could not flush its pinned chunks to disk: {e}; a power cut may lose them");
        }
        pinned
    }

    /// What each flist in service fetched, from where, for metrics.
    pub fn traffic(&self) -> Vec<crate::metrics::FlistTraffic> {
        self.active
            .values()
            .map(|a| crate::metrics::FlistTraffic {
                name: a.plan.name.clone(),
                fetch: a.source.stats(),
                stores: a.source.store_health(),
            })
            .collect()
    }

    /// The chunk cache's counters, if there is a cache.
    pub fn cache_stats(&self) -> Option<flist::cache::CacheStats> {
        self.cfg.cache.as_ref().map(|c| c.stats())
    }

    /// What is mounted, for `init ctl mounts`.
    pub fn describe(&self) -> Vec<MountRow> {
        self.active
            .values()
            .map(|a| MountRow {
                name: a.plan.name.clone(),
                digest: a.plan.digest.to_hex(),
                mountpoint: a.plan.mountpoint.clone(),
                writable: a.plan.writable,
                staging: a.staging.clone(),
                url: a.plan.url.clone(),
                problem: a.problem.clone(),
                stores: a.source.store_health(),
            })
            .collect()
    }
}
