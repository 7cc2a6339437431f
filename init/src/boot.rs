//! PID 1: from a bare kernel with only the initramfs to a node running its manifest.
//!
//! A linear list of named steps, each timed and logged to the console and `/dev/kmsg`. A step
//! either must succeed and is retried with backoff until it does (the network), or is logged
//! and passed (a missing module, no NTP answer). Then [`runtime::supervise`] runs until a reboot
//! or power-off is asked for, and [`finish`] does it. PID 1 never returns and never exits: a
//! panic or an unrecoverable setup error ends in [`rescue`], which keeps reaping children and
//! says why on the console every minute.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::mount::MsFlags;

use crate::cmdline::{self, BootParams};
use crate::error_chain;
use crate::fetch::{Fetcher, Trust};
use crate::modules::{Loader, ModuleIndex};
use crate::mounts::MountConfig;
use crate::node::{NodeConfig, Power};
use crate::report;
use crate::runtime::{supervise, Setup};
use crate::supervisor::state::Backoff;
use crate::supervisor::Options;

/// Where the initramfs keeps the operator's public key.
pub const KEY_FILE: &str = "/etc/flint/key.pub";
/// Present in an initramfs built to accept `flint.key=` from the command line.
pub const ALLOW_CMDLINE_KEY: &str = "/etc/flint/allow-cmdline-key";
/// The CA bundle of the initramfs.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where the cache disk (or a tmpfs) is mounted.
pub const CACHE_MOUNT: &str = "/var/cache/flint";

/// Console and `/dev/kmsg`, each log line to both.
struct ConsoleAndKmsg;

impl Write for ConsoleAndKmsg {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        crate::logship::console(buf);
        // One write is one kernel log record; kmsg wants no colour codes and ignores failures.
        if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            let _ = kmsg.write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    match nix::mount::mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(format!("{fstype} on {target}: {e}")),
    }
}

/// The kernel's virtual filesystems and the scratch ones.
pub fn early_mounts() -> Vec<String> {
    let secure = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", "proc", secure, None),
        ("sysfs", "/sys", "sysfs", secure, None),
        ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755")),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        ("tmpfs", "/dev/shm", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777")),
        ("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755")),
        ("tmpfs", "/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777")),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", secure, Some("nsdelegate")),
    ];
    mounts.iter().filter_map(|(src, dst, fs, flags, data)| mount_fs(src, dst, fs, *flags, *data).err()).collect()
}

/// Seconds since the kernel started (CLOCK_BOOTTIME), 0 if unknown.
fn boot_uptime() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

/// Times a step and logs its outcome.
fn step<T>(timings: &mut Vec<(&'static str, Duration)>, name: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    tracing::info!("boot: {name}");
    let out = f();
    let took = started.elapsed();
    tracing::info!("boot: {name} done in {:.3} s", took.as_secs_f64());
    timings.push((name, took));
    out
}

/// The cache partition: the block device whose GPT partition name is `label`.
fn cache_partition(label: &str) -> Option<PathBuf> {
    std::fs::read_dir("/sys/class/block").ok()?.flatten().find_map(|dev| {
        let uevent = std::fs::read_to_string(dev.path().join("uevent")).ok()?;
        let name = uevent.lines().find_map(|l| l.strip_prefix("PARTNAME="))?;
        let devname = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
        (name == label).then(|| Path::new("/dev").join(devname))
    })
}

/// Whether a partition carries no filesystem or volume signature init knows of (ext2/3/4,
/// btrfs, xfs, LUKS, swap): only such a partition is ever formatted.
fn looks_blank(dev: &Path) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; 128 << 10];
    let read = std::fs::File::open(dev).and_then(|mut f| f.read_exact(&mut head));
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    read.is_ok()
        && !(at(1080, &[0x53, 0xef])
            || at(65_600, b"_BHRfS_M")
            || at(0, b"XFSB")
            || at(0, b"LUKS\xba\xbe")
            || at(4086, b"SWAPSPACE2"))
}

/// Makes a `fs` filesystem named `label` on `dev` with the initramfs's mkfs.
fn format(dev: &Path, fs: &str, label: &str) -> Result<(), String> {
    let mkfs = ["/sbin", "/usr/sbin"]
        .iter()
        .map(|d| Path::new(d).join(format!("mkfs.{fs}")))
        .find(|p| p.exists())
        .ok_or_else(|| format!("no mkfs.{fs} in the initramfs"))?;
    // ext4 with fs-verity: passthrough hands the kernel only files it checks itself. 4 KiB
    // blocks whatever the size (mke2fs picks 1 KiB below 512 MiB), for page-sized Merkle blocks.
    let options: &[&str] = if fs == "ext4" { &["-F", "-O", "verity", "-b", "4096"] } else { &["-f"] };
    let out = std::process::Command::new(&mkfs)
        .args(options)
        .args(["-L", label])
        .arg(dev)
        .output()
        .map_err(|e| format!("{}: {e}", mkfs.display()))?;
    if !out.status.success() {
        return Err(format!("{}: {}", mkfs.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// Whether a USB mass-storage interface is plugged in: its disk and partitions appear a moment
/// after its driver binds, so the cache partition may be on its way.
fn usb_storage_present() -> bool {
    let Ok(devices) = std::fs::read_dir("/sys/bus/usb/devices") else { return false };
    devices
        .flatten()
        .any(|d| std::fs::read_to_string(d.path().join("bInterfaceClass")).is_ok_and(|class| class.trim() == "08"))
}

/// The cache partition, waiting (at most `USB_SETTLE`) for a USB stick's partitions to appear.
fn find_cache_partition(label: &str) -> Option<PathBuf> {
    const USB_SETTLE: Duration = Duration::from_secs(10);
    let started = Instant::now();
    loop {
        let found = cache_partition(label);
        if found.is_some() || started.elapsed() > USB_SETTLE || !usb_storage_present() {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Mounts the cache disk, or a tmpfs when there is none (nothing then survives a reboot). A
/// blank cache partition is formatted first if the manifest asks for it (`format`): only then is
/// the manifest looked at (`format_as`), before the node's identity is known. Returns the line
/// for the console and whether the cache is on a disk.
fn storage(label: &str, format_as: impl FnOnce() -> Option<String>) -> (String, bool) {
    let partition = find_cache_partition(label);
    if let Some(dev) = &partition {
        let source = dev.to_string_lossy().into_owned();
        // The filesystems are modules in a distribution kernel, and there is no modprobe for the
        // kernel to call: load each before trying it.
        let mut loader = ModuleIndex::running().ok().map(Loader::new);
        let mut mount = || {
            ["ext4", "btrfs", "xfs"].into_iter().find(|fs| {
                if let Some(l) = loader.as_mut().filter(|_| !Path::new("/sys/fs").join(fs).exists()) {
                    l.load(fs);
                }
                mount_fs(&source, CACHE_MOUNT, fs, MsFlags::MS_NOATIME, None).is_ok()
            })
        };
        if let Some(fs) = mount() {
            return (format!("{} ({fs}) on {CACHE_MOUNT}; {}", dev.display(), verity_note(fs)), true);
        }
        let blank = looks_blank(dev);
        match blank.then(format_as).flatten().as_deref() {
            Some(fs) => match format(dev, fs, label) {
                Ok(()) => match mount() {
                    Some(fs) => {
                        let summary = format!(
                            "{} formatted ({fs}) and mounted on {CACHE_MOUNT}; {}",
                            dev.display(),
                            verity_note(fs)
                        );
                        return (summary, true);
                    }
                    None => tracing::error!("{}: formatted as {fs} but it does not mount", dev.display()),
                },
                Err(e) => tracing::error!("{}: formatting the cache partition: {e}", dev.display()),
            },
            None if !blank => tracing::error!(
                "{}: partition {label:?} holds data init cannot mount: not formatting it",
                dev.display()
            ),
            None => tracing::error!(
                "{}: partition {label:?} has no filesystem and the manifest does not ask to format it",
                dev.display()
            ),
        }
        tracing::error!("{}: the cache stays in memory", dev.display());
    }
    let memory =
        |options| mount_fs("tmpfs", CACHE_MOUNT, "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(options));
    // Large folios for the chunk files, where the kernel sizes them by the write (this host's
    // 6.18 does): allocating a cold read's cache pages 4 KiB at a time took a sixth of its CPU.
    // A kernel without transparent huge pages refuses the option; the cache then does without.
    let mounted = match memory(MEMORY_CACHE_OPTIONS) {
        Ok(()) => Ok(MEMORY_CACHE_OPTIONS),
        Err(_) => memory(PLAIN_MEMORY_CACHE_OPTIONS).map(|()| PLAIN_MEMORY_CACHE_OPTIONS),
    };
    let summary = match mounted {
        Ok(options) => {
            let tmpfs = format!("a tmpfs ({options}) on {CACHE_MOUNT} (nothing kept across boots)");
            match partition {
                Some(_) => tmpfs,
                None => format!("no partition named {label:?}: {tmpfs}"),
            }
        }
        Err(e) => format!("no cache at all: {e}"),
    };
    (summary, false)
}

/// How the cache's tmpfs is mounted when there is no cache disk.
const MEMORY_CACHE_OPTIONS: &str = "mode=0755,huge=within_size";
/// The same, for a kernel without transparent huge pages.
const PLAIN_MEMORY_CACHE_OPTIONS: &str = "mode=0755";

/// Whether the cache disk (a `fs`) has fs-verity, which passthrough needs.
fn verity_note(fs: &str) -> String {
    match flist::verity::probe(Path::new(CACHE_MOUNT)) {
        Ok(()) => "fs-verity: on (assembled files are passed through to the kernel)".into(),
        Err(e) if fs == "ext4" => {
            format!("no fs-verity ({e}): passthrough off; `tune2fs -O verity` on the partition turns it on")
        }
        Err(e) => format!("no fs-verity on {fs} ({e}): passthrough off"),
    }
}

/// Chunk cache quota: 80% of the cache filesystem.
fn cache_quota() -> u64 {
    nix::sys::statvfs::statvfs(CACHE_MOUNT)
        .map(|s| s.blocks().saturating_mul(s.fragment_size()) / 10 * 8)
        .unwrap_or(1 << 30)
}

fn load_modules(params: &BootParams) -> String {
    let started = Instant::now();
    let index = match ModuleIndex::running() {
        Ok(i) => i,
        Err(e) => return format!("no module index ({e}); relying on built-in drivers"),
    };
    tracing::debug!("modules: index read in {:?}", started.elapsed());
    let mut loader = Loader::new(index);
    let found = loader.coldplug(Path::new("/sys"));
    let mut failures = 0;
    for m in std::iter::once("virtio_rng".to_string()).chain(params.modules.iter().cloned()) {
        failures += loader.load(&m);
    }
    // Only mounts need these (they wait for them): loaded while the network comes up. Devices
    // that appear later (and those whose drivers' loading made new ones) come by uevent.
    crate::modules::load_late_then_hotplug(loader, vec!["fuse".into(), "overlay".into()]);
    format!("{} device drivers ({}), {failures} failures", found.len(), found.into_iter().collect::<Vec<_>>().join(" "))
}

/// Brings the network up, retrying until it is; says what it got and the preferred NIC's MAC.
fn network(params: &BootParams) -> (String, String) {
    let mut delay = Duration::from_secs(1);
    loop {
        match crate::net::bring_up(&params.net, Path::new("/etc/resolv.conf"), Duration::from_secs(5)) {
            Ok(uplinks) => {
                let summary: Vec<String> = uplinks
                    .iter()
                    .map(|u| {
                        let default = if u.preferred { " (default route)" } else { "" };
                        format!("{} {}/{}{default}", u.link.name, u.lease.address, u.lease.prefix)
                    })
                    .collect();
                let mac =
                    uplinks.iter().find(|u| u.preferred).or(uplinks.first()).map(|u| report::format_mac(&u.link.mac));
                crate::net::keep_leases(uplinks);
                return (summary.join(", "), mac.unwrap_or_default());
            }
            Err(e) => {
                tracing::error!("network: {e}; retrying in {delay:?}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The operator's key: baked into the initramfs, or from the command line if the build allows it.
fn manifest_key(params: &BootParams) -> Result<flint_manifest::ed25519::VerifyingKey, String> {
    let text = match (&params.key, Path::new(ALLOW_CMDLINE_KEY).exists()) {
        (Some(k), true) => k.clone(),
        (Some(_), false) => {
            tracing::warn!("flint.key= ignored: this initramfs only trusts its own key");
            std::fs::read_to_string(KEY_FILE).map_err(|e| format!("{KEY_FILE}: {e}"))?
        }
        (None, _) => std::fs::read_to_string(KEY_FILE).map_err(|e| format!("{KEY_FILE}: {e}"))?,
    };
    flint_manifest::parse_key(&text).map_err(|e| e.to_string())
}

/// Boots the node. Never returns.
pub fn boot() -> ! {
    let started = Instant::now();
    // Before any thread: the modules, network and FUSE threads must not take SIGCHLD.
    let blocked = crate::runtime::block_signals();
    let mount_problems = early_mounts();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = cmdline::parse(&cmdline);
    let level = if params.debug { tracing::Level::DEBUG } else { tracing::Level::INFO };
    crate::logship::capture();
    crate::logger::Logger::new(crate::logger::Filter::at(level), false, || ConsoleAndKmsg).install();
    tracing::info!(
        "flint init {} starting as PID 1, {:.2} s after the kernel started",
        env!("CARGO_PKG_VERSION"),
        boot_uptime()
    );
    crate::runtime::report_panics();
    if let Err(e) = blocked {
        tracing::error!("blocking signals: {e}; service exits may be noticed late");
    }
    for p in mount_problems.iter().chain(&params.problems) {
        tracing::error!("boot: {p}");
    }
    // Ctrl-alt-del becomes SIGINT to us (a clean reboot) instead of an immediate one.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        tracing::warn!("ctrl-alt-del: {e}");
    }
    let result = std::panic::catch_unwind(|| run(params, started));
    match result {
        Ok(Ok(power)) => finish(power),
        Ok(Err(why)) => rescue(&why),
        Err(_) => rescue("init panicked"),
    }
}

fn run(params: BootParams, started: Instant) -> Result<Power, String> {
    let mut timings = vec![("kernel to init", Duration::ZERO)];
    // Until the manifest names the node.
    let _ = nix::unistd::sethostname("flint");
    let summary = step(&mut timings, "modules", || load_modules(&params));
    tracing::info!("modules: {summary}");
    let (uplinks, mac) = step(&mut timings, "network", || network(&params));
    let trust = match &params.ca {
        Some(ca) => Trust::Pem(ca.clone()),
        None if Path::new(CA_BUNDLE).exists() => Trust::Pem(CA_BUNDLE.into()),
        None => Trust::BuiltIn,
    };
    let reporting = params.report.as_ref().and_then(|url| match Fetcher::new(&trust) {
        Ok(fetcher) => {
            report::start(url.clone(), mac, fetcher.clone());
            Some((crate::logship::url_beside(url), fetcher))
        }
        Err(e) => {
            tracing::warn!("flint.report: {}", error_chain(&e));
            None
        }
    });
    if reporting.is_none() {
        crate::logship::discard();
    }
    report::stage(
        "network",
        format!("{uplinks}; PID 1 up {:.2} s after the kernel; modules: {summary}", boot_uptime()),
    );
    // In the background: nothing below waits for an answer unless it needs a trusted clock.
    step(&mut timings, "time", || crate::clock::start_sntp(cmdline::ntp_servers(&params)));
    let manifest_url = params.manifest.clone().ok_or("no flint.manifest= on the kernel command line")?;
    // Certificates are checked against the clock: give SNTP its chance first.
    if manifest_url.starts_with("https://") && !crate::clock::wait_trusted(Duration::from_secs(3)) {
        tracing::warn!(
            "clock {}: the server's certificate is checked against a clock nothing vouches for",
            crate::clock::now()
        );
    }
    let key = manifest_key(&params)?;
    // A blank cache disk is formatted only if the manifest says so: this first look at it is
    // verified but applies nothing. It is the one manifest request not signed by the node's
    // key, which is kept on that disk and so made after it.
    let first_look = || {
        let fetched = Fetcher::new(&trust)
            .map_err(|e| error_chain(&e))
            .and_then(|f| crate::node::fetch_verified(&f, &manifest_url, &key).map_err(|e| error_chain(&e)));
        match fetched {
            Ok(f) => {
                report::stage("manifest", format!("version {} verified ({})", f.plan.version, f.plan.digest));
                f.plan.format_cache
            }
            Err(e) => {
                tracing::warn!("manifest: {e}; the blank cache disk is not formatted on this boot");
                None
            }
        }
    };
    let (storage, on_disk) = step(&mut timings, "storage", || storage(&params.cache_label, first_look));
    tracing::info!("storage: {storage}");
    // On a tmpfs nothing outlives the boot: the key is ephemeral, and the node says so.
    report::stage("storage", storage);
    let state = Path::new(CACHE_MOUNT).join("state");
    if let Err(e) = std::fs::create_dir_all(&state) {
        tracing::warn!("state directory {}: {e}", state.display());
    }
    match crate::identity::Identity::load(on_disk.then_some(state.as_path()), None, None) {
        Ok(identity) => {
            let identity = crate::identity::install(identity);
            report::stage("identity", identity.describe());
        }
        Err(e) => {
            tracing::error!("identity: {e}; requests to the boot server go unsigned");
            crate::identity::settle();
        }
    }
    if let Some((url, fetcher)) = reporting {
        // On the cache disk the backlog outlives an outage of the server and a reboot.
        crate::logship::start(url, fetcher, on_disk.then(|| state.join(crate::logship::JOURNAL_DIR)));
    }
    crate::clock::judge_rtc(Some(&state));
    let cache_dir = Path::new(CACHE_MOUNT).join("chunks");
    let cache = flist::cache::Cache::open(&cache_dir, cache_quota())
        .map_err(|e| tracing::error!("chunk cache: {e}; chunks stay in memory only"))
        .ok()
        .map(Arc::new);
    let setup = Setup {
        node: NodeConfig {
            manifest_url,
            key,
            state_dir: Some(state.clone()),
            interval: Duration::from_secs(params.interval_secs),
            set_hostname: true,
        },
        trust,
        mounts: MountConfig {
            // What is fetched ahead must still be in memory when the reader comes.
            memory: (params.prefetch_bytes as usize).saturating_mul(2).max(16 << 20),
            prefetch_bytes: params.prefetch_bytes,
            ..MountConfig::new(crate::mounts::RUN_DIR.into(), Some(state.clone()), cache)
        },
        supervisor: Options {
            backoff: Backoff::default(),
            log_dir: "/var/log".into(),
            roots: Default::default(),
            vm_state: state.join("vms"),
            vm_run: Path::new(crate::mounts::RUN_DIR).join("vm"),
            vm_tools: crate::vm::Tools::find(),
            cgroup_root: true,
        },
        socket: crate::control::SOCKET.into(),
        pid1: true,
    };
    let steps: Vec<String> = timings.iter().skip(1).map(|(n, d)| format!("{n} {:.3} s", d.as_secs_f64())).collect();
    tracing::info!(
        "boot: steps before services: {} (init up {:.3} s)",
        steps.join(", "),
        started.elapsed().as_secs_f64()
    );
    supervise(setup).map_err(|e| format!("{e:#}"))
}

/// Every service is stopped and every flist unmounted: sync, then reboot or power off.
pub(crate) fn finish(power: Power) -> ! {
    crate::clock::record_kept();
    nix::unistd::sync();
    let mode = match power {
        Power::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
        Power::Exit | Power::Poweroff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
    };
    tracing::info!("{power:?}: every service stopped, filesystems synced");
    let Err(e) = nix::sys::reboot::reboot(mode);
    rescue(&format!("reboot(2) failed: {e}"))
}

/// The last state: keeps reaping, repeats why on the console and to the boot server, and keeps
/// the control socket answering (why, and reboot or power off: [`crate::control::rescue`]).
/// Ctrl-alt-del or the power button still work through the kernel.
pub fn rescue(why: &str) -> ! {
    tracing::error!("RESCUE: {why}. The node stays up for inspection; fix the boot configuration and reboot.");
    report::stage("rescue", why);
    if let Err(e) = crate::control::rescue::serve(Path::new(crate::control::SOCKET), why, |power| finish(power)) {
        tracing::error!("RESCUE: the control socket: {e}");
    }
    let mut last = Instant::now();
    loop {
        match nix::sys::wait::waitpid(None, None) {
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
        if last.elapsed() > Duration::from_secs(60) {
            tracing::error!("RESCUE: {why}");
            last = Instant::now();
        }
    }
}
