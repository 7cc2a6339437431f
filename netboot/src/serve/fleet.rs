//! The rollouts the server carries out ([`super::rollout`] is their state machine): which
//! manifest each node is served, the admin's actions on them, and the once-a-second step that
//! promotes waves and pauses on failures. Every change is written to the state database before
//! it takes effect, over the revision it read, with an entry in the audit log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::db::{AuditEntry, Db};
use super::profiles::Profiles;
use super::rollout::{self, Request, Rollout, State};
use super::status::{NodeRecord, Standing};

/// What the server serves for a manifest path: bytes of a rollout's manifest or signature, or
/// the file in the root.
pub enum Served {
    /// A rollout's manifest (`.json`) or signature (`.sig`).
    Rollout { id: u64, version: u64, bytes: Vec<u8> },
    /// The file in the root, as it is.
    Root,
}

/// An admin's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// No wave starts until resumed.
    Pause,
    /// Waves start again; the nodes that failed so far are excused.
    Resume,
    /// N reaches no node that does not have it.
    Abort,
}

impl Action {
    /// From the API path's last word.
    pub fn parse(word: &str) -> Option<Action> {
        match word {
            "pause" => Some(Action::Pause),
            "resume" => Some(Action::Resume),
            "abort" => Some(Action::Abort),
            _ => None,
        }
    }
}

/// Every rollout, as last written.
pub struct Rollouts {
    db: Arc<Db>,
    all: Vec<Rollout>,
}

/// Seconds since the epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A manifest's version and expiry, if it parses as one.
fn version_of(bytes: &[u8]) -> Option<(u64, Option<u64>)> {
    let raw: flint_manifest::RawManifest = serde_json::from_slice(bytes).ok()?;
    Some((raw.version, raw.expires.and_then(|e| e.resolve().ok())))
}

/// The paths (under the root) of the flists a manifest names by URL.
fn flist_paths(bytes: &[u8]) -> BTreeSet<String> {
    let Ok(raw) = serde_json::from_slice::<flint_manifest::RawManifest>(bytes) else { return BTreeSet::new() };
    raw.flists
        .iter()
        .filter_map(|f| {
            let url = f.url.as_str();
            let rest = url.split_once("://").map_or(url, |(_, r)| r);
            let path = rest.split_once('/').map(|(_, p)| p)?;
            Some(path.split(['?', '#']).next().unwrap_or_default().to_string())
        })
        .filter(|p| !p.is_empty())
        .collect()
}

impl Rollouts {
    /// The rollouts read at start.
    pub fn restore(db: Arc<Db>, all: Vec<Rollout>) -> Rollouts {
        Rollouts { db, all }
    }

    /// The rollouts as stored (another server on the same database may have changed them): a
    /// stored revision replaces the one held.
    pub fn learn(&mut self, stored: Vec<Rollout>) {
        for r in stored {
            match self.all.iter_mut().find(|h| h.id == r.id) {
                Some(held) if held.rev != r.rev => *held = r,
                Some(_) => {}
                None => self.all.push(r),
            }
        }
        self.all.sort_by_key(|r| r.id);
    }

    /// On a shared database, before an admin's action: the rollouts as stored now.
    fn catch_up(&mut self) -> Result<(), String> {
        if self.db.shared() {
            let (_, _, stored) = self.db.shared_state()?;
            self.learn(stored);
        }
        Ok(())
    }

    /// Every rollout, oldest first.
    pub fn all(&self) -> &[Rollout] {
        &self.all
    }

    /// Rollout `id`.
    pub fn get(&self, id: u64) -> Option<&Rollout> {
        self.all.iter().find(|r| r.id == id)
    }

    /// The rollout of `path` still under way (running or paused), if any.
    fn open(&self, path: &str) -> Option<&Rollout> {
        self.all.iter().rev().find(|r| r.path == path && matches!(r.state, State::Running | State::Paused))
    }

    /// The newest finished rollout of `path` at a version above the file in `root`.
    fn baseline<'a>(&'a self, root: &std::path::Path, path: &str) -> Option<&'a Rollout> {
        let file = std::fs::read(root.join(path)).ok().and_then(|b| version_of(&b)).map(|(v, _)| v);
        self.all
            .iter()
            .filter(|r| r.path == path && r.state == State::Done)
            .max_by_key(|r| r.version)
            .filter(|r| file.is_none_or(|f| r.version > f))
    }

    /// The version served now to nodes outside a rollout of `path`, and its manifest bytes.
    pub fn current(&self, root: &std::path::Path, path: &str) -> (Option<u64>, Option<Vec<u8>>) {
        match self.baseline(root, path) {
            Some(r) => (Some(r.version), Some(r.manifest.clone().into_bytes())),
            None => {
                let bytes = std::fs::read(root.join(path)).ok();
                (bytes.as_deref().and_then(version_of).map(|(v, _)| v), bytes)
            }
        }
    }

    /// What node `node` gets for `request` (a manifest path or its `.sig`), recording that it
    /// was served a rollout's manifest.
    pub fn serve(&mut self, root: &std::path::Path, request: &str, node: Option<&str>) -> Result<Served, String> {
        let (path, sig) = match request.strip_suffix(".sig") {
            Some(p) => (p, true),
            None => (request, false),
        };
        let pick = |r: &Rollout| {
            let bytes = if sig { format!("{}\n", r.signature.trim()) } else { r.manifest.clone() };
            Served::Rollout { id: r.id, version: r.version, bytes: bytes.into_bytes() }
        };
        // The newest rollout that serves the node wins; a node that was served an aborted
        // rollout's N keeps getting N until a newer one reaches it: going back is only by a
        // newer version.
        // Read (the root's manifest file with it) once per request: what non-rollout nodes get.
        let baseline = self.baseline(root, path).map(|r| (r.version, pick(r)));
        let baseline_version = baseline.as_ref().map(|(v, _)| *v);
        let serving = node.and_then(|node| {
            self.all
                .iter()
                .rev()
                .filter(|r| r.path == path && r.state != State::Done)
                .filter(|r| baseline_version.is_none_or(|b| r.version > b))
                .find(|r| r.serves(node))
                .map(|r| (node, r))
        });
        if let Some((node, r)) = serving {
            let served = pick(r);
            let id = r.id;
            if !r.received.contains(node) {
                // Lost to another server's change: recorded at the node's next request.
                let _ = self.change(id, "server", "rollout served", |r| {
                    r.received.insert(node.to_string());
                    None
                })?;
            }
            return Ok(served);
        }
        Ok(baseline.map_or(Served::Root, |(_, served)| served))
    }

    /// Whether `path` is a flist only a rollout's started nodes may fetch, and `node` is not one.
    pub fn withheld(&self, path: &str, node: Option<&str>) -> bool {
        self.all
            .iter()
            .any(|r| r.state != State::Done && r.new_flists.contains(path) && !node.is_some_and(|n| r.serves(n)))
    }

    /// Starts a rollout of `req` over `fleet` (accepted node ids, with their groups). `key`,
    /// when the server has the nodes' public key, checks the manifest as a node would.
    pub fn start(
        &mut self,
        root: &std::path::Path,
        req: Request,
        fleet: &BTreeMap<String, BTreeSet<String>>,
        key: Option<&flint_manifest::ed25519::VerifyingKey>,
        who: &str,
    ) -> Result<Rollout, String> {
        rollout::check_request(&req)?;
        self.catch_up()?;
        let path = req.path.trim_start_matches('/').to_string();
        if let Some(open) = self.open(&path) {
            return Err(format!(
                "rollout {} of {path} (version {}) is {}: abort it first or wait for it",
                open.id,
                open.version,
                open.state.name()
            ));
        }
        let manifest = req.manifest.clone();
        let bytes = manifest.as_bytes();
        let (version, expires) = match key {
            Some(key) => {
                let plan = flint_manifest::verify(bytes, Some(req.signature.trim().as_bytes()), key)
                    .map_err(|e| format!("a node would refuse this manifest: {e}"))?;
                (plan.version, plan.expires)
            }
            None => version_of(bytes).ok_or("the manifest does not parse as one")?,
        };
        let (previous, previous_bytes) = self.current(root, &path);
        let highest = self.all.iter().filter(|r| r.path == path).map(|r| r.version).chain(previous).max();
        if let Some(h) = highest.filter(|h| version <= *h) {
            return Err(format!(
                "version {version} is not above {h}, the highest {path} has had: nodes would refuse it"
            ));
        }
        let id = self.all.iter().map(|r| r.id).max().unwrap_or(0).saturating_add(1);
        let fleet_ids: BTreeSet<String> = fleet.keys().cloned().collect();
        let old_flists = previous_bytes.as_deref().map(flist_paths).unwrap_or_default();
        let t = now();
        let mut r = Rollout {
            id,
            rev: 0,
            path: path.clone(),
            version,
            previous,
            manifest: req.manifest,
            signature: req.signature.trim().to_string(),
            expires,
            new_flists: flist_paths(bytes).difference(&old_flists).cloned().collect(),
            waves: rollout::plan_waves(&req.waves, &fleet_ids, fleet, id),
            wait: req.wait,
            deadline: req.deadline,
            budget: req.budget,
            state: State::Running,
            reason: String::new(),
            received: BTreeSet::new(),
            excused: BTreeSet::new(),
            created: t,
            updated: t,
            history: Vec::new(),
        };
        let sizes: Vec<String> = r.waves.iter().map(|w| format!("{} {}", w.spec, w.nodes.len())).collect();
        let said = format!(
            "version {version} of {path} (was {}), waves: {}; wait {} s, deadline {} s, budget {}",
            previous.map_or("none".into(), |v| v.to_string()),
            sizes.join(", "),
            r.wait,
            r.deadline,
            r.budget
        );
        r.note(t, format!("started by {who}: {said}"));
        let entry = AuditEntry {
            at: t,
            who: who.into(),
            action: "rollout start".into(),
            detail: format!("rollout {id}: {said}"),
        };
        self.db.insert_rollout(&r, &entry)?;
        self.all.push(r.clone());
        Ok(r)
    }

    /// Carries out an admin's `action` on rollout `id`.
    pub fn act(
        &mut self,
        id: u64,
        action: Action,
        who: &str,
        nodes: &BTreeMap<String, NodeRecord>,
    ) -> Result<Rollout, String> {
        self.catch_up()?;
        let r = self.get(id).ok_or_else(|| format!("no rollout {id}"))?;
        let allowed = match action {
            Action::Pause => r.state == State::Running,
            Action::Resume => r.state == State::Paused,
            Action::Abort => matches!(r.state, State::Running | State::Paused),
        };
        if !allowed {
            return Err(format!(
                "rollout {id} is {}: it cannot be {}",
                r.state.name(),
                match action {
                    Action::Pause => "paused",
                    Action::Resume => "resumed",
                    Action::Abort => "aborted",
                }
            ));
        }
        let standing = r.standing(nodes);
        let name = format!("rollout {action:?}").to_lowercase();
        let changed = self.change(id, who, &name, |r| {
            let t = now();
            let said = match action {
                Action::Pause => {
                    r.state = State::Paused;
                    format!("paused by {who}")
                }
                Action::Resume => {
                    let failed: Vec<String> = standing
                        .iter()
                        .filter(|(n, v)| {
                            !r.excused.contains(*n)
                                && (matches!(v, rollout::Verdict::Failed(_))
                                    || (matches!(v, rollout::Verdict::Waiting)
                                        && r.started_nodes()
                                            .any(|(m, since)| m == n.as_str() && t - since > r.deadline as f64)))
                        })
                        .map(|(n, _)| n.clone())
                        .collect();
                    r.state = State::Running;
                    let said = format!("resumed by {who}; {} failed nodes excused", failed.len());
                    r.excused.extend(failed);
                    said
                }
                Action::Abort => {
                    r.state = State::Aborted;
                    format!(
                        "aborted by {who}: version {} reaches no more nodes ({} have it)",
                        r.version,
                        r.received.len()
                    )
                }
            };
            r.note(t, said.clone());
            Some(said)
        })?;
        changed.ok_or_else(|| format!("rollout {id} was just changed by another server: look again and retry"))
    }

    /// One step of every running rollout: nodes that joined the fleet go to the last wave,
    /// then [`rollout::step`] decides. `fleet` is the accepted node ids.
    pub fn tick(&mut self, nodes: &BTreeMap<String, NodeRecord>, fleet: &BTreeSet<String>) -> Result<(), String> {
        let running: Vec<u64> = self.all.iter().filter(|r| r.state == State::Running).map(|r| r.id).collect();
        for id in running {
            let Some(r) = self.get(id) else { continue };
            let joining: Vec<String> = fleet.iter().filter(|n| r.wave_of(n).is_none()).cloned().collect();
            let join = |r: &mut Rollout| {
                for n in &joining {
                    r.join(n);
                }
                None
            };
            // Lost to another server's change: the next tick looks again.
            if !joining.is_empty() && self.change(id, "server", "rollout join", join)?.is_none() {
                continue;
            }
            let Some(r) = self.get(id) else { continue };
            let t = now();
            let standing = r.standing(nodes);
            let change = rollout::step(r, t, &standing);
            if let Some(change) = change {
                // Lost to another server that made the same step first: nothing to do.
                let _ = self.change(id, "server", "rollout step", |r| {
                    r.apply(&change, t);
                    let logged = matches!(
                        change,
                        rollout::Change::Pause(_) | rollout::Change::WaveStarts(_) | rollout::Change::Done
                    );
                    logged.then(|| r.reason.clone())
                })?;
            }
        }
        Ok(())
    }

    /// Changes rollout `id` with `edit` and writes it over the revision held: the rollout as
    /// written, or `None` when another server changed it first (then the stored one is read and
    /// the edit is not made: the caller looks again). `edit` returns what to put in the audit
    /// log, if anything.
    fn change(
        &mut self,
        id: u64,
        who: &str,
        action: &str,
        edit: impl FnOnce(&mut Rollout) -> Option<String>,
    ) -> Result<Option<Rollout>, String> {
        let slot = self.all.iter().position(|r| r.id == id).ok_or_else(|| format!("no rollout {id}"))?;
        let mut r = self.all.get(slot).cloned().ok_or_else(|| format!("no rollout {id}"))?;
        let said = edit(&mut r);
        r.rev = r.rev.wrapping_add(1);
        let entry = said.map(|d| AuditEntry {
            at: now(),
            who: who.into(),
            action: action.into(),
            detail: format!("rollout {id}: {d}"),
        });
        if self.db.update_rollout(&r, entry.as_ref())? {
            if let Some(s) = self.all.get_mut(slot) {
                *s = r.clone();
            }
            return Ok(Some(r));
        }
        let stored = self.db.rollout(id)?.ok_or_else(|| format!("rollout {id} is gone from the database"))?;
        if let Some(s) = self.all.get_mut(slot) {
            *s = stored;
        }
        Ok(None)
    }
}

/// The accepted, signed nodes of `nodes` with their groups under `profiles`.
pub fn fleet(nodes: &BTreeMap<String, NodeRecord>, profiles: Option<&Profiles>) -> BTreeMap<String, BTreeSet<String>> {
    nodes
        .iter()
        .filter(|(_, r)| r.node.is_some() && r.standing(profiles) == Standing::Accepted)
        .map(|(id, r)| (id.clone(), profiles.map(|p| p.groups_of(id, r.mac.as_deref())).unwrap_or_default()))
        .collect()
}
