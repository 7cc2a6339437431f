//! `flist store`: operations on chunk stores.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{load, print_json, progress_bar};

/// Operations on chunk stores.
#[derive(clap::Args)]
pub(crate) struct StoreCmd {
    #[command(subcommand)]
    op: StoreOp,
}

#[derive(clap::Subcommand)]
enum StoreOp {
    /// Copy the chunks of FLISTs that the target store lacks from another store, in parallel.
    /// Each object is checked against the flist before it is written: a tampered source object
    /// is reported (exit code 1) and never copied.
    Copy(CopyArgs),
    /// Find the objects of a store that none of the kept flists names (mark and sweep). A dry
    /// run unless --delete: it lists what would go.
    Gc(GcArgs),
}

#[derive(clap::Args)]
struct GcArgs {
    /// The store (dir:// or s3://).
    #[arg(long, value_name = "URL")]
    store: String,
    /// Flists whose chunks stay; every flist still in use must be named.
    #[arg(long, value_name = "FLIST", required = true)]
    keep: Vec<PathBuf>,
    /// Delete the garbage (default: only report it).
    #[arg(long)]
    delete: bool,
    /// Parallel deletions.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CopyArgs {
    /// The flists whose chunks to copy.
    #[arg(required = true)]
    flists: Vec<PathBuf>,
    /// Store to read from (dir://, http(s)://, s3://).
    #[arg(long, value_name = "URL")]
    from: String,
    /// Store to write to (dir://, s3://).
    #[arg(long, value_name = "URL")]
    to: String,
    /// Parallel copies.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: StoreCmd) -> anyhow::Result<ExitCode> {
    match cmd.op {
        StoreOp::Copy(a) => copy(a),
        StoreOp::Gc(a) => gc(a),
    }
}

fn copy(a: CopyArgs) -> anyhow::Result<ExitCode> {
    let flists = a.flists.iter().map(|p| load(p)).collect::<anyhow::Result<Vec<_>>>()?;
    let from = flist::store::open(&a.from).with_context(|| format!("opening {}", a.from))?;
    let to = flist::store::open(&a.to).with_context(|| format!("opening {}", a.to))?;
    let distinct: std::collections::BTreeSet<_> = flists.iter().flat_map(|f| f.chunks.iter().map(|c| c.id)).collect();
    let bar = progress_bar(distinct.len() as u64, "copying");
    bar.set_style(indicatif::ProgressStyle::default_bar());
    let report = flist::replicate::copy(&flists, from.as_ref(), to.as_ref(), a.threads, &|| bar.inc(1));
    bar.finish_and_clear();
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "{} chunks: {} already in {}, {} copied ({} bytes), {} failed",
            report.chunks,
            report.present,
            to.url(),
            report.copied,
            report.bytes,
            report.failures.len()
        );
        for (id, why) in &report.failures {
            println!("  {id}: {why}");
        }
    }
    Ok(if report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn gc(a: GcArgs) -> anyhow::Result<ExitCode> {
    let keep = a.keep.iter().map(|p| load(p)).collect::<anyhow::Result<Vec<_>>>()?;
    let store = flist::store::open(&a.store).with_context(|| format!("opening {}", a.store))?;
    let report = flist::replicate::gc(&keep, store.as_ref(), a.delete, a.threads)?;
    if a.json {
        print_json(&report)?;
    } else {
        let verb = if a.delete { "deleted" } else { "would be deleted (dry run; --delete to delete)" };
        println!(
            "{}: {} objects, {} kept, {} garbage, {} {verb}",
            store.url(),
            report.objects,
            report.kept,
            report.garbage.len(),
            if a.delete { report.deleted } else { report.garbage.len() }
        );
        for (id, why) in &report.failures {
            println!("  {id}: {why}");
        }
    }
    Ok(if report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
