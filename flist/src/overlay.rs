//! A writable view over a read-only mount: the kernel's overlayfs, with the changes kept in an
//! upper directory. `flist mount --rw` and PID 1 (writable roots) use it.

use std::io;
use std::path::{Path, PathBuf};

/// The directories of a writable view kept under one root: `upper/` (the changes), `work/`
/// (overlayfs scratch, same filesystem as `upper/`) and `lower/` (where the read-only mount goes).
pub struct Layers {
    /// Where the read-only mount goes.
    pub lower: PathBuf,
    /// The changes.
    pub upper: PathBuf,
    work: PathBuf,
}

impl Layers {
    /// The layers under `root`, created as needed.
    pub fn create(root: &Path) -> io::Result<Layers> {
        let layers = Layers { lower: root.join("lower"), upper: root.join("upper"), work: root.join("work") };
        for dir in [&layers.lower, &layers.upper, &layers.work] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(layers)
    }

    /// A writable view over `lower` (a read-only mount elsewhere), with `upper/` and `work/`
    /// kept under `root`. PID 1 keeps one upper layer per flist name while versions change.
    pub fn over(lower: &Path, root: &Path) -> io::Result<Layers> {
        let layers = Layers { lower: lower.to_path_buf(), upper: root.join("upper"), work: root.join("work") };
        for dir in [&layers.upper, &layers.work] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(layers)
    }

    /// Mounts the overlay at `target`; the read-only mount must already be on `lower`.
    pub fn mount(&self, target: &Path) -> io::Result<()> {
        let escape = |p: &Path| p.to_string_lossy().replace('\\', "\\\\").replace(',', "\\,").replace(':', "\\:");
        let options =
            format!("lowerdir={},upperdir={},workdir={}", escape(&self.lower), escape(&self.upper), escape(&self.work));
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(io::Error::from)
    }
}
