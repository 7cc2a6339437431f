//! Commands that read content: `unpack`, `verify`, `diff`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flist::read::RouterSource;

use super::{load, print_json, progress_bar, StoreArgs};

/// Restore an flist's tree to a directory, with all attributes (run as root for owners and
/// devices). Chunks are fetched in parallel, each once.
#[derive(clap::Args)]
pub(crate) struct UnpackArgs {
    /// The flist file.
    flist: PathBuf,
    /// Target directory; must be missing or empty.
    dest: PathBuf,
    #[command(flatten)]
    stores: StoreArgs,
    /// Parallel chunk fetches.
    #[arg(long, default_value_t = 8)]
    threads: usize,
}

/// Check that every chunk is present in the stores and matches its hash.
#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    /// The flist file.
    flist: PathBuf,
    #[command(flatten)]
    stores: StoreArgs,
    /// Check every replica of every chunk, not just the first that answers.
    #[arg(long)]
    all_replicas: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Show what changed between two flists, path by path.
///
/// Contents are compared by chunk identity; with --content, files whose chunks differ are
/// fetched and compared byte by byte (equal content can land in different chunks).
#[derive(clap::Args)]
pub(crate) struct DiffArgs {
    /// The older flist.
    a: PathBuf,
    /// The newer flist.
    b: PathBuf,
    /// Fetch and compare contents where chunk identity is not conclusive.
    #[arg(long)]
    content: bool,
    #[command(flatten)]
    stores: StoreArgs,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn unpack(a: UnpackArgs) -> anyhow::Result<ExitCode> {
    let f = load(&a.flist)?;
    let router = a.stores.router(&f)?;
    let source = RouterSource::new(&router);
    let bar = progress_bar(f.stream_len(), "unpacking");
    flist::unpack::unpack(&f, &source, &a.dest, a.threads, &|n| bar.inc(n))
        .with_context(|| format!("unpacking into {}", a.dest.display()))?;
    bar.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let f = load(&a.flist)?;
    let router = a.stores.router(&f)?;
    let bar = progress_bar(f.stream_len(), "verifying");
    let report = flist::verify::verify(&f, &router, a.all_replicas, &|n| bar.inc(n));
    bar.finish_and_clear();
    if a.json {
        print_json(&report)?;
    } else {
        for (id, store, why) in &report.failures {
            println!("BAD {id} {store}: {why}");
        }
        println!(
            "{} chunks, {} checks, {} ok, {} failed",
            report.chunks,
            report.checks,
            report.ok,
            report.failures.len()
        );
    }
    Ok(if report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

pub(crate) fn diff(a: DiffArgs) -> anyhow::Result<ExitCode> {
    let fa = load(&a.a)?;
    let fb = load(&a.b)?;
    let changes = if a.content {
        let (ra, rb) = (a.stores.router(&fa)?, a.stores.router(&fb)?);
        let (sa, sb) = (RouterSource::new(&ra), RouterSource::new(&rb));
        flist::diff::diff(&fa, &fb, Some((&sa, &sb)))?
    } else {
        flist::diff::diff(&fa, &fb, None)?
    };
    if a.json {
        print_json(&changes)?;
    } else {
        for c in &changes {
            let mark = match c.what {
                "added" => "+",
                "removed" => "-",
                _ => "M",
            };
            let fields = if c.fields.is_empty() { String::new() } else { format!("  ({})", c.fields.join(", ")) };
            println!("{mark} {}{fields}", c.path);
        }
    }
    Ok(if changes.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
