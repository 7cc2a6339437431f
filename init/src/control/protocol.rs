//! What the control socket speaks, typed once: the requests of each owner (the supervisor's
//! [`ServiceRequest`]s, the node's [`NodeRequest`]s, the power keeper's [`PowerRequest`]s), which are also `init ctl`'s commands, and
//! the answers each gives. On the wire a request is one JSON object tagged by `cmd`, an answer
//! one JSON object or array; a refusal is `{"error": "..."}`.

use std::path::PathBuf;

use flint_manifest::vm::Network;
use flint_manifest::RestartPolicy;
use serde::{Deserialize, Serialize};

/// The requests the supervisor answers: services (and VMs, which are services).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum ServiceRequest {
    /// Every service and its state.
    List,
    /// One service in detail; without a name, the node: its id, manifest versions, health.
    Status {
        /// The service.
        name: Option<String>,
    },
    /// Start a stopped service.
    Start {
        /// The service.
        name: String,
    },
    /// Stop a service; it stays down until started.
    Stop {
        /// The service.
        name: String,
    },
    /// Stop a service and start it again.
    Restart {
        /// The service.
        name: String,
    },
    /// Send a signal (e.g. HUP) to a service's process group.
    Kill {
        /// The service.
        name: String,
        /// The signal, with or without `SIG`.
        signal: String,
    },
    /// Recent output of one service, or of all (`--follow` keeps printing).
    Log {
        /// The service; every one when absent.
        name: Option<String>,
        /// The first line number wanted (the client pages with the answer's `next`).
        #[serde(default)]
        #[arg(skip)]
        since: u64,
    },
    /// Stop every service in reverse dependency order; `init run` then exits, PID 1 powers off.
    Shutdown,
}

impl ServiceRequest {
    /// The service it names, if it names one.
    pub fn service(&self) -> Option<&str> {
        match self {
            ServiceRequest::Start { name }
            | ServiceRequest::Stop { name }
            | ServiceRequest::Restart { name }
            | ServiceRequest::Kill { name, .. } => Some(name),
            ServiceRequest::Log { name, .. } | ServiceRequest::Status { name } => name.as_deref(),
            ServiceRequest::List | ServiceRequest::Shutdown => None,
        }
    }
}

/// The requests the node answers: its manifest and mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum NodeRequest {
    /// Fetch the manifest now and apply it if it is newer.
    Reload,
    /// The manifest in force, and the last attempt to get a newer one.
    Manifest,
    /// The flists in service.
    Mounts,
    /// The node's numbers, in Prometheus's text format.
    Metrics,
}

/// The requests the power keeper answers (at once, whatever the other loops are doing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum PowerRequest {
    /// Stop every service, unmount, sync and reboot (`init run` exits).
    Reboot,
    /// Stop every service, unmount, sync and power off (`init run` exits).
    Poweroff,
}

/// A request, for whichever owner answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Request {
    /// For the supervisor.
    Service(ServiceRequest),
    /// For the node.
    Node(NodeRequest),
    /// For the power keeper.
    Power(PowerRequest),
}

impl Request {
    /// One request line: its `cmd` names the owner (the commands are the owners' own, so no
    /// list is kept twice), then the line is read as that owner's request, so an error names
    /// what was wrong with it.
    pub fn parse(line: &str) -> Result<Request, String> {
        use clap::Subcommand;
        #[derive(Deserialize)]
        struct Tag {
            cmd: String,
        }
        let Tag { cmd } = serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
        let parsed = if PowerRequest::has_subcommand(&cmd) {
            serde_json::from_str(line).map(Request::Power)
        } else if NodeRequest::has_subcommand(&cmd) {
            serde_json::from_str(line).map(Request::Node)
        } else if ServiceRequest::has_subcommand(&cmd) {
            serde_json::from_str(line).map(Request::Service)
        } else {
            return Err(format!("unknown request {cmd:?}"));
        };
        parsed.map_err(|e| format!("bad request {cmd:?}: {e}"))
    }
}

/// A service (or VM) and its state: a row of `list`, the answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    /// Its name.
    pub name: String,
    /// Its phase, one word: `waiting`, `starting`, `testing`, `running`, `backoff`, `stopping`,
    /// `stopped` or `done`.
    pub state: String,
    /// Its process, while it has one.
    pub pid: Option<i32>,
    /// How many times it was started.
    pub starts: u32,
    /// Consecutive failures.
    pub failures: u32,
    /// What it waits for.
    pub after: Vec<String>,
    /// Runs once.
    pub oneshot: bool,
    /// Whether it starts again once it ended.
    pub restart: RestartPolicy,
    /// For a VM, what it is.
    pub vm: Option<VmRow>,
    /// Its capability bounding set, by name (without `CAP_`).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Whether exec can gain it no privileges (`no_new_privs`).
    #[serde(default)]
    pub no_new_privs: bool,
    /// Namespaces of its own (`pid`, `uts`, `ipc`, `net`).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Its cgroup: limits and what it uses.
    #[serde(default)]
    pub cgroup: Option<CgroupRow>,
}

/// A service's cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupRow {
    /// What it uses now, and the kernel's counts.
    #[serde(flatten)]
    pub usage: crate::supervisor::cgroup::Usage,
    /// `memory.max`, bytes.
    pub memory_max: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
    /// Limits the manifest sets that this node cannot enforce, and why.
    pub unenforced: Vec<String>,
}

/// What a VM is, beside its service state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRow {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Its root flist.
    pub root: String,
    /// With a writable layer on top.
    pub writable: bool,
    /// Machine type.
    pub machine: String,
    /// Its network.
    pub network: Network,
    /// Its serial console's socket (`init ctl vm console`).
    pub console: PathBuf,
}

/// A page of output lines (`log`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// The `since` that asks for the lines after these.
    pub next: u64,
}

/// One line a service wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Who wrote it.
    pub service: String,
    /// Its number, increasing across services.
    pub seq: u64,
    /// The line.
    pub line: String,
}

/// A request carried out (start, stop, restart, kill, shutdown, reboot, poweroff).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Always true.
    pub ok: bool,
}

impl Done {
    /// The answer.
    pub const OK: Done = Done { ok: true };
}

/// What a `reload` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// Always true (a failed fetch or a refused manifest is an error).
    pub ok: bool,
    /// A newer manifest was taken.
    pub changed: bool,
    /// The version in force.
    pub version: Option<u64>,
    /// The version being applied, while an update is in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applying: Option<u64>,
    /// Why nothing was fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The manifest in force and the last attempt to get a newer one (`manifest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestState {
    /// Where it is fetched from.
    pub url: String,
    /// The version in force.
    pub version: Option<u64>,
    /// The version being applied.
    pub applying: Option<u64>,
    /// BLAKE3 of the signed bytes in force.
    pub digest: Option<String>,
    /// The host name it set.
    pub hostname: Option<String>,
    /// Its services.
    pub services: Option<Vec<String>>,
    /// Its flists.
    pub flists: Option<Vec<String>>,
    /// When it was last fetched (seconds since 1970).
    pub last_check: Option<u64>,
    /// Why the last fetch or apply failed.
    pub last_error: Option<String>,
    /// When the manifest in force expires (RFC 3339).
    #[serde(default)]
    pub expires: Option<String>,
    /// Why the node is stale (its manifest expired, no fresh one served), if it is.
    #[serde(default)]
    pub stale: Option<String>,
    /// The last health verdict or rollback.
    #[serde(default)]
    pub health: Option<String>,
    /// The open health window's length in seconds, while one is open.
    #[serde(default)]
    pub health_window: Option<u64>,
    /// The version floor: nothing older is taken from the network.
    #[serde(default)]
    pub floor: Option<u64>,
    /// The highest version that failed its health check.
    #[serde(default)]
    pub failed: Option<u64>,
    /// The last good version, which a failed upgrade goes back to.
    #[serde(default)]
    pub good: Option<u64>,
    /// The node's identity.
    #[serde(default)]
    pub identity: Option<String>,
}

/// The node's numbers (`metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Prometheus's text exposition format.
    pub text: String,
}

/// An flist in service (`mounts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRow {
    /// Its name in the manifest.
    pub name: String,
    /// BLAKE3 of the flist file.
    pub digest: String,
    /// Where services see it.
    pub mountpoint: PathBuf,
    /// With a writable layer on top.
    pub writable: bool,
    /// Where it is mounted before it is moved into place.
    pub staging: PathBuf,
    /// Where it was fetched from.
    pub url: String,
    /// What went wrong with it, if anything.
    pub problem: Option<String>,
    /// Its chunk stores and their health.
    pub stores: Vec<flist::store::StoreHealth>,
}

/// Any answer, as the owners send it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// `list`.
    Services(Vec<ServiceRow>),
    /// `status`.
    Service(Box<ServiceRow>),
    /// `log`.
    Log(LogPage),
    /// Carried out.
    Done(Done),
    /// `reload`.
    Reloaded(Reloaded),
    /// `manifest`.
    Manifest(Box<ManifestState>),
    /// `mounts`.
    Mounts(Vec<MountRow>),
    /// `metrics`.
    Metrics(Metrics),
    /// Refused, and why.
    Refused {
        /// Why.
        error: String,
    },
}

impl Answer {
    /// A refusal.
    pub fn refused(why: impl Into<String>) -> Answer {
        Answer::Refused { error: why.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_request() -> Vec<Request> {
        let name = || "web".to_string();
        let mut all: Vec<Request> = [
            ServiceRequest::List,
            ServiceRequest::Status { name: Some(name()) },
            ServiceRequest::Start { name: name() },
            ServiceRequest::Stop { name: name() },
            ServiceRequest::Restart { name: name() },
            ServiceRequest::Kill { name: name(), signal: "HUP".into() },
            ServiceRequest::Log { name: None, since: 7 },
            ServiceRequest::Log { name: Some(name()), since: 0 },
            ServiceRequest::Shutdown,
        ]
        .into_iter()
        .map(Request::Service)
        .collect();
        all.extend(
            [NodeRequest::Reload, NodeRequest::Manifest, NodeRequest::Mounts, NodeRequest::Metrics].map(Request::Node),
        );
        all.extend([PowerRequest::Reboot, PowerRequest::Poweroff].map(Request::Power));
        all
    }

    #[test]
    fn every_request_reaches_its_owner_as_it_was_sent() {
        for request in every_request() {
            let line = serde_json::to_string(&request).unwrap();
            assert_eq!(Request::parse(&line), Ok(request), "{line}");
        }
        // What older clients and scripts send.
        assert_eq!(
            Request::parse(r#"{"cmd":"log"}"#),
            Ok(Request::Service(ServiceRequest::Log { name: None, since: 0 }))
        );
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let refused = |line: &str, why: &str| {
            let err = Request::parse(line).unwrap_err();
            assert!(err.contains(why), "{line}: {err:?} does not say {why:?}");
        };
        refused(r#"{"cmd":"format-disk"}"#, r#"unknown request "format-disk""#);
        refused(r#"{"cmd":"start"}"#, "missing field `name`");
        refused(r#"{"cmd":"status","name":7}"#, "bad request \"status\"");
        refused(r#"{"cmd":"kill","name":"web","signal":9}"#, "bad request \"kill\"");
        refused(r#"{"name":"web"}"#, "missing field `cmd`");
        refused("", "bad request");
        refused("\u{0}\u{ff}", "bad request");
    }

    #[test]
    fn answers_read_back_as_the_types_the_client_asks_for() {
        let row = ServiceRow {
            name: "web".into(),
            state: "running".into(),
            pid: Some(42),
            starts: 1,
            failures: 0,
            after: vec!["net".into()],
            oneshot: false,
            restart: RestartPolicy::OnFailure,
            vm: None,
            capabilities: vec!["chown".into(), "kill".into()],
            no_new_privs: true,
            namespaces: vec!["pid".into()],
            cgroup: Some(CgroupRow {
                usage: crate::supervisor::cgroup::Usage {
                    path: "/sys/fs/cgroup/flint/web".into(),
                    memory: Some(1 << 20),
                    oom_kills: 2,
                    ..Default::default()
                },
                memory_max: Some(64 << 20),
                pids_max: None,
                unenforced: vec!["io.max (no io controller here)".into()],
            }),
        };
        let wire = |a: &Answer| serde_json::to_string(a).unwrap();
        let list: Vec<ServiceRow> = serde_json::from_str(&wire(&Answer::Services(vec![row.clone()]))).unwrap();
        assert_eq!(list, std::slice::from_ref(&row));
        let one: ServiceRow = serde_json::from_str(&wire(&Answer::Service(Box::new(row)))).unwrap();
        assert_eq!(one.pid, Some(42));
        assert_eq!(wire(&Answer::Done(Done::OK)), r#"{"ok":true}"#);
        assert_eq!(wire(&Answer::refused("no service \"x\"")), r#"{"error":"no service \"x\""}"#);
        let reloaded = Reloaded { ok: true, changed: true, version: Some(3), applying: None, note: None };
        assert_eq!(wire(&Answer::Reloaded(reloaded.clone())), r#"{"ok":true,"changed":true,"version":3}"#);
        let back: Reloaded = serde_json::from_str(&wire(&Answer::Reloaded(reloaded.clone()))).unwrap();
        assert_eq!(back, reloaded);
    }
}
