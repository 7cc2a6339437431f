//! `netboot`: the operator's side of a flint node. `keygen` makes the ed25519 key pair whose
//! public half goes into the initramfs; `sign` signs a manifest after checking that it is one
//! a node would accept (so a typo is caught here, not on a fleet of nodes); `serve` is the
//! HTTP(S) server nodes boot from ([`serve`]); `nodes`, `rollout` and `audit` drive a running
//! server through its admin API ([`client`]).

mod client;
mod serve;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flint_manifest::ed25519::SigningKey;

#[derive(Parser)]
#[command(name = "netboot", version, about = "flint's boot server and signing tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a key pair: KEY (secret, 64 hex digits, mode 0600) and KEY.pub (for the initramfs).
    Keygen {
        /// Where to write the secret key.
        key: PathBuf,
    },
    /// Sign MANIFEST with the secret key: writes MANIFEST.sig (128 hex digits) beside it, after
    /// checking the manifest is valid.
    Sign {
        /// The manifest (JSON).
        manifest: PathBuf,
        /// The secret key from `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Make the manifest expire this long from now (`7d`, `12h`, `90m`, `3600s`): its
        /// `expires` is set (the file is rewritten) before signing. Nodes whose clock is trusted
        /// refuse it after that and report themselves stale.
        #[arg(long, value_parser = flint_manifest::health::parse_span)]
        expires: Option<u64>,
    },
    /// Serve ROOT over HTTP(S) to booting nodes: iPXE scripts per MAC address (profiles in
    /// ROOT/netboot.json), kernels, initramfs images, signed manifests, flists and chunk stores
    /// (byte ranges, ETags), boot reports, logs and numbers from nodes, and a status page at `/`.
    Serve {
        /// The directory served. Never put the secret key in it.
        #[arg(long)]
        root: PathBuf,
        /// Address and port to listen on (port 0 picks one; the address is printed). Give it
        /// again to listen on several (a PXE network and a management one).
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: Vec<SocketAddr>,
        /// PEM certificate chain: serve HTTPS (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Refuse reports and manifest requests not signed by a node's key (401).
        #[arg(long)]
        signed_only: bool,
        /// Where what nodes send is kept (their logs and numbers): ROOT/.netboot by default
        /// (hidden names are never served as files).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Address and port of the admin listener: the dashboard and the admin API (token in
        /// STATE/admin.token). Port 0 picks one; the URL is printed and kept in STATE/admin.url.
        #[arg(long, default_value = "127.0.0.1:0")]
        admin: SocketAddr,
        /// The public key nodes trust (KEY.pub): a rollout's manifest is checked as a node
        /// would check it before it is taken.
        #[arg(long)]
        manifest_key: Option<PathBuf>,
        /// Keep the fleet's state in PostgreSQL (`postgres://USER@HOST:PORT/DB`) instead of
        /// SQLite under --state: several servers on one database serve one fleet (each picks
        /// up the others' changes within a second; a rollout's wave starts once).
        #[arg(long)]
        db: Option<String>,
    },
    /// Nodes: list them, accept or reject new ones, forget or replace them.
    Nodes {
        #[command(subcommand)]
        command: client::NodesCommand,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Staged rollouts of a new manifest version: start, status, pause, resume, abort, revert.
    Rollout {
        #[command(subcommand)]
        command: client::RolloutCommand,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// The audit log: every admin action, and what the server did by itself.
    Audit {
        /// How many entries, newest.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netboot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_secret(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{}: not 64 hex digits", path.display()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { key } => {
            let mut seed = [0u8; 32];
            getrandom(&mut seed)?;
            let secret = SigningKey::from_bytes(&seed);
            write_private(&key, &hex::encode(secret.to_bytes()))?;
            let public = PathBuf::from(format!("{}.pub", key.display()));
            std::fs::write(&public, format!("{}\n", hex::encode(secret.verifying_key().to_bytes())))?;
            println!("{}", public.display());
        }
        Command::Sign { manifest, key, expires } => {
            let secret = read_secret(&key)?;
            let mut bytes = std::fs::read(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
            if let Some(span) = expires {
                bytes = with_expiry(&bytes, span).with_context(|| format!("{}", manifest.display()))?;
                std::fs::write(&manifest, &bytes).with_context(|| format!("rewriting {}", manifest.display()))?;
            }
            let signature = flint_manifest::sign(&bytes, &secret);
            let plan = flint_manifest::verify(&bytes, Some(signature.as_bytes()), &secret.verifying_key())
                .context("a node would refuse this manifest")?;
            let out = PathBuf::from(format!("{}.sig", manifest.display()));
            std::fs::write(&out, format!("{signature}\n"))?;
            let expiry = plan.expires.map_or(String::new(), |e| format!(", expires {}", flist::utc::rfc3339(e)));
            println!(
                "{}: version {}, {} flists, {} services{expiry}",
                out.display(),
                plan.version,
                plan.flists.len(),
                plan.services.len()
            );
        }
        Command::Serve { root, listen, tls_cert, tls_key, signed_only, state, admin, manifest_key, db } => {
            let state = state.unwrap_or_else(|| root.join(".netboot"));
            let manifest_key = manifest_key
                .map(|path| {
                    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                    flint_manifest::parse_key(&text).with_context(|| format!("{}", path.display()))
                })
                .transpose()?;
            serve::run(serve::ServeOptions {
                root,
                listen,
                tls: tls_cert.zip(tls_key),
                signed_only,
                state,
                admin,
                manifest_key,
                db,
            })?;
        }
        Command::Nodes { command, admin } => client::nodes(&admin, command)?,
        Command::Rollout { command, admin } => client::rollout(&admin, command)?,
        Command::Audit { limit, admin } => client::audit(&admin, limit)?,
    }
    Ok(())
}

/// The manifest with `expires` set to `span` seconds from now.
fn with_expiry(bytes: &[u8], span: u64) -> anyhow::Result<Vec<u8>> {
    let mut manifest: serde_json::Value = serde_json::from_slice(bytes).context("not JSON")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let at = now.checked_add(span).context("the expiry is too far")?;
    let object = manifest.as_object_mut().context("not a JSON object")?;
    object.insert("expires".into(), flist::utc::rfc3339(at).into());
    let mut text = serde_json::to_vec_pretty(&manifest)?;
    text.push(b'\n');
    Ok(text)
}

/// Fresh randomness from the kernel.
fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf).context("reading /dev/urandom")
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (an existing key is never overwritten)", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(())
}
