//! Staged rollouts: a new signed manifest version reaches the fleet in waves.
//!
//! The operator hands the server version N of a manifest path (`manifest.json`), signed on their
//! machine, and a plan: waves (a group from `netboot.json`, a share of the fleet, or the rest), a
//! wait after each wave is healthy, a deadline for a wave's nodes to report healthy, and a
//! failure budget. The server serves N only to nodes of waves that have started (every other
//! node asking gets what was served before, N-1), promotes the next wave once the current one
//! is healthy and its wait is over, and pauses by itself when more nodes than the budget roll
//! back, report N unhealthy, or miss the deadline.
//!
//! [`step`] is the whole state machine: pure, no clock and no I/O. The server feeds it the time
//! and each started node's [`Verdict`] (from its reports, [`verdict`]) once a second and writes
//! what it returns; a write is conditional on the revision it read, so two servers on one
//! database carry out each change once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::status::NodeRecord;

/// Most waves in a plan.
pub const MAX_WAVES: usize = 16;
/// Largest manifest taken.
pub const MAX_MANIFEST: usize = 1 << 20;
/// Longest wait or deadline: 30 days.
pub const MAX_SPAN: u64 = 30 * 86_400;

/// Which nodes a wave takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaveSpec {
    /// The members of a group of `netboot.json` not in an earlier wave.
    Group(String),
    /// Up to this percentage of the fleet, counting the earlier waves.
    Percent(u8),
    /// Every node left.
    Rest,
}

impl WaveSpec {
    /// `group:NAME`, `N%` or `rest`.
    pub fn parse(text: &str) -> Result<WaveSpec, String> {
        let text = text.trim();
        if text == "rest" || text == "100%" {
            return Ok(WaveSpec::Rest);
        }
        if let Some(name) = text.strip_prefix("group:") {
            if name.is_empty() || name.len() > 64 {
                return Err(format!("wave {text:?}: a group name is 1 to 64 characters"));
            }
            return Ok(WaveSpec::Group(name.to_string()));
        }
        if let Some(n) = text.strip_suffix('%') {
            return match n.parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(WaveSpec::Percent(p)),
                _ => Err(format!("wave {text:?}: a share is 1% to 100%")),
            };
        }
        Err(format!("wave {text:?}: a wave is group:NAME, N% or rest"))
    }
}

impl std::fmt::Display for WaveSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaveSpec::Group(g) => write!(f, "group:{g}"),
            WaveSpec::Percent(p) => write!(f, "{p}%"),
            WaveSpec::Rest => f.write_str("rest"),
        }
    }
}

/// What the operator asks for (the admin API's body for a new rollout).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The manifest path it replaces, relative to the root (`manifest.json`).
    pub path: String,
    /// The manifest, as signed.
    pub manifest: String,
    /// Its detached signature (hex).
    pub signature: String,
    /// The waves, in order.
    pub waves: Vec<WaveSpec>,
    /// Seconds to wait once a wave is healthy before the next starts.
    pub wait: u64,
    /// Seconds a started node has to report N healthy.
    pub deadline: u64,
    /// Failed nodes tolerated; one more pauses the rollout.
    pub budget: u32,
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waves start as the earlier ones turn healthy.
    Running,
    /// No wave starts (by the operator, or by itself on a failure) until resumed.
    Paused,
    /// No node gets N any more that did not have it.
    Aborted,
    /// Every wave healthy: N is what every node gets.
    Done,
}

impl State {
    /// Lower case, as shown.
    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Aborted => "aborted",
            State::Done => "done",
        }
    }
}

/// One wave as it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    /// How it was chosen.
    pub spec: WaveSpec,
    /// Its nodes (ids).
    pub nodes: BTreeSet<String>,
    /// When it started (server clock, seconds since the epoch).
    pub started: Option<f64>,
    /// When all of it was first seen healthy.
    pub healthy: Option<f64>,
}

/// A rollout, as kept in the state database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Its number, from 1.
    pub id: u64,
    /// Bumped by every write: a write is made only over the revision it read.
    pub rev: u64,
    /// The manifest path it replaces.
    pub path: String,
    /// The new manifest's version.
    pub version: u64,
    /// The version served before (none when the path had no readable manifest).
    pub previous: Option<u64>,
    /// The manifest, as signed.
    pub manifest: String,
    /// Its signature.
    pub signature: String,
    /// When the manifest expires (seconds since the epoch), if it does.
    pub expires: Option<u64>,
    /// Paths under the root of flists N names and N-1 does not: served only to started nodes.
    pub new_flists: BTreeSet<String>,
    /// The waves.
    pub waves: Vec<Wave>,
    /// Seconds between a wave's health and the next wave.
    pub wait: u64,
    /// Seconds a node has to report healthy.
    pub deadline: u64,
    /// Failures tolerated.
    pub budget: u32,
    /// Where it is.
    pub state: State,
    /// Why it paused or stopped, or what it last did.
    pub reason: String,
    /// Nodes that were served N (they keep getting it, whatever the state).
    pub received: BTreeSet<String>,
    /// Failed nodes the operator resumed past: not counted again.
    pub excused: BTreeSet<String>,
    /// When it was made and last changed.
    pub created: f64,
    /// Last change.
    pub updated: f64,
    /// What happened, oldest first: (time, text).
    pub history: Vec<(f64, String)>,
}

/// Most history lines kept per rollout.
const HISTORY_KEPT: usize = 200;

/// How a started node stands with version N.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It reported N healthy.
    Healthy,
    /// It reported N unhealthy or rolled back from it: why.
    Failed(String),
    /// Nothing yet.
    Waiting,
}

/// How `record` stands with `version`, from its reports since `since` (the node's words:
/// "manifest version N is healthy: …", "manifest version N failed its health check: …",
/// "rolled back to manifest version M: version N failed …").
pub fn verdict(record: Option<&NodeRecord>, version: u64, since: f64) -> Verdict {
    let Some(record) = record else { return Verdict::Waiting };
    let healthy = format!("manifest version {version} is healthy");
    let failed = format!("version {version} failed");
    for s in record.stages.iter().rev().take_while(|s| s.at >= since) {
        match s.stage.as_str() {
            "healthy" if s.detail.starts_with(&healthy) => return Verdict::Healthy,
            "unhealthy" | "rollback" if s.detail.contains(&failed) => {
                return Verdict::Failed(format!("{}: {}", s.stage, s.detail))
            }
            _ => {}
        }
    }
    Verdict::Waiting
}

/// What [`step`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Wave `.0` is all healthy (first seen now).
    WaveHealthy(usize),
    /// Wave `.0` starts.
    WaveStarts(usize),
    /// Every wave is healthy: done.
    Done,
    /// Too many failures: paused, saying why.
    Pause(String),
}

impl Rollout {
    /// The wave being waited on: the last started one.
    pub fn current(&self) -> Option<usize> {
        self.waves.iter().rposition(|w| w.started.is_some())
    }

    /// The wave `node` is in.
    pub fn wave_of(&self, node: &str) -> Option<usize> {
        self.waves.iter().position(|w| w.nodes.contains(node))
    }

    /// Whether `node` is to be served N now.
    pub fn serves(&self, node: &str) -> bool {
        if self.received.contains(node) || self.state == State::Done {
            return true;
        }
        if self.state == State::Aborted {
            return false;
        }
        self.wave_of(node).and_then(|w| self.waves.get(w)).is_some_and(|w| w.started.is_some())
    }

    /// Nodes of started waves, with their wave's start.
    pub fn started_nodes(&self) -> impl Iterator<Item = (&str, f64)> {
        self.waves
            .iter()
            .filter_map(|w| Some((w, w.started?)))
            .flat_map(|(w, t)| w.nodes.iter().map(move |n| (n.as_str(), t)))
    }

    /// A node first seen after the start joins the last wave.
    pub fn join(&mut self, node: &str) -> bool {
        if self.wave_of(node).is_some() {
            return false;
        }
        match self.waves.last_mut() {
            Some(w) => w.nodes.insert(node.to_string()),
            None => false,
        }
    }

    /// Applies `change` at `now` (the caller writes the result).
    pub fn apply(&mut self, change: &Change, now: f64) {
        let said = match change {
            Change::WaveHealthy(i) => {
                if let Some(w) = self.waves.get_mut(*i) {
                    w.healthy = Some(now);
                }
                format!("wave {} ({}) is healthy", i + 1, self.spec(*i))
            }
            Change::WaveStarts(i) => {
                if let Some(w) = self.waves.get_mut(*i) {
                    w.started = Some(now);
                }
                let count = self.waves.get(*i).map_or(0, |w| w.nodes.len());
                format!("wave {} ({}) starts: {count} nodes", i + 1, self.spec(*i))
            }
            Change::Done => {
                self.state = State::Done;
                format!("done: every wave is healthy on version {}", self.version)
            }
            Change::Pause(why) => {
                self.state = State::Paused;
                format!("paused by the server: {why}")
            }
        };
        self.note(now, said);
    }

    /// Records what happened.
    pub fn note(&mut self, now: f64, said: String) {
        self.reason = said.clone();
        self.updated = now;
        if self.history.len() >= HISTORY_KEPT {
            self.history.remove(0);
        }
        self.history.push((now, said));
    }

    fn spec(&self, i: usize) -> String {
        self.waves.get(i).map_or_else(String::new, |w| w.spec.to_string())
    }

    /// Each started node's standing, by node: what the dashboard and `rollout status` show.
    pub fn standing(&self, nodes: &BTreeMap<String, NodeRecord>) -> BTreeMap<String, Verdict> {
        self.started_nodes().map(|(n, since)| (n.to_string(), verdict(nodes.get(n), self.version, since))).collect()
    }
}

/// The next change of `rollout` at `now`, given the standing of its started nodes (every node
/// of a started wave should be in `standing`; one missing is waiting).
pub fn step(rollout: &Rollout, now: f64, standing: &BTreeMap<String, Verdict>) -> Option<Change> {
    if rollout.state != State::Running {
        return None;
    }
    let Some(current) = rollout.current() else { return Some(Change::WaveStarts(0)) };
    let mut failed = Vec::new();
    let mut waiting = 0usize;
    for (node, since) in rollout.started_nodes() {
        if rollout.excused.contains(node) {
            continue;
        }
        match standing.get(node).unwrap_or(&Verdict::Waiting) {
            Verdict::Healthy => {}
            Verdict::Failed(why) => failed.push(format!("{node}: {why}")),
            Verdict::Waiting if now - since > rollout.deadline as f64 => failed.push(format!(
                "{node}: no healthy report on version {} within {} s",
                rollout.version, rollout.deadline
            )),
            Verdict::Waiting => waiting += 1,
        }
    }
    if failed.len() > rollout.budget as usize {
        let more = failed.len().saturating_sub(3);
        let mut why = format!(
            "{} failed (budget {}): {}",
            failed.len(),
            rollout.budget,
            failed.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        );
        if more > 0 {
            why += &format!("; and {more} more");
        }
        return Some(Change::Pause(why));
    }
    if waiting > 0 {
        return None;
    }
    let wave = rollout.waves.get(current)?;
    match wave.healthy {
        None => Some(Change::WaveHealthy(current)),
        Some(at) if now - at >= rollout.wait as f64 || current + 1 == rollout.waves.len() => {
            if current + 1 == rollout.waves.len() {
                Some(Change::Done)
            } else {
                Some(Change::WaveStarts(current + 1))
            }
        }
        Some(_) => None,
    }
}

/// Splits `fleet` (accepted node ids) into the waves of `specs`: groups take their members
/// (`groups` maps a node to its groups), shares take nodes in an order fixed by the rollout's
/// number (so the same nodes are not always first), the rest takes what is left. Nodes no wave
/// took join the last.
pub fn plan_waves(
    specs: &[WaveSpec],
    fleet: &BTreeSet<String>,
    groups: &BTreeMap<String, BTreeSet<String>>,
    rollout_id: u64,
) -> Vec<Wave> {
    let mut order: Vec<&String> = fleet.iter().collect();
    order.sort_by_key(|n| blake3::hash(format!("{rollout_id}\n{n}").as_bytes()).to_hex().to_string());
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut waves: Vec<Wave> = Vec::new();
    for spec in specs {
        let nodes: BTreeSet<String> = match spec {
            WaveSpec::Group(g) => fleet
                .iter()
                .filter(|n| !taken.contains(*n) && groups.get(*n).is_some_and(|gs| gs.contains(g)))
                .cloned()
                .collect(),
            WaveSpec::Percent(p) => {
                let target = (fleet.len() * usize::from(*p)).div_ceil(100);
                let more = target.saturating_sub(taken.len());
                order.iter().filter(|n| !taken.contains(**n)).take(more).map(|n| n.to_string()).collect()
            }
            WaveSpec::Rest => fleet.iter().filter(|n| !taken.contains(*n)).cloned().collect(),
        };
        taken.extend(nodes.iter().cloned());
        waves.push(Wave { spec: spec.clone(), nodes, started: None, healthy: None });
    }
    if let Some(last) = waves.last_mut() {
        last.nodes.extend(fleet.iter().filter(|n| !taken.contains(*n)).cloned());
    }
    waves
}

/// Checks a request's plan: the bounds every value from outside gets.
pub fn check_request(req: &Request) -> Result<(), String> {
    if req.waves.is_empty() || req.waves.len() > MAX_WAVES {
        return Err(format!("a rollout has 1 to {MAX_WAVES} waves"));
    }
    if req.wait > MAX_SPAN || req.deadline > MAX_SPAN {
        return Err(format!("wait and deadline are at most {MAX_SPAN} s"));
    }
    if req.deadline == 0 {
        return Err("the deadline must be more than 0 s".into());
    }
    if req.manifest.len() > MAX_MANIFEST {
        return Err("the manifest is too big".into());
    }
    if req.signature.trim().len() != 128 || !req.signature.trim().bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the signature is 128 hex digits (MANIFEST.sig, as `netboot sign` writes it)".into());
    }
    if !super::files::is_clean(&req.path) || req.path.len() > 1024 {
        return Err(format!("{:?} is not a path under the served root", req.path));
    }
    Ok(())
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
