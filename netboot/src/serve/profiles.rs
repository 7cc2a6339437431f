//! Which kernel, initramfs and command line each node boots: `netboot.json` in the served root
//! names profiles and assigns MAC addresses to them; a node not named gets `default`. The file
//! is read again for every boot script, so an edit applies to the next node that boots.
//!
//! ```json
//! { "profiles": { "default": { "kernel": "boot/vmlinuz", "initrd": "boot/initrd.zst",
//!       "cmdline": "console=ttyS0 flint.manifest={server}/manifest.json flint.report={server}/report" } },
//!   "nodes": { "52:54:00:12:34:56": "default" } }
//! ```
//! In `cmdline`, `{server}` becomes the server's URL as the node reached it, `{mac}` the node's
//! MAC address and `{profile}` the profile's name.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The configuration file in the served root.
pub const CONFIG: &str = "netboot.json";

/// What a node boots.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The kernel, relative to the root.
    pub kernel: String,
    /// The initramfs, relative to the root.
    pub initrd: String,
    /// The kernel command line, a template.
    pub cmdline: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
    #[serde(default)]
    nodes: BTreeMap<String, String>,
}

/// The profiles and the node assignments, validated.
#[derive(Debug, Serialize)]
pub struct Profiles {
    /// By name; always has `default`.
    pub profiles: BTreeMap<String, Profile>,
    /// MAC address (lower case, colons) → profile.
    pub nodes: BTreeMap<String, String>,
}

/// `52-54-00-AB-CD-EF`, `52:54:00:ab:cd:ef` or `525400abcdef` as `52:54:00:ab:cd:ef`.
pub fn normalize_mac(text: &str) -> Option<String> {
    let hex: String = text.chars().filter(|c| !matches!(c, ':' | '-')).collect();
    let valid = hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit());
    valid.then(|| {
        let lower = hex.to_ascii_lowercase();
        lower.as_bytes().chunks(2).map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().join(":")
    })
}

fn default_profile() -> Profile {
    Profile {
        kernel: "boot/vmlinuz".into(),
        initrd: "boot/initrd.zst".into(),
        cmdline: "console=ttyS0 flint.manifest={server}/manifest.json flint.report={server}/report".into(),
    }
}

impl Profiles {
    /// Reads `netboot.json` from `root` (defaults without it) and checks that every assigned
    /// profile exists and every MAC address is one.
    pub fn load(root: &Path) -> Result<Profiles, String> {
        let raw: RawConfig = match std::fs::read(root.join(CONFIG)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{CONFIG}: {e}"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RawConfig::default(),
            Err(e) => return Err(format!("{CONFIG}: {e}")),
        };
        let mut profiles = raw.profiles;
        profiles.entry("default".into()).or_insert_with(default_profile);
        let mut nodes = BTreeMap::new();
        for (mac, profile) in raw.nodes {
            let normal = normalize_mac(&mac).ok_or_else(|| format!("{CONFIG}: {mac:?} is not a MAC address"))?;
            if !profiles.contains_key(&profile) {
                return Err(format!("{CONFIG}: node {mac} has profile {profile:?}, which is not defined"));
            }
            nodes.insert(normal, profile);
        }
        Ok(Profiles { profiles, nodes })
    }

    /// The profile of a node (`load` guarantees there is one; `None` only keeps this total).
    pub fn for_mac(&self, mac: &str) -> Option<(&String, &Profile)> {
        self.profiles.get_key_value(self.nodes.get(mac).map_or("default", String::as_str))
    }

    /// Whether `path` (relative to the root) is some profile's kernel or initramfs.
    pub fn boot_file(&self, path: &str) -> Option<&'static str> {
        self.profiles.values().find_map(|p| {
            if p.kernel == path {
                Some("kernel")
            } else if p.initrd == path {
                Some("initrd")
            } else {
                None
            }
        })
    }
}

/// The iPXE script every node starts with (the DHCP boot file): it asks for its own script by
/// MAC address. Relative URLs resolve against this script's, so it works behind any address.
pub const CHAIN_SCRIPT: &str =
    "#!ipxe\necho flint: asking the boot server for ${net0/mac}\nchain ipxe/${net0/mac:hexhyp}\n";

/// The iPXE script for one node: kernel and initramfs over HTTP from `server`, retried (with
/// the whole script) if a download fails.
pub fn node_script(profile_name: &str, profile: &Profile, mac: &str, server: &str) -> String {
    let cmdline = profile.cmdline.replace("{server}", server).replace("{mac}", mac).replace("{profile}", profile_name);
    let initrd_name = Path::new(&profile.initrd).file_name().map_or("initrd".into(), |n| n.to_string_lossy());
    format!(
        "#!ipxe\n\
         echo flint: node {mac}, profile {profile_name}\n\
         :retry\n\
         kernel {server}/{kernel} initrd={initrd_name} {cmdline} || goto failed\n\
         initrd {server}/{initrd} || goto failed\n\
         boot || goto failed\n\
         :failed\n\
         echo flint: boot failed; retrying in 10 s\n\
         sleep 10\n\
         goto retry\n",
        kernel = profile.kernel,
        initrd = profile.initrd,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_normalize_and_garbage_is_refused() {
        assert_eq!(normalize_mac("52-54-00-AB-cd-EF").as_deref(), Some("52:54:00:ab:cd:ef"));
        assert_eq!(normalize_mac("525400abcdef").as_deref(), Some("52:54:00:ab:cd:ef"));
        assert_eq!(normalize_mac("52:54:00:ab:cd"), None);
        assert_eq!(normalize_mac("52:54:00:ab:cd:eg"), None);
    }

    #[test]
    fn nodes_get_their_profile_and_the_template_is_filled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG),
            r#"{"profiles": {"big": {"kernel": "k/big", "initrd": "i/big.zst", "cmdline": "m={server}/{profile}.json id={mac}"}},
                "nodes": {"52-54-00-00-00-01": "big"}}"#,
        )
        .unwrap();
        let p = Profiles::load(dir.path()).unwrap();
        let (name, profile) = p.for_mac("52:54:00:00:00:01").unwrap();
        assert_eq!(name, "big");
        let script = node_script(name, profile, "52:54:00:00:00:01", "http://h:1");
        assert!(script.contains("kernel http://h:1/k/big initrd=big.zst m=http://h:1/big.json id=52:54:00:00:00:01 "));
        assert!(script.contains("initrd http://h:1/i/big.zst"));
        assert_eq!(p.for_mac("52:54:00:00:00:02").unwrap().0, "default");
        assert_eq!(p.boot_file("i/big.zst"), Some("initrd"));
        assert_eq!(p.boot_file("boot/vmlinuz"), Some("kernel"));
    }

    #[test]
    fn a_node_with_an_undefined_profile_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG), r#"{"nodes": {"52:54:00:00:00:01": "nope"}}"#).unwrap();
        assert!(Profiles::load(dir.path()).unwrap_err().contains("not defined"));
        std::fs::write(dir.path().join(CONFIG), r#"{"nodes": {"nope": "default"}}"#).unwrap();
        assert!(Profiles::load(dir.path()).unwrap_err().contains("not a MAC"));
    }
}
