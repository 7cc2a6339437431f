//! The few rtnetlink requests the node needs: list links, bring one up, add an address, set a
//! default route, put a VM's tap on a bridge. Synchronous, on one socket, each request
//! acknowledged by the kernel.
//!
//! The messages are written and read here, not with `netlink-packet-route`: that crate decodes
//! every attribute of every link kind the kernel knows, 400 KiB of PID 1's code for the six
//! fields read here. Replies are parsed with bounds checked at every step ([`messages`],
//! [`attributes`]): a short or lying length ends the parse, never a panic.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

// linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h, linux/if.h.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_CARRIER: u16 = 33;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const IFF_UP: u32 = 0x1;
const IFF_LOWER_UP: u32 = 0x1_0000;
const ARPHRD_ETHER: u16 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RTPROT_DHCP: u8 = 16;
const RTN_UNICAST: u8 = 1;
const HEADER_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Kernel index.
    pub index: u32,
    /// Name (`eth0`, `enp1s0`).
    pub name: String,
    /// Hardware address.
    pub mac: Vec<u8>,
    /// Administratively up.
    pub up: bool,
    /// Cable plugged / peer present.
    pub carrier: bool,
    /// Ethernet (not loopback, not a tunnel).
    pub ethernet: bool,
}

/// An rtnetlink socket.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

/// One request being written: the fixed header of its family, then attributes.
struct Request {
    kind: u16,
    flags: u16,
    body: Vec<u8>,
}

impl Request {
    fn new(kind: u16, flags: u16, fixed: &[u8]) -> Request {
        Request { kind, flags, body: fixed.to_vec() }
    }

    fn attribute(mut self, kind: u16, value: &[u8]) -> Request {
        let len = 4 + value.len();
        self.body.extend_from_slice(&(len as u16).to_ne_bytes());
        self.body.extend_from_slice(&kind.to_ne_bytes());
        self.body.extend_from_slice(value);
        self.body.resize(align(self.body.len()), 0);
        self
    }

    fn encode(&self, sequence: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len());
        out.extend_from_slice(&((HEADER_LEN + self.body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&self.kind.to_ne_bytes());
        out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | self.flags).to_ne_bytes());
        out.extend_from_slice(&sequence.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

fn align(n: usize) -> usize {
    n.saturating_add(3) & !3
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// A reply message: its type, sequence number and payload (after the 16-byte header).
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    kind: u16,
    sequence: u32,
    payload: &'a [u8],
}

/// The messages of one datagram; stops at the first one whose length does not fit.
pub fn messages(datagram: &[u8]) -> impl Iterator<Item = Message<'_>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        let len = u32_at(rest, 0)? as usize;
        let message = rest.get(..len).filter(|_| len >= HEADER_LEN)?;
        let parsed =
            Message { kind: u16_at(message, 4)?, sequence: u32_at(message, 8)?, payload: message.get(HEADER_LEN..)? };
        rest = rest.get(align(len)..).unwrap_or_default();
        Some(parsed)
    })
}

/// The attributes (type, value) after a message's fixed part; stops at the first that does not fit.
pub fn attributes(mut rest: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(rest, 0)?);
        let value = rest.get(4..len)?;
        // The top two bits flag nesting and byte order, not the type.
        let kind = u16_at(rest, 2)? & 0x3fff;
        rest = rest.get(align(len)..).unwrap_or_default();
        Some((kind, value))
    })
}

/// A link from an RTM_NEWLINK payload.
fn parse_link(payload: &[u8]) -> Option<Link> {
    let flags = u32_at(payload, 8)?;
    let mut link = Link {
        index: u32_at(payload, 4)?,
        name: String::new(),
        mac: Vec::new(),
        up: flags & IFF_UP != 0,
        carrier: flags & IFF_LOWER_UP != 0,
        ethernet: u16_at(payload, 2)? == ARPHRD_ETHER,
    };
    for (kind, value) in attributes(payload.get(IFINFOMSG_LEN..)?) {
        match kind {
            IFLA_IFNAME => {
                link.name = String::from_utf8_lossy(value.split(|&b| b == 0).next().unwrap_or_default()).into()
            }
            IFLA_ADDRESS => link.mac = value.to_vec(),
            IFLA_CARRIER => link.carrier = value.first().is_some_and(|&c| c != 0),
            _ => {}
        }
    }
    Some(link)
}

/// The interface index and addresses of an RTM_NEWADDR payload.
fn parse_addresses(payload: &[u8]) -> Option<(u32, Vec<IpAddr>)> {
    let family = *payload.first()?;
    let addresses = attributes(payload.get(IFADDRMSG_LEN..)?)
        .filter(|(kind, _)| *kind == IFA_ADDRESS)
        .filter_map(|(_, value)| match family {
            AF_INET => <[u8; 4]>::try_from(value).ok().map(IpAddr::from),
            AF_INET6 => <[u8; 16]>::try_from(value).ok().map(IpAddr::from),
            _ => None,
        })
        .collect();
    Some((u32_at(payload, 4)?, addresses))
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut m = [0u8; IFINFOMSG_LEN];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

impl Netlink {
    /// Opens a socket in the current network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { socket, sequence: 0 })
    }

    /// Sends one request and collects the payloads of its answers of type `answer` until the ACK
    /// or the end of the dump.
    fn request(&mut self, request: Request, answer: u16) -> io::Result<Vec<Vec<u8>>> {
        self.sequence = self.sequence.wrapping_add(1);
        self.socket.send(&request.encode(self.sequence), 0)?;
        let mut answers = Vec::new();
        let mut recv = vec![0u8; 64 << 10];
        loop {
            let n = self.socket.recv(&mut &mut recv[..], 0)?;
            for m in messages(recv.get(..n).unwrap_or_default()).filter(|m| m.sequence == self.sequence) {
                match m.kind {
                    NLMSG_DONE => return Ok(answers),
                    NLMSG_ERROR => {
                        let code = u32_at(m.payload, 0).map_or(-libc::EPROTO, |c| c as i32);
                        return if code == 0 { Ok(answers) } else { Err(io::Error::from_raw_os_error(-code)) };
                    }
                    kind if kind == answer => answers.push(m.payload.to_vec()),
                    _ => {}
                }
            }
        }
    }

    /// Every interface.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let answers = self.request(Request::new(RTM_GETLINK, NLM_F_DUMP, &ifinfomsg(0, 0, 0)), RTM_NEWLINK)?;
        Ok(answers.iter().filter_map(|p| parse_link(p)).collect())
    }

    /// Brings an interface up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        self.request(Request::new(RTM_SETLINK, 0, &ifinfomsg(index, IFF_UP, IFF_UP)), 0).map(drop)
    }

    /// Makes an interface a port of a bridge (its controller).
    pub fn set_controller(&mut self, index: u32, controller: u32) -> io::Result<()> {
        let request =
            Request::new(RTM_SETLINK, 0, &ifinfomsg(index, 0, 0)).attribute(IFLA_MASTER, &controller.to_ne_bytes());
        self.request(request, 0).map(drop)
    }

    /// Adds (or refreshes) an address with its prefix length.
    pub fn add_address(&mut self, index: u32, address: IpAddr, prefix: u8) -> io::Result<()> {
        let family = if address.is_ipv4() { AF_INET } else { AF_INET6 };
        let mut fixed = [family, prefix, 0, 0, 0, 0, 0, 0];
        fixed[4..8].copy_from_slice(&index.to_ne_bytes());
        let mut request = Request::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &fixed)
            .attribute(IFA_LOCAL, &ip_bytes(address))
            .attribute(IFA_ADDRESS, &ip_bytes(address));
        if let IpAddr::V4(v4) = address {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            request = request.attribute(IFA_BROADCAST, &Ipv4Addr::from(u32::from(v4) | host_bits).octets());
        }
        self.request(request, 0).map(drop)
    }

    /// Sets a default IPv4 route through `gateway` on `index`; lower `metric` is preferred.
    pub fn set_default_route(&mut self, index: u32, gateway: Ipv4Addr, metric: u32, dhcp: bool) -> io::Result<()> {
        // rtmsg: family, dst_len, src_len, tos, table, protocol, scope (universe), type, u32 flags.
        let protocol = if dhcp { RTPROT_DHCP } else { RTPROT_STATIC };
        let fixed = [AF_INET, 0, 0, 0, RT_TABLE_MAIN, protocol, 0, RTN_UNICAST, 0, 0, 0, 0];
        let request = Request::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &fixed)
            .attribute(RTA_GATEWAY, &gateway.octets())
            .attribute(RTA_OIF, &index.to_ne_bytes())
            .attribute(RTA_PRIORITY, &metric.to_ne_bytes());
        self.request(request, 0).map(drop)
    }

    /// The global addresses of an interface (e.g. the ones SLAAC configured).
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<IpAddr>> {
        let answers = self.request(Request::new(RTM_GETADDR, NLM_F_DUMP, &[0; IFADDRMSG_LEN]), RTM_NEWADDR)?;
        Ok(answers
            .iter()
            .filter_map(|p| parse_addresses(p))
            .filter(|(of, _)| *of == index)
            .flat_map(|(_, addresses)| addresses)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_request_reads_back_as_it_was_written() {
        let request = Request::new(
            RTM_NEWROUTE,
            NLM_F_CREATE,
            &[AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_DHCP, 0, RTN_UNICAST, 0, 0, 0, 0],
        )
        .attribute(RTA_GATEWAY, &[10, 0, 2, 2])
        .attribute(RTA_OIF, &7u32.to_ne_bytes())
        .attribute(IFLA_IFNAME, b"eth0\0");
        let bytes = request.encode(42);
        let all: Vec<Message> = messages(&bytes).collect();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].kind, all[0].sequence), (RTM_NEWROUTE, 42));
        let attrs: Vec<(u16, &[u8])> = attributes(&all[0].payload[12..]).collect();
        assert_eq!(
            attrs,
            vec![
                (RTA_GATEWAY, &[10u8, 0, 2, 2][..]),
                (RTA_OIF, &7u32.to_ne_bytes()[..]),
                (IFLA_IFNAME, &b"eth0\0"[..])
            ]
        );
    }

    #[test]
    fn a_link_is_read_from_its_message() {
        let payload = Request::new(0, 0, &{
            let mut m = ifinfomsg(3, IFF_UP, 0);
            m[2] = ARPHRD_ETHER as u8;
            m
        })
        .attribute(IFLA_IFNAME, b"enp1s0\0")
        .attribute(IFLA_ADDRESS, &[0x52, 0x54, 0, 0x12, 0x34, 0x56])
        .attribute(IFLA_CARRIER, &[1])
        .body;
        let link = parse_link(&payload).unwrap();
        assert_eq!(
            link,
            Link {
                index: 3,
                name: "enp1s0".into(),
                mac: vec![0x52, 0x54, 0, 0x12, 0x34, 0x56],
                up: true,
                carrier: true,
                ethernet: true
            }
        );
    }

    #[test]
    fn the_kernel_answers_a_dump_of_this_namespace() {
        // Loopback is in every namespace, and reading links needs no privilege.
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo listed");
        assert!(!lo.ethernet);
        assert!(nl.addresses(lo.index).unwrap().iter().all(|ip| ip.is_loopback()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        /// Any bytes at all parse without a panic, and nothing read lies outside them.
        #[test]
        fn hostile_replies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for m in messages(&bytes) {
                prop_assert!(m.payload.len() <= bytes.len());
                let _ = parse_link(m.payload);
                let _ = parse_addresses(m.payload);
                for (_, value) in attributes(m.payload) {
                    prop_assert!(value.len() <= m.payload.len());
                }
            }
        }
    }
}
