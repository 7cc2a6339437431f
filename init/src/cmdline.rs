//! The kernel command line: what the boot loader (iPXE script, USB image) tells PID 1.
//!
//! | parameter | meaning |
//! |---|---|
//! | `flint.manifest=URL` | the signed manifest (`http://`, `https://`, or a path in the initramfs) |
//! | `flint.key=HEX` | the manifest signer's ed25519 key, when the initramfs allows it (else the baked-in one) |
//! | `flint.net=dhcp\|static:[IFACE,]ADDR/PREFIX[,GW[,DNS...]]\|none` | network (default `dhcp`) |
//! | `flint.ntp=HOST[:PORT][,…]` | the SNTP servers to ask, in order, and no others (default: the manifest's host, then `pool.ntp.org`) |
//! | `flint.ca=PATH` | PEM of the CA(s) to trust for https (default: the initramfs bundle) |
//! | `flint.interval=SECS` | seconds between manifest fetches (default 300) |
//! | `flint.modules=a,b` | extra kernel modules to load |
//! | `flint.cache=LABEL` | GPT partition name of the cache disk (default `flint-cache`) |
//! | `flint.report=URL` | where to POST boot stages (`netboot serve`'s `/report`); none by default |
//! | `flint.prefetch=SIZE` | bytes each mount fetches ahead of its readers at most (default 8M, up to 1G) |
//! | `flint.debug` | debug logging |

use std::path::PathBuf;

use crate::net::NetConfig;

/// Seconds between manifest fetches unless `flint.interval=` says otherwise.
pub const DEFAULT_INTERVAL_SECS: u64 = 300;
/// The longest `flint.interval=` (a day): a node looks for a new manifest at least daily.
pub const MAX_INTERVAL_SECS: u64 = 86_400;

/// Bytes each mount may fetch ahead of its readers unless `flint.prefetch=` says otherwise.
pub const DEFAULT_PREFETCH_BYTES: u64 = 8 << 20;
/// The most `flint.prefetch=` may ask for.
pub const MAX_PREFETCH_BYTES: u64 = 1 << 30;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// `flint.manifest`.
    pub manifest: Option<String>,
    /// `flint.key`.
    pub key: Option<String>,
    /// `flint.net`.
    pub net: NetConfig,
    /// `flint.ntp`: the only SNTP servers to ask, when given.
    pub ntp: Vec<String>,
    /// `flint.ca`.
    pub ca: Option<PathBuf>,
    /// `flint.interval`.
    pub interval_secs: u64,
    /// `flint.modules`.
    pub modules: Vec<String>,
    /// `flint.cache`.
    pub cache_label: String,
    /// `flint.report`.
    pub report: Option<String>,
    /// `flint.prefetch`.
    pub prefetch_bytes: u64,
    /// `flint.debug`.
    pub debug: bool,
    /// What was not understood: reported, never fatal.
    pub problems: Vec<String>,
}

impl Default for BootParams {
    fn default() -> Self {
        BootParams {
            manifest: None,
            key: None,
            net: NetConfig::Dhcp,
            ntp: Vec::new(),
            ca: None,
            interval_secs: DEFAULT_INTERVAL_SECS,
            modules: Vec::new(),
            cache_label: "flint-cache".into(),
            report: None,
            prefetch_bytes: DEFAULT_PREFETCH_BYTES,
            debug: false,
            problems: Vec::new(),
        }
    }
}

/// Splits a command line into words, honouring double quotes as the kernel does.
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Parses `/proc/cmdline`; anything wrong is noted in `problems` and the default kept.
pub fn parse(cmdline: &str) -> BootParams {
    let mut p = BootParams::default();
    for word in words(cmdline) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word.as_str(), None),
        };
        let Some(name) = key.strip_prefix("flint.") else { continue };
        match (name, value) {
            ("manifest", Some(v)) => p.manifest = Some(v.to_string()),
            ("key", Some(v)) => p.key = Some(v.to_string()),
            ("net", Some(v)) => match v.parse() {
                Ok(n) => p.net = n,
                Err(e) => p.problems.push(format!("flint.net: {e}; using dhcp")),
            },
            ("ntp", Some(v)) => {
                let servers: Vec<String> = v.split(',').filter(|s| !s.is_empty()).map(String::from).collect();
                if servers.len() > MAX_NTP_SERVERS || servers.iter().any(|s| s.len() > 255) {
                    p.problems
                        .push(format!("flint.ntp: at most {MAX_NTP_SERVERS} servers of 255 bytes; using the defaults"));
                } else {
                    p.ntp = servers;
                }
            }
            ("ca", Some(v)) => p.ca = Some(PathBuf::from(v)),
            ("interval", Some(v)) => match v.parse::<u64>() {
                Ok(s) if (1..=MAX_INTERVAL_SECS).contains(&s) => p.interval_secs = s,
                _ => p.problems.push(format!(
                    "flint.interval={v}: not a number of seconds from 1 to {MAX_INTERVAL_SECS}; using {}",
                    p.interval_secs
                )),
            },
            ("modules", Some(v)) => p.modules.extend(v.split(',').filter(|m| !m.is_empty()).map(String::from)),
            ("cache", Some(v)) => p.cache_label = v.to_string(),
            ("report", Some(v)) => p.report = Some(v.to_string()),
            ("prefetch", Some(v)) => match flint_manifest::limits::parse_size(v) {
                Ok(bytes) if bytes <= MAX_PREFETCH_BYTES => p.prefetch_bytes = bytes,
                _ => p.problems.push(format!(
                    "flint.prefetch={v}: not a size up to 1G (bytes, or with K, M or G); using {}",
                    p.prefetch_bytes
                )),
            },
            ("debug", None | Some("1" | "yes" | "true")) => p.debug = true,
            _ => p.problems.push(format!("unknown or incomplete parameter {word:?}")),
        }
    }
    p
}

/// Most servers `flint.ntp` may name.
const MAX_NTP_SERVERS: usize = 8;

/// The SNTP servers to ask: those of `flint.ntp` and no others, else the manifest server itself,
/// then the public pool.
pub fn ntp_servers(p: &BootParams) -> Vec<String> {
    if !p.ntp.is_empty() {
        return p.ntp.clone();
    }
    let mut servers = Vec::new();
    let host = p
        .manifest
        .as_deref()
        .and_then(|m| url::Url::parse(m).ok())
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()));
    servers.extend(host);
    servers.push("pool.ntp.org".into());
    let mut seen = std::collections::HashSet::new();
    servers.retain(|s| seen.insert(s.clone()));
    servers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flint_parameters_are_read_and_others_ignored() {
        let p = parse(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 quiet flint.manifest=http://10.0.2.2:8000/node/manifest.json \
             flint.key=abcd flint.net=static:eth0,10.0.2.15/24,10.0.2.2 flint.debug flint.modules=virtio_rng,e1000 \
             flint.interval=60 flint.cache=\"my cache\" flint.report=http://10.0.2.2:8000/report flint.prefetch=64M\n",
        );
        assert_eq!(p.manifest.as_deref(), Some("http://10.0.2.2:8000/node/manifest.json"));
        assert_eq!(p.key.as_deref(), Some("abcd"));
        assert!(matches!(p.net, NetConfig::Static { .. }));
        assert!(p.debug);
        assert_eq!(p.modules, ["virtio_rng", "e1000"]);
        assert_eq!(p.interval_secs, 60);
        assert_eq!(p.cache_label, "my cache");
        assert_eq!(p.report.as_deref(), Some("http://10.0.2.2:8000/report"));
        assert_eq!(p.prefetch_bytes, 64 << 20);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(ntp_servers(&p), ["10.0.2.2", "pool.ntp.org"]);
        let only = parse("flint.ntp=10.0.2.2:9,time.example flint.manifest=http://10.0.2.2/m.json");
        assert_eq!(ntp_servers(&only), ["10.0.2.2:9", "time.example"], "those given and no others");
        let many = parse(&format!("flint.ntp={}", ["a"; 9].join(",")));
        assert_eq!((many.problems.len(), many.ntp.len()), (1, 0));
    }

    #[test]
    fn mistakes_are_reported_and_defaults_kept() {
        let p = parse("flint.net=wifi flint.interval=0 flint.bogus=1 flint.manifest flint.prefetch=2G");
        assert_eq!(p.net, NetConfig::Dhcp);
        assert_eq!(p.interval_secs, 300);
        assert_eq!(p.prefetch_bytes, DEFAULT_PREFETCH_BYTES);
        assert_eq!(p.problems.len(), 5, "{:?}", p.problems);
        assert_eq!(p.manifest, None);
    }
}
