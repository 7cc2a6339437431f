//! `netboot serve`: the HTTP(S) server flint nodes boot from.
//!
//! - `/boot.ipxe` — the script to give as DHCP boot file; it chains to `/ipxe/MAC`.
//! - `/ipxe/MAC` — the node's script: its profile's kernel, initramfs and command line
//!   ([`profiles`]).
//! - `/report` — nodes POST their boot stages here (`flint.report=` on their command line).
//! - `/logs` — nodes POST their log lines and numbers here, signed ([`logs`]); `/logs/NODE-ID`
//!   gives a node's stored lines (`?tail=N`), `/metrics/NODE-ID` its latest numbers.
//! - `/` and `/status.json` — what is served and which node fetched what ([`status`]).
//! - `/metrics` — the fleet and the server in Prometheus text format ([`metrics`]).
//! - anything else — a file under the root ([`files`]): kernels, signed manifests, flists and
//!   the chunk store, with byte ranges and ETags.
//!
//! A node signs its reports and manifest requests with its own key
//! ([`flint_manifest::signed`]): the server checks each signature and refuses forged (403) and
//! replayed (409) requests, knows nodes by their id, and serves a node the manifest under
//! `nodes/NODE-ID/` when there is one there (else the shared one). With `--signed-only`,
//! unsigned reports and manifest requests are refused (401).
//!
//! A node seen for the first time is pending until the operator accepts it (unless
//! `netboot.json` allows its key or says `"enrollment": "open"`, [`profiles`]): it boots and
//! reports, once per [`status::PENDING_EVERY`] at most, but gets no manifest; a rejected node's
//! requests are refused and write nothing. Which manifest an accepted node gets is up to the
//! rollouts ([`fleet`]); the operator drives them, and watches the fleet, on the admin listener
//! ([`admin`], [`dashboard`]).
//!
//! Every request is logged (the access log) with the peer, status, bytes and time taken.

pub mod admin;
pub mod dashboard;
pub mod db;
pub mod files;
pub mod fleet;
pub mod logs;
pub mod metrics;
pub mod profiles;
pub mod rollout;
pub mod sql;
pub mod status;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use flint_manifest::signed::{self, Envelope, Refusal, Replays};
use profiles::Profiles;
use status::Registry;

/// Every response body.
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Largest report body accepted.
const REPORT_MAX: usize = 16 << 10;

/// How to serve.
pub struct ServeOptions {
    /// The directory served.
    pub root: PathBuf,
    /// Addresses and ports (one listener each).
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain and key for HTTPS; plain HTTP without.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Refuse unsigned reports and manifest requests.
    pub signed_only: bool,
    /// Where nodes' logs and numbers are kept.
    pub state: PathBuf,
    /// The admin listener's address and port.
    pub admin: SocketAddr,
    /// A PostgreSQL URL: the state lives there, shared with other servers, instead of SQLite
    /// under `state`.
    pub db: Option<String>,
    /// The public key nodes trust: rollouts' manifests are checked as a node checks them.
    pub manifest_key: Option<flint_manifest::ed25519::VerifyingKey>,
}

/// Most (node, stream) pairs whose last request is remembered against replays.
const REPLAYS_KEPT: usize = 1 << 16;

struct Server {
    root: PathBuf,
    scheme: &'static str,
    signed_only: bool,
    registry: Mutex<Registry>,
    replays: Mutex<Replays>,
    profiles: Mutex<LoadedProfiles>,
    logs: Arc<logs::LogStore>,
    counters: Mutex<metrics::Counters>,
    db: Arc<db::Db>,
    rollouts: Mutex<fleet::Rollouts>,
    manifest_key: Option<flint_manifest::ed25519::VerifyingKey>,
    admin_token: String,
}

/// A signed request's node, as checked.
pub struct Signer {
    /// What it signed.
    pub envelope: Envelope,
    /// Its enrollment (never rejected: those are refused).
    pub standing: status::Standing,
}

/// `netboot.json` as last read, and the size and time of the file it was read from: every
/// request classifies its file by profile, so the file is parsed again only when it changes.
#[derive(Default)]
struct LoadedProfiles {
    stamp: Option<(u64, std::time::SystemTime)>,
    profiles: Option<Arc<Result<Profiles, String>>>,
}

pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    typed(status, "text/plain; charset=utf-8", body.into())
}

fn typed(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Serves until killed.
pub fn run(opts: ServeOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve(opts))
}

async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let root = std::fs::canonicalize(&opts.root).with_context(|| format!("{}", opts.root.display()))?;
    // A broken netboot.json is reported now; it is read again for every boot script.
    Profiles::load(&root).map_err(anyhow::Error::msg)?;
    let acceptor = opts.tls.as_ref().map(|(cert, key)| tls::acceptor(cert, key)).transpose()?;
    let mut listeners = Vec::new();
    for address in &opts.listen {
        listeners
            .push(tokio::net::TcpListener::bind(address).await.with_context(|| format!("listening on {address}"))?);
    }
    let db = Arc::new(
        match &opts.db {
            Some(url) => db::Db::open_postgres(url),
            None => db::Db::open(&opts.state),
        }
        .map_err(anyhow::Error::msg)?,
    );
    let kept = db.load().map_err(anyhow::Error::msg)?;
    let mut replays = Replays::new(REPLAYS_KEPT);
    for (key, stream, boot, seq) in kept.replays {
        replays.restore(key, stream, boot, seq);
    }
    tracing::info!(
        "state in {}: {} nodes known, {} rollouts",
        opts.state.display(),
        kept.nodes.len(),
        kept.rollouts.len()
    );
    std::fs::create_dir_all(&opts.state).with_context(|| format!("{}", opts.state.display()))?;
    let admin_token = admin::token(&opts.state)?;
    let admin_listener = tokio::net::TcpListener::bind(opts.admin)
        .await
        .with_context(|| format!("listening on {} (--admin)", opts.admin))?;
    let server = Arc::new(Server {
        root,
        scheme: if acceptor.is_some() { "https" } else { "http" },
        signed_only: opts.signed_only,
        registry: Mutex::new(Registry::restore(db.clone(), kept.nodes, kept.addresses)),
        rollouts: Mutex::new(fleet::Rollouts::restore(db.clone(), kept.rollouts)),
        db,
        manifest_key: opts.manifest_key,
        admin_token,
        replays: Mutex::new(replays),
        profiles: Mutex::default(),
        logs: Arc::new(
            logs::LogStore::open(&opts.state)
                .with_context(|| format!("the state directory {}", opts.state.display()))?,
        ),
        counters: Mutex::default(),
    });
    // Request counts acknowledge nothing: they are written once a second, not per request.
    // Rollouts step at the same pace.
    let flushing = server.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let server = flushing.clone();
            let flushed = tokio::task::spawn_blocking(move || {
                server.registry().flush()?;
                server.refresh_shared()?;
                server.step_rollouts()
            })
            .await;
            if let Ok(Err(e)) = flushed {
                tracing::error!("{e}");
            }
        }
    });
    let addresses = listeners.iter().map(|l| l.local_addr()).collect::<Result<Vec<_>, _>>()?;
    let admin_address = admin_listener.local_addr()?;
    let admin_url = format!("http://{admin_address}/");
    if let Err(e) = std::fs::write(opts.state.join(admin::URL_FILE), format!("{admin_url}\n")) {
        tracing::warn!("{}: {e}", opts.state.join(admin::URL_FILE).display());
    }
    // On stdout, for scripts that start it on port 0: written once, and a reader that went
    // away (a closed pipe) is not a reason to stop serving.
    let urls: Vec<String> = addresses.iter().map(|a| format!("{}://{a}/", server.scheme)).collect();
    let mut said = format!(
        "serving {} on {}\nadmin on {admin_url} (token in {})\n",
        server.root.display(),
        urls.first().map_or("", String::as_str),
        opts.state.join(admin::TOKEN_FILE).display()
    );
    for url in urls.iter().skip(1) {
        said += &format!("also serving on {url}\n");
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(said.as_bytes()).and_then(|()| out.flush());
    }
    tokio::spawn(accept(admin_listener, server.clone(), None, Side::Admin));
    let mut serving = tokio::task::JoinSet::new();
    for listener in listeners {
        serving.spawn(accept(listener, server.clone(), acceptor.clone(), Side::Nodes));
    }
    // The accept loops never end; one that panicked is the end of the server.
    if let Some(Err(e)) = serving.join_next().await {
        anyhow::bail!("a listener's loop ended: {e}");
    }
    Ok(())
}

/// Which listener a connection came in on.
#[derive(Clone, Copy)]
enum Side {
    /// What nodes use.
    Nodes,
    /// The dashboard and the admin API (plain HTTP: bind it to loopback or a management
    /// network).
    Admin,
}

/// Serves the connections of `listener` until the process ends.
async fn accept(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    side: Side,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait for connections to end.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // hyper writes a response's head and its body apart: with Nagle's algorithm the body of a
        // small answer (a chunk, a manifest) then waits for the client's delayed ACK, ~40 ms.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("{peer}: TCP_NODELAY: {e}");
        }
        let (server, acceptor) = (server.clone(), acceptor.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move {
                    Ok::<_, Infallible>(match side {
                        Side::Nodes => server.handle(req, peer).await,
                        Side::Admin => server.admin(req, peer).await,
                    })
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
            let served = match acceptor {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => http.serve_connection(TokioIo::new(tls), service).await,
                    Err(e) => return tracing::debug!("{peer}: TLS handshake: {e}"),
                },
                None => http.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(e) = served {
                tracing::debug!("{peer}: {e}");
            }
        });
    }
}

impl Server {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        flist::durable::lock(&self.registry)
    }

    fn rollouts(&self) -> MutexGuard<'_, fleet::Rollouts> {
        flist::durable::lock(&self.rollouts)
    }

    /// On a shared database: what the other servers wrote (node records, addresses, the replay
    /// memory, rollouts), so that this one answers as they would.
    fn refresh_shared(&self) -> Result<(), String> {
        if !self.db.shared() {
            return Ok(());
        }
        self.registry().refresh()?;
        let (addresses, replays, rollouts) = self.db.shared_state()?;
        self.registry().learn_addresses(addresses);
        {
            let mut memory = flist::durable::lock(&self.replays);
            for (key, stream, boot, seq) in replays {
                memory.restore(key, stream, boot, seq);
            }
        }
        self.rollouts().learn(rollouts);
        Ok(())
    }

    /// One step of the rollouts under way (see [`fleet::Rollouts::tick`]).
    fn step_rollouts(&self) -> Result<(), String> {
        let profiles = self.profiles();
        let nodes = self.registry().nodes();
        let fleet: std::collections::BTreeSet<String> =
            fleet::fleet(&nodes, profiles.as_ref().as_ref().ok()).into_keys().collect();
        self.rollouts().tick(&nodes, &fleet)
    }

    fn counters(&self) -> MutexGuard<'_, metrics::Counters> {
        flist::durable::lock(&self.counters)
    }

    /// The profiles, read again if `netboot.json` changed (or appeared, or went).
    fn profiles(&self) -> Arc<Result<Profiles, String>> {
        let stamp =
            std::fs::metadata(self.root.join(profiles::CONFIG)).ok().and_then(|m| Some((m.len(), m.modified().ok()?)));
        let mut loaded = flist::durable::lock(&self.profiles);
        match &loaded.profiles {
            Some(p) if loaded.stamp == stamp => p.clone(),
            _ => {
                let fresh = Arc::new(Profiles::load(&self.root));
                *loaded = LoadedProfiles { stamp, profiles: Some(fresh.clone()) };
                fresh
            }
        }
    }

    /// The server's URL as the client reached it (what a node's command line must name).
    fn base_url(&self, req: &Request<Incoming>) -> String {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        format!("{}://{host}", self.scheme)
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let ip = peer.ip().to_string();
        let profiles = self.profiles();
        let profiles = profiles.as_ref();
        let (kind, response) = match (&method, path.as_str()) {
            (&Method::GET | &Method::HEAD, "/") => {
                let served = self.served().await;
                let nodes = self.registry().nodes();
                let page = status::page(&self.root, profiles, &served, &nodes);
                ("page", typed(StatusCode::OK, "text/html; charset=utf-8", page))
            }
            (&Method::GET | &Method::HEAD, "/status.json") => {
                let body = serde_json::json!({
                    "root": self.root,
                    "profiles": profiles.as_ref().ok(),
                    "profiles_error": profiles.as_ref().err(),
                    "served": self.served().await,
                    "nodes": self.registry().nodes(),
                });
                ("page", typed(StatusCode::OK, "application/json", format!("{body:#}\n")))
            }
            (&Method::GET | &Method::HEAD, "/metrics") => {
                let mut page = self.registry().metrics(&self.counters());
                let nodes = self.registry().nodes();
                metrics::rollouts(&mut page, self.rollouts().all(), &nodes);
                ("page", typed(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", page))
            }
            (&Method::GET | &Method::HEAD, "/boot.ipxe") => ("script", text(StatusCode::OK, profiles::CHAIN_SCRIPT)),
            (&Method::GET | &Method::HEAD, p) if p.starts_with("/ipxe/") => {
                ("script", self.node_script(&req, &ip, p.trim_start_matches("/ipxe/"), profiles))
            }
            (&Method::POST, "/report") => ("report", self.report(req, &ip).await),
            (&Method::POST, "/logs") => ("logs", self.logs(req, &ip).await),
            (&Method::GET | &Method::HEAD, p) if p.starts_with("/logs/") || p.starts_with("/metrics/") => {
                ("page", self.node_logs(&req, p))
            }
            (&Method::GET | &Method::HEAD, p) if status::kind_of(p, profiles.as_ref().ok()) == "manifest" => match self
                .signer(&req, b"", &ip)
            {
                Err(refused) => ("manifest", *refused),
                Ok(node) => ("manifest", self.manifest(&req, p, node.as_ref(), method == Method::HEAD, profiles).await),
            },
            (&Method::GET | &Method::HEAD, p) => {
                let kind = status::kind_of(p, profiles.as_ref().ok());
                // A new version's flists go only to the nodes its rollout has reached.
                let asker = self.registry().key_of(&ip);
                let withheld = self.rollouts().withheld(p.trim_start_matches('/'), Some(&asker));
                let served = match withheld {
                    true => None,
                    false => files::serve_under(&self.root, p, req.headers(), method == Method::HEAD).await,
                };
                (kind, served.unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n")))
            }
            _ => ("other", text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")),
        };
        let bytes = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .or_else(|| hyper::body::Body::size_hint(response.body()).exact())
            .unwrap_or(0);
        let bytes = if method == Method::HEAD { 0 } else { bytes };
        self.counters().served(kind, bytes);
        // Someone looking at the status page (or a node's log) is not a node.
        if kind != "page" {
            self.registry().request(&ip, kind, bytes);
        }
        tracing::info!(
            target: "access",
            "{ip} \"{method} {}\" {} {bytes} {:.1}ms",
            req_line(&path),
            response.status().as_u16(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        response
    }

    fn node_script(
        &self,
        req: &Request<Incoming>,
        ip: &str,
        mac: &str,
        profiles: &Result<Profiles, String>,
    ) -> Response<Body> {
        let Some(mac) = profiles::normalize_mac(mac) else {
            return text(StatusCode::BAD_REQUEST, "#!ipxe\necho flint: not a MAC address\nshell\n");
        };
        let profiles = match profiles {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("{e}");
                // iPXE shows the body: the operator sees why at the node's console.
                return text(StatusCode::INTERNAL_SERVER_ERROR, format!("#!ipxe\necho flint: {e}\nsleep 30\nreboot\n"));
            }
        };
        let Some((name, profile)) = profiles.for_mac(&mac) else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "#!ipxe\necho flint: no default profile\nshell\n");
        };
        if let Err(e) = self.registry().saw_mac(ip, &mac) {
            tracing::error!("{e}");
        }
        text(StatusCode::OK, profiles::node_script(name, profile, &mac, &self.base_url(req)))
    }

    /// What the root holds, walked off the async threads (a chunk store has many files).
    async fn served(&self) -> status::Served {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || status::served(&root)).await.unwrap_or_default()
    }

    /// Who signed `req` (with `body`): `Ok(None)` unsigned (allowed unless `--signed-only`),
    /// the envelope when it verifies and is not a replay, else the refusal to send.
    fn signer(&self, req: &Request<impl Sized>, body: &[u8], ip: &str) -> Result<Option<Signer>, Box<Response<Body>>> {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let refusal = match signed::check(header, req.method().as_str(), target, body) {
            Ok(Some(e)) => {
                // Held until the request is recorded: the same request sent twice at once is
                // accepted once.
                let mut replays = flist::durable::lock(&self.replays);
                match replays.check(&e) {
                    Ok(()) => {
                        let profiles = self.profiles();
                        let signed = self.registry().signed_by(ip, &e, profiles.as_ref().as_ref().ok());
                        return match signed {
                            Ok(status::Standing::Rejected) => {
                                drop(replays);
                                self.counters().refused("rejected");
                                let id = signed::node_id(&e.key);
                                self.registry().refused(ip, &format!("node {id} is rejected"));
                                Err(Box::new(text(
                                    StatusCode::FORBIDDEN,
                                    format!("node {id} is rejected by the operator: nothing it sends is taken\n"),
                                )))
                            }
                            Ok(standing) => {
                                replays.record(&e);
                                Ok(Some(Signer { envelope: e, standing }))
                            }
                            Err(status::Refused::TooOften) => {
                                self.counters().refused("too often");
                                Err(Box::new(text(
                                    StatusCode::TOO_MANY_REQUESTS,
                                    format!(
                                        "node {} is not accepted: it may write once every {} s\n",
                                        signed::node_id(&e.key),
                                        status::PENDING_EVERY.as_secs()
                                    ),
                                )))
                            }
                            // Not remembered as seen: the node may send this request again.
                            Err(status::Refused::Busy(why)) => {
                                tracing::error!("{why}");
                                Err(Box::new(text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))))
                            }
                        };
                    }
                    Err(refusal) => Some(refusal),
                }
            }
            Ok(None) if !self.signed_only => return Ok(None),
            Ok(None) => None,
            Err(refusal) => Some(refusal),
        };
        let (status, reason) = match &refusal {
            None => (StatusCode::UNAUTHORIZED, "unsigned"),
            Some(Refusal::Malformed(_)) => (StatusCode::BAD_REQUEST, "malformed"),
            Some(Refusal::Forged) => (StatusCode::FORBIDDEN, "forged"),
            Some(Refusal::Replayed { .. }) => (StatusCode::CONFLICT, "replayed"),
            Some(Refusal::Full(_)) => (StatusCode::SERVICE_UNAVAILABLE, "replay memory full"),
        };
        self.counters().refused(reason);
        let why = refusal.map_or_else(|| "unsigned: this server takes only signed requests".into(), |e| e.to_string());
        tracing::warn!("{ip}: {} {}: refused: {why}", req.method(), req_line(target));
        self.registry().refused(ip, &why);
        Err(Box::new(text(status, format!("{why}\n"))))
    }

    /// A manifest (or its signature): the node's own under `nodes/NODE-ID/` if it has one,
    /// else what the rollouts of its path give it ([`fleet::Rollouts::serve`]). Under manual
    /// enrollment only accepted nodes get one.
    async fn manifest(
        &self,
        req: &Request<Incoming>,
        path: &str,
        node: Option<&Signer>,
        head: bool,
        profiles: &Result<Profiles, String>,
    ) -> Response<Body> {
        let enrollment = profiles.as_ref().ok().map_or(profiles::Enrollment::Manual, |p| p.enrollment);
        let id = node.map(|s| signed::node_id(&s.envelope.key));
        match (node, &id) {
            (None, _) if enrollment == profiles::Enrollment::Manual => {
                self.counters().refused("unsigned");
                return text(
                    StatusCode::UNAUTHORIZED,
                    "enrollment is manual: manifests go only to accepted nodes, which sign their requests\n",
                );
            }
            (Some(s), Some(id)) if s.standing == status::Standing::Pending => {
                self.counters().refused("pending");
                return text(
                    StatusCode::FORBIDDEN,
                    format!(
                        "node {id} is pending: it gets a manifest once the operator runs `netboot nodes accept {id}`\n"
                    ),
                );
            }
            _ => {}
        }
        if let (Some(id), Some(name)) = (&id, path.rsplit('/').next()) {
            if let Some(own) = files::serve_under(&self.root, &format!("/nodes/{id}/{name}"), req.headers(), head).await
            {
                return own;
            }
        }
        let relative = path.trim_start_matches('/');
        let served = self.rollouts().serve(&self.root, relative, id.as_deref());
        match served {
            Ok(fleet::Served::Rollout { id: rollout, version, bytes }) => {
                tracing::debug!("{}: rollout {rollout}, version {version}", id.as_deref().unwrap_or("unsigned"));
                let kind = if relative.ends_with(".sig") { "text/plain; charset=utf-8" } else { "application/json" };
                let mut r = typed(StatusCode::OK, kind, String::from_utf8_lossy(&bytes).into_owned());
                if head {
                    *r.body_mut() = empty();
                }
                r
            }
            Ok(fleet::Served::Root) => files::serve_under(&self.root, path, req.headers(), head)
                .await
                .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n")),
            Err(e) => {
                tracing::error!("{e}");
                text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
            }
        }
    }

    async fn report(&self, req: Request<Incoming>, ip: &str) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let limited = http_body_util::Limited::new(body, REPORT_MAX);
        let body = match limited.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")),
        };
        let node = match self.signer(&Request::from_parts(parts, ()), &body, ip) {
            Ok(node) => node,
            Err(refused) => return *refused,
        };
        match serde_json::from_slice::<status::Report>(&body) {
            Ok(report) => {
                let who =
                    node.as_ref().map_or_else(|| format!("{ip} (unsigned)"), |s| signed::node_id(&s.envelope.key));
                tracing::info!(
                    "node {who} at {ip} ({}): {}: {}",
                    report.mac.as_deref().unwrap_or("?"),
                    report.stage,
                    report.detail
                );
                match self.registry().report(ip, &report) {
                    Ok(()) => {
                        self.counters().report();
                        Response::new(empty())
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
                    }
                }
            }
            Err(e) => text(StatusCode::BAD_REQUEST, format!("a report is {{\"mac\", \"stage\", \"detail\"}}: {e}\n")),
        }
    }
}

impl Server {
    /// A node's batch of log lines and numbers: signed, checked, stored, answered with the
    /// position the server now holds.
    async fn logs(&self, req: Request<Incoming>, ip: &str) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let limited = http_body_util::Limited::new(body, flint_manifest::logs::MAX_BATCH);
        let body = match limited.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")),
        };
        let node = match self.signer(&Request::from_parts(parts, ()), &body, ip) {
            Ok(Some(s)) if s.standing == status::Standing::Accepted => s.envelope,
            Ok(Some(s)) => {
                self.counters().refused("pending");
                let id = signed::node_id(&s.envelope.key);
                return text(
                    StatusCode::FORBIDDEN,
                    format!("node {id} is pending: its logs are taken once it is accepted\n"),
                );
            }
            Ok(None) => {
                self.counters().refused("unsigned");
                return text(StatusCode::UNAUTHORIZED, "logs are taken only signed by a node's key\n");
            }
            Err(refused) => return *refused,
        };
        let batch: flint_manifest::logs::Batch = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("a batch is {{\"boot\", \"records\", \"metrics\"}}: {e}\n"),
                )
            }
        };
        let id = signed::node_id(&node.key);
        let store = self.logs.clone();
        let who = id.clone();
        let stored = tokio::task::spawn_blocking(move || store.store(&who, &batch, node.boot))
            .await
            .unwrap_or_else(|e| Err(format!("storing: {e}")));
        match stored {
            Ok(taken) => {
                if taken.dropped > 0 {
                    tracing::warn!("node {id}: {} log lines dropped by the node before these", taken.dropped);
                }
                self.registry().logged(&id, taken.written as u64);
                self.counters().logs(taken.written as u64);
                let answer = serde_json::to_string(&taken.position).unwrap_or_default();
                typed(StatusCode::OK, "application/json", answer)
            }
            Err(e) if e.starts_with("storing") => {
                tracing::error!("{e}");
                text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
            }
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }

    /// `/logs/NODE-ID[?tail=N]` (JSON lines) or `/metrics/NODE-ID` (Prometheus text).
    fn node_logs(&self, req: &Request<Incoming>, path: &str) -> Response<Body> {
        let (what, id) = path.trim_start_matches('/').split_once('/').unwrap_or_default();
        if !logs::is_node_id(id) {
            return text(StatusCode::NOT_FOUND, "not a node id\n");
        }
        let tail = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("tail=")?.parse().ok()))
            .unwrap_or(logs::DEFAULT_TAIL);
        let found = match what {
            "logs" => self.logs.tail(id, tail).map(|t| ("application/x-ndjson", t)),
            _ => self.logs.metrics(id).map(|t| ("text/plain; version=0.0.4", t)),
        };
        match found {
            Some((kind, body)) => typed(StatusCode::OK, kind, body),
            None => text(StatusCode::NOT_FOUND, format!("nothing from node {id}\n")),
        }
    }
}

/// The path as logged: control characters escaped so a request cannot forge log lines.
fn req_line(path: &str) -> String {
    path.escape_debug().to_string()
}
