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
    python_server(&script, port, "a slow python3 http.server")
}

/// Runs a Python script that serves on `port`, once it listens.
fn python_server(script: &str, port: u16, what: &str) -> Server {
    let mut child = Command::new("python3")
        .args(["-u", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 must be installed");
    wait_ready(port, &mut child, what);
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

/// rfs's fl-server block API over a flat store: `GET /api/v1/block/<hex>` answers `dir/<hex>`.
pub fn fl_server(dir: &Path) -> Server {
    let port = free_port();
    let script = format!(
        "import http.server, os\n\
         class Blocks(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       prefix = '/api/v1/block/'\n\
         \x20       name = self.path[len(prefix):] if self.path.startswith(prefix) else ''\n\
         \x20       path = os.path.join({dir:?}, name)\n\
         \x20       if not name or '/' in name or not os.path.isfile(path):\n\
         \x20           self.send_error(404)\n\
         \x20           return\n\
         \x20       body = open(path, 'rb').read()\n\
         \x20       self.send_response(200)\n\
         \x20       self.send_header('Content-Length', str(len(body)))\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(body)\n\
         \x20   def log_message(self, *a):\n\
         \x20       pass\n\
         http.server.ThreadingHTTPServer(('127.0.0.1', {port}), Blocks).serve_forever()\n",
        dir = dir.to_str().unwrap(),
    );
    python_server(&script, port, "an fl-server block API")
}

/// A Redis server on 127.0.0.1 that keeps nothing on disk (Debian's redis-server).
pub fn redis_server() -> Server {
    let port = free_port();
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (make deps)");
    wait_ready(port, &mut child, "redis-server");
    Server { child, port }
}
