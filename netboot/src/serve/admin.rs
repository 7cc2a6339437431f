//! The admin side, on a listener of its own (`--admin`, loopback by default), apart from what
//! nodes use:
//!
//! - the dashboard, HTML without JavaScript ([`super::dashboard`]): `/`, `/nodes/ID`,
//!   `/rollouts/ID`, `/audit`;
//! - the admin API, JSON, only with `Authorization: Bearer TOKEN` (the token is made at first
//!   start in `STATE/admin.token`, mode 0600; `netboot nodes|rollout` read it there):
//!   - `GET /api/nodes`, `GET /api/nodes/ID`; `POST /api/nodes/ID/accept|reject|forget`,
//!     `POST /api/nodes/ID/replace` with `{"new": "NEW-ID"}`;
//!   - `GET /api/rollouts`, `GET /api/rollouts/ID`, `POST /api/rollouts` (a
//!     [`super::rollout::Request`]), `POST /api/rollouts/ID/pause|resume|abort`,
//!     `GET /api/rollouts/ID/previous` (the manifest N-1 served, for `rollout revert`);
//!   - `GET /api/audit?limit=N`.
//!
//! Every action is written to the audit log, with who did it (the token's holder, from which
//! address).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::db::AuditEntry;
use super::fleet::{self, Action};
use super::profiles::Profiles;
use super::status::{NodeRecord, Standing};
use super::{text, typed, Body, Server};

/// The token file's name in the state directory.
pub const TOKEN_FILE: &str = "admin.token";
/// Where the admin listener's URL is written, for the commands on the same machine.
pub const URL_FILE: &str = "admin.url";
/// Largest admin request body (a rollout carries a manifest).
const BODY_MAX: usize = 2 << 20;

/// The admin token in `state`, made (random, mode 0600) if there is none.
pub fn token(state: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let path = state.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 32 => return Ok(t.trim().to_string()),
        Ok(_) => anyhow::bail!("{}: too short to be a token (32 characters at least)", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    }
    let mut seed = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed).context("reading /dev/urandom")?;
    let t = hex::encode(seed);
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{t}")?;
    Ok(t)
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    typed(status, "application/json", format!("{value:#}\n"))
}

fn error(status: StatusCode, why: impl std::fmt::Display) -> Response<Body> {
    json_response(status, &json!({ "error": why.to_string() }))
}

/// A node as the API and the dashboard show it.
pub fn node_view(id: &str, r: &NodeRecord, profiles: Option<&Profiles>) -> serde_json::Value {
    json!({
        "id": id,
        "signed": r.node.is_some(),
        "enrollment": r.node.as_ref().map(|_| r.standing(profiles).name()),
        "state": state_of(r, profiles),
        "version": super::metrics::version(r),
        "mac": r.mac,
        "address": r.address,
        "groups": profiles.map(|p| p.groups_of(id, r.mac.as_deref())).unwrap_or_default(),
        "public_key": r.public_key,
        "boot": r.boot,
        "first_seen": r.first_seen,
        "last_seen": r.last_seen,
        "log_lines": r.log_lines,
        "replaced": r.replaced,
        "refused": r.refused,
        "last_refusal": r.last_refusal,
        "stages": r.stages,
    })
}

/// The state shown for a node: its enrollment when not accepted (a pending node is never shown
/// healthy), else its reports' ([`super::metrics::state`]).
pub fn state_of(r: &NodeRecord, profiles: Option<&Profiles>) -> &'static str {
    match r.node.as_ref().map(|_| r.standing(profiles)) {
        Some(Standing::Pending) => "pending",
        Some(Standing::Rejected) => "rejected",
        _ => super::metrics::state(r),
    }
}

/// A rollout as the API shows it: the document, and each started node's standing.
pub fn rollout_view(r: &super::rollout::Rollout, nodes: &BTreeMap<String, NodeRecord>) -> serde_json::Value {
    let standing: BTreeMap<String, String> = r
        .standing(nodes)
        .into_iter()
        .map(|(n, v)| {
            let v = match v {
                super::rollout::Verdict::Healthy => "healthy".to_string(),
                super::rollout::Verdict::Failed(why) => format!("failed: {why}"),
                super::rollout::Verdict::Waiting => "waiting".to_string(),
            };
            (n, v)
        })
        .collect();
    let mut doc = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = doc.as_object_mut() {
        o.remove("manifest");
        o.insert("state".into(), r.state.name().into());
        o.insert("current_wave".into(), r.current().map(|w| w + 1).into());
        o.insert("standing".into(), serde_json::to_value(standing).unwrap_or_default());
    }
    doc
}

impl Server {
    /// Serves one request on the admin listener.
    pub(super) async fn admin(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = std::time::Instant::now();
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let response = if path.starts_with("/api/") {
            if self.authorized(&req) {
                self.api(req, &format!("admin from {}", peer.ip())).await
            } else {
                error(StatusCode::UNAUTHORIZED, "the admin API takes `Authorization: Bearer TOKEN` (STATE/admin.token)")
            }
        } else if method == Method::GET || method == Method::HEAD {
            self.dashboard_page(&req, &path).await
        } else {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        };
        tracing::info!(
            target: "access",
            "admin {} \"{method} {}\" {} {:.1}ms",
            peer.ip(),
            super::req_line(&path),
            response.status().as_u16(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        response
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Hashes compare in constant time.
        blake3::hash(given.trim().as_bytes()) == blake3::hash(self.admin_token.as_bytes())
    }

    async fn api(&self, req: Request<Incoming>, who: &str) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().trim_start_matches("/api/").trim_end_matches('/').to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let body = match http_body_util::Limited::new(req.into_body(), BODY_MAX).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, e),
        };
        // Another server on the same database may have changed what is asked about.
        if let Err(e) = self.refresh_shared() {
            return error(StatusCode::SERVICE_UNAVAILABLE, e);
        }
        let profiles = self.profiles();
        let profiles = profiles.as_ref().as_ref().ok();
        let words: Vec<&str> = path.split('/').collect();
        match (&method, words.as_slice()) {
            (&Method::GET, ["nodes"]) => {
                let nodes = self.registry().nodes();
                let list: Vec<_> = nodes
                    .iter()
                    .filter(|(k, _)| !k.starts_with("refused "))
                    .map(|(id, r)| node_view(id, r, profiles))
                    .collect();
                json_response(StatusCode::OK, &json!(list))
            }
            (&Method::GET, ["nodes", id]) => match self.registry().node(id) {
                Some(r) => json_response(StatusCode::OK, &node_view(id, r, profiles)),
                None => error(StatusCode::NOT_FOUND, format!("no node {id}")),
            },
            (&Method::POST, ["nodes", id, action]) => self.node_action(id, action, &body, who),
            (&Method::GET, ["rollouts"]) => {
                let nodes = self.registry().nodes();
                let all: Vec<_> = self.rollouts().all().iter().map(|r| rollout_view(r, &nodes)).collect();
                json_response(StatusCode::OK, &json!(all))
            }
            (&Method::GET, ["rollouts", id]) => {
                let nodes = self.registry().nodes();
                match id.parse().ok().and_then(|id| self.rollouts().get(id).cloned()) {
                    Some(r) => json_response(StatusCode::OK, &rollout_view(&r, &nodes)),
                    None => error(StatusCode::NOT_FOUND, format!("no rollout {id}")),
                }
            }
            (&Method::GET, ["rollouts", id, "previous"]) => self.previous(id),
            (&Method::POST, ["rollouts"]) => self.start_rollout(&body, who, profiles),
            (&Method::POST, ["rollouts", id, action]) => {
                let (Some(id), Some(action)) = (id.parse().ok(), Action::parse(action)) else {
                    return error(StatusCode::NOT_FOUND, "POST /api/rollouts/ID/pause|resume|abort");
                };
                let nodes = self.registry().nodes();
                let acted = self.rollouts().act(id, action, who, &nodes);
                match acted {
                    Ok(r) => json_response(StatusCode::OK, &rollout_view(&r, &nodes)),
                    Err(e) => error(StatusCode::CONFLICT, e),
                }
            }
            (&Method::GET, ["audit"]) => {
                let limit = query.split('&').find_map(|kv| kv.strip_prefix("limit=")?.parse().ok()).unwrap_or(100usize);
                match self.db.audit_log(limit.min(10_000)) {
                    Ok(log) => json_response(StatusCode::OK, &json!(log)),
                    Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
                }
            }
            _ => error(StatusCode::NOT_FOUND, format!("no such admin call: {method} /api/{path}")),
        }
    }

    fn node_action(&self, id: &str, action: &str, body: &[u8], who: &str) -> Response<Body> {
        let mut registry = self.registry();
        let done = match action {
            "accept" => registry.set_standing(id, Standing::Accepted).map(|()| format!("node {id} accepted")),
            "reject" => registry.set_standing(id, Standing::Rejected).map(|()| format!("node {id} rejected")),
            "forget" => registry.forget(id).map(|_| format!("node {id} forgotten")),
            "replace" => {
                let new = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| Some(v.get("new")?.as_str()?.to_string()));
                match new {
                    Some(new) => registry.replace(id, &new).map(|()| format!("node {id} replaced by {new}")),
                    None => Err("replace takes {\"new\": \"NEW-ID\"}".into()),
                }
            }
            _ => return error(StatusCode::NOT_FOUND, "POST /api/nodes/ID/accept|reject|forget|replace"),
        };
        drop(registry);
        match done {
            Ok(said) => {
                let entry = AuditEntry {
                    at: fleet::now(),
                    who: who.into(),
                    action: format!("node {action}"),
                    detail: said.clone(),
                };
                if let Err(e) = self.db.audit(&entry) {
                    tracing::error!("{e}");
                }
                tracing::info!("{who}: {said}");
                json_response(StatusCode::OK, &json!({ "done": said }))
            }
            Err(e) if e.starts_with("no node") => error(StatusCode::NOT_FOUND, e),
            Err(e) if e.starts_with("the state database") => error(StatusCode::SERVICE_UNAVAILABLE, e),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        }
    }

    fn start_rollout(&self, body: &[u8], who: &str, profiles: Option<&Profiles>) -> Response<Body> {
        let req: super::rollout::Request = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("a rollout request: {e}")),
        };
        let nodes = self.registry().nodes();
        let fleet = fleet::fleet(&nodes, profiles);
        let started = self.rollouts().start(&self.root, req, &fleet, self.manifest_key.as_ref(), who);
        match started {
            Ok(r) => {
                tracing::info!("{who}: rollout {}: {}", r.id, r.reason);
                json_response(StatusCode::CREATED, &rollout_view(&r, &nodes))
            }
            Err(e) if e.starts_with("the state database") => error(StatusCode::SERVICE_UNAVAILABLE, e),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        }
    }

    /// The manifest served before rollout `id` (N-1), while it is still what other nodes get.
    fn previous(&self, id: &str) -> Response<Body> {
        let rollouts = self.rollouts();
        let Some(r) = id.parse().ok().and_then(|id| rollouts.get(id)) else {
            return error(StatusCode::NOT_FOUND, format!("no rollout {id}"));
        };
        let (version, bytes) = rollouts.current(&self.root, &r.path);
        match (bytes, version) {
            (Some(b), Some(v)) if Some(v) == r.previous => json_response(
                StatusCode::OK,
                &json!({ "path": r.path, "version": v, "rollout_version": r.version, "manifest": String::from_utf8_lossy(&b) }),
            ),
            (_, v) => error(
                StatusCode::CONFLICT,
                format!(
                    "{} now serves version {}, not {} (the one before rollout {}): nothing to revert to",
                    r.path,
                    v.map_or("none".into(), |v| v.to_string()),
                    r.previous.map_or("none".into(), |v| v.to_string()),
                    r.id
                ),
            ),
        }
    }
}
