//! Every service in a cgroup v2 of its own, under a `flint` slice: its limits are written there,
//! its use and OOM kills are read from there, and stopping it kills the whole group, so that
//! nothing it forked (or daemonised) survives it.
//!
//! On the machine it boots the slice is `/sys/fs/cgroup/flint`. Elsewhere (`init run` on a host) init first
//! moves itself into a leaf (`flint-PID/init`, under the cgroup it was started in), because a
//! cgroup that holds processes may not hand controllers to its children; the slice is then
//! `flint-PID/flint`, and all of it is removed again when init ends.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flint_manifest::limits::{Device, Limits};
use serde::{Deserialize, Serialize};

/// cgroup v2's `cpu.weight` when none is set.
pub const DEFAULT_CPU_WEIGHT: u64 = 100;

/// The slice and what it can limit.
#[derive(Debug)]
pub struct Cgroups {
    /// Where each service's group is made.
    slice: PathBuf,
    /// On a host: the cgroup init came from, and the group it made for itself there.
    borrowed: Option<(PathBuf, PathBuf)>,
    /// The controllers the slice hands to its groups.
    controllers: BTreeSet<String>,
}

/// What a service's group shows, for status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// The group's path.
    pub path: PathBuf,
    /// `memory.current`, bytes.
    pub memory: Option<u64>,
    /// `memory.peak`, bytes.
    pub memory_peak: Option<u64>,
    /// `pids.current`.
    pub pids: Option<u64>,
    /// CPU time used, microseconds (`cpu.stat`).
    pub cpu_usec: Option<u64>,
    /// Processes the kernel's OOM killer ended in the group (`memory.events`).
    pub oom_kills: u64,
    /// Forks refused at `pids.max` (`pids.events`).
    pub fork_refusals: u64,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// The value of `key` in a flat-keyed cgroup file (`cgroup.events`, `memory.events`, `cpu.stat`).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`.
fn hierarchy() -> io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(point))
        })
        .ok_or_else(|| io::Error::other("no cgroup2 hierarchy is mounted"))
}

/// The cgroup this process is in, relative to the hierarchy (`0::/PATH` in `/proc/self/cgroup`).
fn own_cgroup() -> io::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::")).ok_or_else(|| io::Error::other("not in a cgroup2"))?;
    Ok(PathBuf::from(path.trim_start_matches('/')))
}

/// Hands every controller `dir` has to its children; returns those it now hands down.
fn delegate(dir: &Path) -> BTreeSet<String> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for controller in available.split_whitespace() {
        // One at a time: a controller that cannot be enabled (its threaded mode, say) must not
        // keep the others off.
        if let Err(e) = write(&dir.join("cgroup.subtree_control"), &format!("+{controller}")) {
            tracing::debug!("cgroup: enabling {controller}: {e}");
        }
    }
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    enabled.split_whitespace().map(String::from).collect()
}

impl Cgroups {
    /// Makes the slice: under the hierarchy's root for the machine's init (`at_root`), else
    /// under a group of its own that init first moves itself into.
    pub fn set_up(at_root: bool) -> io::Result<Cgroups> {
        let here = hierarchy()?.join(own_cgroup()?);
        let (node, borrowed) = if at_root {
            (here, None)
        } else {
            remove_abandoned(&here);
            let node = here.join(format!("flint-{}", std::process::id()));
            let leaf = node.join("init");
            std::fs::create_dir_all(&leaf)?;
            write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
            (node.clone(), Some((here, node)))
        };
        delegate(&node);
        let slice = node.join("flint");
        match std::fs::create_dir(&slice) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let controllers = delegate(&slice);
        let list: Vec<&str> = controllers.iter().map(String::as_str).collect();
        tracing::info!("cgroups: services under {} (controllers: {})", slice.display(), list.join(" "));
        Ok(Cgroups { slice, borrowed, controllers })
    }

    /// A service's group.
    pub fn path(&self, service: &str) -> PathBuf {
        self.slice.join(service)
    }

    /// Makes the service's group (killing what is left in it from an earlier run) and writes
    /// its limits. Returns its `cgroup.procs`, open for the new process to join, and each limit
    /// that could not be enforced, with why.
    pub fn prepare(&self, service: &str, limits: &Limits) -> io::Result<(File, Vec<String>)> {
        let dir = self.path(service);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.kill(service),
            Err(e) => return Err(e),
        }
        let files = limits.files();
        let mut writes: Vec<(&str, &str, Result<String, String>)> =
            files.iter().map(|(controller, file, value)| (*controller, *file, Ok(value.clone()))).collect();
        writes.extend(limits.io.iter().map(|io| ("io", "io.max", device_number(&io.device).map(|n| io.line(n)))));
        let mut unenforced = Vec::new();
        for (controller, file, value) in writes {
            let outcome = match value {
                Err(e) => Err(e),
                Ok(_) if !self.controllers.contains(controller) => Err(format!("no {controller} controller here")),
                Ok(value) => write(&dir.join(file), &value).map_err(|e| e.to_string()),
            };
            if let Err(why) = outcome {
                unenforced.push(format!("{file}: {why}"));
            }
        }
        // Unset limits go back to none: the group may carry an earlier plan's.
        let weight = DEFAULT_CPU_WEIGHT.to_string();
        for (controller, file, value) in [
            ("memory", "memory.max", "max"),
            ("pids", "pids.max", "max"),
            ("cpu", "cpu.weight", weight.as_str()),
            ("cpu", "cpu.max", "max"),
        ] {
            if self.controllers.contains(controller) && !files.iter().any(|(_, f, _)| *f == file) {
                let _ = write(&dir.join(file), value);
            }
        }
        Ok((self.join(service)?, unenforced))
    }

    /// The group's `cgroup.procs`, open (close-on-exec) for a new process to write itself into.
    pub fn join(&self, service: &str) -> io::Result<File> {
        std::fs::OpenOptions::new().write(true).open(self.path(service).join("cgroup.procs"))
    }

    /// Kills every process in the group.
    pub fn kill(&self, service: &str) {
        let dir = self.path(service);
        if write(&dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        // Before Linux 5.14: freeze the group so that nothing forks while it is killed.
        let _ = write(&dir.join("cgroup.freeze"), "1");
        for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
            if let Ok(pid) = pid.trim().parse() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = write(&dir.join("cgroup.freeze"), "0");
    }

    /// Whether any process is still in the group.
    pub fn populated(&self, service: &str) -> bool {
        keyed(&self.path(service).join("cgroup.events"), "populated").is_some_and(|n| n != 0)
    }

    /// Kills what is in the group and removes it; `false` if it could not be removed yet
    /// (its processes still dying).
    pub fn remove(&self, service: &str) -> bool {
        let dir = self.path(service);
        if !dir.exists() {
            return true;
        }
        self.kill(service);
        // SIGKILLed processes leave their group within milliseconds; zombies are not in it.
        for _ in 0..50 {
            if std::fs::remove_dir(&dir).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// What the group uses now.
    pub fn usage(&self, service: &str) -> Usage {
        let dir = self.path(service);
        Usage {
            memory: number(&dir.join("memory.current")),
            memory_peak: number(&dir.join("memory.peak")),
            pids: number(&dir.join("pids.current")),
            cpu_usec: keyed(&dir.join("cpu.stat"), "usage_usec"),
            oom_kills: keyed(&dir.join("memory.events"), "oom_kill").unwrap_or(0),
            fork_refusals: keyed(&dir.join("pids.events"), "max").unwrap_or(0),
            path: dir,
        }
    }

    /// Removes every group, the slice and (on a host) init's own groups, moving init back to
    /// where it started.
    pub fn tear_down(&self) {
        let groups: Vec<String> = std::fs::read_dir(&self.slice)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        for group in groups {
            if !self.remove(&group) {
                tracing::warn!("cgroup {}: still busy; left behind", self.path(&group).display());
            }
        }
        let Some((home, node)) = &self.borrowed else { return };
        let _ = std::fs::remove_dir(&self.slice);
        if write(&home.join("cgroup.procs"), &std::process::id().to_string()).is_ok() {
            let _ = std::fs::remove_dir(node.join("init"));
            let _ = std::fs::remove_dir(node);
        }
    }
}

/// Removes the groups an init that was killed (and could not tear down) left in `dir`: those
/// named like its own whose processes are all gone. A live init's group holds init itself.
fn remove_abandoned(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let ours = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("flint-"))
            .is_some_and(|pid| pid.parse::<u32>().is_ok());
        if ours && keyed(&path.join("cgroup.events"), "populated") == Some(0) {
            remove_tree(&path);
        }
    }
}

/// Removes an empty cgroup and every group under it, deepest first.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        tracing::debug!("cgroup {}: {e}", dir.display());
    }
}

/// `MAJOR:MINOR` of an `io.max` device.
fn device_number(device: &Device) -> Result<(u32, u32), String> {
    match device {
        Device::Number(major, minor) => Ok((*major, *minor)),
        Device::Node(path) => {
            let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
            if !meta.file_type().is_block_device() {
                return Err(format!("{} is not a block device", path.display()));
            }
            let rdev = meta.rdev();
            Ok((libc::major(rdev), libc::minor(rdev)))
        }
    }
}
