//! `netboot nodes|rollout|audit`: the operator's commands, spoken to a running server's admin
//! API (never to its database). On the server's machine they find it by its state directory
//! (`STATE/admin.url`, `STATE/admin.token`); elsewhere `--server URL --token-file FILE`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

/// Where the admin API is and how to be let in.
#[derive(Args, Clone)]
pub struct AdminArgs {
    /// The admin API's URL (default: what the server wrote in STATE/admin.url).
    #[arg(long, global = true)]
    server: Option<String>,
    /// The server's state directory (default ROOT/.netboot with --root).
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// The served root, whose `.netboot` is the state directory.
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// The admin token (default: STATE/admin.token).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum NodesCommand {
    /// Every node: id, enrollment and state, version, MAC, address, last seen.
    List,
    /// One node, with its recent stages.
    Show { id: String },
    /// Accept nodes: they get their manifest from now on.
    Accept { ids: Vec<String> },
    /// Reject nodes: nothing they send is taken.
    Reject { ids: Vec<String> },
    /// Forget nodes: their record goes; a forgotten key that comes back is a new, pending node.
    Forget { ids: Vec<String> },
    /// Move the history of node OLD to node NEW (a node whose disk, and so key, was replaced).
    Replace { old: String, new: String },
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Roll MANIFEST (signed: MANIFEST.sig beside it) out in waves.
    Start {
        /// The new manifest version.
        manifest: PathBuf,
        /// The manifest path it replaces on the server, relative to the root.
        #[arg(long, default_value = "manifest.json")]
        path: String,
        /// A wave: `group:NAME` (netboot.json groups), `N%` of the fleet (counting earlier
        /// waves), or `rest`. In order; nodes no wave takes join the last.
        #[arg(long = "wave", default_values = ["10%", "50%", "rest"])]
        waves: Vec<String>,
        /// How long to wait once a wave is healthy before the next starts (`90s`, `5m`).
        #[arg(long, default_value = "60s", value_parser = flint_manifest::health::parse_span)]
        wait: u64,
        /// How long a node of a started wave has to report the new version healthy.
        #[arg(long, default_value = "10m", value_parser = flint_manifest::health::parse_span)]
        deadline: u64,
        /// Failed nodes tolerated; one more pauses the rollout.
        #[arg(long, default_value_t = 0)]
        budget: u32,
    },
    /// A rollout's waves, each started node's standing, and its history (default: the newest).
    Status { id: Option<u64> },
    /// Stop starting waves (nodes already served keep the new version).
    Pause { id: Option<u64> },
    /// Start waves again; the nodes that failed so far are excused.
    Resume { id: Option<u64> },
    /// The new version reaches no more nodes; those that have it keep it.
    Abort { id: Option<u64> },
    /// Prepare, on this machine, a version above rollout ID's with the content served before it
    /// (N-1), signed with KEY: the way back for nodes already on N (rollback protection stays).
    Revert {
        id: Option<u64>,
        /// The manifest signing key (`netboot keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the manifest (and OUT.sig).
        #[arg(long, short)]
        out: PathBuf,
    },
}

struct Admin {
    url: String,
    token: String,
    json: bool,
    agent: ureq::Agent,
}

impl Admin {
    fn new(args: &AdminArgs) -> anyhow::Result<Admin> {
        let state = args.state.clone().or_else(|| args.root.as_ref().map(|r| r.join(".netboot")));
        let from_state = |file: &str| -> anyhow::Result<String> {
            let state = state.as_ref().context(
                "say where the server is: --server URL --token-file FILE, or --state DIR / --root ROOT on its machine",
            )?;
            let path = state.join(file);
            Ok(std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_string())
        };
        let url = match &args.server {
            Some(u) => u.clone(),
            None => from_state("admin.url")?,
        };
        let token = match &args.token_file {
            Some(f) => {
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?.trim().to_string()
            }
            None => from_state("admin.token")?,
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(60)))
            .build()
            .new_agent();
        Ok(Admin { url: url.trim_end_matches('/').to_string(), token, json: args.json, agent })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}/api/{path}", self.url);
        let auth = format!("Bearer {}", self.token);
        let resp = match body {
            Some(b) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.to_string()),
            None if method == "POST" => self.agent.post(&url).header("Authorization", &auth).send_empty(),
            None => self.agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut resp = resp.with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().with_context(|| format!("{method} {url}"))?;
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("{method} {url}: answered {status}: {text}"))?;
        if status >= 300 {
            bail!("{}", value.get("error").and_then(Value::as_str).unwrap_or(&text));
        }
        Ok(value)
    }

    /// The rollout `id`, or the newest.
    fn rollout_id(&self, id: Option<u64>) -> anyhow::Result<u64> {
        if let Some(id) = id {
            return Ok(id);
        }
        let all = self.call("GET", "rollouts", None)?;
        all.as_array().and_then(|a| a.last()).and_then(|r| r.get("id")?.as_u64()).context("there is no rollout yet")
    }

    fn print(&self, value: &Value, text: impl FnOnce(&Value) -> String) {
        if self.json {
            println!("{value:#}");
        } else {
            print!("{}", text(value));
        }
    }
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn ago(v: &Value, key: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    v.get(key)
        .and_then(Value::as_f64)
        .filter(|t| *t > 0.0)
        .map_or("never".into(), |t| format!("{:.0}s ago", (now - t).max(0.0)))
}

fn node_line(n: &Value) -> String {
    format!(
        "{:<18} {:<9} {:<10} {:>7} {:<17} {:<15} {:>10}  {}\n",
        s(n, "id"),
        s(n, "enrollment"),
        s(n, "state"),
        s(n, "version"),
        s(n, "mac"),
        s(n, "address"),
        ago(n, "last_seen"),
        n.get("groups")
            .and_then(Value::as_array)
            .map(|g| g.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    )
}

/// `netboot nodes …`.
pub fn nodes(args: &AdminArgs, command: NodesCommand) -> anyhow::Result<()> {
    let admin = Admin::new(args)?;
    match command {
        NodesCommand::List => {
            let all = admin.call("GET", "nodes", None)?;
            admin.print(&all, |all| {
                let mut out = format!(
                    "{:<18} {:<9} {:<10} {:>7} {:<17} {:<15} {:>10}  groups\n",
                    "node", "enrolled", "state", "version", "MAC", "address", "seen"
                );
                for n in all.as_array().into_iter().flatten() {
                    out += &node_line(n);
                }
                out
            });
        }
        NodesCommand::Show { id } => {
            let n = admin.call("GET", &format!("nodes/{id}"), None)?;
            admin.print(&n, |n| {
                let mut out = node_line(n);
                let stages = n.get("stages").and_then(Value::as_array).cloned().unwrap_or_default();
                for st in stages.iter().rev().take(20).rev() {
                    out += &format!("  {} {}: {}\n", ago(st, "at"), s(st, "stage"), s(st, "detail"));
                }
                out
            });
        }
        NodesCommand::Accept { ids } | NodesCommand::Reject { ids } | NodesCommand::Forget { ids }
            if ids.is_empty() =>
        {
            bail!("name at least one node id (netboot nodes list shows them)")
        }
        NodesCommand::Accept { ids } => act_on_nodes(&admin, &ids, "accept")?,
        NodesCommand::Reject { ids } => act_on_nodes(&admin, &ids, "reject")?,
        NodesCommand::Forget { ids } => act_on_nodes(&admin, &ids, "forget")?,
        NodesCommand::Replace { old, new } => {
            let done = admin.call("POST", &format!("nodes/{old}/replace"), Some(&serde_json::json!({ "new": new })))?;
            admin.print(&done, |d| format!("{}\n", s(d, "done")));
        }
    }
    Ok(())
}

/// The same action on each node, in turn (stopping at the first refused): with --json, one
/// array of the answers.
fn act_on_nodes(admin: &Admin, ids: &[String], action: &str) -> anyhow::Result<()> {
    let mut done = Vec::new();
    for id in ids {
        let answer = admin.call("POST", &format!("nodes/{id}/{action}"), None)?;
        if !admin.json {
            println!("{}", s(&answer, "done"));
        }
        done.push(answer);
    }
    if admin.json {
        println!("{:#}", Value::Array(done));
    }
    Ok(())
}

fn rollout_text(r: &Value) -> String {
    let mut out = format!(
        "rollout {} of {}: version {} (was {}), {}, wave {} of {}\n  {}\n",
        s(r, "id"),
        s(r, "path"),
        s(r, "version"),
        s(r, "previous"),
        s(r, "state"),
        s(r, "current_wave"),
        r.get("waves").and_then(Value::as_array).map_or(0, Vec::len),
        s(r, "reason")
    );
    let standing = r.get("standing").cloned().unwrap_or_default();
    for (i, w) in r.get("waves").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let nodes: Vec<&str> =
            w.get("nodes").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let started = if w.get("started").is_some_and(|v| !v.is_null()) { "started" } else { "not started" };
        out += &format!("  wave {} ({}): {} nodes, {started}\n", i + 1, render_spec(w.get("spec")), nodes.len());
        for n in nodes {
            out += &format!("    {n} {}\n", standing.get(n).and_then(Value::as_str).unwrap_or("-"));
        }
    }
    out
}

fn render_spec(spec: Option<&Value>) -> String {
    match spec {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => {
            o.iter().map(|(k, v)| format!("{k}:{}", v.as_str().map_or(v.to_string(), str::to_string))).collect()
        }
        _ => "?".into(),
    }
}

/// `netboot rollout …`.
pub fn rollout(args: &AdminArgs, command: RolloutCommand) -> anyhow::Result<()> {
    let admin = Admin::new(args)?;
    match command {
        RolloutCommand::Start { manifest, path, waves, wait, deadline, budget } => {
            let waves = waves
                .iter()
                .map(|w| super::serve::rollout::WaveSpec::parse(w).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
            let sig_path = PathBuf::from(format!("{}.sig", manifest.display()));
            let signature = std::fs::read_to_string(&sig_path)
                .with_context(|| format!("reading {} (sign it first: netboot sign)", sig_path.display()))?;
            let request = super::serve::rollout::Request {
                path,
                manifest: text,
                signature: signature.trim().into(),
                waves,
                wait,
                deadline,
                budget,
            };
            let r = admin.call("POST", "rollouts", Some(&serde_json::to_value(&request)?))?;
            admin.print(&r, rollout_text);
        }
        RolloutCommand::Status { id } => {
            let id = admin.rollout_id(id)?;
            let r = admin.call("GET", &format!("rollouts/{id}"), None)?;
            admin.print(&r, |r| {
                let mut out = rollout_text(r);
                for h in r.get("history").and_then(Value::as_array).into_iter().flatten() {
                    out += &format!("  {}\n", h.get(1).and_then(Value::as_str).unwrap_or_default());
                }
                out
            });
        }
        RolloutCommand::Pause { id } => act_on_rollout(&admin, id, "pause")?,
        RolloutCommand::Resume { id } => act_on_rollout(&admin, id, "resume")?,
        RolloutCommand::Abort { id } => act_on_rollout(&admin, id, "abort")?,
        RolloutCommand::Revert { id, key, out } => revert(&admin, id, &key, &out)?,
    }
    Ok(())
}

fn act_on_rollout(admin: &Admin, id: Option<u64>, action: &str) -> anyhow::Result<()> {
    let id = admin.rollout_id(id)?;
    let r = admin.call("POST", &format!("rollouts/{id}/{action}"), None)?;
    admin.print(&r, rollout_text);
    Ok(())
}

fn revert(admin: &Admin, id: Option<u64>, key: &Path, out: &Path) -> anyhow::Result<()> {
    let id = admin.rollout_id(id)?;
    let previous = admin.call("GET", &format!("rollouts/{id}/previous"), None)?;
    let path = s(&previous, "path");
    let all = admin.call("GET", "rollouts", None)?;
    let highest = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| s(r, "path") == path)
        .filter_map(|r| r.get("version")?.as_u64())
        .max()
        .unwrap_or(0);
    let text = previous.get("manifest").and_then(Value::as_str).context("the server sent no manifest")?;
    let mut manifest: Value = serde_json::from_str(text).context("the manifest served before is not JSON")?;
    let version = highest.checked_add(1).context("no version above")?;
    manifest.as_object_mut().context("the manifest is not a JSON object")?.insert("version".into(), version.into());
    let mut bytes = serde_json::to_vec_pretty(&manifest)?;
    bytes.push(b'\n');
    let secret = super::read_secret(key)?;
    let signature = flint_manifest::sign(&bytes, &secret);
    flint_manifest::verify(&bytes, Some(signature.as_bytes()), &secret.verifying_key())
        .context("a node would refuse it")?;
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    let sig = PathBuf::from(format!("{}.sig", out.display()));
    std::fs::write(&sig, format!("{signature}\n")).with_context(|| format!("writing {}", sig.display()))?;
    println!(
        "{}: version {version}, the content of version {} (served before rollout {id}); roll it out with\n  netboot rollout start {} --path {path}",
        out.display(),
        s(&previous, "version"),
        out.display()
    );
    Ok(())
}

/// `netboot audit`: the newest admin actions and what the server did by itself.
pub fn audit(args: &AdminArgs, limit: usize) -> anyhow::Result<()> {
    let admin = Admin::new(args)?;
    let log = admin.call("GET", &format!("audit?limit={limit}"), None)?;
    admin.print(&log, |log| {
        let mut out = String::new();
        for e in log.as_array().into_iter().flatten().rev() {
            let at = e.get("at").and_then(Value::as_f64).map_or("?".into(), |t| flist::utc::rfc3339(t as u64));
            out += &format!("{at} {}: {}: {}\n", s(e, "who"), s(e, "action"), s(e, "detail"));
        }
        out
    });
    Ok(())
}
