//! The dashboard: server-rendered HTML on the admin listener, no JavaScript, no build step.
//! `/` is the fleet at a glance (counts by state and version, the rollouts' progress, expiring
//! manifests, every node), `/nodes/ID` one node (stages, rollbacks, recent logs per service,
//! numbers), `/rollouts/ID` one rollout (waves, each node's standing, history), `/audit` the
//! audit log. Viewing a page changes nothing.

use std::collections::BTreeMap;
use std::fmt::Write;

use hyper::{Request, Response, StatusCode};

use super::admin::state_of;
use super::profiles::Profiles;
use super::rollout::{Rollout, State, Verdict};
use super::status::{escape, NodeRecord};
use super::{typed, Body, Server};

/// A manifest that expires within this many seconds is flagged.
const EXPIRY_WARNING: f64 = 3.0 * 86_400.0;

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=10>\
         <title>{t} · flint fleet</title><style>body{{font-family:sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}}\
         th{{background:#f3f3f3}}.bad{{color:#b00;font-weight:bold}}.good{{color:#070}}.warn{{color:#a60;font-weight:bold}}\
         nav a{{margin-right:1em}}code{{font-size:90%}}</style></head><body>\
         <nav><a href=\"/\">fleet</a><a href=\"/audit\">audit log</a></nav><h1>{t}</h1>{body}</body></html>\n",
        t = escape(title)
    )
}

fn when(t: f64) -> String {
    if t <= 0.0 {
        return "never".into();
    }
    let secs = u64::try_from(t as i64).unwrap_or(0);
    flist::utc::rfc3339(secs)
}

fn ago(t: f64) -> String {
    let d = (super::fleet::now() - t).max(0.0);
    match d {
        d if d < 120.0 => format!("{d:.0} s ago"),
        d if d < 7200.0 => format!("{:.0} min ago", d / 60.0),
        d => format!("{:.1} h ago", d / 3600.0),
    }
}

fn class_of(state: &str) -> &'static str {
    match state {
        "healthy" => "good",
        "unhealthy" | "rollback" | "error" | "panic" | "rejected" => "bad",
        "pending" => "warn",
        _ => "",
    }
}

fn expiry_note(expires: Option<u64>) -> String {
    let Some(e) = expires else { return String::new() };
    let left = e as f64 - super::fleet::now();
    if left <= 0.0 {
        format!(" <span class=bad>expired {}</span>", when(e as f64))
    } else if left < EXPIRY_WARNING {
        format!(" <span class=warn>expires in {:.1} h ({})</span>", left / 3600.0, when(e as f64))
    } else {
        format!(" (expires {})", when(e as f64))
    }
}

/// One rollout's progress as a line of a table.
fn rollout_row(r: &Rollout, nodes: &BTreeMap<String, NodeRecord>) -> String {
    let standing = r.standing(nodes);
    let healthy = standing.values().filter(|v| **v == Verdict::Healthy).count();
    let failed = standing.values().filter(|v| matches!(v, Verdict::Failed(_))).count();
    let total: usize = r.waves.iter().map(|w| w.nodes.len()).sum();
    let state = match r.state {
        State::Paused | State::Aborted => format!("<span class=bad>{}</span>", r.state.name()),
        State::Done => format!("<span class=good>{}</span>", r.state.name()),
        State::Running => r.state.name().to_string(),
    };
    format!(
        "<tr><td><a href=\"/rollouts/{id}\">rollout {id}</a></td><td>{}</td><td>{} → {}{}</td><td>{state}</td>\
         <td>wave {} of {}</td><td>{healthy} healthy, {failed} failed, of {total}</td><td>{}</td></tr>",
        escape(&r.path),
        r.previous.map_or("none".into(), |v| v.to_string()),
        r.version,
        expiry_note(r.expires),
        r.current().map_or(0, |w| w + 1),
        r.waves.len(),
        escape(&r.reason),
        id = r.id
    )
}

fn fleet_page(server: &Server, profiles: Option<&Profiles>) -> String {
    let nodes = server.registry().nodes();
    let rollouts = server.rollouts().all().to_vec();
    let mut h = String::new();
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_version: BTreeMap<String, u64> = BTreeMap::new();
    let mut refusing = 0;
    for (key, r) in &nodes {
        if key.starts_with("refused ") {
            refusing += 1;
            continue;
        }
        *by_state.entry(state_of(r, profiles)).or_default() += 1;
        *by_version.entry(super::metrics::version(r).map_or("none".into(), |v| v.to_string())).or_default() += 1;
    }
    h += "<h2>At a glance</h2><table><tr><th>state</th><th>nodes</th></tr>";
    for (state, n) in &by_state {
        let _ = write!(h, "<tr><td class=\"{}\">{state}</td><td>{n}</td></tr>", class_of(state));
    }
    h += "</table><table><tr><th>manifest version</th><th>nodes</th></tr>";
    for (v, n) in &by_version {
        let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", escape(v));
    }
    let _ = write!(h, "</table><p>{refusing} addresses only sent refused requests.</p>");
    let (version, bytes) = server.rollouts().current(&server.root, "manifest.json");
    let expires = bytes
        .as_deref()
        .and_then(|b| serde_json::from_slice::<flint_manifest::RawManifest>(b).ok())
        .and_then(|m| m.expires?.resolve().ok());
    let _ = write!(
        h,
        "<p>Served to nodes outside a rollout: <code>manifest.json</code> version {}{}.</p>",
        version.map_or("none".into(), |v| v.to_string()),
        expiry_note(expires)
    );
    h += "<h2>Rollouts</h2>";
    if rollouts.is_empty() {
        h += "<p>None yet: <code>netboot rollout start MANIFEST</code>.</p>";
    } else {
        h += "<table><tr><th>rollout</th><th>path</th><th>version</th><th>state</th><th>wave</th><th>nodes</th><th>last</th></tr>";
        for r in rollouts.iter().rev().take(10) {
            h += &rollout_row(r, &nodes);
        }
        h += "</table>";
    }
    h += "<h2>Nodes</h2><table id=nodes><tr><th>node</th><th>groups</th><th>MAC</th><th>address</th><th>version</th>\
          <th>state</th><th>last seen</th><th>boot stages (newest last)</th></tr>";
    for (id, r) in nodes.iter().filter(|(k, _)| !k.starts_with("refused ")) {
        let state = state_of(r, profiles);
        let groups = profiles.map(|p| p.groups_of(id, r.mac.as_deref())).unwrap_or_default();
        let stages: Vec<String> = r
            .stages
            .iter()
            .rev()
            .take(4)
            .rev()
            .map(|s| format!("{}: {}", escape(&s.stage), escape(&s.detail)))
            .collect();
        let name = if r.node.is_some() {
            format!("<a href=\"/nodes/{0}\">{0}</a>", escape(id))
        } else {
            format!("{} (unsigned)", escape(id))
        };
        let _ = write!(
            h,
            "<tr class=node data-state=\"{state}\"><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"{}\">{state}</td><td>{}</td><td>{}</td></tr>",
            escape(&groups.into_iter().collect::<Vec<_>>().join(" ")),
            escape(r.mac.as_deref().unwrap_or("?")),
            escape(r.address.as_deref().unwrap_or("?")),
            super::metrics::version(r).map_or("none".into(), |v| v.to_string()),
            class_of(state),
            ago(r.last_seen),
            stages.join("<br>")
        );
    }
    h += "</table>";
    h += "<h2>Recent admin actions</h2>";
    h += &audit_table(server, 10);
    page("flint fleet", &h)
}

fn node_page(server: &Server, id: &str, profiles: Option<&Profiles>) -> Option<String> {
    let record = server.registry().node(id).cloned()?;
    let state = state_of(&record, profiles);
    let mut h = format!(
        "<table><tr><th>state</th><td class=\"{}\" id=state>{state}</td></tr><tr><th>manifest version</th><td>{}</td></tr>\
         <tr><th>MAC</th><td>{}</td></tr><tr><th>address</th><td>{}</td></tr><tr><th>public key</th><td><code>{}</code></td></tr>\
         <tr><th>boot</th><td>{}</td></tr><tr><th>first seen</th><td>{}</td></tr><tr><th>last seen</th><td>{} ({})</td></tr>\
         <tr><th>groups</th><td>{}</td></tr><tr><th>replaced</th><td>{}</td></tr></table>",
        class_of(state),
        super::metrics::version(&record).map_or("none".into(), |v| v.to_string()),
        escape(record.mac.as_deref().unwrap_or("?")),
        escape(record.address.as_deref().unwrap_or("?")),
        escape(record.public_key.as_deref().unwrap_or("?")),
        record.boot.map_or("?".into(), |b| b.to_string()),
        when(record.first_seen),
        when(record.last_seen),
        ago(record.last_seen),
        escape(&profiles.map(|p| p.groups_of(id, record.mac.as_deref())).unwrap_or_default().into_iter().collect::<Vec<_>>().join(" ")),
        escape(&record.replaced.join(" ")),
    );
    if state == "pending" {
        let _ = write!(
            h,
            "<p class=warn>Pending: it gets no manifest until <code>netboot nodes accept {}</code>.</p>",
            escape(id)
        );
    }
    h += "<h2>Rollbacks</h2><ul id=rollbacks>";
    for s in record.stages.iter().filter(|s| matches!(s.stage.as_str(), "rollback" | "unhealthy")) {
        let _ = write!(h, "<li>{} {}: {}</li>", when(s.at), escape(&s.stage), escape(&s.detail));
    }
    h += "</ul><h2>Boot stages</h2><table id=stages><tr><th>at</th><th>stage</th><th>detail</th></tr>";
    for s in record.stages.iter().rev().take(100) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            when(s.at),
            class_of(&s.stage),
            escape(&s.stage),
            escape(&s.detail)
        );
    }
    h += "</table><h2>Recent logs, by service</h2>";
    let mut by_source: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in server.logs.tail(id, 2000).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let source = v.get("s").and_then(|s| s.as_str()).unwrap_or("node").to_string();
        let text = v
            .get("l")
            .and_then(|l| l.as_str())
            .map_or_else(|| format!("({} lines dropped)", v.get("dropped").unwrap_or(&0.into())), str::to_string);
        let lines = by_source.entry(source).or_default();
        if lines.len() >= 20 {
            lines.remove(0);
        }
        lines.push(text);
    }
    if by_source.is_empty() {
        h += "<p>No log lines shipped.</p>";
    }
    for (source, lines) in &by_source {
        let _ = write!(h, "<h3>{}</h3><pre>{}</pre>", escape(source), escape(&lines.join("\n")));
    }
    let _ = write!(h, "<p><a href=\"/logs/{0}\">all log lines</a></p>", escape(id));
    h += "<h2>Numbers</h2>";
    match server.logs.metrics(id) {
        Some(m) => {
            let shown: Vec<&str> = m.lines().filter(|l| !l.starts_with('#')).take(200).collect();
            let _ = write!(h, "<pre>{}</pre>", escape(&shown.join("\n")));
        }
        None => h += "<p>None shipped.</p>",
    }
    Some(page(&format!("node {id}"), &h))
}

fn rollout_page(server: &Server, id: u64) -> Option<String> {
    let r = server.rollouts().get(id).cloned()?;
    let nodes = server.registry().nodes();
    let standing = r.standing(&nodes);
    let mut h = String::from("<table><tr><th>rollout</th><th>path</th><th>version</th><th>state</th><th>wave</th><th>nodes</th><th>last</th></tr>");
    h += &rollout_row(&r, &nodes);
    let _ = write!(
        h,
        "</table><p>Wait after a healthy wave {} s; deadline {} s; failure budget {}. {} nodes were served version {}.</p>",
        r.wait,
        r.deadline,
        r.budget,
        r.received.len(),
        r.version
    );
    match r.state {
        State::Running => {
            let _ = write!(h, "<p>Pause: <code>netboot rollout pause {id}</code>; abort: <code>netboot rollout abort {id}</code>.</p>");
        }
        State::Paused => {
            let _ = write!(h, "<p class=bad>{}</p><p>Resume (the failed nodes are excused): <code>netboot rollout resume {id}</code>; abort: <code>netboot rollout abort {id}</code>.</p>", escape(&r.reason));
        }
        State::Aborted => {
            let _ = write!(h, "<p>Nodes on {} move back only through a newer version: <code>netboot rollout revert {id} --key KEY</code>.</p>", r.version);
        }
        State::Done => {}
    }
    h += "<h2>Waves</h2><table id=waves><tr><th>wave</th><th>takes</th><th>started</th><th>healthy</th><th>nodes</th></tr>";
    for (i, w) in r.waves.iter().enumerate() {
        let members: Vec<String> = w
            .nodes
            .iter()
            .map(|n| {
                let (class, said) = match standing.get(n) {
                    Some(Verdict::Healthy) => ("good", "healthy".to_string()),
                    Some(Verdict::Failed(why)) if r.excused.contains(n) => ("", format!("excused: {why}")),
                    Some(Verdict::Failed(why)) => ("bad", format!("failed: {why}")),
                    Some(Verdict::Waiting) => ("", "waiting".into()),
                    None => ("", "not started".into()),
                };
                format!("<a href=\"/nodes/{0}\">{0}</a> <span class=\"{class}\">{1}</span>", escape(n), escape(&said))
            })
            .collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            i + 1,
            escape(&w.spec.to_string()),
            w.started.map_or("not yet".into(), when),
            w.healthy.map_or("not yet".into(), when),
            members.join("<br>")
        );
    }
    h += "</table><h2>History</h2><ul id=history>";
    for (t, said) in &r.history {
        let _ = write!(h, "<li>{} — {}</li>", when(*t), escape(said));
    }
    h += "</ul>";
    Some(page(&format!("rollout {id}: version {}", r.version), &h))
}

/// The newest `limit` entries of the audit log, newest first.
fn audit_table(server: &Server, limit: usize) -> String {
    let mut h = String::from("<table class=audit><tr><th>at</th><th>who</th><th>action</th><th>detail</th></tr>");
    for e in server.db.audit_log(limit).unwrap_or_default() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(e.at),
            escape(&e.who),
            escape(&e.action),
            escape(&e.detail)
        );
    }
    h + "</table>"
}

fn audit_page(server: &Server) -> String {
    page("audit log", &audit_table(server, 500))
}

impl Server {
    /// A dashboard page (or a node's logs, as on the node listener).
    pub(super) async fn dashboard_page(&self, req: &Request<hyper::body::Incoming>, path: &str) -> Response<Body> {
        let profiles = self.profiles();
        let profiles = profiles.as_ref().as_ref().ok();
        let html = |page: Option<String>| match page {
            Some(p) => typed(StatusCode::OK, "text/html; charset=utf-8", p),
            None => typed(
                StatusCode::NOT_FOUND,
                "text/html; charset=utf-8",
                self::page("not found", "<p>Nothing here.</p>"),
            ),
        };
        match path {
            "/" => html(Some(fleet_page(self, profiles))),
            "/audit" => html(Some(audit_page(self))),
            p if p.starts_with("/logs/") || p.starts_with("/metrics/") => self.node_logs(req, p),
            p => match p
                .strip_prefix("/nodes/")
                .map(|id| (true, id))
                .or_else(|| p.strip_prefix("/rollouts/").map(|id| (false, id)))
            {
                Some((true, id)) => html(node_page(self, id, profiles)),
                Some((false, id)) => html(id.parse().ok().and_then(|id| rollout_page(self, id))),
                None => html(None),
            },
        }
    }
}
