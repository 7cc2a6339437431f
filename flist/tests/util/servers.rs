//! Real servers started by tests: Python's HTTP server for `http://` stores and s3s-fs for `s3://`.
//! Each is killed when dropped; readiness is a TCP connect, not a sleep.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Stops the server (the port stays the same for a later restart).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_ready(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Serves `dir` over HTTP on 127.0.0.1 at `port`, writing its access log to `log` if given.
pub fn http_server_logged(dir: &Path, port: u16, log: Option<&Path>) -> Server {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    let mut child = Command::new("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("python3 must be installed");
    wait_ready(port, &mut child, "python3 -m http.server");
    Server { child, port }
}

/// Serves `dir` over HTTP on 127.0.0.1 at `port`, each answer `delay_ms` late (a far store).
pub fn http_server_slow(dir: &Path, port: u16, delay_ms: u64) -> Server {
    let script = format!(
        "import functools, http.server, time\n\
         class Slow(http.server.SimpleHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       time.sleep({delay})\n\
         \x20       super().do_GET()\n\
         \x20   def log_message(self, *a):\n\
         \x20       pass\n\
         http.server.ThreadingHTTPServer(('127.0.0.1', {port}), functools.partial(Slow, directory={dir:?})).serve_forever()\n",
        delay = delay_ms as f64 / 1000.0,
        dir = dir.to_str().unwrap(),
    );
    let mut child = Command::new("python3")
        .args(["-u", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 must be installed");
    wait_ready(port, &mut child, "a slow python3 http.server");
    Server { child, port }
}

/// Serves `dir` over HTTP on 127.0.0.1 at `port`.
pub fn http_server_on(dir: &Path, port: u16) -> Server {
    http_server_logged(dir, port, None)
}

pub fn http_server(dir: &Path) -> Server {
    http_server_on(dir, free_port())
}

pub const S3_KEY: &str = "flintkey";
pub const S3_SECRET: &str = "flintsecret123";

/// An S3-compatible server (s3s-fs, from crates.io) keeping buckets under `dir`.
pub fn s3_server(dir: &Path) -> Server {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let bin = std::env::var("S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
    let mut child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", S3_KEY, "--secret-key", S3_SECRET])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin} must be installed (make deps): {e}"));
    wait_ready(port, &mut child, "s3s-fs");
    Server { child, port }
}
