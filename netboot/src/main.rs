//! `netboot`: the operator's side of a flint node. `keygen` makes the ed25519 key pair whose
//! public half goes into the initramfs; `sign` signs a manifest after checking that it is one
//! a node would accept (so a typo is caught here, not on a fleet of nodes).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;

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
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
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
        Command::Sign { manifest, key } => {
            let secret = read_secret(&key)?;
            let bytes = std::fs::read(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
            let signature = flint_init::manifest::sign(&bytes, &secret);
            let plan = flint_init::manifest::verify(&bytes, Some(signature.as_bytes()), &secret.verifying_key())
                .context("a node would refuse this manifest")?;
            let out = PathBuf::from(format!("{}.sig", manifest.display()));
            std::fs::write(&out, format!("{signature}\n"))?;
            println!(
                "{}: version {}, {} flists, {} services",
                out.display(),
                plan.version,
                plan.flists.len(),
                plan.services.len()
            );
        }
    }
    Ok(())
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
