//! `init identity`: a node's key made ahead of time (for its disk or image, so the boot server
//! can list it before first boot), and the id and public key of a key file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flint_init::identity;

#[derive(clap::Subcommand)]
pub enum IdentityCommand {
    /// Make a key: FILE (the secret, mode 0600, never overwritten); prints the node id and the
    /// public key. Put FILE on the node's cache disk as `state/identity.key`, or in its image as
    /// `/etc/flint/identity.key`, or give it to `init run --identity`.
    New {
        /// Where to write the secret key.
        file: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the node id and public key of a key file.
    Show {
        /// The key file.
        file: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn identity(command: IdentityCommand) -> anyhow::Result<ExitCode> {
    let (key, json) = match command {
        IdentityCommand::New { file, json } => {
            let key = identity::new_key().context("the kernel's random number generator")?;
            identity::write_key(&file, &key)
                .with_context(|| format!("creating {} (an existing key is never overwritten)", file.display()))?;
            (key, json)
        }
        IdentityCommand::Show { file, json } => {
            (identity::read_key(&file).with_context(|| format!("reading {}", file.display()))?, json)
        }
    };
    let (id, public) = (identity::id_of(&key), hex::encode(key.verifying_key().to_bytes()));
    if json {
        println!("{}", serde_json::json!({ "node": id, "public_key": public }));
    } else {
        println!("node {id}\npublic key {public}");
    }
    Ok(ExitCode::SUCCESS)
}
