//! The node's own ed25519 identity: made from the kernel's RNG on first boot and kept on the cache
//! disk (`state/identity.key`, mode 0600), or put there (or in the image, `/etc/flint/identity.key`)
//! ahead of time with `init identity new`. With neither a disk nor an image key, the key lives
//! for this boot only, and the node says so: the boot server then sees a new node at every boot.
//!
//! Every report and manifest request to the boot server is signed with it
//! ([`flint_manifest::signed`]), over a boot counter kept next to the key and a sequence number
//! per stream.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flint_manifest::ed25519::SigningKey;
use flint_manifest::signed::{self, Envelope};

/// A key baked into the image by the operator.
pub const IMAGE_KEY: &str = "/etc/flint/identity.key";
/// The key's file in the state directory.
pub const KEY_FILE: &str = "identity.key";
/// The boot counter's file in the state directory.
const BOOT_FILE: &str = "boot";

/// Where the key came from, and so whether it outlives this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// On the state disk.
    Disk(PathBuf),
    /// In the image (the same key every boot).
    Image(PathBuf),
    /// Nowhere: a new key every boot.
    Ephemeral,
}

/// The node's key, id, boot counter and the sequence of each stream.
pub struct Identity {
    key: SigningKey,
    /// The node id ([`signed::node_id`]).
    pub id: String,
    /// This boot's counter.
    pub boot: u64,
    /// Where the key is kept.
    pub kept: Kept,
    sequences: Mutex<BTreeMap<&'static str, u64>>,
}

static INSTALLED: OnceLock<Arc<Identity>> = OnceLock::new();
static SETTLED: (Mutex<bool>, std::sync::Condvar) = (Mutex::new(false), std::sync::Condvar::new());

/// A fresh key from the kernel's RNG: getrandom(2) blocks until the RNG is seeded.
pub fn new_key() -> io::Result<SigningKey> {
    let mut seed = [0u8; 32];
    let mut filled = 0;
    while filled < seed.len() {
        let rest = seed.get_mut(filled..).unwrap_or_default();
        // SAFETY: the pointer and length describe `rest`, which outlives the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// A key file: 64 hex digits (the secret seed), as `init identity new` and `netboot keygen` write.
pub fn read_key(path: &Path) -> io::Result<SigningKey> {
    let text = std::fs::read_to_string(path)?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{}: not 64 hex digits", path.display())))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `key` to a new file readable by its owner only; an existing file is never overwritten.
pub fn write_key(path: &Path, key: &SigningKey) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(f, "{}", hex::encode(key.to_bytes()))?;
    f.sync_all()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The node id of `key`.
pub fn id_of(key: &SigningKey) -> String {
    signed::node_id(&key.verifying_key().to_bytes())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Identity {
    /// The identity of this boot: the key in `state` (kept), else `given` (a pre-made key file,
    /// copied into `state`), else the image's, else `provisional` or a new one, kept in `state`
    /// when there is one. The boot counter in `state` is advanced.
    pub fn load(state: Option<&Path>, given: Option<&Path>, provisional: Option<SigningKey>) -> io::Result<Identity> {
        let on_disk = state.map(|s| s.join(KEY_FILE));
        let image = Path::new(IMAGE_KEY);
        let (key, kept) = match (&on_disk, given) {
            (Some(p), _) if p.exists() => (read_key(p)?, Kept::Disk(p.clone())),
            (_, Some(g)) => (read_key(g)?, Kept::Image(g.to_path_buf())),
            _ if image.exists() => (read_key(image)?, Kept::Image(image.to_path_buf())),
            _ => (provisional.map_or_else(new_key, Ok)?, Kept::Ephemeral),
        };
        let kept = match (&on_disk, kept) {
            (Some(p), Kept::Ephemeral | Kept::Image(_)) => match write_key(p, &key) {
                Ok(()) => Kept::Disk(p.clone()),
                Err(e) => {
                    tracing::error!("identity: keeping the key in {}: {e}", p.display());
                    Kept::Ephemeral
                }
            },
            (_, kept) => kept,
        };
        // A key that outlives the boot needs a boot id above the last one: the counter on the
        // disk, else (an image key on a node without a disk) the time.
        let boot = match (state, &kept) {
            (_, Kept::Ephemeral) => 0,
            (Some(s), _) => next_boot(&s.join(BOOT_FILE)),
            (None, _) => unix_now(),
        };
        Ok(Identity { id: id_of(&key), key, boot, kept, sequences: Mutex::new(BTreeMap::new()) })
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// The headers signing a request of `stream` (`report`, `manifest`, `logs`).
    pub fn sign(&self, stream: &'static str, method: &str, target: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        let seq = {
            let mut sequences = flist::durable::lock(&self.sequences);
            let next = sequences.entry(stream).or_insert(0);
            let seq = *next;
            *next = next.saturating_add(1);
            seq
        };
        let envelope = Envelope {
            key: self.key.verifying_key().to_bytes(),
            boot: self.boot,
            stream: stream.to_string(),
            seq,
            time: unix_now(),
        };
        signed::sign(&self.key, &envelope, method, target, body)
    }

    /// One line for the console and `init ctl status`.
    pub fn describe(&self) -> String {
        match &self.kept {
            Kept::Disk(p) => format!("node {} (key kept in {}; boot {})", self.id, p.display(), self.boot),
            Kept::Image(p) => format!("node {} (key from the image, {}; boot {})", self.id, p.display(), self.boot),
            Kept::Ephemeral => format!(
                "node {} (EPHEMERAL: no cache disk to keep a key on, so this node has a new identity every boot)",
                self.id
            ),
        }
    }
}

/// Advances the boot counter in `path` and returns it. If it cannot be written, the time in
/// seconds is used when that is larger, so the next boot's requests are still above this one's.
fn next_boot(path: &Path) -> u64 {
    let last: u64 = std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    let boot = last.saturating_add(1);
    match flist::durable::write_whole(path, format!("{boot}\n").as_bytes()) {
        Ok(()) => boot,
        Err(e) => {
            tracing::error!("identity: advancing the boot counter in {}: {e}", path.display());
            boot.max(unix_now())
        }
    }
}

/// Makes `identity` the one every request is signed with, and releases [`wait`]ers.
pub fn install(identity: Identity) -> Arc<Identity> {
    tracing::info!("identity: {}", identity.describe());
    let identity = INSTALLED.get_or_init(|| Arc::new(identity)).clone();
    settle();
    identity
}

/// No identity will be installed (no state, or it failed): waiters go on unsigned.
pub fn settle() {
    *flist::durable::lock(&SETTLED.0) = true;
    SETTLED.1.notify_all();
}

/// The identity, once installed.
pub fn get() -> Option<Arc<Identity>> {
    INSTALLED.get().cloned()
}

/// Waits up to `timeout` for the identity to be settled, then returns it if there is one.
pub fn wait(timeout: Duration) -> Option<Arc<Identity>> {
    let deadline = crate::later(Instant::now(), timeout);
    let mut settled = flist::durable::lock(&SETTLED.0);
    while !*settled {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        settled = match SETTLED.1.wait_timeout(settled, left) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
    drop(settled);
    get()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_made_once_kept_private_and_the_boot_counter_advances() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load(Some(dir.path()), None, None).unwrap();
        let path = dir.path().join(KEY_FILE);
        assert_eq!(first.kept, Kept::Disk(path.clone()));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(first.boot, 1);
        let second = Identity::load(Some(dir.path()), None, Some(SigningKey::from_bytes(&[3; 32]))).unwrap();
        assert_eq!((second.id.clone(), second.boot), (first.id.clone(), 2));
        // A pre-made key is taken when the disk has none, and then kept there.
        let other = tempfile::tempdir().unwrap();
        let made = other.path().join("made.key");
        write_key(&made, &SigningKey::from_bytes(&[5; 32])).unwrap();
        assert!(write_key(&made, &SigningKey::from_bytes(&[6; 32])).is_err(), "never overwritten");
        let given = Identity::load(Some(&other.path().join("state")), Some(&made), None).unwrap();
        assert_eq!(given.id, id_of(&SigningKey::from_bytes(&[5; 32])));
        assert!(matches!(given.kept, Kept::Disk(_)));
        let ephemeral = Identity::load(None, None, None).unwrap();
        assert_eq!((ephemeral.kept.clone(), ephemeral.boot), (Kept::Ephemeral, 0));
        assert_ne!(ephemeral.id, first.id);
        std::fs::write(&path, "not hex\n").unwrap();
        assert!(Identity::load(Some(dir.path()), None, None).is_err());
    }

    #[test]
    fn each_stream_counts_from_zero_and_signs_what_the_server_checks() {
        let identity = Identity::load(None, None, Some(SigningKey::from_bytes(&[4; 32]))).unwrap();
        let header =
            |h: &[(&'static str, String)], name: &str| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        for (stream, want) in [("report", 0), ("report", 1), ("manifest", 0), ("report", 2)] {
            let h = identity.sign(stream, "GET", "/m.json", b"");
            assert_eq!(header(&h, signed::SEQ), Some(want.to_string()));
            let envelope = signed::check(|n| header(&h, n), "GET", "/m.json", b"").unwrap().unwrap();
            assert_eq!(signed::node_id(&envelope.key), identity.id);
        }
    }
}
