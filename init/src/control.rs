//! The control socket: one JSON request per line, one JSON answer per line. The server hands
//! each request to its owner, the supervisor loop (services) or the node loop (manifest, mounts,
//! power), and writes back its answer; `init ctl` is the client.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use crossbeam_channel::Sender;
use serde_json::Value;

use crate::supervisor::{Call, Request};

/// Where init listens (PID 1, and `init run` and `init ctl` by default).
pub const SOCKET: &str = "/run/flint/init.sock";

/// Longest a request waits for the loop.
/// (A reload waits for changed services to stop and new flists to mount.)
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// Where requests go.
#[derive(Clone)]
pub struct Owners {
    /// Service requests.
    pub services: Sender<Call>,
    /// Node requests ([`Request::for_node`]).
    pub node: Sender<Call>,
}

/// Listens on `path` (replacing a stale socket) and forwards requests to their owners.
pub fn serve(path: &Path, calls: Owners) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new().name("control".into()).spawn(move || {
        crate::guard::guard("control", || accept(&listener, &calls));
    })?;
    Ok(())
}

/// Answers each connection on a thread of its own, forever.
fn accept(listener: &UnixListener, calls: &Owners) {
    for conn in listener.incoming().flatten() {
        flist::faults::hit("init", "control");
        let calls = calls.clone();
        let spawned = std::thread::Builder::new().name("control-conn".into()).spawn(move || {
            if let Err(e) = handle(conn, &calls) {
                tracing::debug!("control connection: {e}");
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("control connection dropped: {e}");
        }
    }
}

fn handle(conn: UnixStream, owners: &Owners) -> io::Result<()> {
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut writer = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                let owner = if request.for_node() { &owners.node } else { &owners.services };
                owner.send((request, tx)).map_err(|_| io::Error::other("nobody answers requests any more"))?;
                rx.recv_timeout(ANSWER_TIMEOUT).unwrap_or_else(|_| serde_json::json!({"error": "no answer"}))
            }
            Err(e) => serde_json::json!({"error": format!("bad request: {e}")}),
        };
        writeln!(writer, "{answer}")?;
    }
    Ok(())
}

/// Sends one request and returns the answer.
pub fn call(path: &Path, request: &Request) -> io::Result<Value> {
    let mut conn = UnixStream::connect(path)?;
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    writeln!(conn, "{}", serde_json::to_string(request)?)?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}
