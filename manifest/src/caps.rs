//! What a service may do as root: its capability bounding set and `no_new_privs`.
//!
//! The names are the kernel's (`capability.h`, numbers 0–40); a table here rather than a crate
//! because the names and numbers are all that is needed, and they never change.

use serde::{Deserialize, Serialize};

/// Capability names in number order (0 to 40), without the `CAP_` prefix.
const NAMES: &str = "
    chown dac_override dac_read_search fowner fsetid kill
    setgid setuid setpcap linux_immutable net_bind_service net_broadcast
    net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio
    sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice
    sys_resource sys_time sys_tty_config mknod lease audit_write
    audit_control setfcap mac_override mac_admin syslog wake_alarm
    block_suspend audit_read perfmon bpf checkpoint_restore
";
/// How many capabilities the table knows.
const COUNT: u32 = 41;

/// The names, by number.
fn names() -> impl Iterator<Item = &'static str> {
    NAMES.split_whitespace()
}

/// The default bounding set: what ordinary daemons (sshd, web servers, databases) need as root,
/// the same set container runtimes give. Not in it, among others: `sys_admin` (mounts,
/// namespaces), `sys_module`, `sys_rawio`, `sys_ptrace`, `sys_boot`, `sys_time`, `net_admin`,
/// `bpf`, `perfmon`, `dac_read_search`, `linux_immutable`.
pub const DEFAULT: &[&str] = &[
    "chown",
    "dac_override",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "net_bind_service",
    "net_raw",
    "sys_chroot",
    "mknod",
    "audit_write",
    "setfcap",
];

/// A set of capabilities, bit N for capability N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CapabilitySet(pub u64);

impl CapabilitySet {
    /// Every capability this table knows.
    pub const ALL: CapabilitySet = CapabilitySet((1 << COUNT) - 1);

    /// The set of these names; the first unknown one is the error.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<CapabilitySet, String> {
        names.into_iter().try_fold(CapabilitySet(0), |set, name| Ok(CapabilitySet(set.0 | 1 << number(name)?)))
    }

    /// Whether capability `n` is in the set.
    pub fn contains(self, n: u32) -> bool {
        n < 64 && self.0 & (1 << n) != 0
    }

    /// Its names, in number order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        names().enumerate().filter(move |(n, _)| self.contains(*n as u32)).map(|(_, name)| name)
    }

    /// The numbers, in order, of the capabilities up to `last` that are not in the set: what to
    /// drop from a bounding set.
    pub fn missing_up_to(self, last: u32) -> impl Iterator<Item = u32> {
        (0..=last).filter(move |n| !self.contains(*n))
    }
}

/// The number of a capability named with or without `CAP_`, in any case.
fn number(name: &str) -> Result<u32, String> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
    names().position(|n| n == bare).map(|n| n as u32).ok_or_else(|| format!("unknown capability {name:?}"))
}

/// A service's `capabilities` in the manifest: changes to the default set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapabilities {
    /// Capabilities to add to the default set; `"all"` adds every one.
    #[serde(default)]
    pub add: Vec<String>,
    /// Capabilities to take out of it (after `add`); `"all"` takes every one out.
    #[serde(default)]
    pub drop: Vec<String>,
}

impl RawCapabilities {
    /// The bounding set it makes.
    pub fn resolve(&self) -> Result<CapabilitySet, String> {
        let set = |names: &[String]| match names.iter().any(|n| n.eq_ignore_ascii_case("all")) {
            true => Ok(CapabilitySet::ALL),
            false => CapabilitySet::of(names.iter().map(String::as_str)),
        };
        let default = CapabilitySet::of(DEFAULT.iter().copied())?;
        Ok(CapabilitySet((default.0 | set(&self.add)?.0) & !set(&self.drop)?.0))
    }
}

/// How a process is confined when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confinement {
    /// Its capability bounding set: what it (and anything it runs) can ever hold.
    pub capabilities: CapabilitySet,
    /// `PR_SET_NO_NEW_PRIVS`: no exec gains privileges (setuid programs, file capabilities).
    pub no_new_privs: bool,
    /// Namespaces of its own.
    pub namespaces: crate::limits::Namespaces,
}

/// What the VM runner needs beyond [`DEFAULT`]: making taps and bridging them (`net_admin`),
/// and virtiofsd's sandbox (`sys_admin`: its namespaces and mounts; `dac_read_search`: file
/// handles; `sys_resource`: raising its file limit). qemu itself needs nothing more than access
/// to `/dev/kvm` and the tap.
pub const VM_RUNNER_EXTRA: &[&str] = &["net_admin", "sys_admin", "dac_read_search", "sys_resource"];

impl Confinement {
    /// The VM runner's: [`DEFAULT`] and [`VM_RUNNER_EXTRA`]. Not `no_new_privs`: what it runs
    /// may be a distribution's qemu wrapper.
    pub fn vm_runner() -> Confinement {
        let names = DEFAULT.iter().chain(VM_RUNNER_EXTRA).copied();
        Confinement {
            // The names are this table's own; the fallback is never taken (a test checks).
            capabilities: CapabilitySet::of(names).unwrap_or(CapabilitySet::ALL),
            no_new_privs: false,
            namespaces: crate::limits::Namespaces::NONE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_any_form_and_unknown_ones_refused() {
        assert_eq!(
            CapabilitySet::of(["CAP_SYS_ADMIN", "net_admin", "Cap_Chown"]).unwrap().0,
            (1 << 21) | (1 << 12) | 1
        );
        assert!(CapabilitySet::of(["sys_everything"]).unwrap_err().contains("sys_everything"));
        assert!(CapabilitySet::of([""]).is_err());
        assert!(CapabilitySet::of(["cap_"]).is_err());
        assert_eq!(names().count(), COUNT as usize);
        assert_eq!(CapabilitySet::ALL.names().count(), 41);
        assert_eq!(number("sys_admin"), Ok(21));
        assert_eq!(number("net_raw"), Ok(13));
        assert_eq!(CapabilitySet::ALL.names().last(), Some("checkpoint_restore"));
    }

    #[test]
    fn the_vm_runner_gets_the_default_set_and_what_taps_and_virtiofsd_need() {
        let runner = Confinement::vm_runner().capabilities;
        assert_ne!(runner, CapabilitySet::ALL);
        assert_eq!(runner.names().count(), DEFAULT.len() + VM_RUNNER_EXTRA.len());
        for name in ["net_admin", "sys_admin", "chown", "kill"] {
            assert!(runner.contains(number(name).unwrap()), "{name}");
        }
        for name in ["sys_module", "sys_rawio", "sys_boot", "sys_time", "bpf", "sys_ptrace"] {
            assert!(!runner.contains(number(name).unwrap()), "{name}");
        }
    }

    #[test]
    fn add_and_drop_change_the_default_set() {
        let default = RawCapabilities::default().resolve().unwrap();
        assert_eq!(default.names().collect::<Vec<_>>(), {
            let mut d = DEFAULT.to_vec();
            d.sort_by_key(|n| number(n).unwrap());
            d
        });
        assert!(!default.contains(21));
        let raw = |add: &[&str], drop: &[&str]| RawCapabilities {
            add: add.iter().map(|s| s.to_string()).collect(),
            drop: drop.iter().map(|s| s.to_string()).collect(),
        };
        let wider = raw(&["sys_admin"], &["net_raw"]).resolve().unwrap();
        assert!(wider.contains(21) && !wider.contains(13) && wider.contains(0));
        assert_eq!(raw(&["all"], &[]).resolve().unwrap(), CapabilitySet::ALL);
        assert_eq!(raw(&["all"], &["ALL"]).resolve().unwrap(), CapabilitySet(0));
        assert!(raw(&[], &["nope"]).resolve().is_err());
        assert_eq!(CapabilitySet(0b101).missing_up_to(3).collect::<Vec<_>>(), [1, 3]);
        assert!(!CapabilitySet::ALL.contains(64) && !CapabilitySet::ALL.contains(41));
    }
}
