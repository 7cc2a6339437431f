//! The network step against real DHCP servers: Debian's dnsmasq in network namespaces, joined to
//! a node namespace by veth pairs. The node has a NIC behind a public-looking gateway with the
//! lowest address, one behind a private gateway, and one without carrier.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::process::{Child, Command, Stdio};

use serde_json::Value;

const INIT: &str = env!("CARGO_BIN_EXE_init");

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Network namespaces and dnsmasq servers, removed on drop.
struct Lab {
    tag: String,
    servers: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in ["node", "priv", "pub"] {
            let _ = Command::new("ip").args(["netns", "del", &format!("{}{ns}", self.tag)]).status();
        }
    }
}

/// `id` tells the tests of one run apart (interface names must stay under 16 bytes).
fn lab(id: char) -> Lab {
    let tag = format!("f{id}{}", std::process::id() % 100_000);
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab { tag: tag.clone(), servers: Vec::new(), _dir: dir };
    let (node, private, public) = (format!("{tag}node"), format!("{tag}priv"), format!("{tag}pub"));
    for ns in [&node, &private, &public] {
        sh(&format!("ip netns add {ns}"));
    }
    // eth-priv ↔ private server, eth-pub ↔ public server, eth-dead ↔ a peer left down.
    for (nic, ns, net) in [("a", &private, "192.168.77"), ("b", &public, "100.64.9")] {
        sh(&format!("ip link add {tag}{nic}n netns {node} type veth peer name srv netns {ns}"));
        sh(&format!("ip -n {ns} addr add {net}.1/24 dev srv && ip -n {ns} link set srv up"));
        // The private side also advertises an IPv6 prefix (SLAAC).
        let extra: &[&str] = if nic == "a" {
            sh(&format!("ip -n {ns} addr add 2001:db8:77::1/64 dev srv nodad"));
            &["--enable-ra", "--dhcp-range=2001:db8:77::,ra-only"]
        } else {
            &[]
        };
        let leases = lab._dir.path().join(format!("{nic}.leases"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--port=0"])
            // --bind-dynamic: addresses that appear later (the IPv6 link-local one, once the node's
            // end comes up) are picked up instead of failing the start.
            .args(["--interface=srv", "--bind-dynamic", "--no-hosts"])
            // No shared pid file: servers of tests running side by side raced on it.
            .arg("--pid-file=")
            .arg(format!("--dhcp-range={net}.50,{net}.99,255.255.255.0,2m"))
            .arg(format!("--dhcp-option=option:router,{net}.1"))
            .arg(format!("--dhcp-option=option:dns-server,{net}.1"))
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (dnsmasq-base) must be installed");
        lab.servers.push(child);
    }
    sh(&format!("ip link add {tag}cn netns {node} type veth peer name dead netns {public}"));
    lab
}

#[test]
fn dhcp_on_every_nic_prefers_the_private_gateway() {
    let lab = lab('d');
    let node = format!("{}node", lab.tag);
    let resolv = lab._dir.path().join("resolv.conf");
    let out = Command::new("ip")
        .args(["netns", "exec", &node, INIT, "net", "--json", "--carrier-wait", "3", "--renew", "--resolv"])
        .arg(&resolv)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let uplinks: Value = serde_json::from_slice(&out.stdout).unwrap();
    let uplinks = uplinks.as_array().unwrap();
    assert_eq!(uplinks.len(), 2, "{uplinks:?}\n{stderr}");

    // The private gateway wins although the public NIC has the lower address.
    let first = &uplinks[0];
    assert_eq!(first["iface"], format!("{}an", lab.tag));
    assert_eq!(first["preferred"], true);
    assert_eq!(first["gateway"], "192.168.77.1");
    assert!(first["address"].as_str().unwrap().starts_with("192.168.77."));
    assert_eq!(first["prefix"], 24);
    assert_eq!(uplinks[1]["gateway"], "100.64.9.1");
    assert_eq!(std::fs::read_to_string(&resolv).unwrap(), "nameserver 192.168.77.1\n");

    // The kernel has the addresses and the routes, the preferred one with the lower metric.
    let addrs = Command::new("ip").args(["-n", &node, "-4", "-o", "addr"]).output().unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(addrs.contains(first["address"].as_str().unwrap()), "{addrs}");
    assert!(addrs.contains(uplinks[1]["address"].as_str().unwrap()), "{addrs}");
    let routes = Command::new("ip").args(["-n", &node, "route", "show", "default"]).output().unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    let best = routes.lines().next().unwrap_or_default();
    assert!(best.contains("via 192.168.77.1") && best.contains("metric 100"), "{routes}");
    assert!(routes.contains("via 100.64.9.1"), "{routes}");

    // The NIC without carrier is named in the log, not silently skipped.
    assert!(stderr.contains(&format!("{}cn: no carrier", lab.tag)), "{stderr}");
    // Each lease was renewed with its server (`--renew`, what PID 1 does at T1).
    let address = first["address"].as_str().unwrap();
    assert!(stderr.contains(&format!("lease of {address} renewed")), "{stderr}");
    assert!(stderr.contains(&format!("lease of {} renewed", uplinks[1]["address"].as_str().unwrap())), "{stderr}");
    // IPv6: the kernel configured an address from the router advertisement (SLAAC).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let v6 = Command::new("ip").args(["-n", &node, "-6", "addr", "show", "scope", "global"]).output().unwrap();
        if String::from_utf8_lossy(&v6.stdout).contains("2001:db8:77:") {
            break;
        }
        assert!(std::time::Instant::now() < until, "no SLAAC address: {}", String::from_utf8_lossy(&v6.stdout));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Loopback is up.
    let lo = Command::new("ip").args(["-n", &node, "link", "show", "lo"]).output().unwrap();
    assert!(String::from_utf8_lossy(&lo.stdout).contains("UP"));
}

#[test]
fn static_configuration_from_the_command_line() {
    let lab = lab('s');
    let node = format!("{}node", lab.tag);
    let resolv = lab._dir.path().join("resolv.conf");
    let spec = format!("static:{}bn,100.64.9.7/24,100.64.9.1,9.9.9.9", lab.tag);
    let out = Command::new("ip")
        .args(["netns", "exec", &node, INIT, "net", "--json", "--config", &spec, "--resolv"])
        .arg(&resolv)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let addrs = Command::new("ip").args(["-n", &node, "-4", "-o", "addr"]).output().unwrap();
    assert!(String::from_utf8_lossy(&addrs.stdout).contains("100.64.9.7/24"));
    let routes = Command::new("ip").args(["-n", &node, "route", "show", "default"]).output().unwrap();
    assert!(String::from_utf8_lossy(&routes.stdout).contains("via 100.64.9.1"));
    assert_eq!(std::fs::read_to_string(&resolv).unwrap(), "nameserver 9.9.9.9\n");
}

/// Every rtnetlink request PID 1 writes, against the kernel, in a network namespace of this test
/// thread's own (a thread's namespace is its own; `ip` children inherit it).
#[test]
fn every_netlink_request_does_what_it_says() {
    use flint_init::net::netlink::Netlink;
    std::thread::spawn(|| {
        // SAFETY: unshare(2) takes no pointers; it moves only this thread to a new namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "{}", std::io::Error::last_os_error());
        sh("ip link add nlbr type bridge && ip link add nlv0 type veth peer name nlv1");
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        let index = |name: &str| links.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("{name} listed")).index;
        let (bridge, v0, v1) = (index("nlbr"), index("nlv0"), index("nlv1"));
        let veth = links.iter().find(|l| l.name == "nlv0").unwrap();
        assert!(veth.ethernet && !veth.up && veth.mac.len() == 6, "{veth:?}");
        let shown =
            |what: &str| String::from_utf8(Command::new("ip").args(what.split(' ')).output().unwrap().stdout).unwrap();
        assert!(shown("link show nlv0").contains(&hex_mac(&veth.mac)));

        nl.set_controller(v1, bridge).unwrap();
        assert!(shown("link show nlv1").contains("master nlbr"));
        for i in [bridge, v0, v1] {
            nl.set_up(i).unwrap();
        }
        assert!(nl.links().unwrap().iter().filter(|l| l.name.starts_with("nl")).all(|l| l.up));
        assert!(nl.links().unwrap().iter().find(|l| l.index == v0).unwrap().carrier, "the peer is up");

        nl.add_address(v0, "100.64.7.2".parse().unwrap(), 24).unwrap();
        nl.add_address(v0, "fd00:7::2".parse().unwrap(), 64).unwrap();
        assert!(shown("-4 addr show nlv0").contains("inet 100.64.7.2/24 brd 100.64.7.255"));
        let addresses = nl.addresses(v0).unwrap();
        assert!(
            addresses.contains(&"100.64.7.2".parse().unwrap()) && addresses.contains(&"fd00:7::2".parse().unwrap())
        );
        nl.set_default_route(v0, "100.64.7.1".parse().unwrap(), 100, true).unwrap();
        assert!(shown("route show default").contains("default via 100.64.7.1 dev nlv0 proto dhcp metric 100"));
        // Replacing, not adding a second: the same request again is fine.
        nl.set_default_route(v0, "100.64.7.1".parse().unwrap(), 100, false).unwrap();
        let err = nl.set_up(99_999).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "the kernel's error comes back as it was");
    })
    .join()
    .unwrap();
}

fn hex_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
