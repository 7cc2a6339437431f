//! `flist trace show`: what a recorded trace names, and whether it fits an flist.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flist::trace::Trace;

/// Recorded prefetch traces (made with `flist mount --record-trace FILE`).
#[derive(clap::Args)]
pub(crate) struct TraceCmd {
    #[command(subcommand)]
    action: TraceAction,
}

#[derive(clap::Subcommand)]
enum TraceAction {
    /// Show a trace: the flist it was recorded for, how many chunks it names and, given that
    /// flist, how many bytes they hold and the first chunks in order.
    Show {
        /// The trace file.
        trace: PathBuf,
        /// The flist to check it against.
        #[arg(long)]
        flist: Option<PathBuf>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(serde::Serialize)]
struct Shown {
    flist: String,
    chunks: usize,
    /// For the flist given: whether the trace is its own, and the bytes of the chunks it names.
    matches: Option<bool>,
    bytes: Option<u64>,
    first: Vec<u32>,
}

pub(crate) fn trace(cmd: TraceCmd) -> anyhow::Result<ExitCode> {
    let TraceAction::Show { trace, flist, json } = cmd.action;
    let bytes = std::fs::read(&trace).with_context(|| format!("reading {}", trace.display()))?;
    let decoded = Trace::decode(&bytes).with_context(|| format!("{}", trace.display()))?;
    let mut shown = Shown {
        flist: decoded.flist.to_hex(),
        chunks: decoded.chunks.len(),
        matches: None,
        bytes: None,
        first: decoded.chunks.iter().take(16).copied().collect(),
    };
    if let Some(path) = &flist {
        let (image, digest) = super::load_with_digest(path)?;
        shown.matches = Some(digest == decoded.flist);
        if let Ok(own) = Trace::decode_for(&bytes, &digest, image.chunks.len()) {
            let sizes = own.chunks.iter().filter_map(|&c| image.chunks.get(c as usize)).map(|c| u64::from(c.len));
            shown.bytes = Some(sizes.sum());
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("trace for flist {}: {} chunks", shown.flist, shown.chunks);
    match (shown.matches, shown.bytes) {
        (Some(true), Some(b)) => println!("matches {}: {b} bytes of chunks", flist.unwrap_or_default().display()),
        (Some(false), _) => println!(
            "does NOT match {} (recorded for another flist): it would be ignored",
            flist.unwrap_or_default().display()
        ),
        _ => {}
    }
    println!("first chunks: {:?}", shown.first);
    Ok(ExitCode::SUCCESS)
}
