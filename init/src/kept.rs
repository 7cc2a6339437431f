//! What the node keeps about manifests on its state disk, each file written whole:
//! - `manifest.version`: the *floor*, the highest version ever applied from the network. Nothing
//!   older is taken from the network again; a rollback does not lower it.
//! - `manifest.json` (and `.sig`): the manifest running.
//! - `good.json` (and `.sig`): the last good manifest, which a failed upgrade goes back to.
//! - `trial`: the version in its health window and how many times it was tried; found at boot,
//!   it means the window was cut short (power loss), which counts as a failed try.
//! - `failed`: the highest version that failed; only a newer one is applied.
//!
//! Without a state directory the same is kept in memory for the life of the process.

use std::path::{Path, PathBuf};

use flist::Hash;

/// A version is tried at most this many times before it counts as failed.
pub const MAX_TRIES: u32 = 2;

/// A manifest as signed.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its signature.
    pub signature: Option<Vec<u8>>,
}

/// A version in its health window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trial {
    /// The version.
    pub version: u64,
    /// Its manifest's digest.
    pub digest: Hash,
    /// How many times it has been tried, this one included.
    pub tries: u32,
}

/// The node's record of versions.
#[derive(Debug, Default)]
pub struct Versions {
    dir: Option<PathBuf>,
    floor: Option<(u64, Hash)>,
    /// The version in its health window (or cut short).
    pub trial: Option<Trial>,
    /// The highest version that failed.
    pub failed: Option<u64>,
    good: Option<Signed>,
}

fn read_text(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

impl Versions {
    /// What `dir` holds (nothing without one).
    pub fn load(dir: Option<PathBuf>) -> Versions {
        let Some(d) = dir.clone() else { return Versions::default() };
        let floor = read_text(&d.join("manifest.version")).and_then(|t| {
            let (version, digest) = t.trim().split_once(' ')?;
            Some((version.parse().ok()?, Hash::from_hex(digest)?))
        });
        let trial = read_text(&d.join("trial")).and_then(|t| {
            let mut words = t.split_whitespace();
            Some(Trial {
                version: words.next()?.parse().ok()?,
                digest: Hash::from_hex(words.next()?)?,
                tries: words.next()?.parse().ok()?,
            })
        });
        let failed = read_text(&d.join("failed")).and_then(|t| t.trim().parse().ok());
        let good = std::fs::read(d.join("good.json"))
            .ok()
            .map(|bytes| Signed { bytes, signature: std::fs::read(d.join("good.json.sig")).ok() });
        Versions { dir, floor, trial, failed, good }
    }

    fn write(&self, name: &str, data: &[u8]) {
        if let Some(dir) = &self.dir {
            if let Err(e) = flist::durable::write_whole(&dir.join(name), data) {
                tracing::error!("keeping {name} on the state disk: {e}");
            }
        }
    }

    fn remove(&self, name: &str) {
        if let Some(dir) = &self.dir {
            match std::fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::error!("removing {name} from the state disk: {e}");
                }
                _ => {}
            }
        }
    }

    /// The floor: nothing older comes from the network.
    pub fn floor(&self) -> Option<(u64, Hash)> {
        self.floor
    }

    /// Raises the floor to `version` (never lowers it).
    pub fn raise_floor(&mut self, version: u64, digest: Hash) {
        if self.floor.is_some_and(|(v, _)| v > version) {
            return;
        }
        self.floor = Some((version, digest));
        self.write("manifest.version", format!("{version} {}\n", digest.to_hex()).as_bytes());
    }

    /// Records the manifest now running.
    pub fn running(&self, m: &Signed) {
        self.write("manifest.json", &m.bytes);
        self.write("manifest.json.sig", m.signature.as_deref().unwrap_or_default());
    }

    /// The manifest running, as kept (verified again before use: the disk is not trusted).
    pub fn kept_running(&self) -> Option<Signed> {
        let dir = self.dir.as_ref()?;
        let bytes = std::fs::read(dir.join("manifest.json")).ok()?;
        Some(Signed { bytes, signature: std::fs::read(dir.join("manifest.json.sig")).ok() })
    }

    /// The last good manifest.
    pub fn good(&self) -> Option<&Signed> {
        self.good.as_ref()
    }

    /// Makes `m` the last good manifest.
    pub fn set_good(&mut self, m: Signed) {
        self.write("good.json", &m.bytes);
        self.write("good.json.sig", m.signature.as_deref().unwrap_or_default());
        self.good = Some(m);
    }

    /// Starts the health window of `version`: one more try of it.
    pub fn start_trial(&mut self, version: u64, digest: Hash) -> Trial {
        let earlier = self.trial.filter(|t| t.version == version && t.digest == digest).map_or(0, |t| t.tries);
        let trial = Trial { version, digest, tries: earlier.saturating_add(1) };
        self.write("trial", format!("{version} {} {}\n", digest.to_hex(), trial.tries).as_bytes());
        self.trial = Some(trial);
        trial
    }

    /// The health window ended (either way).
    pub fn end_trial(&mut self) {
        self.trial = None;
        self.remove("trial");
    }

    /// Marks `version` failed: only newer versions are applied from now on.
    pub fn fail(&mut self, version: u64) {
        let failed = self.failed.map_or(version, |f| f.max(version));
        self.failed = Some(failed);
        self.write("failed", format!("{failed}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn everything_kept_is_read_back_and_the_floor_never_goes_down() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = Versions::load(Some(dir.path().to_path_buf()));
        assert!(v.floor().is_none() && v.trial.is_none() && v.failed.is_none() && v.good().is_none());
        v.raise_floor(5, Hash([5; 32]));
        v.raise_floor(4, Hash([4; 32]));
        v.set_good(Signed { bytes: b"{}".to_vec(), signature: Some(b"sig".to_vec()) });
        assert_eq!(v.start_trial(6, Hash([6; 32])).tries, 1);
        let mut again = Versions::load(Some(dir.path().to_path_buf()));
        assert_eq!(again.floor(), Some((5, Hash([5; 32]))));
        assert_eq!(again.trial, Some(Trial { version: 6, digest: Hash([6; 32]), tries: 1 }));
        assert_eq!(again.good().unwrap().signature.as_deref(), Some(&b"sig"[..]));
        assert_eq!(again.start_trial(6, Hash([6; 32])).tries, 2);
        assert_eq!(again.start_trial(7, Hash([7; 32])).tries, 1, "another version starts again");
        again.end_trial();
        again.fail(7);
        again.fail(3);
        let last = Versions::load(Some(dir.path().to_path_buf()));
        assert_eq!((last.trial, last.failed), (None, Some(7)));
        std::fs::write(dir.path().join("trial"), "garbage").unwrap();
        assert_eq!(Versions::load(Some(dir.path().to_path_buf())).trial, None);
    }
}
