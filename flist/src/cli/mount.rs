//! `mount`, `umount` and `cache`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flist::cache::Cache;
use flist::fetch::CachedSource;
use flist::fuse::{FlistFs, FsOptions, MountOptions};
use flist::overlay::Layers;
use nix::sys::signal::{SigSet, Signal};

use super::pack::size_bytes;
use super::{load_with_digest, print_json, StoreArgs};

/// Mount an flist read-only: the whole tree at once, content fetched when read, verified, and
/// cached on disk. Runs in the foreground until SIGINT/SIGTERM or `flist umount` (then unmounts
/// cleanly); -d returns once the mount answers.
#[derive(clap::Args)]
pub(crate) struct MountArgs {
    /// The flist file.
    flist: PathBuf,
    /// Where to mount.
    mountpoint: PathBuf,
    /// Disk cache directory, shared by every flist mounted on the machine.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Most bytes the disk cache keeps (e.g. 10G); least recently used chunks are evicted.
    #[arg(long, default_value = "10G", value_parser = size_bytes)]
    cache_size: u64,
    /// Memory for recently used chunks (e.g. 64M); at least twice --prefetch-bytes, so that
    /// what is fetched ahead is still there when the reader comes.
    #[arg(long, default_value = "128M", value_parser = size_bytes)]
    memory: u64,
    /// Bytes fetched ahead of the readers at most (queued or in flight).
    #[arg(long, default_value = "64M", value_parser = size_bytes)]
    prefetch_bytes: u64,
    #[command(flatten)]
    stores: StoreArgs,
    /// FUSE request threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Background fetchers for read-ahead (each holds one connection to a store while it
    /// downloads).
    #[arg(long, default_value_t = 16)]
    prefetch_threads: usize,
    /// Chunks fetched ahead of a sequential reader, or of one walking the tree in order.
    #[arg(long, default_value_t = 64)]
    readahead: u32,
    /// Record which chunks are read, in order, during the first --trace-window seconds (or until
    /// unmounted) into FILE: a trace to keep or publish next to the flist (NAME.trace).
    #[arg(long, value_name = "FILE")]
    record_trace: Option<PathBuf>,
    /// Seconds after mounting that --record-trace records.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    trace_window: u64,
    /// Replay a trace: its chunks are fetched ahead of the readers, in its order. A missing,
    /// malformed or foreign (other flist) trace is ignored with a warning.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Bytes a trace's replay asks for at most.
    #[arg(long, default_value = "256M", value_parser = size_bytes)]
    trace_bytes: u64,
    /// Detach: return once the mount answers, keep serving in the background.
    #[arg(short, long)]
    daemon: bool,
    /// Writable view: an overlayfs over the read-only mount, with the changes kept in
    /// UPPER/upper (the flist itself is mounted on UPPER/lower).
    #[arg(long, value_name = "UPPER")]
    rw: Option<PathBuf>,
}

/// Unmount an flist mount (any FUSE mount).
#[derive(clap::Args)]
pub(crate) struct UmountArgs {
    /// The mountpoint.
    mountpoint: PathBuf,
    /// Detach even if busy (the mount goes away when its last user leaves).
    #[arg(long)]
    lazy: bool,
}

/// Inspect and maintain a disk cache.
#[derive(clap::Args)]
pub(crate) struct CacheArgs {
    #[command(subcommand)]
    action: CacheAction,
    /// The cache directory.
    #[arg(long, global = true, default_value = "/var/cache/flist")]
    cache: PathBuf,
    /// The quota to apply.
    #[arg(long, global = true, default_value = "10G", value_parser = size_bytes)]
    cache_size: u64,
    /// Print as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum CacheAction {
    /// Entries and bytes in the cache.
    Stats,
    /// Evict least recently used entries down to --cache-size.
    Gc,
    /// Re-hash every entry; drop the corrupt ones.
    Verify,
}

fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else { return false };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    // Field 5 is the mount point, with spaces etc. octal-escaped.
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

pub(crate) fn mount(a: MountArgs) -> anyhow::Result<ExitCode> {
    let (flist, digest) = load_with_digest(&a.flist)?;
    let flist = Arc::new(flist);
    let router = a.stores.router(&flist)?;
    anyhow::ensure!(a.mountpoint.is_dir(), "{} is not a directory", a.mountpoint.display());

    // Daemonize before any thread exists; the child reports readiness through a pipe.
    let ready = if a.daemon {
        let (rx, tx) = nix::unistd::pipe().context("pipe")?;
        // SAFETY: no other threads exist yet in this process, so the child may run arbitrary code.
        match unsafe { nix::unistd::fork() }.context("fork")? {
            nix::unistd::ForkResult::Parent { .. } => {
                drop(tx);
                let mut msg = String::new();
                std::fs::File::from(rx).read_to_string(&mut msg)?;
                return match msg.strip_prefix("ok") {
                    Some(_) => Ok(ExitCode::SUCCESS),
                    None => anyhow::bail!("mount failed: {}", if msg.is_empty() { "daemon died" } else { &msg }),
                };
            }
            nix::unistd::ForkResult::Child => {
                drop(rx);
                nix::unistd::setsid().context("setsid")?;
                // Detach from the caller's terminal or pipes, or whoever reads them never sees EOF.
                // Mount errors still reach the caller through the readiness pipe.
                let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
                for fd in 0..3 {
                    nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd).context("dup2")?;
                }
                Some(std::fs::File::from(tx))
            }
        }
    } else {
        None
    };
    let result = serve(&a, flist, digest, router, ready);
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    result
}

fn serve(
    a: &MountArgs,
    flist: Arc<flist::Flist>,
    digest: flist::Hash,
    router: flist::store::Router,
    mut ready: Option<std::fs::File>,
) -> anyhow::Result<ExitCode> {
    let report = |ready: &mut Option<std::fs::File>, msg: &str| {
        if let Some(mut f) = ready.take() {
            let _ = f.write_all(msg.as_bytes());
        }
    };
    // Signals are waited for synchronously: block them in every thread started from here on.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;

    let cache = match &a.cache {
        Some(dir) => Some(Arc::new(Cache::open(dir, a.cache_size)?)),
        None => None,
    };
    let source = CachedSource::new(router, cache, (a.memory.max(a.prefetch_bytes.saturating_mul(2))) as usize);
    source.start_prefetchers(a.prefetch_threads.min(flist::store::CONNECTIONS_PER_HOST), a.prefetch_bytes);
    if let Some(path) = &a.trace {
        let trace = std::fs::read(path).map_err(|e| e.to_string()).and_then(|bytes| {
            flist::trace::Trace::decode_for(&bytes, &digest, flist.chunks.len()).map_err(|e| e.to_string())
        });
        match trace {
            Ok(trace) => {
                tracing::info!("replaying the trace {} ({} chunks)", path.display(), trace.chunks.len());
                source.replay(flist.clone(), trace, a.trace_bytes, a.prefetch_threads);
            }
            Err(e) => tracing::warn!("trace {} ignored: {e}", path.display()),
        }
    }
    let mut fs =
        FlistFs::new(flist, source.clone(), FsOptions { readahead_chunks: a.readahead, ..FsOptions::default() });
    if let Some(out) = &a.record_trace {
        let recorder = flist::trace::Recorder::new(digest, Duration::from_secs(a.trace_window));
        fs = fs.record_trace(recorder, out.clone());
    }
    let layers = match a.rw.as_deref().map(Layers::create).transpose() {
        Ok(l) => l,
        Err(e) => {
            report(&mut ready, &format!("creating the layers: {e}"));
            return Err(e).context("creating the writable layers");
        }
    };
    let fuse_target = layers.as_ref().map_or(a.mountpoint.as_path(), |l| l.lower.as_path());
    let session = match flist::fuse::mount(fs, fuse_target, &MountOptions { threads: a.threads, allow_other: true }) {
        Ok(s) => s,
        Err(e) => {
            report(&mut ready, &format!("{e}"));
            return Err(e).with_context(|| format!("mounting on {}", fuse_target.display()));
        }
    };
    // Ready only once the mount answers.
    if let Err(e) = std::fs::metadata(fuse_target) {
        report(&mut ready, &format!("the mount does not answer: {e}"));
        anyhow::bail!("the mount does not answer: {e}");
    }
    if let Some(layers) = &layers {
        if let Err(e) = layers.mount(&a.mountpoint) {
            report(&mut ready, &format!("mounting the overlay: {e}"));
            return Err(e).with_context(|| format!("mounting the overlay on {}", a.mountpoint.display()));
        }
    }
    report(&mut ready, "ok");
    tracing::info!("mounted {} on {}", a.flist.display(), a.mountpoint.display());

    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            let _ = tx.send(sig);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(sig) => {
                tracing::info!("{sig}: unmounting {}", a.mountpoint.display());
                if layers.is_some() {
                    nix::mount::umount2(&a.mountpoint, nix::mount::MntFlags::MNT_DETACH)
                        .context("unmounting the overlay")?;
                }
                session.umount_and_join().context("unmounting")?;
                log_stats(&source);
                return Ok(ExitCode::SUCCESS);
            }
            Err(_) if !is_mounted(&a.mountpoint) => {
                tracing::info!("{} was unmounted", a.mountpoint.display());
                drop(session);
                log_stats(&source);
                return Ok(ExitCode::SUCCESS);
            }
            Err(_) => {}
        }
    }
}

/// What the mount fetched and how often readers waited, for the log (`-v`).
fn log_stats(source: &CachedSource) {
    match serde_json::to_string(&source.stats()) {
        Ok(stats) => tracing::info!("fetch stats: {stats}"),
        Err(e) => tracing::warn!("fetch stats: {e}"),
    }
}

pub(crate) fn umount(a: UmountArgs) -> anyhow::Result<ExitCode> {
    let flags = if a.lazy { nix::mount::MntFlags::MNT_DETACH } else { nix::mount::MntFlags::empty() };
    nix::mount::umount2(&a.mountpoint, flags).with_context(|| format!("unmounting {}", a.mountpoint.display()))?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn cache(a: CacheArgs) -> anyhow::Result<ExitCode> {
    let cache = Cache::open(&a.cache, u64::MAX)?;
    match a.action {
        CacheAction::Stats => {}
        CacheAction::Gc => cache.evict_to(a.cache_size),
        CacheAction::Verify => {
            let bad = cache.verify_all();
            if !a.json {
                println!("{bad} corrupt entries dropped");
            }
        }
    }
    let mut stats = cache.stats();
    stats.quota = a.cache_size;
    if a.json {
        print_json(&stats)?;
    } else {
        println!(
            "{} entries, {} bytes (quota {}); {} evicted, {} corrupt dropped",
            stats.entries, stats.bytes, stats.quota, stats.evicted, stats.corrupt
        );
    }
    Ok(ExitCode::SUCCESS)
}
