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
///   flist convert zos-app.fl -o app.fl --store dir:///srv/store   (a Zero-OS rfs .fl)
///   flist store copy os.fl --from dir:///srv/store --to s3://KEY:SECRET@host/bucket
///   flist push os.fl oci:registry.example/flists/os:1   (and flist pull … -o os.fl)
///
/// Wherever a command takes an flist file it also takes one by reference: an http(s):// URL,
/// an s3://KEY:SECRET@HOST/BUCKET/KEY URL, or oci:REGISTRY/REPO:TAG (pushed with flist push),
/// checked against a digest when one is given (--digest, or REF@blake3:HEX / REF@sha256:HEX):
///   flist mount https://hub.example/os.fl /mnt/os --digest 3f2a…
///   flist ls oci:registry.example/flists/os:1@blake3:3f2a… /etc
///
/// An rfs .fl (Zero-OS) is read wherever an flist is, recognised by its content.
#[derive(Parser)]
#[command(name = "flist", version, verbatim_doc_comment)]
pub(crate) struct Cli {
    /// More logging (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Refuse the flist unless its file has this digest: BLAKE3 hex (what manifests pin and
    /// `flist inspect` shows), or sha256:HEX. Every flist the command reads must match.
    #[arg(long, global = true, value_name = "HEX|sha256:HEX")]
    digest: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(subcommand)]
    command: Command,
}

/// How flists given by reference are fetched and checked: set once from the command line.
static FETCHING: std::sync::OnceLock<(RegistryArgs, Option<String>)> = std::sync::OnceLock::new();

/// A client for the registry options given on the command line.
pub(crate) fn registry_client() -> anyhow::Result<flist::registry::Client> {
    match FETCHING.get() {
        Some((registry, _)) => registry.client(),
        None => RegistryArgs::default().client(),
    }
}

#[derive(Subcommand)]
enum Command {
    Pack(pack::PackArgs),
    Convert(pack::ConvertArgs),
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
#[derive(clap::Args, Clone, Default)]
pub(crate) struct RegistryArgs {
    /// Talk plain HTTP to the OCI registry (a local one).
    #[arg(long, global = true)]
    insecure: bool,
    /// Registry credentials as USER:PASSWORD (default: $FLIST_REGISTRY_AUTH, else anonymous).
    #[arg(long, global = true, value_name = "USER:PASSWORD")]
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
    let (bytes, _) = read_flist_file(path)?;
    let flist = flist::metadata::parse(&bytes).with_context(|| format!("reading {}", path.display()))?;
    Ok((flist, flist::Hash(*blake3::hash(&bytes).as_bytes())))
}

/// A digest an flist file must have.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Blake3(String),
    Sha256(String),
}

impl Expected {
    fn parse(text: &str) -> anyhow::Result<Expected> {
        let hex64 = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
        let (kind, hex) = text.split_once(':').unwrap_or(("blake3", text));
        anyhow::ensure!(hex64(hex), "digest {text:?}: 64 hex digits (BLAKE3), or sha256:HEX / blake3:HEX");
        match kind {
            "blake3" => Ok(Expected::Blake3(hex.to_ascii_lowercase())),
            "sha256" => Ok(Expected::Sha256(hex.to_ascii_lowercase())),
            _ => anyhow::bail!("digest {text:?}: blake3:HEX or sha256:HEX"),
        }
    }

    fn check(&self, bytes: &[u8], what: &str) -> anyhow::Result<()> {
        let (kind, want, actual) = match self {
            Expected::Blake3(want) => ("BLAKE3", want, blake3::hash(bytes).to_hex().to_string()),
            Expected::Sha256(want) => {
                use sha2::Digest;
                ("SHA-256", want, hex::encode(sha2::Sha256::digest(bytes)))
            }
        };
        anyhow::ensure!(&actual == want, "{what}: its {kind} is {actual}, not {want}: refused");
        Ok(())
    }
}

/// Splits `REF@blake3:HEX` / `REF@sha256:HEX` into the reference and the digest. An `oci:`
/// reference keeps `@sha256:` (the registry's own manifest digest, checked by the pull).
fn split_digest(reference: &str) -> anyhow::Result<(&str, Option<Expected>)> {
    let Some((head, tail)) = reference.rsplit_once('@') else { return Ok((reference, None)) };
    let is_digest = tail.split_once(':').is_some_and(|(k, h)| {
        matches!(k, "blake3" | "sha256") && h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if !is_digest || (reference.starts_with("oci:") && tail.starts_with("sha256:")) {
        return Ok((reference, None));
    }
    Ok((head, Some(Expected::parse(tail)?)))
}

/// The bytes of an flist given by path or by reference, checked against every digest given;
/// with what was read, for messages.
pub(crate) fn read_flist_file(path: &Path) -> anyhow::Result<(Vec<u8>, String)> {
    let given = path.to_str().unwrap_or_default();
    let remote = ["http://", "https://", "s3://", "s3+http://", "oci:"].iter().any(|p| given.starts_with(p));
    let (reference, in_reference) = if remote || !path.exists() { split_digest(given)? } else { (given, None) };
    let bytes = if reference.starts_with("oci:") {
        let r = oci_reference(reference)?;
        registry_client()?.pull_flist(&r).with_context(|| format!("pulling {reference}"))?
    } else if remote {
        let policy = RetryPolicy::default();
        flist::store::fetch_file(reference, &policy, flist::metadata::MAX_LEN)
            .with_context(|| format!("fetching {}", flist::store::display_url(reference)))?
    } else {
        let path = Path::new(reference);
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    let shown = flist::store::display_url(reference);
    if let Some(expected) = &in_reference {
        expected.check(&bytes, &shown)?;
    }
    if let Some(text) = FETCHING.get().and_then(|(_, d)| d.as_deref()) {
        Expected::parse(text)?.check(&bytes, &shown)?;
    }
    Ok((bytes, shown))
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
    if let Some(d) = &cli.digest {
        Expected::parse(d)?;
    }
    let _ = FETCHING.set((cli.registry.clone(), cli.digest.clone()));
    match cli.command {
        Command::Pack(a) => pack::run(a),
        Command::Convert(a) => pack::convert(a),
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
