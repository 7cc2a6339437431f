//! `flist pack`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flist::format::Route;
use flist::pack::{pack, Chunking, PackOptions, DEFAULT_AVG_CHUNK, DEFAULT_SMALL_FILES_CHUNK};
use flist::registry::PullProgress;
use flist::source;
use flist::store::{parse_route, RetryPolicy, Router};

/// Pack a directory, a tar archive or a container image into an flist, uploading its chunks to
/// stores.
///
/// A container image is `oci:REGISTRY/REPO[:TAG|@DIGEST]` (pulled from a registry),
/// `oci-layout:DIR[:TAG]` (an OCI image layout, as skopeo or umoci write it) or
/// `docker-archive:FILE[:TAG]` (`docker save`): its layers are applied in order (whiteouts,
/// opaque directories) and its run configuration becomes `oci.*` tags (entrypoint, cmd, env,
/// workdir, user, ports, labels).
///
/// Chunks already present in a store are not uploaded again; the summary says how many were new.
/// The stores are recorded in the flist (credentials never are) so readers know where to fetch
/// from; use --record to record other URLs (e.g. write to dir:///srv/store, record
/// http://server/store).
#[derive(clap::Args)]
pub(crate) struct PackArgs {
    /// A directory, a tar archive (plain, .gz or .zst), `oci:REF`, `oci-layout:DIR[:TAG]` or
    /// `docker-archive:FILE[:TAG]`.
    src: PathBuf,
    /// The platform to take from a multi-platform image (`os/arch[/variant]`).
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    #[command(flatten)]
    out: OutputArgs,
}

/// Convert an flist to flint's format: a Zero-OS rfs `.fl`, or an flist of flint's own (to
/// re-chunk it, encrypt it or move it to other stores).
///
/// The tree is kept entry by entry; every source block is verified as it is read, the new
/// chunks are deduplicated against what the stores already hold, and the new flist is checked
/// against the source (every path, attribute and hard link, and the bytes of every file read
/// back from the new stores) before it is written. The source's tags are kept; an rfs flist's
/// `/.startup.toml` (a Docker image converted by rfs) becomes `oci.*` run configuration tags,
/// and `flint.converted-from` names the source's digest.
#[derive(clap::Args)]
pub(crate) struct ConvertArgs {
    /// The flist to convert: a file or a reference (http(s)://, s3://, oci:).
    flist: PathBuf,
    /// Read the source's chunks from this store instead of those it records; repeat for
    /// replicas. For an rfs `.fl`, in rfs's syntax (`s3://` plain, `s3s://` TLS, `zdb://`,
    /// `server://`).
    #[arg(long = "from-store", value_name = "URL")]
    from_stores: Vec<String>,
    /// Attempts per source store for transient errors before moving to the next replica.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    #[command(flatten)]
    out: OutputArgs,
}

/// Where a new flist goes and how it is chunked.
#[derive(clap::Args)]
pub(crate) struct OutputArgs {
    /// Where to write the flist.
    #[arg(short, long)]
    output: PathBuf,
    /// Store to upload chunks to; repeat for replicas or prefix routing (`00-7f=URL`).
    #[arg(long = "store", value_name = "URL", required = true)]
    stores: Vec<String>,
    /// Store URL to record in the flist instead of the --store ones; repeatable.
    #[arg(long = "record", value_name = "URL")]
    record: Vec<String>,
    /// Tag as KEY=VALUE (name, version, author, description, or anything); repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// Encrypt chunks with keys derived from their content (kept only in the flist).
    #[arg(long)]
    encrypt: bool,
    /// Mean content-defined chunk size (e.g. 512K, 1M); min is a quarter, max four times.
    #[arg(long, default_value_t = DEFAULT_AVG_CHUNK.to_string(), value_parser = parse_size)]
    chunk_size: String,
    /// Mean chunk size for runs of small files packed together (smaller: a read fetches fewer
    /// neighbours; larger: fewer requests).
    #[arg(long, default_value_t = DEFAULT_SMALL_FILES_CHUNK.to_string(), value_parser = parse_size)]
    small_files_chunk_size: String,
    /// zstd level for chunks (1-19).
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
    /// Worker threads for compressing and uploading (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> Result<String, String> {
    size_bytes(s).map(|n| n.to_string())
}

/// `4096`, `512K`, `1M`, `1G` → bytes.
pub(crate) fn size_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = [("K", 1u64 << 10), ("M", 1 << 20), ("G", 1 << 30)]
        .into_iter()
        .find_map(|(suffix, mult)| s.strip_suffix(suffix).or(s.strip_suffix(&suffix.to_lowercase())).map(|n| (n, mult)))
        .unwrap_or((s, 1));
    num.parse::<u64>().map(|n| n * mult).map_err(|_| format!("{s:?} is not a size (like 4096, 512K, 1M)"))
}

#[derive(serde::Serialize)]
struct Summary {
    flist: String,
    digest: String,
    metadata_bytes: usize,
    entries: usize,
    inodes: usize,
    chunks: usize,
    new_chunks: u64,
    data_bytes: u64,
    stored_bytes: u64,
    new_stored_bytes: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    replica_misses: BTreeMap<String, u64>,
    /// For a conversion: the source's digest and the files whose bytes were checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    converted_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files_checked: Option<usize>,
    seconds: f64,
}

/// `PATH[:TAG]` of an image reference.
fn split_tag(reference: &str) -> (PathBuf, Option<&str>) {
    match reference.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !tag.is_empty() => (PathBuf::from(path), Some(tag)),
        _ => (PathBuf::from(reference), None),
    }
}

/// The tree to pack and the tags its source brings (an image's run configuration).
fn read_source(a: &PackArgs, scratch: &std::path::Path) -> anyhow::Result<(source::Tree, BTreeMap<String, String>)> {
    let (src, platform) = (&a.src, a.platform.as_str());
    let text = src.to_string_lossy();
    if text.starts_with("oci:") {
        let reference = super::oci_reference(&text)?;
        let client = super::registry_client()?;
        let layout = scratch.join("layout");
        // A bar per layer; finished ones stay on screen.
        let bars = indicatif::MultiProgress::new();
        let current: std::cell::RefCell<Option<indicatif::ProgressBar>> = std::cell::RefCell::default();
        let progress = |p: PullProgress<'_>| match p {
            PullProgress::Layer { number, of, digest, size } => {
                if let Some(done) = current.borrow_mut().take() {
                    done.finish();
                }
                let short = digest.trim_start_matches("sha256:").get(..12).unwrap_or(digest);
                let bar = bars.add(super::progress_bar(size, &format!("layer {number}/{of} {short}")));
                *current.borrow_mut() = Some(bar);
            }
            PullProgress::Bytes(n) => {
                if let Some(bar) = current.borrow().as_ref() {
                    bar.inc(n);
                }
            }
        };
        client.pull(&reference, platform, &layout, &progress).with_context(|| format!("pulling {text}"))?;
        if let Some(done) = current.take() {
            done.finish();
        }
        let image = source::oci::open_layout(&layout, Some(&reference.tag()), platform)?;
        return Ok((image.tree, image.config.tags()));
    }
    if let Some(reference) = text.strip_prefix("oci-layout:") {
        let (dir, tag) = split_tag(reference);
        let image = source::oci::open_layout(&dir, tag, platform)?;
        return Ok((image.tree, image.config.tags()));
    }
    if let Some(reference) = text.strip_prefix("docker-archive:") {
        let (file, tag) = split_tag(reference);
        let image = source::oci::open_docker_archive(&file, tag, scratch)?;
        return Ok((image.tree, image.config.tags()));
    }
    let tree = if src.is_dir() { source::dir::scan(src)? } else { source::tar::scan_any(src)? };
    Ok((tree, BTreeMap::new()))
}

impl OutputArgs {
    /// The router to write through and the options to pack with.
    fn plan(&self) -> anyhow::Result<(Router, PackOptions)> {
        let router = Router::from_specs(&self.stores, RetryPolicy::default())?;
        let mut tags = BTreeMap::new();
        for t in &self.tags {
            let (k, v) = t.split_once('=').with_context(|| format!("tag {t:?} is not KEY=VALUE"))?;
            tags.insert(k.to_string(), v.to_string());
        }
        let routes = if self.record.is_empty() {
            None
        } else {
            let mut routes = Vec::new();
            for spec in &self.record {
                let (start, end, url) = parse_route(spec)?;
                routes.push(Route { start, end, url: flist::store::display_url(&url) });
            }
            Some(routes)
        };
        let avg: u32 = self.chunk_size.parse().context("chunk size")?;
        let chunking = Chunking::around(avg);
        let defaults = PackOptions::default();
        let opts = PackOptions {
            chunking,
            large_file: u64::from(chunking.min),
            small_chunking: Chunking::around(self.small_files_chunk_size.parse().context("small files chunk size")?),
            zstd_level: self.zstd_level,
            encrypt: self.encrypt,
            tags,
            routes,
            threads: self.threads.unwrap_or(defaults.threads),
        };
        Ok((router, opts))
    }

    /// Writes the flist and prints what was made.
    fn finish(
        &self,
        report: &flist::pack::PackReport,
        started: std::time::Instant,
        converted: Option<(String, usize)>,
    ) -> anyhow::Result<ExitCode> {
        flist::durable::write_whole(&self.output, &report.bytes)
            .with_context(|| format!("writing {}", self.output.display()))?;
        let f = &report.flist;
        let summary = Summary {
            flist: self.output.display().to_string(),
            digest: f.digest().to_hex(),
            metadata_bytes: report.bytes.len(),
            entries: f.entries.len(),
            inodes: f.inodes.len(),
            chunks: f.chunks.len(),
            new_chunks: report.new_chunks,
            data_bytes: f.stream_len(),
            stored_bytes: report.stored_bytes,
            new_stored_bytes: report.new_bytes,
            replica_misses: report.replica_misses.clone(),
            converted_from: converted.as_ref().map(|c| c.0.clone()),
            files_checked: converted.as_ref().map(|c| c.1),
            seconds: started.elapsed().as_secs_f64(),
        };
        if self.json {
            super::print_json(&summary)?;
            return Ok(ExitCode::SUCCESS);
        }
        println!("{}  {}", summary.digest, summary.flist);
        if let (Some(from), Some(files)) = (&summary.converted_from, summary.files_checked) {
            println!("converted from {from}; {files} files checked against the source, byte for byte");
        }
        println!(
            "{} entries, {} bytes of data in {} chunks ({} new, {} already stored); metadata {} bytes ({:.1} per entry); {:.1}s",
            summary.entries,
            summary.data_bytes,
            summary.chunks,
            summary.new_chunks,
            summary.chunks as u64 - summary.new_chunks.min(summary.chunks as u64),
            summary.metadata_bytes,
            summary.metadata_bytes as f64 / summary.entries.max(1) as f64,
            summary.seconds
        );
        for (store, missed) in &summary.replica_misses {
            println!(
                "warning: {store} missed {missed} chunks (the other replicas have them; `flist store copy` repairs it)"
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

pub(crate) fn run(a: PackArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let (router, mut opts) = a.out.plan()?;
    let scratch = tempfile::tempdir().context("a scratch directory")?;
    let (tree, image_tags) = read_source(&a, scratch.path())?;
    for (k, v) in image_tags {
        opts.tags.entry(k).or_insert(v);
    }
    let total: u64 = tree.nodes.iter().map(|n| n.data_len()).sum();
    let bar = super::progress_bar(total, "packing");
    let report = pack(&tree, &router, &opts, &|n| bar.inc(n)).context("packing")?;
    bar.finish_and_clear();
    a.out.finish(&report, started, None)
}

pub(crate) fn convert(a: ConvertArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let source = std::sync::Arc::new(super::load(&a.flist)?);
    let policy = RetryPolicy { attempts: a.retries.max(1), ..RetryPolicy::default() };
    let from = Router::for_flist(&source, &a.from_stores, policy)?;
    anyhow::ensure!(!from.is_empty(), "no store to read the source from: it records none, pass --from-store");
    let (to, opts) = a.out.plan()?;
    let bar = super::progress_bar(source.stream_len(), "converting");
    let report =
        flist::convert::convert(source.clone(), std::sync::Arc::new(from), std::sync::Arc::new(to), &opts, &|n| {
            bar.inc(n)
        })
        .context("converting")?;
    bar.finish_and_clear();
    if let Some(Err(why)) = &report.run_config {
        eprintln!("warning: the run configuration is not kept: {why}");
    }
    a.out.finish(&report.pack, started, Some((source.digest().to_hex(), report.files_checked)))
}
