//! SNTP against a real NTP server: Debian's chronyd (unpacked by `tests/lib/chronyd.sh`, path in
//! FLINT_CHRONYD), serving the host's own clock on a loopback port without touching it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../flist/tests/util/servers.rs"]
#[allow(dead_code)]
mod servers;

#[test]
#[ignore = "needs chronyd: make test runs it with FLINT_CHRONYD"]
fn sntp_reads_a_real_ntp_server() {
    let chronyd = std::env::var("FLINT_CHRONYD").expect("FLINT_CHRONYD: run through make test");
    let dir = tempfile::tempdir().unwrap();
    let port = servers::free_port();
    let conf = dir.path().join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\npidfile {}/chronyd.pid\n",
            dir.path().display()
        ),
    )
    .unwrap();
    // -x: never adjust the host's clock; -d: foreground; -u root: no privilege drop to a user
    // this machine does not have.
    let mut server = Command::new(&chronyd)
        .args(["-x", "-d", "-u", "root", "-f"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server_addr = format!("127.0.0.1:{port}");
    let until = Instant::now() + Duration::from_secs(20);
    let sample = loop {
        match flint_init::time::query(&server_addr, Duration::from_millis(500)) {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < until, "no SNTP answer: {e:#?}"),
        }
    };
    let _ = server.kill();
    let _ = server.wait();
    // The server serves this very clock: the offset is the measurement error only.
    assert!(sample.offset.abs() < 0.5, "offset {} s against the same clock", sample.offset);
    assert!(sample.delay < Duration::from_secs(1));
    assert_eq!(sample.stratum, 8, "the stratum chronyd was configured with");
}
