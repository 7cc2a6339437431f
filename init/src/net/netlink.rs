//! The few rtnetlink requests the node needs: list links, bring one up, add an address, set a
//! default route, put a VM's tap on a bridge. Synchronous, on one socket, each request
//! acknowledged by the kernel.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

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

impl Netlink {
    /// Opens a socket in the current network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { socket, sequence: 0 })
    }

    /// Sends one request and collects its answers until the ACK or the end of the dump.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut answers = Vec::new();
        let mut recv = vec![0u8; 64 << 10];
        loop {
            let n = self.socket.recv(&mut &mut recv[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let bytes = recv.get(offset..n).unwrap_or_default();
                let reply: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.sequence {
                    match reply.payload {
                        NetlinkPayload::Done(_) => return Ok(answers),
                        NetlinkPayload::Error(e) if e.code.is_none() => return Ok(answers),
                        NetlinkPayload::Error(e) => return Err(e.to_io()),
                        NetlinkPayload::InnerMessage(m) => answers.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// Every interface.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let answers = self.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .map(|l| {
                let mut link = Link {
                    index: l.header.index,
                    name: String::new(),
                    mac: Vec::new(),
                    up: l.header.flags.contains(LinkFlags::Up),
                    carrier: l.header.flags.contains(LinkFlags::LowerUp),
                    ethernet: l.header.link_layer_type == LinkLayerType::Ether,
                };
                for a in l.attributes {
                    match a {
                        LinkAttribute::IfName(n) => link.name = n,
                        LinkAttribute::Address(m) => link.mac = m,
                        LinkAttribute::Carrier(c) => link.carrier = c != 0,
                        _ => {}
                    }
                }
                link
            })
            .collect())
    }

    /// Brings an interface up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(m), 0).map(drop)
    }

    /// Makes an interface a port of a bridge (its controller).
    pub fn set_controller(&mut self, index: u32, controller: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Controller(controller));
        self.request(RouteNetlinkMessage::SetLink(m), 0).map(drop)
    }

    /// Adds (or refreshes) an address with its prefix length.
    pub fn add_address(&mut self, index: u32, address: IpAddr, prefix: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = if address.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(address));
        m.attributes.push(AddressAttribute::Address(address));
        if let IpAddr::V4(v4) = address {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            m.attributes.push(AddressAttribute::Broadcast(Ipv4Addr::from(u32::from(v4) | host_bits)));
        }
        self.request(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_REPLACE).map(drop)
    }

    /// Sets a default IPv4 route through `gateway` on `index`; lower `metric` is preferred.
    pub fn set_default_route(&mut self, index: u32, gateway: Ipv4Addr, metric: u32, dhcp: bool) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = if dhcp { RouteProtocol::Dhcp } else { RouteProtocol::Static };
        m.header.kind = RouteType::Unicast;
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        m.attributes.push(RouteAttribute::Oif(index));
        m.attributes.push(RouteAttribute::Priority(metric));
        self.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_REPLACE).map(drop)
    }

    /// The global addresses of an interface (e.g. the ones SLAAC configured).
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<IpAddr>> {
        let answers = self.request(RouteNetlinkMessage::GetAddress(AddressMessage::default()), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => Some(a),
                _ => None,
            })
            .flat_map(|a| a.attributes)
            .filter_map(|a| match a {
                AddressAttribute::Address(ip) => Some(ip),
                _ => None,
            })
            .collect())
    }
}
