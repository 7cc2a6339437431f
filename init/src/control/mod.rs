//! The control socket: one JSON request per line, one JSON answer per line ([`protocol`]). The
//! server hands each request to its owner, the supervisor loop (services), the node loop
//! (manifest, mounts) or the power keeper ([`crate::power`]), and writes back its answer; `init ctl` is the client ([`call`]).

pub mod protocol;
pub mod rescue;

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use crossbeam_channel::Sender;
use serde::de::DeserializeOwned;

use protocol::{Answer, NodeRequest, PowerRequest, Request, ServiceRequest};

/// A request for the supervisor and where its answer goes.
pub type ServiceCall = (ServiceRequest, Sender<Answer>);
/// A request for the node and where its answer goes.
pub type NodeCall = (NodeRequest, Sender<Answer>);
/// A request for the power keeper and where its answer goes.
pub type PowerCall = (PowerRequest, Sender<Answer>);

/// Where init listens (PID 1, and `init run` and `init ctl` by default).
pub const SOCKET: &str = "/run/flint/init.sock";

/// Longest a request waits for the loop.
/// (A reload waits for changed services to stop and new flists to mount.)
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// Where requests go.
#[derive(Clone)]
pub struct Owners {
    /// Service requests.
    pub services: Sender<ServiceCall>,
    /// Node requests.
    pub node: Sender<NodeCall>,
    /// Power requests.
    pub power: Sender<PowerCall>,
}

/// Listens on `path` (replacing a stale socket) and forwards requests to their owners.
pub fn serve(path: &Path, calls: Owners) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = listen(path)?;
    std::thread::Builder::new().name("control".into()).spawn(move || {
        crate::guard::guard("control", || accept(&listener, &calls));
    })?;
    Ok(())
}

/// A listening socket at `path`, replacing a stale one. It is bound under another name and moved
/// into place: `bind` and `listen` are two system calls, and a client that found the path between
/// them would be refused.
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    let mut staging = path.as_os_str().to_owned();
    staging.push(format!(".{}.new", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)?;
    if let Err(e) = std::fs::rename(&staging, path) {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok(listener)
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
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sent = match Request::parse(&line) {
            Ok(Request::Service(request)) => owners.services.send((request, tx)).is_ok(),
            Ok(Request::Node(request)) => owners.node.send((request, tx)).is_ok(),
            Ok(Request::Power(request)) => owners.power.send((request, tx)).is_ok(),
            Err(why) => {
                writeln!(writer, "{}", serde_json::to_string(&Answer::refused(why))?)?;
                continue;
            }
        };
        if !sent {
            return Err(io::Error::other("nobody answers requests any more"));
        }
        let answer = rx.recv_timeout(ANSWER_TIMEOUT).unwrap_or_else(|_| Answer::refused("no answer"));
        writeln!(writer, "{}", serde_json::to_string(&answer)?)?;
    }
    Ok(())
}

/// Why a call got no answer of the kind asked for.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The socket could not be reached, or the connection broke.
    #[error("talking to the control socket")]
    Io(#[from] io::Error),
    /// The owner refused the request.
    #[error("{0}")]
    Refused(String),
    /// The answer was not what this request gets (an init of another version?).
    #[error("reading the answer")]
    Answer(#[source] serde_json::Error),
}

/// Sends one request and reads its answer as `T` (the type its owner answers it with).
pub fn call<T: DeserializeOwned>(path: &Path, request: &Request) -> Result<T, CallError> {
    /// No answer has an `error` field but a refusal.
    #[derive(serde::Deserialize)]
    struct Refusal {
        error: String,
    }
    let mut conn = UnixStream::connect(path)?;
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    writeln!(conn, "{}", serde_json::to_string(request).map_err(io::Error::other)?)?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    if let Ok(Refusal { error }) = serde_json::from_str(&line) {
        return Err(CallError::Refused(error));
    }
    serde_json::from_str(&line).map_err(CallError::Answer)
}
