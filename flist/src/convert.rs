//! Converting an flist to flint's format: an rfs `.fl` (or an flist of flint's own, to re-chunk
//! it or move it to other stores) becomes a flint flist of the same tree. Every source chunk is
//! verified as it is read, the new chunks are deduplicated against what the stores hold, and the
//! result is checked against the source — every path and attribute, hard links, and the BLAKE3 of
//! every file's bytes read back from the new stores — before it is handed back to be written.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::Arc;

use crate::format::{Flist, Format, InodeData};
use crate::pack::{pack, PackError, PackOptions, PackReport, Progress};
use crate::source::flist::{tree, FlistData};
use crate::source::ExternalData;
use crate::store::Router;

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum ConvertError {
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("reading the converted flist back from its stores")]
    ReadBack(#[source] std::io::Error),
    #[error("the converted flist differs from the source: {0}; nothing written")]
    Differs(String),
}

/// The tag naming the flist a converted one was made from (its BLAKE3 digest).
pub const CONVERTED_FROM_TAG: &str = "flint.converted-from";

/// What a conversion made.
pub struct ConvertReport {
    /// The new flist, checked.
    pub pack: PackReport,
    /// Files whose bytes were compared.
    pub files_checked: usize,
    /// The run configuration found in an rfs `/.startup.toml`, as `oci.*` tags (also in the
    /// new flist's tags), or why it was not taken.
    pub run_config: Option<Result<BTreeMap<String, String>, String>>,
}

/// Converts `source` (read through `from`) into a flint flist whose chunks go to `to`.
/// `opts.tags` are added to the source's own tags, and win over them.
pub fn convert(
    source: Arc<Flist>,
    from: Arc<Router>,
    to: Arc<Router>,
    opts: &PackOptions,
    progress: Progress,
) -> Result<ConvertReport, ConvertError> {
    let data = FlistData::new(source.clone(), from);
    let mut opts = opts.clone();
    let mut tags = source.tags.clone();
    let run_config = (source.format == Format::Rfs).then(|| startup_tags(&source, &data)).flatten();
    if let Some(Ok(run)) = &run_config {
        tags.extend(run.clone());
    }
    tags.insert(CONVERTED_FROM_TAG.into(), source.digest().to_hex());
    tags.extend(std::mem::take(&mut opts.tags));
    opts.tags = tags;
    let report = pack(&tree(&source, data.clone()), &to, &opts, progress)?;
    let files_checked = check(&source, &data, &report.flist, to)?;
    Ok(ConvertReport { pack: report, files_checked, run_config })
}

/// The `oci.*` tags of an rfs flist's `/.startup.toml`, if it has one.
fn startup_tags(source: &Flist, data: &FlistData) -> Option<Result<BTreeMap<String, String>, String>> {
    let entry = (0..source.entries.len() as u32).find(|&e| source.path_of(e) == crate::rfs::startup::PATH)?;
    let inode = source.entries.get(entry as usize)?.inode;
    let mut bytes = Vec::new();
    let read = data
        .open(u64::from(inode))
        .and_then(|r| r.take(crate::rfs::startup::MAX_LEN + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("/.startup.toml: {e}"));
    Some(read.and_then(|_| crate::rfs::startup::oci_tags(&bytes)))
}

/// Checks `made` against `source`: the same paths with the same attributes, the same hard-link
/// groups, and the same bytes in every file (read back through `to`). Returns the files compared.
fn check(source: &Flist, data: &FlistData, made: &Flist, to: Arc<Router>) -> Result<usize, ConvertError> {
    let differs = |why: String| ConvertError::Differs(why);
    // Attributes, path by path; contents are compared below, by hash.
    let changes = crate::diff::diff(source, made, None).map_err(ConvertError::ReadBack)?;
    if let Some(c) = changes.iter().find(|c| c.fields != ["content?"]) {
        return Err(differs(format!("{} {} ({})", c.what, c.path, c.fields.join(", "))));
    }
    if source.entries.len() != made.entries.len() {
        return Err(differs(format!("{} entries became {}", source.entries.len(), made.entries.len())));
    }
    let by_path = |f: &Flist| -> HashMap<Vec<u8>, u32> {
        (0..f.entries.len() as u32).filter_map(|e| Some((f.path_of(e), f.entries.get(e as usize)?.inode))).collect()
    };
    let made_paths = by_path(made);
    let mut inode_map: HashMap<u32, u32> = HashMap::new();
    for (path, inode) in by_path(source) {
        let Some(&other) = made_paths.get(&path) else {
            return Err(differs(format!("{} is missing", String::from_utf8_lossy(&path))));
        };
        if *inode_map.entry(inode).or_insert(other) != other {
            return Err(differs(format!("{} left its hard-link group", String::from_utf8_lossy(&path))));
        }
    }
    let groups: std::collections::HashSet<u32> = inode_map.values().copied().collect();
    if groups.len() != inode_map.len() {
        return Err(differs("hard-link groups were merged".into()));
    }
    let source_hashes = data.hashes();
    let made_hashes = FlistData::new(Arc::new(made.clone()), to).hash_all().map_err(ConvertError::ReadBack)?;
    let mut files = 0;
    for (from, into) in inode_map {
        let Some(InodeData::File { size, regions, .. }) = source.inodes.get(from as usize).map(|i| &i.data) else {
            continue;
        };
        // A file without data bytes (empty, or all hole) is never read.
        let no_data = crate::format::data_len(*size, regions.as_deref()) == 0;
        let want = source_hashes.get(&from).copied().or(no_data.then(|| blake3::hash(b"")));
        let got = made_hashes.get(&into).copied();
        match (want, got) {
            (Some(w), Some(g)) if w == g => files += 1,
            (None, _) => return Err(differs(format!("inode {from} was never read"))),
            _ => {
                let path =
                    made_paths.iter().find(|(_, &i)| i == into).map(|(p, _)| String::from_utf8_lossy(p).into_owned());
                return Err(differs(format!("the bytes of {} differ", path.unwrap_or_default())));
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::RetryPolicy;

    /// Packs `files` (path, bytes, mode) from a directory into `store`.
    fn packed(dir: &std::path::Path, store: &Arc<Router>, files: &[(&str, &[u8], u32)]) -> Flist {
        use std::os::unix::fs::PermissionsExt;
        for (name, bytes, mode) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        // The same times everywhere: only what the test changes differs.
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for path in files.iter().map(|f| dir.join(f.0)).chain([dir.to_path_buf()]) {
            std::fs::File::open(&path).unwrap().set_modified(when).unwrap();
        }
        let tree = crate::source::dir::scan(dir).unwrap();
        pack(&tree, store, &PackOptions::default(), &|_| {}).unwrap().flist
    }

    #[test]
    fn the_check_refuses_a_result_that_differs_from_the_source() {
        let tmp = tempfile::tempdir().unwrap();
        let mut router = Router::new(RetryPolicy::default());
        router.add(0, 255, crate::store::open(&format!("dir://{}", tmp.path().join("store").display())).unwrap());
        let store = Arc::new(router);
        let dirs: Vec<_> = (0..3).map(|i| tmp.path().join(format!("t{i}"))).collect();
        dirs.iter().for_each(|d| std::fs::create_dir_all(d).unwrap());
        let source = packed(&dirs[0], &store, &[("a", b"same length!", 0o644), ("b", b"bee", 0o644)]);
        let other_bytes = packed(&dirs[1], &store, &[("a", b"SAME LENGTH!", 0o644), ("b", b"bee", 0o644)]);
        let other_mode = packed(&dirs[2], &store, &[("a", b"same length!", 0o600), ("b", b"bee", 0o644)]);
        let source = Arc::new(source);
        let converted =
            convert(source.clone(), store.clone(), store.clone(), &PackOptions::default(), &|_| {}).unwrap();
        assert_eq!(converted.files_checked, 2);
        for (wrong, why) in [(other_bytes, "the bytes of /a differ"), (other_mode, "modified /a (mode)")] {
            let data = FlistData::new(source.clone(), store.clone());
            crate::source::ExternalData::open(&*data, 1)
                .and_then(|mut r| std::io::copy(&mut r, &mut std::io::sink()))
                .unwrap();
            crate::source::ExternalData::open(&*data, 2)
                .and_then(|mut r| std::io::copy(&mut r, &mut std::io::sink()))
                .unwrap();
            match check(&source, &data, &wrong, store.clone()) {
                Err(ConvertError::Differs(d)) => assert!(d.contains(why), "{d}"),
                other => panic!("{why}: {:?}", other.map_err(|e| e.to_string())),
            }
        }
    }
}
