//! What a service may use and see: the cgroup v2 limits the manifest sets on it (memory, pids,
//! cpu, io), and the namespaces of its own it runs in. Every number is bounded here, so that what
//! init writes into a cgroup file is always a value the kernel takes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A service's `limits` in the manifest; each one absent means no limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// `memory.max`: bytes, or a string such as `"64M"` or `"2GiB"` (powers of 1024). Past it
    /// the kernel's OOM killer ends a process of the service.
    #[serde(default)]
    pub memory: Option<RawSize>,
    /// `pids.max`: processes and threads at once; past it `fork` fails (a fork bomb stops there).
    #[serde(default)]
    pub pids: Option<u64>,
    /// `cpu.weight`: its share of contended CPU, 1 to 10000 (the kernel's default is 100).
    #[serde(default)]
    pub cpu_weight: Option<u64>,
    /// `cpu.max` as a number of CPUs (`0.5`: half of one CPU's time).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// `io.max`, per block device.
    #[serde(default)]
    pub io: Vec<RawIo>,
}

/// A size: bytes, or text with a binary suffix.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    /// Bytes.
    Bytes(u64),
    /// `"512M"`, `"2GiB"`, `"4096"`.
    Text(String),
}

/// One device's `io.max` line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIo {
    /// `"MAJOR:MINOR"`, or a block device under `/dev` (resolved when the service starts).
    pub device: String,
    /// Bytes read per second.
    #[serde(default)]
    pub read_bps: Option<u64>,
    /// Bytes written per second.
    #[serde(default)]
    pub write_bps: Option<u64>,
    /// Read operations per second.
    #[serde(default)]
    pub read_iops: Option<u64>,
    /// Write operations per second.
    #[serde(default)]
    pub write_iops: Option<u64>,
}

/// The smallest `memory` limit: below it nothing starts at all.
pub const MIN_MEMORY: u64 = 1 << 20;
/// The largest `memory` limit and io rate (a PiB): a typo with a few digits too many is an error.
pub const MAX_AMOUNT: u64 = 1 << 50;
/// The largest `pids` limit: Linux's own highest pid.
pub const MAX_PIDS: u64 = 4_194_304;
/// At most this many `io` entries per service.
pub const MAX_IO_DEVICES: usize = 64;
/// The period of `cpu.max`, in microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The most CPUs `cpus` may name.
pub const MAX_CPUS: f64 = 4096.0;

/// Where an `io.max` line applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// A device number.
    Number(u32, u32),
    /// A device node, looked up when the service starts.
    Node(PathBuf),
}

/// A validated `io.max` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoMax {
    /// The device.
    pub device: Device,
    /// `rbps`, `wbps`, `riops`, `wiops`, as the kernel names them; `None` stays unlimited.
    pub rates: [(&'static str, Option<u64>); 4],
}

impl IoMax {
    /// The line to write into `io.max` for the device numbered `major:minor`.
    pub fn line(&self, (major, minor): (u32, u32)) -> String {
        let mut line = format!("{major}:{minor}");
        for (key, rate) in self.rates {
            line.push_str(&format!(" {key}={}", rate.map_or("max".to_string(), |r| r.to_string())));
        }
        line
    }
}

/// The validated limits: the cgroup files to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max` in bytes.
    pub memory_max: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
    /// `cpu.weight`.
    pub cpu_weight: Option<u64>,
    /// `cpu.max` quota in microseconds per [`CPU_PERIOD_US`].
    pub cpu_quota_us: Option<u64>,
    /// `io.max` lines.
    pub io: Vec<IoMax>,
}

impl Limits {
    /// The cgroup files and values for every limit but `io.max` (which needs device numbers),
    /// each with the controller it needs.
    pub fn files(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut files = Vec::new();
        if let Some(bytes) = self.memory_max {
            files.push(("memory", "memory.max", bytes.to_string()));
        }
        if let Some(n) = self.pids_max {
            files.push(("pids", "pids.max", n.to_string()));
        }
        if let Some(w) = self.cpu_weight {
            files.push(("cpu", "cpu.weight", w.to_string()));
        }
        if let Some(q) = self.cpu_quota_us {
            files.push(("cpu", "cpu.max", format!("{q} {CPU_PERIOD_US}")));
        }
        files
    }
}

fn bounded(what: &str, v: u64, low: u64, high: u64) -> Result<u64, String> {
    if (low..=high).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{what}: {v} is out of range ({low} to {high})"))
    }
}

/// Bytes from `"123"`, `"64K"`, `"64KiB"`, `"512m"`, `"2G"`, `"1T"` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, suffix) = text.split_at(digits);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a size (bytes, or a number with K, M, G or T)"))?;
    let shift = match suffix.to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("{text:?}: unknown size suffix {suffix:?} (K, M, G or T)")),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

fn parse_device(text: &str) -> Result<Device, String> {
    if let Some(path) = text.strip_prefix("/dev/") {
        if path.is_empty() || path.contains('\0') || path.split('/').any(|c| c == "..") {
            return Err(format!("io device {text:?} is not a device under /dev"));
        }
        return Ok(Device::Node(PathBuf::from(text)));
    }
    let numbers = text.split_once(':').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    numbers
        .map(|(major, minor)| Device::Number(major, minor))
        .ok_or_else(|| format!("io device {text:?} is neither MAJOR:MINOR nor a path under /dev"))
}

impl RawLimits {
    /// The limits, every value in range; the error names the field and the bound.
    pub fn resolve(&self) -> Result<Limits, String> {
        let memory_max = match &self.memory {
            None => None,
            Some(RawSize::Bytes(b)) => Some(*b),
            Some(RawSize::Text(t)) => Some(parse_size(t).map_err(|e| format!("limits.memory: {e}"))?),
        }
        .map(|b| bounded("limits.memory (bytes)", b, MIN_MEMORY, MAX_AMOUNT))
        .transpose()?;
        let pids_max = self.pids.map(|n| bounded("limits.pids", n, 1, MAX_PIDS)).transpose()?;
        let cpu_weight = self.cpu_weight.map(|w| bounded("limits.cpu_weight", w, 1, 10_000)).transpose()?;
        let cpu_quota_us = match self.cpus {
            None => None,
            Some(c) if (0.01..=MAX_CPUS).contains(&c) => Some((c * CPU_PERIOD_US as f64).round() as u64),
            Some(c) => return Err(format!("limits.cpus: {c} is out of range (0.01 to {MAX_CPUS})")),
        };
        if self.io.len() > MAX_IO_DEVICES {
            return Err(format!("limits.io: {} devices, at most {MAX_IO_DEVICES}", self.io.len()));
        }
        let io = self
            .io
            .iter()
            .map(|io| {
                let rate = |what: &str, v: Option<u64>| {
                    v.map(|v| bounded(&format!("limits.io {}: {what}", io.device), v, 1, MAX_AMOUNT)).transpose()
                };
                Ok(IoMax {
                    device: parse_device(&io.device)?,
                    rates: [
                        ("rbps", rate("read_bps", io.read_bps)?),
                        ("wbps", rate("write_bps", io.write_bps)?),
                        ("riops", rate("read_iops", io.read_iops)?),
                        ("wiops", rate("write_iops", io.write_iops)?),
                    ],
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Limits { memory_max, pids_max, cpu_weight, cpu_quota_us, io })
    }
}

/// Namespaces of its own a service runs in (beyond the mount namespace a `root` gives it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Namespaces {
    /// Its own process ids: it sees only its own processes, under a small reaper that is pid 1.
    pub pid: bool,
    /// Its own host name (the service's name).
    pub uts: bool,
    /// Its own System V IPC and POSIX message queues.
    pub ipc: bool,
    /// Its own network: loopback only.
    pub net: bool,
}

impl Namespaces {
    /// None: the node's.
    pub const NONE: Namespaces = Namespaces { pid: false, uts: false, ipc: false, net: false };

    /// From the manifest's words (`pid`, `uts`, `ipc`, `net`).
    pub fn parse(words: &[String]) -> Result<Namespaces, String> {
        let mut ns = Namespaces::NONE;
        for word in words {
            let flag = match word.as_str() {
                "pid" => &mut ns.pid,
                "uts" => &mut ns.uts,
                "ipc" => &mut ns.ipc,
                "net" => &mut ns.net,
                other => return Err(format!("namespace {other:?} is not pid, uts, ipc or net")),
            };
            *flag = true;
        }
        Ok(ns)
    }

    /// Their names, for status.
    pub fn names(self) -> Vec<&'static str> {
        [("pid", self.pid), ("uts", self.uts), ("ipc", self.ipc), ("net", self.net)]
            .into_iter()
            .filter_map(|(n, on)| on.then_some(n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes_in_every_form_and_nonsense_refused() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
        assert_eq!(parse_size(" 1T "), Ok(1 << 40));
        for bad in ["", "M", "1.5G", "-1", "1X", "1 G", "99999999999999999999", "18446744073709551615T", "1Gi"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_are_bounded_and_name_their_field() {
        let raw: RawLimits = serde_json::from_str(
            r#"{"memory": "64M", "pids": 32, "cpu_weight": 50, "cpus": 0.5,
                "io": [{"device": "8:0", "read_bps": 1048576}, {"device": "/dev/vda", "write_iops": 100}]}"#,
        )
        .unwrap();
        let limits = raw.resolve().unwrap();
        assert_eq!(limits.memory_max, Some(64 << 20));
        assert_eq!(limits.cpu_quota_us, Some(50_000));
        let files = limits.files();
        assert!(files.contains(&("pids", "pids.max", "32".into())));
        assert!(files.contains(&("cpu", "cpu.max", "50000 100000".into())));
        assert_eq!(limits.io[0].line((8, 0)), "8:0 rbps=1048576 wbps=max riops=max wiops=max");
        assert_eq!(limits.io[1].device, Device::Node("/dev/vda".into()));
        let refused = |json: &str| RawLimits::resolve(&serde_json::from_str(json).unwrap()).unwrap_err();
        assert!(refused(r#"{"memory": 1000}"#).contains("limits.memory"));
        assert!(refused(r#"{"memory": "2000T"}"#).contains("limits.memory"));
        assert!(refused(r#"{"pids": 0}"#).contains("limits.pids"));
        assert!(refused(r#"{"pids": 99999999}"#).contains("limits.pids"));
        assert!(refused(r#"{"cpu_weight": 10001}"#).contains("cpu_weight"));
        assert!(refused(r#"{"cpus": 0}"#).contains("cpus"));
        assert!(refused(r#"{"cpus": 1e300}"#).contains("cpus"));
        assert!(refused(r#"{"io": [{"device": "sda"}]}"#).contains("sda"));
        assert!(refused(r#"{"io": [{"device": "/dev/../etc/passwd"}]}"#).contains("/dev"));
        assert!(refused(r#"{"io": [{"device": "8:0", "read_bps": 0}]}"#).contains("read_bps"));
        assert!(serde_json::from_str::<RawLimits>(r#"{"memroy": 1}"#).is_err());
        assert_eq!(RawLimits::default().resolve().unwrap(), Limits::default());
    }

    #[test]
    fn namespaces_by_name() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ns = Namespaces::parse(&words(&["pid", "net", "pid"])).unwrap();
        assert_eq!(ns.names(), ["pid", "net"]);
        assert!(Namespaces::parse(&words(&["mnt"])).unwrap_err().contains("mnt"));
        assert!(Namespaces::parse(&words(&[""])).is_err());
    }
}
