//! Virtual machines as the manifest names them: [`RawVm`] as written, validated into a
//! [`VmPlan`] whose files are flist paths. Running one is init's (`init::vm`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::RestartPolicy;

/// A VM as written in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVm {
    /// Unique among services and VMs.
    pub name: String,
    /// Virtual CPUs (default 1).
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Memory in MiB (default 256).
    #[serde(default)]
    pub memory: Option<u32>,
    /// `FLIST:/path` (a file in a mounted flist) or `/path` (the node's own).
    pub kernel: String,
    /// The same, for an initrd.
    #[serde(default)]
    pub initrd: Option<String>,
    /// Kernel command line; the runner adds the root filesystem's arguments.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// The flist (by name) the guest gets as its root filesystem, by virtio-fs.
    pub root: String,
    /// An overlay upper directory on the state disk on top of the root flist.
    #[serde(default)]
    pub writable: bool,
    /// With `writable`: keep the guest's changes across restarts (default), or start afresh.
    #[serde(default)]
    pub keep: Option<bool>,
    /// Extra disks.
    #[serde(default)]
    pub disks: Vec<RawDisk>,
    /// Network: `{"mode": "user", "forward": ["tcp:127.0.0.1:2222-:22"]}` (NAT, the default),
    /// `{"mode": "bridge", "bridge": "br0"}` (a tap on a bridge) or `{"mode": "none"}`.
    #[serde(default)]
    pub network: Option<Network>,
    /// `always` (default), `on-failure` or `never`: whether the VM starts again once its guest
    /// powers off (or it crashes).
    #[serde(default)]
    pub restart: Option<String>,
    /// Services or VMs that must be up first.
    #[serde(default)]
    pub after: Vec<String>,
    /// Seconds the guest gets to shut down cleanly once asked (default 30).
    #[serde(default)]
    pub stop_timeout: Option<f64>,
    /// `qemu` (the default and, for now, only one).
    #[serde(default)]
    pub hypervisor: Option<String>,
    /// `q35` (default) or `microvm`.
    #[serde(default)]
    pub machine: Option<String>,
    /// `auto` (KVM if a kernel really boots with it, else TCG), `kvm` or `tcg`.
    #[serde(default)]
    pub accel: Option<String>,
}

/// An extra disk: a device or file of the node, or an image file the runner creates (sparse)
/// in the VM's directory on the state disk and keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDisk {
    /// Name (the image file is `disk-NAME.img`), also the serial the guest sees.
    pub name: String,
    /// A node path (block device or image file) instead of an image of the VM's own.
    #[serde(default)]
    pub path: Option<String>,
    /// Size in MiB of the image to create.
    #[serde(default)]
    pub size_mib: Option<u64>,
    /// Read-only for the guest.
    #[serde(default)]
    pub read_only: bool,
}

/// How the guest reaches the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum Network {
    /// User-mode NAT in the hypervisor: the guest reaches out, forwarded ports reach in.
    User {
        /// `tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT` (qemu's hostfwd syntax).
        #[serde(default)]
        forward: Vec<String>,
    },
    /// A tap device attached to a bridge of the node (which holds the node's uplink).
    Bridge {
        /// The bridge.
        bridge: String,
    },
    /// No network device.
    None,
}

/// A file the guest boots from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootFile {
    /// In a mounted flist: its name and the path inside.
    Flist(String, PathBuf),
    /// On the node.
    Node(PathBuf),
}

impl BootFile {
    fn parse(what: &str, text: &str, flists: &BTreeMap<String, PathBuf>) -> Result<BootFile, String> {
        match text.split_once(':') {
            Some((flist, path)) if !flist.is_empty() && !flist.contains('/') => {
                if !flists.contains_key(flist) {
                    return Err(format!("{what}: unknown flist {flist:?}"));
                }
                let path = Path::new(path);
                if !path.is_absolute() || path.components().any(|c| c == std::path::Component::ParentDir) {
                    return Err(format!("{what}: {text:?} must name an absolute path inside the flist, without .."));
                }
                Ok(BootFile::Flist(flist.to_string(), path.to_path_buf()))
            }
            _ if text.starts_with('/') => Ok(BootFile::Node(PathBuf::from(text))),
            _ => Err(format!("{what}: {text:?} is neither FLIST:/path nor an absolute path")),
        }
    }

    /// The flist it is read from, if any.
    pub fn flist(&self) -> Option<&str> {
        match self {
            BootFile::Flist(name, _) => Some(name),
            BootFile::Node(_) => None,
        }
    }

    /// The file, under the mount points in force (flist name → mount point).
    pub fn resolve(&self, roots: &BTreeMap<String, PathBuf>) -> Result<PathBuf, String> {
        match self {
            BootFile::Node(path) => Ok(path.clone()),
            BootFile::Flist(name, path) => {
                let mount = roots.get(name).ok_or_else(|| format!("flist {name} is not mounted"))?;
                Ok(mount.join(path.strip_prefix("/").unwrap_or(path)))
            }
        }
    }
}

/// The hypervisors a VM can run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorKind {
    /// qemu-system-x86_64.
    Qemu,
}

/// A validated VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPlan {
    /// Name.
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Kernel.
    pub kernel: BootFile,
    /// Initrd.
    pub initrd: Option<BootFile>,
    /// Kernel command line as written.
    pub cmdline: String,
    /// Root flist's name.
    pub root: String,
    /// Overlay upper directory on top of the root.
    pub writable: bool,
    /// Keep the upper directory across starts.
    pub keep: bool,
    /// Extra disks.
    pub disks: Vec<RawDisk>,
    /// Network.
    pub network: Network,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Clean shutdown grace.
    pub stop_timeout: Duration,
    /// Hypervisor.
    pub hypervisor: HypervisorKind,
    /// Machine type.
    pub machine: String,
    /// Accelerator choice.
    pub accel: String,
}

/// Memory bounds accepted, in MiB.
const MEMORY_MIB: std::ops::RangeInclusive<u32> = 32..=1 << 20;

impl VmPlan {
    /// Validates `raw` against the manifest's flists (name → mount point).
    pub fn from_raw(raw: &RawVm, flists: &BTreeMap<String, PathBuf>) -> Result<VmPlan, String> {
        let name = &raw.name;
        let vcpus = raw.vcpus.unwrap_or(1);
        if !(1..=256).contains(&vcpus) {
            return Err(format!("vm {name}: vcpus {vcpus} is not 1 to 256"));
        }
        let memory_mib = raw.memory.unwrap_or(256);
        if !MEMORY_MIB.contains(&memory_mib) {
            return Err(format!("vm {name}: memory {memory_mib} MiB is out of range"));
        }
        if !flists.contains_key(&raw.root) {
            return Err(format!("vm {name}: unknown root flist {:?}", raw.root));
        }
        let kernel = BootFile::parse("kernel", &raw.kernel, flists).map_err(|e| format!("vm {name}: {e}"))?;
        let initrd = raw
            .initrd
            .as_deref()
            .map(|i| BootFile::parse("initrd", i, flists))
            .transpose()
            .map_err(|e| format!("vm {name}: {e}"))?;
        let cmdline = raw.cmdline.clone().unwrap_or_else(|| "console=ttyS0".into());
        if cmdline.contains(['\0', '\n']) {
            return Err(format!("vm {name}: the command line holds a NUL or newline"));
        }
        let mut disk_names = std::collections::BTreeSet::new();
        for d in &raw.disks {
            let ok_name = !d.name.is_empty()
                && d.name.len() <= 20
                && d.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok_name || !disk_names.insert(d.name.as_str()) {
                return Err(format!("vm {name}: disk name {:?} is invalid or repeated", d.name));
            }
            match (&d.path, d.size_mib) {
                (Some(p), None) if p.starts_with('/') && !p.contains(',') => {}
                (None, Some(size)) if size > 0 => {}
                _ => return Err(format!("vm {name}: disk {} needs an absolute path or a size_mib, not both", d.name)),
            }
        }
        let network = raw.network.clone().unwrap_or(Network::User { forward: Vec::new() });
        match &network {
            Network::User { forward } => {
                if let Some(bad) = forward.iter().find(|f| !valid_forward(f)) {
                    return Err(format!("vm {name}: forward {bad:?} is not tcp|udp:[ADDR]:PORT-[ADDR]:PORT"));
                }
            }
            Network::Bridge { bridge } => {
                if bridge.is_empty() || bridge.len() > 15 || !bridge.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
                {
                    return Err(format!("vm {name}: bridge {bridge:?} is not an interface name"));
                }
            }
            Network::None => {}
        }
        let restart = RestartPolicy::parse(raw.restart.as_deref()).map_err(|e| format!("vm {name}: {e}"))?;
        let stop_timeout = crate::seconds(&format!("vm {name}: stop_timeout"), raw.stop_timeout, 30.0)?;
        let hypervisor = match raw.hypervisor.as_deref() {
            None | Some("qemu") => HypervisorKind::Qemu,
            Some(other) => return Err(format!("vm {name}: hypervisor {other:?} is not supported (qemu)")),
        };
        let machine = raw.machine.clone().unwrap_or_else(|| "q35".into());
        if !["q35", "microvm"].contains(&machine.as_str()) {
            return Err(format!("vm {name}: machine {machine:?} is not q35 or microvm"));
        }
        let accel = raw.accel.clone().unwrap_or_else(|| "auto".into());
        if !["auto", "kvm", "tcg"].contains(&accel.as_str()) {
            return Err(format!("vm {name}: accel {accel:?} is not auto, kvm or tcg"));
        }
        Ok(VmPlan {
            name: name.clone(),
            vcpus,
            memory_mib,
            kernel,
            initrd,
            cmdline,
            root: raw.root.clone(),
            writable: raw.writable,
            keep: raw.keep.unwrap_or(true),
            disks: raw.disks.clone(),
            network,
            restart,
            stop_timeout,
            hypervisor,
            machine,
            accel,
        })
    }

    /// The flists this VM reads (root, kernel, initrd): a new version of one restarts it.
    pub fn flists(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.root.as_str())
            .chain(self.kernel.flist())
            .chain(self.initrd.as_ref().and_then(BootFile::flist))
    }
}

fn valid_forward(rule: &str) -> bool {
    let Some((proto, rest)) = rule.split_once(':') else { return false };
    let port = |side: &str| side.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok_and(|p| p > 0));
    ["tcp", "udp"].contains(&proto)
        && !rule.contains(',')
        && rest.split_once('-').is_some_and(|(host, guest)| port(host) && port(guest))
}

#[cfg(test)]
mod tests;
