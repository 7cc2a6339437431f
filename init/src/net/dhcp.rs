//! A DHCPv4 client for one interface: DISCOVER → OFFER → REQUEST → ACK, and renewal.
//!
//! It talks through a UDP socket bound to port 68 on that interface only (`SO_BINDTODEVICE`),
//! which works before the interface has an address: requests go to the limited broadcast address
//! and ask servers to broadcast their answers. Messages are encoded and decoded by `dhcproto`.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};

/// What a server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// Its prefix length (from the subnet mask).
    pub prefix: u8,
    /// The default gateway, if any.
    pub router: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// The server that granted it.
    pub server: Ipv4Addr,
    /// How long it is valid.
    pub valid: Duration,
    /// When to renew (T1).
    pub renew: Duration,
}

impl Lease {
    /// Configured from the command line, not granted by a server: never expires, never renewed.
    pub fn is_static(&self) -> bool {
        self.valid == Duration::MAX
    }
}

/// Why no lease came.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The socket.
    #[error("DHCP socket on {iface}")]
    Socket {
        /// Interface.
        iface: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No answer in time.
    #[error("no DHCP {what} on {iface} after {tries} tries")]
    NoAnswer {
        /// Interface.
        iface: String,
        /// OFFER or ACK.
        what: &'static str,
        /// Requests sent.
        tries: u32,
    },
    /// The server said no.
    #[error("DHCP server {server} refused the lease on {iface} (NAK)")]
    Refused {
        /// Interface.
        iface: String,
        /// Who refused.
        server: Ipv4Addr,
    },
}

/// A DHCP conversation on one interface.
pub struct Client {
    iface: String,
    mac: Vec<u8>,
    socket: UdpSocket,
    xid: u32,
    /// Seconds to wait for the first answer; doubles per retry.
    pub first_wait: Duration,
    /// Requests before giving up (the caller retries with its own backoff).
    pub tries: u32,
}

fn socket(iface: &str) -> io::Result<UdpSocket> {
    use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    // Port 68 on every NIC at once: each socket is tied to its own interface.
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::Broadcast, &true)?;
    setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(iface))?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(0, 0, 0, 0, 68))?;
    Ok(UdpSocket::from(fd))
}

fn prefix_of(mask: Ipv4Addr) -> u8 {
    u32::from(mask).leading_ones() as u8
}

impl Client {
    /// A client for `iface` whose hardware address is `mac` (at most 16 bytes).
    pub fn new(iface: &str, mac: &[u8]) -> Result<Client, DhcpError> {
        let socket = socket(iface).map_err(|source| DhcpError::Socket { iface: iface.into(), source })?;
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let xid = mac.iter().fold(nanos, |h, &b| h.rotate_left(5) ^ u32::from(b));
        let mac = mac.get(..16.min(mac.len())).unwrap_or_default().to_vec();
        Ok(Client { iface: iface.into(), mac, socket, xid, first_wait: Duration::from_secs(1), tries: 4 })
    }

    fn message(&self, kind: MessageType, ciaddr: Ipv4Addr) -> Message {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(self.xid, ciaddr, unspecified, unspecified, unspecified, &self.mac);
        m.set_flags(Flags::default().set_broadcast());
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
        ]));
        m
    }

    /// Sends `request` until an answer of one of `kinds` comes, retransmitting with backoff.
    fn exchange(&self, request: &Message, kinds: &[MessageType], what: &'static str) -> Result<Message, DhcpError> {
        let sock_err = |source| DhcpError::Socket { iface: self.iface.clone(), source };
        let bytes = request.to_vec().map_err(|e| sock_err(io::Error::other(e)))?;
        let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        let mut wait = self.first_wait;
        let mut buf = vec![0u8; 1500];
        for _ in 0..self.tries {
            self.socket.send_to(&bytes, broadcast).map_err(sock_err)?;
            let until = crate::later(Instant::now(), wait);
            while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
                self.socket.set_read_timeout(Some(left)).map_err(sock_err)?;
                let n = match self.socket.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(sock_err(e)),
                };
                let Some(reply) = buf.get(..n).and_then(|b| Message::decode(&mut Decoder::new(b)).ok()) else {
                    continue;
                };
                if reply.xid() != self.xid || reply.opcode() != Opcode::BootReply {
                    continue;
                }
                match reply.opts().get(OptionCode::MessageType) {
                    Some(DhcpOption::MessageType(MessageType::Nak)) => {
                        return Err(DhcpError::Refused { iface: self.iface.clone(), server: server_of(&reply) })
                    }
                    Some(DhcpOption::MessageType(t)) if kinds.contains(t) => return Ok(reply),
                    _ => {}
                }
            }
            wait = wait.saturating_mul(2).min(Duration::from_secs(16));
        }
        Err(DhcpError::NoAnswer { iface: self.iface.clone(), what, tries: self.tries })
    }

    /// The whole handshake: a fresh lease.
    pub fn acquire(&self) -> Result<Lease, DhcpError> {
        let offer =
            self.exchange(&self.message(MessageType::Discover, Ipv4Addr::UNSPECIFIED), &[MessageType::Offer], "OFFER")?;
        let mut request = self.message(MessageType::Request, Ipv4Addr::UNSPECIFIED);
        request.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        request.opts_mut().insert(DhcpOption::ServerIdentifier(server_of(&offer)));
        let ack = self.exchange(&request, &[MessageType::Ack], "ACK")?;
        Ok(lease_of(&ack))
    }

    /// Renews `lease` with the server that granted it.
    pub fn renew(&self, lease: &Lease) -> Result<Lease, DhcpError> {
        let mut request = self.message(MessageType::Request, lease.address);
        request.opts_mut().insert(DhcpOption::ServerIdentifier(lease.server));
        Ok(lease_of(&self.exchange(&request, &[MessageType::Ack], "ACK")?))
    }
}

fn server_of(m: &Message) -> Ipv4Addr {
    match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => m.siaddr(),
    }
}

/// The lease a DHCP message (an ACK) read from the wire grants, if it decodes.
pub fn lease_from_bytes(bytes: &[u8]) -> Option<Lease> {
    Message::decode(&mut Decoder::new(bytes)).ok().map(|m| lease_of(&m))
}

/// The lease an ACK grants.
fn lease_of(ack: &Message) -> Lease {
    let opts = ack.opts();
    let mask = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => *m,
        _ => Ipv4Addr::new(255, 255, 255, 0),
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let valid = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(s)) => Duration::from_secs(u64::from(*s)),
        _ => Duration::from_secs(3600),
    };
    let renew = match opts.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(s)) => Duration::from_secs(u64::from(*s)),
        _ => valid / 2,
    };
    Lease { address: ack.yiaddr(), prefix: prefix_of(mask), router, dns, server: server_of(ack), valid, renew }
}

#[cfg(test)]
mod tests {
    #[test]
    fn masks_become_prefixes() {
        use std::net::Ipv4Addr;
        assert_eq!(super::prefix_of(Ipv4Addr::new(255, 255, 255, 0)), 24);
        assert_eq!(super::prefix_of(Ipv4Addr::new(255, 255, 240, 0)), 20);
        assert_eq!(super::prefix_of(Ipv4Addr::new(0, 0, 0, 0)), 0);
    }
}
