//! The network step of boot: loopback up, then every Ethernet NIC up and configured, by DHCP
//! (all NICs with carrier in parallel) or statically from the kernel command line.
//!
//! With DHCP every NIC that gets a lease keeps its address; all get a default route, and the
//! preferred one (a private gateway first, then the lowest address) gets the lowest metric and
//! supplies the DNS servers, so the choice is visible in `ip route` and never a dead NIC picked
//! silently. Each lease is renewed at T1 by a thread of its own. IPv6 addresses come from the
//! kernel's own SLAAC once the NICs are up.

pub mod dhcp;
pub mod netlink;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error_chain;
use dhcp::{Client, Lease};
use netlink::{Link, Netlink};

/// How to configure the network (`flint.net=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetConfig {
    /// DHCP on every NIC (the default).
    Dhcp,
    /// `static:[IFACE,]ADDR/PREFIX[,GATEWAY[,DNS...]]`.
    Static {
        /// The NIC; the first Ethernet NIC if absent.
        iface: Option<String>,
        /// Address.
        address: Ipv4Addr,
        /// Prefix length.
        prefix: u8,
        /// Default gateway.
        gateway: Option<Ipv4Addr>,
        /// DNS servers.
        dns: Vec<Ipv4Addr>,
    },
    /// Leave the network alone (`none`).
    None,
}

impl std::str::FromStr for NetConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<NetConfig, String> {
        match s {
            "dhcp" => return Ok(NetConfig::Dhcp),
            "none" => return Ok(NetConfig::None),
            _ => {}
        }
        let spec = s.strip_prefix("static:").ok_or_else(|| format!("{s:?}: expected dhcp, none or static:..."))?;
        let mut parts: Vec<&str> = spec.split(',').collect();
        let iface = match parts.first() {
            Some(p) if !p.contains('/') => Some(parts.remove(0).to_string()),
            _ => None,
        };
        let mut parts = parts.into_iter();
        let cidr = parts.next().ok_or("static: needs ADDR/PREFIX")?;
        let (addr, prefix) = cidr.split_once('/').ok_or_else(|| format!("{cidr:?}: expected ADDR/PREFIX"))?;
        let address = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("{prefix:?}: bad prefix"))?;
        let ip = |t: &str| t.parse::<Ipv4Addr>().map_err(|_| format!("{t:?} is not an IPv4 address"));
        let gateway = parts.next().filter(|g| !g.is_empty()).map(ip).transpose()?;
        let dns = parts.map(ip).collect::<Result<_, _>>()?;
        Ok(NetConfig::Static { iface, address, prefix, gateway, dns })
    }
}

/// A NIC as configured.
#[derive(Debug, Clone)]
pub struct Uplink {
    /// The NIC.
    pub link: Link,
    /// What it got.
    pub lease: Lease,
    /// Whether it carries the preferred default route.
    pub preferred: bool,
}

/// Whether a gateway is in a private range (RFC 1918) — a node's own network.
fn private(ip: Ipv4Addr) -> bool {
    ip.is_private()
}

/// Orders uplinks: private gateway first, then lowest address.
pub fn preference(a: &Lease) -> (bool, Ipv4Addr) {
    (!a.router.is_some_and(private), a.address)
}

fn configure(nl: &mut Netlink, link: &Link, lease: &Lease, metric: u32, dhcp: bool) -> std::io::Result<()> {
    nl.add_address(link.index, lease.address.into(), lease.prefix)?;
    if let Some(gw) = lease.router {
        nl.set_default_route(link.index, gw, metric, dhcp)?;
    }
    Ok(())
}

fn write_resolv(path: &Path, dns: &[Ipv4Addr]) {
    if dns.is_empty() {
        return;
    }
    let text: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(path, text) {
        tracing::warn!("writing {}: {e}", path.display());
    }
}

/// Waits up to `wait` for carrier on `link` (it was just brought up).
fn carrier(nl: &mut Netlink, link: &Link, wait: Duration) -> bool {
    let started = Instant::now();
    let until = crate::later(started, wait);
    loop {
        let up =
            nl.links().ok().and_then(|ls| ls.into_iter().find(|l| l.index == link.index)).is_some_and(|l| l.carrier);
        if up || Instant::now() >= until {
            tracing::debug!(
                "{}: carrier {} after {:?}",
                link.name,
                if up { "up" } else { "still down" },
                started.elapsed()
            );
            return up;
        }
        // A virtual NIC has carrier a few milliseconds after it is up: a coarser poll would
        // hold the boot for most of its period.
        std::thread::sleep(CARRIER_POLL);
    }
}

/// How often [`carrier`] looks again.
const CARRIER_POLL: Duration = Duration::from_millis(5);

/// Brings the network up once: `Ok` with the NICs configured, `Err` if none could be (the caller
/// retries). `resolv` is where DNS servers go (`/etc/resolv.conf`).
pub fn bring_up(config: &NetConfig, resolv: &Path, carrier_wait: Duration) -> Result<Vec<Uplink>, String> {
    let mut nl = Netlink::open().map_err(|e| format!("netlink: {e}"))?;
    let links = nl.links().map_err(|e| format!("listing interfaces: {e}"))?;
    for l in links.iter().filter(|l| l.name == "lo") {
        nl.set_up(l.index).map_err(|e| format!("bringing lo up: {e}"))?;
    }
    let nics: Vec<Link> = links.into_iter().filter(|l| l.ethernet && l.name != "lo").collect();
    for nic in &nics {
        // Router advertisements then configure IPv6 by SLAAC on their own.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/accept_ra", nic.name), "1");
        if let Err(e) = nl.set_up(nic.index) {
            tracing::warn!("{}: bringing it up: {e}", nic.name);
        }
    }
    match config {
        NetConfig::None => Ok(Vec::new()),
        NetConfig::Static { iface, address, prefix, gateway, dns } => {
            let nic = match iface {
                Some(name) => nics.iter().find(|n| &n.name == name),
                None => nics.first(),
            }
            .ok_or_else(|| format!("static network: no interface {}", iface.as_deref().unwrap_or("(any Ethernet)")))?;
            let lease = Lease {
                address: *address,
                prefix: *prefix,
                router: *gateway,
                dns: dns.clone(),
                server: Ipv4Addr::UNSPECIFIED,
                valid: Duration::MAX,
                renew: Duration::MAX,
            };
            configure(&mut nl, nic, &lease, 100, false).map_err(|e| format!("{}: {e}", nic.name))?;
            write_resolv(resolv, dns);
            tracing::info!("{}: {}/{} (static), gateway {:?}", nic.name, address, prefix, gateway);
            Ok(vec![Uplink { link: nic.clone(), lease, preferred: true }])
        }
        NetConfig::Dhcp => {
            let results: Vec<(Link, Result<Lease, String>)> = std::thread::scope(|s| {
                let handles: Vec<_> = nics
                    .iter()
                    .map(|nic| {
                        s.spawn(move || {
                            let mut nl = Netlink::open().map_err(|e| e.to_string())?;
                            if !carrier(&mut nl, nic, carrier_wait) {
                                return Err(format!("no carrier after {carrier_wait:?} (cable or peer missing)"));
                            }
                            let client = Client::new(&nic.name, &nic.mac).map_err(|e| error_chain(&e))?;
                            client.acquire().map_err(|e| error_chain(&e))
                        })
                    })
                    .collect();
                nics.iter()
                    .cloned()
                    .zip(handles)
                    .map(|(n, h)| (n, h.join().unwrap_or_else(|_| Err("DHCP thread failed".into()))))
                    .collect()
            });
            let mut got: Vec<(Link, Lease)> = Vec::new();
            for (nic, result) in results {
                match result {
                    Ok(lease) => got.push((nic, lease)),
                    Err(e) => tracing::warn!("{}: {e}", nic.name),
                }
            }
            if got.is_empty() {
                return Err(format!("no lease on any of {} NIC(s)", nics.len()));
            }
            got.sort_by_key(|(_, l)| preference(l));
            let mut uplinks = Vec::new();
            for (i, (nic, lease)) in got.into_iter().enumerate() {
                if let Err(e) = configure(&mut nl, &nic, &lease, metric(i), true) {
                    tracing::error!("{}: configuring {}/{}: {e}", nic.name, lease.address, lease.prefix);
                    continue;
                }
                let preferred = uplinks.is_empty();
                if preferred {
                    write_resolv(resolv, &lease.dns);
                }
                tracing::info!(
                    "{}: {}/{} by DHCP from {}, gateway {:?}, DNS {:?}, lease {:?} (renewal after {:?}){}",
                    nic.name,
                    lease.address,
                    lease.prefix,
                    lease.server,
                    lease.router,
                    lease.dns,
                    lease.valid,
                    lease.renew,
                    if preferred { " (preferred uplink)" } else { "" }
                );
                uplinks.push(Uplink { link: nic, lease, preferred });
            }
            if uplinks.is_empty() {
                return Err("no NIC could be configured".into());
            }
            Ok(uplinks)
        }
    }
}

/// Shortest wait before a renewal: a server granting T1 = 0 must not make a busy loop.
const MIN_RENEW: Duration = Duration::from_secs(2);

/// The route metric of the `i`th uplink in [`bring_up`]'s order of preference.
fn metric(i: usize) -> u32 {
    100 + 100 * i as u32
}

/// Keeps every DHCP lease of `uplinks` on a thread of its own ([`keep_lease`]).
pub fn keep_leases(uplinks: Vec<Uplink>) {
    for (i, u) in uplinks.into_iter().enumerate() {
        if u.lease.is_static() {
            continue;
        }
        let spawned = std::thread::Builder::new().name(format!("dhcp-{}", u.link.name)).spawn(move || keep_lease(u, i));
        if let Err(e) = spawned {
            tracing::error!("lease renewal thread: {e}");
        }
    }
}

/// Renews `uplink`'s lease with its server (a new one if that fails or the lease ran out) and
/// applies it; the `i`th uplink keeps its route metric.
pub fn renew(uplink: &mut Uplink, i: usize, still_valid: bool) -> Result<(), String> {
    let Uplink { link, lease, .. } = uplink;
    let client = Client::new(&link.name, &link.mac).map_err(|e| error_chain(&e))?;
    let renewed = if still_valid { client.renew(lease).or_else(|_| client.acquire()) } else { client.acquire() };
    let new = renewed.map_err(|e| error_chain(&e))?;
    Netlink::open()
        .and_then(|mut nl| configure(&mut nl, link, &new, metric(i), true))
        .map_err(|e| format!("applying the renewed lease: {e}"))?;
    tracing::info!("{}: lease of {} renewed for {:?}", link.name, new.address, new.valid);
    *lease = new;
    Ok(())
}

/// Keeps `uplink`'s lease: renews at T1, and acquires a new one if it runs out. Runs forever
/// (a thread of PID 1).
fn keep_lease(mut uplink: Uplink, i: usize) {
    let mut granted = Instant::now();
    loop {
        std::thread::sleep(uplink.lease.renew.max(MIN_RENEW));
        let still_valid = granted.elapsed() < uplink.lease.valid;
        match renew(&mut uplink, i, still_valid) {
            Ok(()) => granted = Instant::now(),
            Err(e) => {
                tracing::warn!("{}: renewing the lease of {}: {e}", uplink.link.name, uplink.lease.address);
                uplink.lease.renew = Duration::from_secs(30);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_specs_parse() {
        assert_eq!("dhcp".parse(), Ok(NetConfig::Dhcp));
        assert_eq!(
            "static:eth1,10.0.0.5/24,10.0.0.1,1.1.1.1,9.9.9.9".parse(),
            Ok(NetConfig::Static {
                iface: Some("eth1".into()),
                address: Ipv4Addr::new(10, 0, 0, 5),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
                dns: vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(9, 9, 9, 9)],
            })
        );
        assert_eq!(
            "static:192.168.1.9/16".parse(),
            Ok(NetConfig::Static {
                iface: None,
                address: Ipv4Addr::new(192, 168, 1, 9),
                prefix: 16,
                gateway: None,
                dns: vec![]
            })
        );
        assert!("static:10.0.0.5".parse::<NetConfig>().is_err());
        assert!("static:10.0.0.5/33".parse::<NetConfig>().is_err());
        assert!("wifi".parse::<NetConfig>().is_err());
    }

    #[test]
    fn private_gateways_win_then_lowest_address() {
        let lease = |addr: [u8; 4], gw: [u8; 4]| Lease {
            address: addr.into(),
            prefix: 24,
            router: Some(gw.into()),
            dns: vec![],
            server: gw.into(),
            valid: Duration::from_secs(60),
            renew: Duration::from_secs(30),
        };
        let mut all = [
            lease([198, 51, 100, 7], [198, 51, 100, 1]),
            lease([10, 9, 0, 5], [10, 9, 0, 1]),
            lease([10, 1, 0, 5], [10, 1, 0, 1]),
        ];
        all.sort_by_key(preference);
        assert_eq!(all.map(|l| l.address.octets()[1]), [1, 9, 51]);
    }
}
