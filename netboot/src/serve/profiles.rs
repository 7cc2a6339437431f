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
//!
//! The same file says how nodes are enrolled and grouped:
//! ```json
//! { "enrollment": "manual",
//!   "allowed": ["NODE-ID", "64 hex digits of a node's public key"],
//!   "groups": { "canary": ["NODE-ID", "52:54:00:00:00:01", "rack1-*"] } }
//! ```
//! With `manual` (the default) a node seen for the first time is pending until the operator
//! accepts it, unless `allowed` names it; with `open` every node is accepted when first seen.
//! A group member is a node id, a node's public key (64 hex digits), a MAC address, or a
//! pattern (`*` for any characters) matched against ids and MACs; groups name the waves of a
//! rollout.

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
    #[serde(default)]
    enrollment: Enrollment,
    #[serde(default)]
    allowed: Vec<String>,
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
}

/// How nodes seen for the first time are taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enrollment {
    /// Pending until accepted (or named in `allowed`); unsigned manifest requests are refused.
    #[default]
    Manual,
    /// Accepted when first seen.
    Open,
}

/// Most groups, members per group, and allowed keys.
const MAX_LISTED: usize = 10_000;

/// The profiles and the node assignments, validated.
#[derive(Debug, Serialize)]
pub struct Profiles {
    /// By name; always has `default`.
    pub profiles: BTreeMap<String, Profile>,
    /// MAC address (lower case, colons) → profile.
    pub nodes: BTreeMap<String, String>,
    /// How new nodes are taken.
    pub enrollment: Enrollment,
    /// Node ids accepted ahead of time.
    pub allowed: std::collections::BTreeSet<String>,
    /// Group → its members (ids, MACs, patterns).
    pub groups: BTreeMap<String, Vec<String>>,
}

/// Whether `text` matches `pattern`, where `*` stands for any characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = rest.get(at + part.len()..).unwrap_or_default(),
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
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

/// A group member as matched: a MAC address in its usual form, a public key as its node id,
/// anything else (a node id, a pattern) as written.
fn group_member(member: &str) -> String {
    match normalize_mac(member) {
        Some(mac) => mac,
        None if member.trim().len() == 64 => allowed_id(member).unwrap_or_else(|| member.to_string()),
        None => member.to_string(),
    }
}

/// A node id from an `allowed` entry: a node id as is, a public key as the id it makes.
fn allowed_id(entry: &str) -> Option<String> {
    let entry = entry.trim();
    if entry.len() == 64 {
        let key: [u8; 32] = hex::decode(entry).ok()?.try_into().ok()?;
        return Some(flint_manifest::signed::node_id(&key));
    }
    super::logs::is_node_id(entry).then(|| entry.to_string())
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
        if raw.allowed.len() > MAX_LISTED || raw.groups.len() > MAX_LISTED {
            return Err(format!("{CONFIG}: at most {MAX_LISTED} allowed keys and groups"));
        }
        let mut allowed = std::collections::BTreeSet::new();
        for key in raw.allowed {
            allowed.insert(allowed_id(&key).ok_or_else(|| {
                format!("{CONFIG}: allowed {key:?} is neither a node id nor a public key (64 hex digits)")
            })?);
        }
        for (group, members) in &raw.groups {
            if group.is_empty() || group.len() > 64 || members.len() > MAX_LISTED {
                return Err(format!(
                    "{CONFIG}: group {group:?}: a name is 1 to 64 characters, with at most {MAX_LISTED} members"
                ));
            }
        }
        let groups = raw
            .groups
            .into_iter()
            .map(|(g, members)| (g, members.into_iter().map(|m| group_member(&m)).collect()))
            .collect();
        Ok(Profiles { profiles, nodes, enrollment: raw.enrollment, allowed, groups })
    }

    /// The groups node `id` (with MAC address `mac`, if known) is in.
    pub fn groups_of(&self, id: &str, mac: Option<&str>) -> std::collections::BTreeSet<String> {
        let hit = |m: &String| glob_match(m, id) || mac.is_some_and(|mac| glob_match(m, mac));
        self.groups.iter().filter(|(_, members)| members.iter().any(hit)).map(|(g, _)| g.clone()).collect()
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
    fn patterns_match_as_globs() {
        for (p, t, want) in [
            ("rack1-*", "rack1-a", true),
            ("rack1-*", "rack2-a", false),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("*ab", "ab", true),
            ("a*a", "a", false),
            ("52:54:00:*", "52:54:00:12:34:56", true),
        ] {
            assert_eq!(glob_match(p, t), want, "{p:?} {t:?}");
        }
    }

    #[test]
    fn enrollment_allowed_keys_and_groups_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = [7u8; 32];
        let id = flint_manifest::signed::node_id(&key);
        std::fs::write(
            dir.path().join(CONFIG),
            format!(
                r#"{{"enrollment": "open", "allowed": ["{}", "abc"], "groups": {{"canary": ["{id}", "52-54-00-00-00-AA"], "all": ["*"], "by-key": ["{}"]}}}}"#,
                hex::encode(key),
                hex::encode(key)
            ),
        )
        .unwrap();
        let p = Profiles::load(dir.path()).unwrap();
        assert_eq!(p.enrollment, Enrollment::Open);
        assert!(p.allowed.contains(&id) && p.allowed.contains("abc"));
        assert_eq!(p.groups_of(&id, None).into_iter().collect::<Vec<_>>(), ["all", "by-key", "canary"]);
        assert_eq!(p.groups_of("zz", Some("52:54:00:00:00:aa")).len(), 2);
        assert_eq!(p.groups_of("zz", None).into_iter().collect::<Vec<_>>(), ["all"]);
        assert_eq!(Profiles::load(tempfile::tempdir().unwrap().path()).unwrap().enrollment, Enrollment::Manual);
        std::fs::write(dir.path().join(CONFIG), r#"{"allowed": ["Not An Id!"]}"#).unwrap();
        assert!(Profiles::load(dir.path()).unwrap_err().contains("neither a node id"));
        std::fs::write(dir.path().join(CONFIG), r#"{"enrollment": "maybe"}"#).unwrap();
        assert!(Profiles::load(dir.path()).is_err());
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
