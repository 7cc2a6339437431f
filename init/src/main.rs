//! `init`: flint's PID 1 and its control client.
//!
//! `init run --config DIR` supervises the services of DIR's signed manifest on any host (the
//! same code PID 1 runs); `init ctl ...` talks to a running init over its control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::Arc;

use flint_init::control;
use flint_init::fetch::Trust;
use flint_init::mounts::MountConfig;
use flint_init::node::NodeConfig;
use flint_init::runtime::{supervise, Setup};
use flint_init::supervisor::state::Backoff;
use flint_init::supervisor::{Options, Request};
use flint_manifest::parse_key;
use flist::cache::Cache;

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
    /// Bring the network up once, as the boot step does, and print what each NIC got.
    Net(NetArgs),
    /// Run one virtual machine (what the supervisor starts for each VM of the manifest).
    #[command(subcommand)]
    Vm(VmCommand),
}

#[derive(Subcommand)]
enum VmCommand {
    /// Boot a VM from a resolved spec and stay with it until it ends: exit 0 when the guest
    /// powered off or was stopped (SIGTERM asks it to shut down), 1 when it failed.
    Run {
        /// The spec, as JSON (what the supervisor passes), or @FILE.
        #[arg(long)]
        spec: String,
    },
}

#[derive(clap::Args)]
struct NetArgs {
    /// `dhcp` (every NIC), `static:[IFACE,]ADDR/PREFIX[,GATEWAY[,DNS...]]` or `none`.
    #[arg(long, default_value = "dhcp")]
    config: flint_init::net::NetConfig,
    /// Where the DNS servers go.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv: PathBuf,
    /// Seconds to wait for carrier on each NIC.
    #[arg(long, default_value_t = 5)]
    carrier_wait: u64,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
    /// Then renew every DHCP lease once, at once (as PID 1 does at T1).
    #[arg(long)]
    renew: bool,
}

#[derive(clap::Args)]
struct RunArgs {
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

#[derive(clap::Args)]
struct CtlArgs {
    /// Control socket of the init to talk to.
    #[arg(long, default_value = control::SOCKET, global = true)]
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
    /// Stop every service in reverse dependency order; `init run` then exits, PID 1 powers off.
    Shutdown,
    /// Fetch the manifest now and apply it if it is newer.
    Reload,
    /// The manifest in force, and the last attempt to get a newer one.
    Manifest,
    /// The flists in service.
    Mounts,
    /// Stop every service, unmount, sync and reboot.
    Reboot,
    /// Stop every service, unmount, sync and power off.
    Poweroff,
    /// The virtual machines.
    #[command(subcommand)]
    Vm(VmAction),
}

#[derive(Subcommand)]
enum VmAction {
    /// Every VM and its state.
    List,
    /// One VM in detail.
    Status { name: String },
    /// Attach to a VM's serial console (ctrl-] leaves).
    Console { name: String },
    /// A VM's console output and what its runner said.
    Log {
        name: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
    },
    /// Ask a VM's guest to shut down (then quit it after its grace period); it stays down.
    Stop { name: String },
    /// Start a stopped VM.
    Start { name: String },
    /// Stop a VM and start it again.
    Restart { name: String },
}

/// `RUST_LOG` as `LEVEL` or `TARGET=LEVEL,...` (a target filter: PID 1 carries no regex engine
/// for env-filter's span patterns); `info` when unset or unreadable.
fn log_filter() -> tracing_subscriber::filter::Targets {
    let info = tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO);
    match std::env::var("RUST_LOG") {
        Ok(spec) => spec.parse().unwrap_or_else(|e| {
            eprintln!("RUST_LOG={spec:?} ignored: {e}");
            info
        }),
        Err(_) => info,
    }
}

fn main() -> ExitCode {
    // The kernel starts us as PID 1 with whatever it did not understand on its command line as
    // arguments; `init run` as PID 1 of a PID namespace stays an ordinary supervisor.
    let subcommand = std::env::args().nth(1);
    if std::process::id() == 1 && !matches!(subcommand.as_deref(), Some("run" | "ctl" | "net" | "help" | "--help")) {
        flint_init::boot::boot();
    }
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Services' (and VM runners') output is captured into logs: colours only on a terminal.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(log_filter())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(a),
        Command::Ctl(a) => ctl(a),
        Command::Net(a) => net(a),
        Command::Vm(VmCommand::Run { spec }) => vm_run(&spec),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("init: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A key given as hex or as a file holding the hex.
fn load_key(text: &str) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    let hex = if Path::new(text).is_file() {
        std::fs::read_to_string(text).with_context(|| format!("reading {text}"))?
    } else {
        text.to_string()
    };
    Ok(parse_key(&hex)?)
}

fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
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
        },
        socket: a.socket.clone(),
        pid1: false,
    };
    supervise(setup)?;
    Ok(ExitCode::SUCCESS)
}

fn net(a: NetArgs) -> anyhow::Result<ExitCode> {
    let mut uplinks = flint_init::net::bring_up(&a.config, &a.resolv, Duration::from_secs(a.carrier_wait))
        .map_err(anyhow::Error::msg)?;
    let rows: Vec<serde_json::Value> = uplinks
        .iter()
        .map(|u| {
            serde_json::json!({
                "iface": u.link.name, "address": u.lease.address, "prefix": u.lease.prefix,
                "gateway": u.lease.router, "dns": u.lease.dns, "server": u.lease.server,
                "lease_secs": u.lease.valid.as_secs(), "preferred": u.preferred,
            })
        })
        .collect();
    if a.json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for u in &uplinks {
            let mark = if u.preferred { " (preferred)" } else { "" };
            println!("{}: {}/{} gateway {:?}{mark}", u.link.name, u.lease.address, u.lease.prefix, u.lease.router);
        }
    }
    if a.renew {
        for (i, u) in uplinks.iter_mut().enumerate().filter(|(_, u)| !u.lease.is_static()) {
            flint_init::net::renew(u, i, true).map_err(|e| anyhow::anyhow!("{}: {e}", u.link.name))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn vm_run(spec: &str) -> anyhow::Result<ExitCode> {
    let text = match spec.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?,
        None => spec.to_string(),
    };
    let spec: flint_init::vm::RunSpec = serde_json::from_str(&text).context("the VM spec")?;
    let code = flint_init::vm::runner::run(&spec)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// `init ctl vm ...`: services requests about a VM, refused for a name that is not one.
fn ctl_vm(a: &CtlArgs, action: &VmAction) -> anyhow::Result<ExitCode> {
    let call = |r: &Request| control::call(&a.socket, r).with_context(|| format!("talking to {}", a.socket.display()));
    let listed = call(&Request::List)?;
    let vms: Vec<&serde_json::Value> =
        listed.as_array().into_iter().flatten().filter(|r| r.get("vm").is_some_and(|v| !v.is_null())).collect();
    let find =
        |name: &str| vms.iter().copied().find(|r| r["name"] == name).with_context(|| format!("no VM named {name:?}"));
    let (name, request) = match action {
        VmAction::List => {
            if a.json {
                println!("{}", serde_json::Value::Array(vms.iter().copied().cloned().collect()));
            }
            for r in vms.iter().filter(|_| !a.json) {
                println!(
                    "{}  {} vCPU {:>5} MiB  root {}",
                    state_line(r),
                    r.pointer("/vm/vcpus").unwrap_or(&serde_json::Value::Null),
                    r.pointer("/vm/memory_mib").unwrap_or(&serde_json::Value::Null),
                    r.pointer("/vm/root").and_then(|v| v.as_str()).unwrap_or("")
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        VmAction::Status { name } => {
            let row = find(name)?;
            println!("{}", if a.json { row.to_string() } else { serde_json::to_string_pretty(row)? });
            return Ok(ExitCode::SUCCESS);
        }
        VmAction::Console { name } => {
            let socket = find(name)?
                .pointer("/vm/console")
                .and_then(|v| v.as_str())
                .map(PathBuf::from)
                .context("no console socket")?;
            flint_init::vm::console::attach(&socket)
                .with_context(|| format!("the console of {name} ({}): is it running?", socket.display()))?;
            return Ok(ExitCode::SUCCESS);
        }
        VmAction::Log { name, follow } => {
            find(name)?;
            return print_log(&call, Some(name.clone()), *follow);
        }
        VmAction::Stop { name } => (name, Request::Stop { name: name.clone() }),
        VmAction::Start { name } => (name, Request::Start { name: name.clone() }),
        VmAction::Restart { name } => (name, Request::Restart { name: name.clone() }),
    };
    find(name)?;
    let answer = call(&request)?;
    if let Some(err) = answer.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("{err}");
    }
    println!("{answer}");
    Ok(ExitCode::SUCCESS)
}

/// A service's or VM's name, state, pid and start count, in columns.
fn state_line(r: &serde_json::Value) -> String {
    let pid = r["pid"].as_i64().map_or("-".to_string(), |p| p.to_string());
    let (name, state) = (r["name"].as_str().unwrap_or(""), r["state"].as_str().unwrap_or(""));
    format!("{name:20} {state:9} pid {pid:>7}  starts {:>3}", r["starts"])
}

/// Prints log lines (`since` 0 on), and with `follow` new ones as they come.
fn print_log(
    call: &dyn Fn(&Request) -> anyhow::Result<serde_json::Value>,
    name: Option<String>,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let mut since = 0;
    loop {
        let answer = call(&Request::Log { name: name.clone(), since })?;
        if let Some(err) = answer.get("error").and_then(|e| e.as_str()) {
            anyhow::bail!("{err}");
        }
        for l in answer.get("lines").and_then(|l| l.as_array()).into_iter().flatten() {
            println!("{}: {}", l["service"].as_str().unwrap_or(""), l["line"].as_str().unwrap_or(""));
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        since = answer.get("next").and_then(|n| n.as_u64()).unwrap_or(since);
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn ctl(a: CtlArgs) -> anyhow::Result<ExitCode> {
    let call = |r: &Request| control::call(&a.socket, r).with_context(|| format!("talking to {}", a.socket.display()));
    let request = match &a.action {
        CtlAction::Vm(action) => return ctl_vm(&a, action),
        CtlAction::Log { name, follow } if !a.json => return print_log(&call, name.clone(), *follow),
        CtlAction::List => Request::List,
        CtlAction::Status { name } => Request::Status { name: name.clone() },
        CtlAction::Start { name } => Request::Start { name: name.clone() },
        CtlAction::Stop { name } => Request::Stop { name: name.clone() },
        CtlAction::Restart { name } => Request::Restart { name: name.clone() },
        CtlAction::Kill { name, signal } => Request::Kill { name: name.clone(), signal: signal.clone() },
        CtlAction::Log { name, .. } => Request::Log { name: name.clone(), since: 0 },
        CtlAction::Shutdown => Request::Shutdown,
        CtlAction::Reload => Request::Reload,
        CtlAction::Manifest => Request::Manifest,
        CtlAction::Mounts => Request::Mounts,
        CtlAction::Reboot => Request::Reboot,
        CtlAction::Poweroff => Request::Poweroff,
    };
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
                println!("{}", state_line(r));
            }
        }
        _ => println!("{answer}"),
    }
    Ok(ExitCode::SUCCESS)
}
