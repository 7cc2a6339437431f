//! Virtual machines whose root filesystem is an flist, supervised like services.
//!
//! The manifest's `vms` are validated into [`VmPlan`]s (in `flint_manifest`), which name flists. Each VM
//! is a service of the supervisor whose process is a runner (`init vm run`, [`runner`]): when it
//! starts, the plan is resolved against the mount points of the flists in force into a
//! [`RunSpec`] with paths only, and the runner shares the root flist's mount with the guest by
//! virtio-fs (virtiofsd), boots it under a [`Hypervisor`] (qemu, [`qemu`]), captures the serial
//! console into the service's log, and turns the supervisor's stop signal into a clean guest
//! shutdown with a grace period. Restarts with backoff, reconcile, logs and stop/start are the
//! supervisor's, as for any service.

pub mod console;
pub mod qemu;
pub mod runner;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flint_manifest::vm::{RawDisk, VmPlan};
use serde::{Deserialize, Serialize};
/// The programs a VM runs with, found once when init starts (services get a minimal PATH).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tools {
    /// qemu-system-x86_64.
    pub qemu: PathBuf,
    /// virtiofsd (the Rust one: the old C one in /usr/lib/qemu takes other options).
    pub virtiofsd: PathBuf,
}

impl Tools {
    /// `FLINT_QEMU` and `FLINT_VIRTIOFSD` if set, else the first in `PATH`, the usual sbin and
    /// bin directories, and `/usr/libexec` (where Debian's virtiofsd goes).
    pub fn find() -> Tools {
        let search = |env: &str, name: &str| -> PathBuf {
            if let Some(p) = std::env::var_os(env) {
                return p.into();
            }
            let path = std::env::var_os("PATH").unwrap_or_default();
            let usual = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/libexec"];
            std::env::split_paths(&path)
                .chain(usual.map(PathBuf::from))
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .unwrap_or_else(|| name.into())
        };
        Tools { qemu: search("FLINT_QEMU", "qemu-system-x86_64"), virtiofsd: search("FLINT_VIRTIOFSD", "virtiofsd") }
    }
}

/// Everything the runner needs, with paths only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The plan.
    pub plan: VmPlan,
    /// The root flist's mount point.
    pub root: PathBuf,
    /// Kernel file.
    pub kernel: PathBuf,
    /// Initrd file.
    pub initrd: Option<PathBuf>,
    /// Kept across starts: overlay layers, disk images.
    pub state_dir: PathBuf,
    /// Sockets (virtio-fs, QMP, console).
    pub run_dir: PathBuf,
    /// The programs.
    pub tools: Tools,
}

impl RunSpec {
    /// The runner's spec: flist names replaced by the mount points in force, and the VM's own
    /// directories (`state` kept, `run` for sockets) named.
    pub fn resolve(
        plan: &VmPlan,
        roots: &BTreeMap<String, PathBuf>,
        state: &Path,
        run: &Path,
        tools: &Tools,
    ) -> Result<RunSpec, String> {
        let root = roots.get(&plan.root).ok_or_else(|| format!("flist {} is not mounted", plan.root))?;
        Ok(RunSpec {
            plan: plan.clone(),
            root: root.clone(),
            kernel: plan.kernel.resolve(roots)?,
            initrd: plan.initrd.as_ref().map(|i| i.resolve(roots)).transpose()?,
            state_dir: state.join(&plan.name),
            run_dir: run.join(&plan.name),
            tools: tools.clone(),
        })
    }

    /// The console socket (`init ctl vm console`).
    pub fn console_socket(&self) -> PathBuf {
        self.run_dir.join("console.sock")
    }
    /// The QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }
    /// The vhost-user socket virtiofsd listens on.
    pub fn fs_socket(&self) -> PathBuf {
        self.run_dir.join("fs.sock")
    }
    /// The guest's root directory as shared: the overlay's mount point when writable.
    pub fn shared_dir(&self) -> PathBuf {
        if self.plan.writable {
            self.run_dir.join("root")
        } else {
            self.root.clone()
        }
    }
    /// A disk's backing file or device.
    pub fn disk_path(&self, disk: &RawDisk) -> PathBuf {
        match &disk.path {
            Some(p) => PathBuf::from(p),
            None => self.state_dir.join(format!("disk-{}.img", disk.name)),
        }
    }
    /// A stable MAC address for the guest (locally administered, from its name).
    pub fn mac(&self) -> String {
        let [a, b, c, d, ..] = *blake3::hash(self.plan.name.as_bytes()).as_bytes();
        format!("52:54:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
    }
    /// The tap device's name (at most 15 bytes).
    pub fn tap_name(&self) -> String {
        let [a, b, c, d, ..] = *blake3::hash(self.plan.name.as_bytes()).as_bytes();
        format!("fl-{a:02x}{b:02x}{c:02x}{d:02x}")
    }
}

#[cfg(test)]
mod tests;
