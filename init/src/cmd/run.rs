//! `init run`: the supervisor of a signed manifest as an ordinary process (the code PID 1 runs).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flint_init::control;
use flint_init::fetch::{Fetcher, Trust};
use flint_init::mounts::MountConfig;
use flint_init::node::NodeConfig;
use flint_init::runtime::{supervise, Setup};
use flint_init::supervisor::state::Backoff;
use flint_init::supervisor::Options;
use flint_manifest::parse_key;
use flist::cache::Cache;

#[derive(clap::Args)]
pub struct RunArgs {
    /// A directory with manifest.json, manifest.json.sig and (unless --key) key.pub: short for
    /// --manifest DIR/manifest.json --key DIR/key.pub.
    #[arg(long, required_unless_present = "manifest")]
    config: Option<PathBuf>,
    /// The manifest's URL (http://, https:// or a path); its signature is at the same URL + .sig.
    #[arg(long, conflicts_with = "config")]
    manifest: Option<String>,
    /// The manifest signer's ed25519 public key: 64 hex digits, or a file holding them.
    #[arg(long)]
    key: Option<String>,
    /// Where to keep the manifest version counter, the last good manifest, flist files and the
    /// upper layers of writable flists (the cache disk on a node). Nothing is kept without it.
    #[arg(long)]
    state: Option<PathBuf>,
    /// The node's key (made with `init identity new`), used when --state holds none yet and
    /// then kept there. Without either, a key is made (and kept in --state when given).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// A boot server's report URL (`netboot serve`'s `/report`): the node's stages go there,
    /// and its log and numbers to `/logs` beside it, signed by its key. Nothing leaves without it.
    #[arg(long)]
    report: Option<String>,
    /// Do not trust the host's clock (expiry of manifests is then reported, never enforced).
    #[arg(long)]
    untrusted_clock: bool,
    /// Chunk cache directory shared by every flist; chunks are kept in memory only without it.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Most bytes the chunk cache keeps.
    #[arg(long, default_value_t = 10 << 30)]
    cache_size: u64,
    /// Runtime directory (staging mounts of flists).
    #[arg(long, default_value = flint_init::mounts::RUN_DIR)]
    run_dir: PathBuf,
    /// Seconds between two fetches of the manifest (SIGHUP or `init ctl reload` fetch at once).
    #[arg(long, default_value_t = flint_init::cmdline::DEFAULT_INTERVAL_SECS,
          value_parser = clap::value_parser!(u64).range(1..=flint_init::cmdline::MAX_INTERVAL_SECS))]
    interval_secs: u64,
    /// PEM file of the CAs trusted for https:// (a bundle, or one pinned CA); the Mozilla roots
    /// compiled in otherwise.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Control socket.
    #[arg(long, default_value = control::SOCKET)]
    socket: PathBuf,
    /// Directory for services logging to files.
    #[arg(long, default_value = "/var/log")]
    log_dir: PathBuf,
    /// First restart delay in milliseconds (doubles per crash).
    #[arg(long, default_value_t = 500)]
    backoff_ms: u64,
    /// Longest restart delay in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    backoff_max_ms: u64,
    /// Uptime in seconds after which a crash counts as the first again.
    #[arg(long, default_value_t = 30)]
    stable_secs: u64,
}

/// A key given as hex or as a file holding the hex.
fn load_key(text: &str) -> anyhow::Result<flint_manifest::ed25519::VerifyingKey> {
    let hex = if Path::new(text).is_file() {
        std::fs::read_to_string(text).with_context(|| format!("reading {text}"))?
    } else {
        text.to_string()
    };
    Ok(parse_key(&hex)?)
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    // First, before the cache or anything else starts a thread.
    flint_init::runtime::block_signals().context("blocking signals")?;
    let (manifest_url, key) = match (&a.config, &a.manifest) {
        (Some(dir), _) => {
            let key = a.key.clone().unwrap_or_else(|| dir.join("key.pub").to_string_lossy().into_owned());
            (dir.join("manifest.json").to_string_lossy().into_owned(), key)
        }
        (None, Some(url)) => (url.clone(), a.key.clone().context("--key is needed with --manifest")?),
        (None, None) => anyhow::bail!("--config or --manifest is needed"),
    };
    let key = load_key(&key).context("the manifest key (--key, or key.pub in --config)")?;
    let trust = a.ca.clone().map_or(Trust::BuiltIn, Trust::Pem);
    let identity = flint_init::identity::Identity::load(a.state.as_deref(), a.identity.as_deref(), None)
        .context("the node's identity")?;
    flint_init::identity::install(identity);
    match &a.report {
        Some(url) => {
            let fetcher = Fetcher::new(&trust).context("the report URL's client")?;
            flint_init::report::start(url.clone(), String::new(), fetcher.clone());
            // The journal is kept beside the node's key.
            let journal = a.state.as_ref().map(|s| s.join(flint_init::logship::JOURNAL_DIR));
            flint_init::logship::start(flint_init::logship::url_beside(url), fetcher, journal);
        }
        None => flint_init::logship::discard(),
    }
    if !a.untrusted_clock {
        flint_init::clock::trust_host();
    }
    let cache = match &a.cache {
        Some(dir) => Some(Arc::new(Cache::open(dir, a.cache_size)?)),
        None => None,
    };
    let setup = Setup {
        node: NodeConfig {
            manifest_url,
            key,
            state_dir: a.state.clone(),
            interval: Duration::from_secs(a.interval_secs),
            set_hostname: false,
        },
        trust,
        mounts: MountConfig::new(a.run_dir.clone(), a.state.clone(), cache),
        supervisor: Options {
            backoff: Backoff {
                first: Duration::from_millis(a.backoff_ms),
                max: Duration::from_millis(a.backoff_max_ms),
                stable: Duration::from_secs(a.stable_secs),
                ..Backoff::default()
            },
            log_dir: a.log_dir.clone(),
            roots: Default::default(),
            vm_state: a.state.as_ref().unwrap_or(&a.run_dir).join("vms"),
            vm_run: a.run_dir.join("vm"),
            vm_tools: flint_init::vm::Tools::find(),
            cgroup_root: false,
        },
        socket: a.socket.clone(),
        pid1: false,
    };
    supervise(setup)?;
    Ok(ExitCode::SUCCESS)
}
