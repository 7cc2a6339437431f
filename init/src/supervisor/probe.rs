//! Readiness by port: init itself tries a TCP connection to the service's loopback, in the
//! service's network namespace. Nothing is started for it (a command check costs a process, and
//! under emulation a shell's start alone takes a good part of a second).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

/// How long one try may wait for the handshake. On loopback a listening socket with room in
/// its queue completes it within the connect call, and a closed port refuses at once; only a
/// full queue leaves it pending, and the supervisor must not wait on that.
const HANDSHAKE: Duration = Duration::from_millis(5);

/// Whether a connection to `port` on loopback (IPv4, then IPv6) is accepted.
fn loopback_accepts(port: u16) -> bool {
    [SocketAddr::from((Ipv4Addr::LOCALHOST, port)), SocketAddr::from((Ipv6Addr::LOCALHOST, port))]
        .iter()
        .any(|addr| TcpStream::connect_timeout(addr, HANDSHAKE).is_ok())
}

/// Whether the service whose process is `pid` accepts connections on `port` of its loopback:
/// in its own network namespace when it has one (`own_network`), tried from a thread that
/// joins that namespace, since a socket belongs to the namespace of the thread that makes it.
pub fn port_accepts(port: u16, pid: i32, own_network: bool) -> Result<bool, String> {
    if !own_network {
        return Ok(loopback_accepts(port));
    }
    let netns =
        std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| format!("its network namespace: {e}"))?;
    std::thread::scope(|scope| {
        let tried = std::thread::Builder::new()
            .name(format!("probe-{pid}"))
            .spawn_scoped(scope, || {
                nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("joining its network namespace: {e}"))?;
                Ok(loopback_accepts(port))
            })
            .map_err(|e| format!("no thread to try it from: {e}"))?;
        tried.join().unwrap_or_else(|_| Err("the thread trying it failed".into()))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_listening_port_is_accepted_and_a_closed_one_is_not() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        assert_eq!(port_accepts(port, me, false), Ok(true));
        // Closed: bound (on both loopbacks) but not listening. (A port merely freed can come back
        // as a connection's own source port, and a connection to itself succeeds.)
        let (v4, port) = closed_port_on(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        let v6 = closed_port_on(&SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
        assert_eq!(port_accepts(port, me, false), Ok(false));
        drop((listener, v4, v6));
        // IPv6 only: found on ::1 (where this machine has IPv6).
        if let Ok(v6) = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
            let port = v6.local_addr().unwrap().port();
            assert_eq!(port_accepts(port, me, false), Ok(true));
        }
        // Through this process's own namespace file: the same answer.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(port_accepts(port, me, true), Ok(true));
        assert!(port_accepts(port, i32::MAX, true).is_err(), "no such process");
    }

    /// A TCP socket bound to `addr` that does not listen, and its port; none where the address
    /// cannot be bound (no IPv6).
    fn closed_port_on(addr: &SocketAddr) -> Option<(std::os::fd::OwnedFd, u16)> {
        use nix::sys::socket::{bind, getsockname, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
        use std::os::fd::AsRawFd;
        let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).ok()?;
        bind(fd.as_raw_fd(), &SockaddrStorage::from(*addr)).ok()?;
        let bound: SockaddrStorage = getsockname(fd.as_raw_fd()).ok()?;
        let port = bound.as_sockaddr_in().map(|a| a.port()).or(bound.as_sockaddr_in6().map(|a| a.port()))?;
        Some((fd, port))
    }

    /// A service in a network namespace of its own is reached in it, and only there.
    #[test]
    fn a_port_in_another_network_namespace_is_tried_there() {
        use std::io::BufRead;
        let listen = "import socket,sys,time\ns=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(8)\n\
                      print(s.getsockname()[1], flush=True); time.sleep(60)";
        let mut child = std::process::Command::new("unshare")
            .args(["--net", "sh", "-c", "ip link set lo up && exec python3 -c \"$0\"", listen])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap();
        let pid = child.id() as i32;
        let inside = port_accepts(port, pid, true);
        let outside = port_accepts(port, pid, false);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(inside, Ok(true));
        assert_eq!(outside, Ok(false), "the node's own loopback has no such listener");
    }
}
