//! Argument parsing and dispatch; each command lives in its own module and returns an exit code.

mod data;
mod hub;
mod mount;
mod pack;
mod show;
mod store;
mod trace;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flist::store::{RetryPolicy, Router};
use flist::Flist;

/// flist: images as a small metadata file plus content-addressed chunks.
///
/// An flist holds the whole tree of an image (names, attributes, xattrs, hardlinks, devices,
/// sparse files) and a BLAKE3 fingerprint of every chunk of content; the content itself lives in
/// stores (dir://, http(s)://, s3://) and is fetched only when needed, always verified.
///
/// Typical use:
///   flist pack rootfs/ -o os.fl --store dir:///srv/store --tag name=os --tag version=1
///   flist inspect os.fl
///   flist ls os.fl /etc
///   flist cat os.fl /etc/os-release --store http://server/store
///   flist unpack os.fl /tmp/os
///   flist verify os.fl
///   flist mount os.fl /mnt/os --cache /var/cache/flist
///   flist pack oci:registry.example/app:1.2 -o app.fl --store dir:///srv/store
///   flist store copy os.fl --from dir:///srv/store --to s3://KEY:SECRET@host/bucket
///   flist push os.fl oci:registry.example/flists/os:1   (and flist pull … -o os.fl)
#[derive(Parser)]
#[command(name = "flist", version, verbatim_doc_comment)]
pub(crate) struct Cli {
    /// More logging (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Pack(pack::PackArgs),
    Inspect(show::InspectArgs),
    Ls(show::LsArgs),
    Tree(show::TreeArgs),
    Stat(show::StatArgs),
    Cat(show::CatArgs),
    Unpack(data::UnpackArgs),
    Verify(data::VerifyArgs),
    Diff(data::DiffArgs),
    Mount(mount::MountArgs),
    Umount(mount::UmountArgs),
    Cache(mount::CacheArgs),
    Store(store::StoreCmd),
    Push(hub::PushArgs),
    Pull(hub::PullArgs),
    Trace(trace::TraceCmd),
}

/// How to reach an OCI registry.
#[derive(clap::Args, Clone)]
pub(crate) struct RegistryArgs {
    /// Talk plain HTTP to the registry (a local one).
    #[arg(long)]
    insecure: bool,
    /// Registry credentials as USER:PASSWORD (default: $FLIST_REGISTRY_AUTH, else anonymous).
    #[arg(long, value_name = "USER:PASSWORD")]
    creds: Option<String>,
}

impl RegistryArgs {
    pub(crate) fn client(&self) -> anyhow::Result<flist::registry::Client> {
        let creds = self.creds.clone().or_else(|| std::env::var("FLIST_REGISTRY_AUTH").ok());
        let creds = creds
            .map(|c| {
                c.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())).context("credentials are USER:PASSWORD")
            })
            .transpose()?;
        Ok(flist::registry::Client::new(self.insecure, creds))
    }
}

/// `oci:REF` as a registry reference.
pub(crate) fn oci_reference(text: &str) -> anyhow::Result<flist::registry::Reference> {
    let reference = text.strip_prefix("oci:").with_context(|| format!("{text:?}: a registry reference is oci:REF"))?;
    Ok(flist::registry::Reference::parse(reference)?)
}

/// Stores to read from: the ones given, else the ones the flist records.
#[derive(clap::Args, Clone)]
pub(crate) struct StoreArgs {
    /// Read chunks from this store instead of those recorded in the flist; repeat for replicas.
    /// `URL` or `START-END=URL` (hex first-byte range, e.g. `00-7f=http://a`). S3 credentials come
    /// from the URL (`s3://KEY:SECRET@host/bucket`) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.
    /// For an rfs `.fl`, URLs are in rfs's syntax (`s3://` plain, `s3s://` TLS, `zdb://`,
    /// `server://`).
    #[arg(long = "store", value_name = "URL")]
    stores: Vec<String>,
    /// Attempts per store for transient errors before moving to the next replica.
    #[arg(long, default_value_t = 3)]
    retries: u32,
}

impl StoreArgs {
    fn policy(&self) -> RetryPolicy {
        RetryPolicy { attempts: self.retries.max(1), ..RetryPolicy::default() }
    }

    pub(crate) fn router(&self, flist: &Flist) -> anyhow::Result<Router> {
        let router = Router::for_flist(flist, &self.stores, self.policy())?;
        anyhow::ensure!(!router.is_empty(), "no store to read from: the flist records none, pass --store");
        Ok(router)
    }
}

pub(crate) fn load(path: &Path) -> anyhow::Result<Flist> {
    load_with_digest(path).map(|(flist, _)| flist)
}

/// [`load`], with the BLAKE3 digest of the file (what manifests pin and traces name).
pub(crate) fn load_with_digest(path: &Path) -> anyhow::Result<(Flist, flist::Hash)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let flist = flist::metadata::parse(&bytes).with_context(|| format!("reading {}", path.display()))?;
    Ok((flist, flist::Hash(*blake3::hash(&bytes).as_bytes())))
}

/// A byte-counting progress bar on stderr, drawn only on a terminal.
pub(crate) fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style =
        indicatif::ProgressStyle::with_template("{msg:8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Pack(a) => pack::run(a),
        Command::Inspect(a) => show::inspect(a),
        Command::Ls(a) => show::ls(a),
        Command::Tree(a) => show::tree(a),
        Command::Stat(a) => show::stat(a),
        Command::Store(a) => store::run(a),
        Command::Push(a) => hub::push(a),
        Command::Pull(a) => hub::pull(a),
        Command::Cat(a) => show::cat(a),
        Command::Unpack(a) => data::unpack(a),
        Command::Verify(a) => data::verify(a),
        Command::Diff(a) => data::diff(a),
        Command::Mount(a) => mount::mount(a),
        Command::Trace(a) => trace::trace(a),
        Command::Umount(a) => mount::umount(a),
        Command::Cache(a) => mount::cache(a),
    }
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = ["warn", "info", "debug"].get(cli.verbose as usize).copied().unwrap_or("trace");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Logs of a mount in the background go to files: colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flist: {e:#}");
            ExitCode::from(1)
        }
    }
}
