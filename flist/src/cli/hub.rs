//! `flist push` and `flist pull`: an flist file to and from an OCI registry, as an artifact
//! (media type `application/vnd.flint.flist.v1`), so a registry can be the hub nodes and
//! builders share. The chunks stay in the stores; only the small metadata file travels.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::oci_reference;

/// Push an flist file to an OCI registry as an artifact (its tags and digest as annotations).
#[derive(clap::Args)]
pub(crate) struct PushArgs {
    /// The flist file.
    flist: PathBuf,
    /// Where: oci:REGISTRY/REPO:TAG.
    reference: String,
}

/// Pull an flist file pushed with `flist push`, checked against its digest.
#[derive(clap::Args)]
pub(crate) struct PullArgs {
    /// oci:REGISTRY/REPO[:TAG|@DIGEST].
    reference: String,
    /// Where to write the flist.
    #[arg(short, long)]
    output: PathBuf,
}

pub(crate) fn push(a: PushArgs) -> anyhow::Result<ExitCode> {
    let reference = oci_reference(&a.reference)?;
    let (bytes, _) = super::read_flist_file(&a.flist)?;
    let flist = flist::metadata::parse(&bytes).with_context(|| format!("reading {}", a.flist.display()))?;
    let mut annotations: std::collections::BTreeMap<String, String> =
        flist.tags.iter().map(|(k, v)| (format!("org.flint.tag.{k}"), v.clone())).collect();
    annotations.insert("org.flint.digest".into(), flist.digest().to_hex());
    let title = a.flist.file_name().map_or("flist.fl".into(), |n| n.to_string_lossy().into_owned());
    let digest = super::registry_client()?.push_flist(&reference, &bytes, &title, &annotations)?;
    println!("{} pushed as {}/{}@{digest}", a.flist.display(), reference.registry, reference.repository);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn pull(a: PullArgs) -> anyhow::Result<ExitCode> {
    let reference = oci_reference(&a.reference)?;
    let bytes = super::registry_client()?.pull_flist(&reference)?;
    let flist = flist::metadata::parse(&bytes).context("the pulled artifact is not an flist")?;
    flist::durable::write_whole(&a.output, &bytes).with_context(|| format!("writing {}", a.output.display()))?;
    println!("{}: flist {}", a.output.display(), flist.digest());
    Ok(ExitCode::SUCCESS)
}
