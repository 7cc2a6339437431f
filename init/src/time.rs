//! The time step of boot: one SNTP (RFC 4330) exchange with a server, then the system clock set
//! to its time. It runs before anything uses TLS, since certificates need a sane clock and a
//! machine without a battery-backed clock boots in 1970.

use std::net::{ToSocketAddrs, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from 1900 (NTP's era 0) to 1970.
const NTP_TO_UNIX: u64 = 2_208_988_800;

/// Why no time came.
#[derive(Debug, thiserror::Error)]
pub enum TimeError {
    /// Network.
    #[error("SNTP with {server}")]
    Io {
        /// The server.
        server: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not usable.
    #[error("SNTP with {server}: {why}")]
    Bad {
        /// The server.
        server: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// What one exchange measured.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Server time minus local time, in seconds.
    pub offset: f64,
    /// Round trip, network only.
    pub delay: Duration,
    /// The server's stratum.
    pub stratum: u8,
}

fn ntp_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() + NTP_TO_UNIX as f64
}

fn timestamp(bytes: &[u8; 48], at: usize) -> f64 {
    let word = |i: usize| {
        let b = [bytes.get(i), bytes.get(i + 1), bytes.get(i + 2), bytes.get(i + 3)];
        let b = b.map(|x| x.copied().unwrap_or(0));
        f64::from(u32::from_be_bytes(b))
    };
    word(at) + word(at + 4) / 4_294_967_296.0
}

/// Parses a server's answer to a request sent at `t1` (NTP seconds) and received at `t4`.
pub fn parse_reply(reply: &[u8; 48], t1: f64, t4: f64) -> Result<Sample, &'static str> {
    let mode = reply[0] & 0x7;
    let leap = reply[0] >> 6;
    let stratum = reply[1];
    if mode != 4 {
        return Err("not a server reply");
    }
    if leap == 3 || stratum == 0 || stratum > 15 {
        return Err("the server is not synchronized");
    }
    let (t2, t3) = (timestamp(reply, 32), timestamp(reply, 40));
    if t3 == 0.0 {
        return Err("no transmit time");
    }
    let offset = ((t2 - t1) + (t3 - t4)) / 2.0;
    let delay = ((t4 - t1) - (t3 - t2)).max(0.0);
    Ok(Sample { offset, delay: Duration::from_secs_f64(delay), stratum })
}

/// One SNTP exchange with `server` (`host` or `host:port`, port 123 by default).
pub fn query(server: &str, timeout: Duration) -> Result<Sample, TimeError> {
    let io = |source| TimeError::Io { server: server.to_string(), source };
    let addr = if server.contains(':') { server.to_string() } else { format!("{server}:123") };
    let target = addr
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| TimeError::Bad { server: server.to_string(), why: "no address" })?;
    let socket = UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).map_err(io)?;
    socket.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut request = [0u8; 48];
    request[0] = (4 << 3) | 3; // version 4, client
    let t1 = ntp_seconds(SystemTime::now());
    // The transmit time comes back as the originate time: it ties the answer to this request.
    let secs = t1 as u64;
    let frac = ((t1 - secs as f64) * 4_294_967_296.0) as u32;
    request[40..44].copy_from_slice(&(secs as u32).to_be_bytes());
    request[44..48].copy_from_slice(&frac.to_be_bytes());
    socket.send_to(&request, target).map_err(io)?;
    let mut reply = [0u8; 48];
    loop {
        let (n, from) = socket.recv_from(&mut reply).map_err(io)?;
        if from == target && n == 48 && reply[24..32] == request[40..48] {
            break;
        }
    }
    let t4 = ntp_seconds(SystemTime::now());
    parse_reply(&reply, t1, t4).map_err(|why| TimeError::Bad { server: server.to_string(), why })
}

/// Steps the system clock by `offset` seconds.
pub fn step_clock(offset: f64) -> std::io::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() + offset;
    let spec = nix::sys::time::TimeSpec::new(now.max(0.0) as i64, ((now.fract().max(0.0)) * 1e9) as i64);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, spec).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    fn reply(t2: f64, t3: f64) -> [u8; 48] {
        let mut r = [0u8; 48];
        r[0] = (4 << 3) | 4;
        r[1] = 2;
        for (at, t) in [(32, t2), (40, t3)] {
            r[at..at + 4].copy_from_slice(&(t as u32).to_be_bytes());
            r[at + 4..at + 8].copy_from_slice(&(((t.fract()) * 4_294_967_296.0) as u32).to_be_bytes());
        }
        r
    }

    #[test]
    fn offset_and_delay_from_the_four_timestamps() {
        // The server is 100 s ahead; 0.2 s each way, 0.1 s inside the server.
        let t1 = 3_900_000_000.0;
        let s = parse_reply(&reply(t1 + 100.2, t1 + 100.3), t1, t1 + 0.5).unwrap_or_else(|e| panic!("{e}"));
        assert!((s.offset - 100.0).abs() < 1e-3, "{}", s.offset);
        assert!((s.delay.as_secs_f64() - 0.4).abs() < 1e-3);
        let mut unsynced = reply(t1, t1);
        unsynced[1] = 0;
        assert!(parse_reply(&unsynced, t1, t1).is_err());
        let mut client = reply(t1, t1);
        client[0] = (4 << 3) | 3;
        assert!(parse_reply(&client, t1, t1).is_err());
    }
}
