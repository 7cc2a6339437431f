//! Kernel modules: which ones the machine needs, in which order, and loading them.
//!
//! [`ModuleIndex`] reads `modules.dep`, `modules.alias` and `modules.builtin` of
//! `/lib/modules/VERSION` (what depmod writes). Coldplug walks `/sys` for `modalias` files and
//! loads every module whose alias pattern matches; hotplug does the same for each `MODALIAS=` the
//! kernel announces on the uevent netlink socket ([`hotplug`]). A module is loaded after its
//! dependencies. Files may be `.ko`, `.ko.xz` or `.ko.zst`: the kernel decompresses them itself
//! when they are in the one format it can (`/sys/module/compression`; `finit_module` with
//! `MODULE_INIT_COMPRESSED_FILE`); else they are decompressed here and handed over with
//! `init_module`. The initramfs holds them as zstd, which decodes here many times faster than
//! a distribution kernel's xz.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::CString;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why a module could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// Reading an index file of the module directory.
    #[error("reading {}", path.display())]
    Index {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No module of that name.
    #[error("no module {0}")]
    Unknown(String),
    /// Reading or decompressing a module file.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused it.
    #[error("loading {}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
}

/// A module as `modules.dep` lists it.
#[derive(Debug, Clone)]
struct Module {
    /// Relative to the module directory.
    path: String,
    /// Names of the modules it needs.
    deps: Vec<String>,
}

/// The module directory's indexes.
pub struct ModuleIndex {
    dir: PathBuf,
    modules: HashMap<String, Module>,
    builtin: HashSet<String>,
    /// Modules (or aliases) to load before a module, from `modules.softdep` `pre:` — e.g. ext4
    /// needs `crypto-crc32c`, which nothing else would load, as there is no modprobe to ask.
    softdeps: HashMap<String, Vec<String>>,
    /// `(pattern, module)` by the pattern's bus (the text before the first ':').
    aliases: HashMap<String, Vec<(String, String)>>,
}

/// A module's name from its file name: no directory, no `.ko*`, `-` read as `_` (as the kernel does).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn bus(pattern: &str) -> &str {
    pattern.split(':').next().unwrap_or(pattern)
}

impl ModuleIndex {
    /// Reads the indexes of `dir` (e.g. `/lib/modules/6.12.0-amd64`).
    pub fn load(dir: &Path) -> Result<ModuleIndex, ModuleError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| ModuleError::Index { path, source })
        };
        let dep = read("modules.dep")?;
        // Optional: a kernel may have no built-in list, or no aliases.
        let builtin = read("modules.builtin").unwrap_or_default();
        let alias = read("modules.alias").unwrap_or_default();
        let softdep = read("modules.softdep").unwrap_or_default();
        Ok(ModuleIndex::parse(dir, &dep, &builtin, &alias, &softdep))
    }

    /// The index from the texts of `modules.dep`, `modules.builtin`, `modules.alias` and
    /// `modules.softdep`.
    pub fn parse(dir: &Path, dep: &str, builtin: &str, alias: &str, softdep: &str) -> ModuleIndex {
        let mut modules = HashMap::new();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else { continue };
            let deps = deps.split_whitespace().map(module_name).collect();
            modules.insert(module_name(path), Module { path: path.to_string(), deps });
        }
        let builtin = builtin.lines().map(module_name).collect();
        let mut aliases: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) = (words.next(), words.next(), words.next()) {
                aliases.entry(bus(pattern).to_string()).or_default().push((pattern.to_string(), module.to_string()));
            }
        }
        let mut softdeps: HashMap<String, Vec<String>> = HashMap::new();
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (words.next(), words.next()) else { continue };
            let mut pre = false;
            let entry = softdeps.entry(module.replace('-', "_")).or_default();
            for w in words {
                match w {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    w if pre => entry.push(w.to_string()),
                    _ => {}
                }
            }
        }
        ModuleIndex { dir: dir.to_path_buf(), modules, builtin, softdeps, aliases }
    }

    /// The index of the running kernel: `/lib/modules/$(uname -r)`.
    pub fn running() -> Result<ModuleIndex, ModuleError> {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .map_err(|e| ModuleError::Index { path: "/proc/sys/kernel/osrelease".into(), source: e.into() })?;
        ModuleIndex::load(&Path::new("/lib/modules").join(release))
    }

    /// Whether `name` is compiled into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&name.replace('-', "_"))
    }

    /// Modules whose alias patterns match a device's `modalias`.
    pub fn for_modalias(&self, modalias: &str) -> BTreeSet<String> {
        self.aliases
            .get(bus(modalias))
            .into_iter()
            .flatten()
            .filter(|(pattern, _)| glob_match(pattern.as_bytes(), modalias.as_bytes()))
            .map(|(_, module)| module.clone())
            .collect()
    }

    /// The files to load for `name`, dependencies first; empty if it is built in.
    pub fn load_order(&self, name: &str) -> Result<Vec<PathBuf>, ModuleError> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        self.visit(&name.replace('-', "_"), &mut seen, &mut order)?;
        Ok(order)
    }

    fn visit(&self, name: &str, seen: &mut HashSet<String>, order: &mut Vec<PathBuf>) -> Result<(), ModuleError> {
        if !seen.insert(name.to_string()) || self.builtin.contains(name) {
            return Ok(());
        }
        let module = self.modules.get(name).ok_or_else(|| ModuleError::Unknown(name.to_string()))?;
        // Soft dependencies are names or aliases, and optional: whatever resolves is loaded first.
        for soft in self.softdeps.get(name).into_iter().flatten() {
            let by_name = soft.replace('-', "_");
            let targets = match self.modules.contains_key(&by_name) || self.builtin.contains(&by_name) {
                true => BTreeSet::from([by_name]),
                false => self.for_modalias(soft),
            };
            for t in targets {
                let _ = self.visit(&t, seen, order);
            }
        }
        for dep in &module.deps {
            self.visit(dep, seen, order)?;
        }
        order.push(self.dir.join(&module.path));
        Ok(())
    }
}

/// Shell-style matching of modalias patterns: `*`, `?` and `[...]` (with ranges and `!`).
/// Written here rather than taken from a crate because it runs for ~27,000 patterns per device
/// at boot and must not allocate or compile each pattern.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index it matched up to).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let c = text.get(t).copied().unwrap_or(0);
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => {
                p += 1;
                t += 1;
                continue;
            }
            Some(b'[') => {
                if let Some((matched, next)) = class(pattern, p + 1, c) {
                    if matched {
                        p = next;
                        t += 1;
                        continue;
                    }
                } else if c == b'[' {
                    p += 1;
                    t += 1;
                    continue;
                }
            }
            Some(&pc) if pc == c => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern.get(p..).is_some_and(|rest| rest.iter().all(|&b| b == b'*'))
}

/// Matches `c` against the class starting after `[` at `start`: (matched, index after `]`), or
/// `None` if the class is not closed.
fn class(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *pattern.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&h| h != b']') {
            let hi = *pattern.get(i + 2)?;
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

/// The bytes of a module file, decompressed.
pub fn read_module(path: &Path) -> Result<Vec<u8>, ModuleError> {
    let err = |source| ModuleError::Read { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut out = Vec::new();
    match compression_of(path) {
        Some("xz") => lzma_rs::xz_decompress(&mut std::io::BufReader::new(file), &mut out)
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())))?,
        Some("zstd") => {
            zstd::stream::read::Decoder::new(file).map_err(err)?.read_to_end(&mut out).map_err(err)?;
        }
        _ => {
            std::io::BufReader::new(file).read_to_end(&mut out).map_err(err)?;
        }
    }
    Ok(out)
}

/// `finit_module` flag: the file is compressed and the kernel decompresses it (Linux ≥ 6.6).
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// The one compression the running kernel decompresses modules of (`/sys/module/compression`:
/// `xz`, `gzip` or `zstd`), if any.
fn kernel_decompresses() -> &'static str {
    static FORMAT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FORMAT.get_or_init(|| std::fs::read_to_string("/sys/module/compression").unwrap_or_default().trim().to_string())
}

/// The compression of a module file by its name (`None`: a plain `.ko`).
fn compression_of(path: &Path) -> Option<&'static str> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => Some("xz"),
        Some("zst") => Some("zstd"),
        Some("gz") => Some("gzip"),
        _ => None,
    }
}

/// Loads one module file (its dependencies must be loaded). Already loaded is success.
///
/// A plain module, or one compressed the way the kernel decompresses, goes to `finit_module`;
/// any other is decompressed here (asking the kernel anyway logs an error for each).
pub fn insert(path: &Path) -> Result<(), ModuleError> {
    let load_err = |source| ModuleError::Load { path: path.to_path_buf(), source };
    let compression = compression_of(path);
    if compression.is_some_and(|c| c != kernel_decompresses()) {
        return init_module(path);
    }
    let file = std::fs::File::open(path).map_err(|source| ModuleError::Read { path: path.to_path_buf(), source })?;
    let flags = if compression.is_some() { MODULE_INIT_COMPRESSED_FILE } else { 0 };
    // SAFETY: finit_module reads the open file and a NUL-terminated (empty) parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), flags) };
    let error = match rc {
        0 => return Ok(()),
        _ => std::io::Error::last_os_error(),
    };
    match error.raw_os_error() {
        Some(libc::EEXIST) => Ok(()),
        // Older kernels take no compressed files at all.
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOEXEC) if compression.is_some() => init_module(path),
        _ => Err(load_err(error)),
    }
}

/// Decompresses a module file here and loads the image.
fn init_module(path: &Path) -> Result<(), ModuleError> {
    let image = read_module(path)?;
    let params = CString::default();
    // SAFETY: init_module reads `image.len()` bytes of `image` and the parameter string.
    let rc =
        unsafe { libc::syscall(libc::SYS_init_module, image.as_ptr(), image.len() as libc::c_ulong, params.as_ptr()) };
    match rc {
        0 => Ok(()),
        _ => match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            e => Err(ModuleError::Load { path: path.to_path_buf(), source: e }),
        },
    }
}

/// Loads modules by name or alias, with their dependencies, each file once.
pub struct Loader {
    index: ModuleIndex,
    loaded: HashSet<PathBuf>,
}

impl Loader {
    /// A loader over `index`.
    pub fn new(index: ModuleIndex) -> Loader {
        Loader { index, loaded: HashSet::new() }
    }

    /// Loads `name` and what it needs; failures are logged and counted, never fatal.
    pub fn load(&mut self, name: &str) -> usize {
        let order = match self.index.load_order(name) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("module {name}: {e}");
                return 1;
            }
        };
        let mut failures = 0;
        for path in order {
            if self.loaded.contains(&path) {
                continue;
            }
            match insert(&path) {
                Ok(()) => tracing::debug!("loaded {}", path.display()),
                // ENODEV: the module is for hardware (or CPU features) this machine lacks.
                Err(ModuleError::Load { path, source }) if source.raw_os_error() == Some(libc::ENODEV) => {
                    tracing::info!("{}: not for this machine", path.display());
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!("{}", crate::error_chain(&e));
                }
            }
            self.loaded.insert(path);
        }
        failures
    }

    /// Loads the modules of one device's modalias; returns the modules tried.
    pub fn load_modalias(&mut self, modalias: &str) -> Vec<String> {
        let modules: Vec<String> = self.index.for_modalias(modalias).into_iter().collect();
        for m in &modules {
            self.load(m);
        }
        modules
    }

    /// Coldplug: the modalias of every device present at boot, under `sys` (`/sys`).
    pub fn coldplug(&mut self, sys: &Path) -> BTreeSet<String> {
        let mut tried = BTreeSet::new();
        let started = std::time::Instant::now();
        let found = modaliases(sys);
        tracing::info!("modules: {} device modaliases under {} in {:?}", found.len(), sys.display(), started.elapsed());
        for modalias in found {
            tried.extend(self.load_modalias(&modalias));
        }
        tried
    }
}

/// Every distinct modalias of the devices under `sys` (`/sys`): the `MODALIAS=` in the uevent of
/// each device of each bus (`bus/*/devices/*`) and class (`class/*/*`; input devices, DMI), as
/// udev's coldplug finds them. A CPU's uevent carries the CPUs' modalias, whose `modalias` file is
/// on no device. A few hundred files, where a walk of every directory under `devices` took
/// 0.09–0.14 s of a boot under emulation.
pub fn modaliases(sys: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let groups = |top: &str, sub: &'static str| {
        std::fs::read_dir(sys.join(top)).into_iter().flatten().flatten().map(move |g| g.path().join(sub))
    };
    for dir in groups("bus", "devices").chain(groups("class", "")) {
        let Ok(devices) = std::fs::read_dir(&dir) else { continue };
        for device in devices.flatten() {
            let Ok(uevent) = std::fs::read_to_string(device.path().join("uevent")) else { continue };
            if let Some(modalias) = uevent.lines().find_map(|l| l.strip_prefix("MODALIAS=")).map(str::trim) {
                if !modalias.is_empty() {
                    found.insert(modalias.to_string());
                }
            }
        }
    }
    found
}

/// One kernel uevent: `ACTION@DEVPATH` then `KEY=VALUE` fields, NUL-separated.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Uevent {
    /// `add`, `remove`, `change`, `bind`, ...
    pub action: String,
    /// The device's path under /sys.
    pub devpath: String,
    /// Its modalias, when it has one.
    pub modalias: Option<String>,
}

/// Parses a kernel uevent datagram; `None` for anything else (udev's own messages start with
/// `libudev`).
pub fn parse_uevent(bytes: &[u8]) -> Option<Uevent> {
    let mut fields = bytes.split(|&b| b == 0).filter(|f| !f.is_empty()).map(|f| String::from_utf8_lossy(f));
    let header = fields.next()?;
    let (action, devpath) = header.split_once('@')?;
    let mut event = Uevent { action: action.to_string(), devpath: devpath.to_string(), modalias: None };
    for field in fields {
        if let Some(m) = field.strip_prefix("MODALIAS=") {
            event.modalias = Some(m.to_string());
        }
    }
    Some(event)
}

/// Opens the kernel's uevent multicast socket.
pub fn uevent_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType};
    let fd =
        socket(AddressFamily::Netlink, SockType::Datagram, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkKObjectUEvent)?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1))?;
    Ok(fd)
}

/// Whether modules that only mounts need are being loaded in the background (see
/// [`load_late_then_hotplug`]), and the mounts that wait for them.
static LATE: (std::sync::Mutex<bool>, std::sync::Condvar) = (std::sync::Mutex::new(false), std::sync::Condvar::new());

fn set_late_loading(loading: bool) {
    *flist::durable::lock(&LATE.0) = loading;
    LATE.1.notify_all();
}

/// Waits (at most `limit`) until the modules loaded in the background are in; at once when none
/// are being loaded (`init run`, or a boot past that point).
pub fn wait_for_late(limit: std::time::Duration) {
    let guard = flist::durable::lock(&LATE.0);
    let (still, timeout) =
        LATE.1.wait_timeout_while(guard, limit, |loading| *loading).unwrap_or_else(|p| p.into_inner());
    if *still && timeout.timed_out() {
        tracing::warn!("modules: still loading after {limit:?}; going on without waiting");
    }
}

/// Loads `late` (modules nothing before the first mount needs) on a thread of its own, then goes
/// on with [`hotplug`] there: the boot steps before the mounts (the network above all) need not
/// wait for them. [`wait_for_late`] is the mounts' side.
pub fn load_late_then_hotplug(mut loader: Loader, late: Vec<String>) {
    set_late_loading(true);
    let names = late.join(", ");
    let spawned = std::thread::Builder::new().name("hotplug".into()).spawn(move || {
        let started = std::time::Instant::now();
        let failures: usize = late.iter().map(|m| loader.load(m)).sum();
        tracing::info!(
            "modules: {} loaded in the background in {:.3} s, {failures} failures",
            late.join(", "),
            started.elapsed().as_secs_f64()
        );
        set_late_loading(false);
        hotplug(loader)
    });
    if let Err(e) = spawned {
        set_late_loading(false);
        tracing::error!("hotplug: {e}; devices added later get no drivers, and {names} are not loaded");
    }
}

/// Hotplug: loads the modules of every device the kernel adds from now on. Runs forever (a
/// thread of PID 1); a socket error is logged and the socket reopened after a pause.
pub fn hotplug(mut loader: Loader) {
    loop {
        let fd = match uevent_socket() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!("hotplug: opening the uevent socket: {e}");
                std::thread::sleep(std::time::Duration::from_secs(5));
                continue;
            }
        };
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::empty()) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ENOBUFS) => continue,
                Err(e) => {
                    tracing::error!("hotplug: reading uevents: {e}");
                    break;
                }
            };
            let Some(event) = buf.get(..n).and_then(parse_uevent) else { continue };
            if let (Some(modalias), "add") = (&event.modalias, event.action.as_str()) {
                let modules = loader.load_modalias(modalias);
                if !modules.is_empty() {
                    tracing::info!("hotplug: {} needs {}", event.devpath, modules.join(", "));
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mounts wait for the modules loading in the background, only while they load, and no
    /// longer than their limit.
    #[test]
    fn mounts_wait_for_late_modules_only_while_they_load() {
        use std::time::{Duration, Instant};
        let t = Instant::now();
        wait_for_late(Duration::from_secs(30));
        assert!(t.elapsed() < Duration::from_secs(5), "nothing loading: no wait");
        set_late_loading(true);
        let t = Instant::now();
        wait_for_late(Duration::from_millis(200));
        assert!(t.elapsed() >= Duration::from_millis(200), "a load that never ends is waited for up to the limit");
        let done = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            set_late_loading(false);
        });
        let t = Instant::now();
        wait_for_late(Duration::from_secs(30));
        let waited = t.elapsed();
        done.join().unwrap();
        assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(20), "{waited:?}");
    }

    #[test]
    fn globs_match_like_fnmatch() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("pci:v00008086d000010D3sv*sd*bc*sc*i*", "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00"));
        assert!(!m("pci:v00008086d000010D3sv*sd*bc*sc*i*", "pci:v00008086d000010D4sv00008086sd00000000bc02sc00i00"));
        assert!(m("virtio:d00000001v*", "virtio:d00000001v00001AF4"));
        assert!(m("a?c", "abc") && !m("a?c", "ac"));
        assert!(m("x[0-9]y", "x5y") && !m("x[0-9]y", "xay") && m("x[!0-9]y", "xay"));
        assert!(m("*", "") && m("a*", "a") && !m("a*b", "a") && m("*b*", "abc"));
        assert!(m("acpi*:PNP0A03:*", "acpi:PNP0A03:PNP0A08:"));
        assert!(m("[", "[") && !m("[a", "b"));
    }

    #[test]
    fn names_and_uevents() {
        assert_eq!(module_name("kernel/drivers/net/virtio_net.ko.xz"), "virtio_net");
        assert_eq!(module_name("kernel/fs/nls/nls-utf8.ko.zst"), "nls_utf8");
        for (file, compression) in [
            ("kernel/drivers/net/virtio_net.ko.xz", Some("xz")),
            ("kernel/fs/fuse/fuse.ko.zst", Some("zstd")),
            ("a/b.ko.gz", Some("gzip")),
            ("a/b.ko", None),
            ("a.xz/b.ko", None),
        ] {
            assert_eq!(compression_of(Path::new(file)), compression, "{file}");
        }
        let raw = b"add@/devices/pci0000:00/0000:00:03.0\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:03.0\0MODALIAS=pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\0SEQNUM=7\0";
        let e = parse_uevent(raw).unwrap_or_default();
        assert_eq!(e.action, "add");
        assert_eq!(e.devpath, "/devices/pci0000:00/0000:00:03.0");
        assert_eq!(e.modalias.as_deref(), Some("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"));
        assert_eq!(parse_uevent(b"libudev\0\xfe\xed"), None);
        assert_eq!(parse_uevent(b""), None);
    }
}
