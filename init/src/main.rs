//! `init`: flint's PID 1 and its control client.
//!
//! `init run --config DIR` supervises the services of DIR's signed manifest on any host (the
//! same code PID 1 runs); `init ctl ...` talks to a running init over its control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flint_init::control;
use flint_init::manifest::{parse_key, verify};
use flint_init::supervisor::state::Backoff;
use flint_init::supervisor::{Options, Request, Supervisor};
use nix::sys::signal::{SigSet, Signal};

const DEFAULT_SOCKET: &str = "/run/flint/init.sock";

#[derive(Parser)]
#[command(name = "init", version, about = "flint's PID 1: boots a node from a signed manifest and supervises it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Supervise the services of a signed manifest as an ordinary process (not PID 1).
    Run(RunArgs),
    /// Control a running init.
    Ctl(CtlArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Directory with manifest.json, manifest.json.sig and (unless --key) key.pub.
    #[arg(long)]
    config: PathBuf,
    /// The manifest signer's ed25519 public key (64 hex digits).
    #[arg(long)]
    key: Option<String>,
    /// Control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
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

#[derive(clap::Args)]
struct CtlArgs {
    /// Control socket of the init to talk to.
    #[arg(long, default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: CtlAction,
}

#[derive(Subcommand)]
enum CtlAction {
    /// Every service and its state.
    List,
    /// One service in detail.
    Status { name: String },
    /// Start a stopped service.
    Start { name: String },
    /// Stop a service; it stays down until started.
    Stop { name: String },
    /// Stop a service and start it again.
    Restart { name: String },
    /// Send a signal (e.g. HUP) to a service's process group.
    Kill { name: String, signal: String },
    /// Recent output of one service, or of all.
    Log {
        name: Option<String>,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop every service in reverse dependency order; `init run` then exits.
    Shutdown,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(a),
        Command::Ctl(a) => ctl(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("init: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_optional(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let key_hex = match &a.key {
        Some(k) => k.clone(),
        None => std::fs::read_to_string(a.config.join("key.pub")).context("reading key.pub (or pass --key)")?,
    };
    let key = parse_key(&key_hex)?;
    let manifest_path = a.config.join("manifest.json");
    let bytes = std::fs::read(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
    let signature = read_optional(&a.config.join("manifest.json.sig"))?;
    let plan = verify(&bytes, signature.as_deref(), &key).context("refusing the manifest")?;
    tracing::info!("manifest version {} verified: {} services", plan.version, plan.services.len());

    // Signals are taken synchronously by one thread: block them before any other thread exists
    // (children get a clean mask from std::process).
    let mut signals = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;
    // Orphans of our services are re-parented to us, so that they are reaped.
    nix::sys::prctl::set_child_subreaper(true).context("becoming a subreaper")?;

    let (children_tx, children) = crossbeam_channel::unbounded();
    let (stop_tx, stop) = crossbeam_channel::bounded(1);
    std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                let _ = children_tx.send(());
            }
            Ok(Signal::SIGHUP) => tracing::info!("SIGHUP: the manifest is re-read at the next reconcile"),
            Ok(sig) => {
                tracing::info!("{sig}: shutting down");
                let _ = stop_tx.try_send(());
            }
            Err(e) => tracing::warn!("waiting for signals: {e}"),
        }
    })?;
    let (calls_tx, calls) = crossbeam_channel::unbounded();
    control::serve(&a.socket, calls_tx).with_context(|| format!("control socket {}", a.socket.display()))?;

    let roots = plan.flists.iter().map(|f| (f.name.clone(), f.mountpoint.clone())).collect();
    let backoff = Backoff {
        first: Duration::from_millis(a.backoff_ms),
        max: Duration::from_millis(a.backoff_max_ms),
        stable: Duration::from_secs(a.stable_secs),
        ..Backoff::default()
    };
    Supervisor::new(&plan.services, Options { backoff, log_dir: a.log_dir, roots }).run(&children, &calls, &stop);
    let _ = std::fs::remove_file(&a.socket);
    Ok(ExitCode::SUCCESS)
}

fn ctl(a: CtlArgs) -> anyhow::Result<ExitCode> {
    let request = match &a.action {
        CtlAction::List => Request::List,
        CtlAction::Status { name } => Request::Status { name: name.clone() },
        CtlAction::Start { name } => Request::Start { name: name.clone() },
        CtlAction::Stop { name } => Request::Stop { name: name.clone() },
        CtlAction::Restart { name } => Request::Restart { name: name.clone() },
        CtlAction::Kill { name, signal } => Request::Kill { name: name.clone(), signal: signal.clone() },
        CtlAction::Log { name, .. } => Request::Log { name: name.clone(), since: 0 },
        CtlAction::Shutdown => Request::Shutdown,
    };
    let call = |r: &Request| control::call(&a.socket, r).with_context(|| format!("talking to {}", a.socket.display()));
    let answer = call(&request)?;
    if let Some(err) = answer.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("{err}");
    }
    if a.json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    match (&a.action, &answer) {
        (CtlAction::List, serde_json::Value::Array(rows)) => {
            for r in rows {
                let pid = r["pid"].as_i64().map_or("-".to_string(), |p| p.to_string());
                println!(
                    "{:20} {:9} pid {:>7}  starts {}",
                    r["name"].as_str().unwrap_or(""),
                    r["state"].as_str().unwrap_or(""),
                    pid,
                    r["starts"]
                );
            }
        }
        (CtlAction::Log { name, follow }, first) => {
            let mut answer = first.clone();
            let mut since = 0;
            loop {
                for l in answer.get("lines").and_then(|l| l.as_array()).into_iter().flatten() {
                    println!("{}: {}", l["service"].as_str().unwrap_or(""), l["line"].as_str().unwrap_or(""));
                }
                if !follow {
                    break;
                }
                since = answer.get("next").and_then(|n| n.as_u64()).unwrap_or(since);
                std::thread::sleep(Duration::from_millis(300));
                answer = call(&Request::Log { name: name.clone(), since })?;
            }
        }
        _ => println!("{answer}"),
    }
    Ok(ExitCode::SUCCESS)
}
