//! The health window after an upgrade: a pure step function from what the supervisor shows to a
//! verdict. The upgrade is good once every required service is ready (a oneshot: done); it fails
//! if one is not ready when the window ends, or if any service restarts as often as the manifest
//! allows within it (a crash loop). The node loop feeds it the supervisor's rows each second and
//! rolls back on [`Verdict::Failed`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flint_manifest::health::HealthPlan;

/// One service as the supervisor shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its name.
    pub name: String,
    /// Its phase word (`running`, `done`, `backoff`, …).
    pub state: String,
    /// How many times it was started.
    pub starts: u32,
}

impl Seen {
    fn ready(&self) -> bool {
        matches!(self.state.as_str(), "running" | "done")
    }
}

/// What the window says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet.
    Watching,
    /// Every required service is ready: the upgrade is good.
    Healthy,
    /// The upgrade is bad, and why.
    Failed(String),
}

/// An open health window.
#[derive(Debug, Clone)]
pub struct Window {
    plan: HealthPlan,
    opened: Instant,
    /// Starts of each service when first seen: later starts are restarts.
    baseline: BTreeMap<String, u32>,
}

impl Window {
    /// A window opened at `now` (the upgrade in place).
    pub fn open(plan: HealthPlan, now: Instant) -> Window {
        Window { plan, opened: now, baseline: BTreeMap::new() }
    }

    /// When the window ends.
    pub fn deadline(&self) -> Instant {
        crate::later(self.opened, self.plan.window)
    }

    /// The window's length.
    pub fn length(&self) -> Duration {
        self.plan.window
    }

    /// The verdict at `now`, given every service's row.
    pub fn step(&mut self, now: Instant, seen: &[Seen]) -> Verdict {
        for s in seen {
            // Its first start is not a restart; starts before the window are history.
            let baseline = *self.baseline.entry(s.name.clone()).or_insert(s.starts.max(1));
            let restarts = s.starts.saturating_sub(baseline);
            if restarts >= self.plan.restarts {
                return Verdict::Failed(format!(
                    "service {} restarted {restarts} times within the {} s health window (state {})",
                    s.name,
                    self.plan.window.as_secs_f64(),
                    s.state
                ));
            }
        }
        let waiting: Vec<String> = self
            .plan
            .require
            .iter()
            .filter(|r| !seen.iter().any(|s| &s.name == *r && s.ready()))
            .map(|r| {
                let state = seen.iter().find(|s| &s.name == r).map_or("missing", |s| s.state.as_str());
                format!("{r} ({state})")
            })
            .collect();
        if waiting.is_empty() {
            Verdict::Healthy
        } else if now >= self.deadline() {
            Verdict::Failed(format!(
                "not ready within the {} s health window: {}",
                self.plan.window.as_secs_f64(),
                waiting.join(", ")
            ))
        } else {
            Verdict::Watching
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    fn plan(require: &[&str], secs: u64, restarts: u32) -> HealthPlan {
        HealthPlan {
            require: require.iter().map(|s| s.to_string()).collect(),
            window: Duration::from_secs(secs),
            restarts,
        }
    }

    fn seen(name: &str, state: &str, starts: u32) -> Seen {
        Seen { name: name.into(), state: state.into(), starts }
    }

    #[test]
    fn ready_is_healthy_late_is_failed_and_a_crash_loop_fails_early() {
        let t0 = Instant::now();
        let mut w = Window::open(plan(&["web", "init"], 10, 3), t0);
        assert_eq!(w.step(t0, &[seen("web", "testing", 1), seen("init", "running", 1)]), Verdict::Watching);
        assert_eq!(
            w.step(t0 + Duration::from_secs(2), &[seen("web", "running", 1), seen("init", "done", 1)]),
            Verdict::Healthy
        );
        let mut late = Window::open(plan(&["web"], 10, 3), t0);
        assert_eq!(late.step(t0 + Duration::from_secs(9), &[seen("web", "testing", 1)]), Verdict::Watching);
        let Verdict::Failed(why) = late.step(t0 + Duration::from_secs(10), &[seen("web", "testing", 1)]) else {
            panic!()
        };
        assert!(why.contains("web (testing)"), "{why}");
        let Verdict::Failed(why) = late.step(t0 + Duration::from_secs(10), &[]) else { panic!() };
        assert!(why.contains("web (missing)"), "{why}");
        // A crash loop of any service fails the window before its end, even once others are ready.
        let mut looping = Window::open(plan(&["web"], 100, 3), t0);
        assert_eq!(looping.step(t0, &[seen("web", "testing", 1), seen("side", "backoff", 0)]), Verdict::Watching);
        assert_eq!(looping.step(t0, &[seen("web", "testing", 1), seen("side", "backoff", 3)]), Verdict::Watching);
        let Verdict::Failed(why) = looping.step(t0, &[seen("web", "testing", 1), seen("side", "backoff", 4)]) else {
            panic!()
        };
        assert!(why.contains("side restarted 3 times"), "{why}");
        // Starts before the window (an unchanged service) are not counted.
        let mut old = Window::open(plan(&["web"], 100, 2), t0);
        assert_eq!(old.step(t0, &[seen("web", "testing", 1), seen("db", "running", 40)]), Verdict::Watching);
        assert_eq!(old.step(t0, &[seen("web", "running", 1), seen("db", "running", 41)]), Verdict::Healthy);
    }

    proptest! {
        /// Over any sequence of observations: healthy exactly when every required service is
        /// ready and none has looped; never failed for lateness before the deadline.
        #[test]
        fn the_verdict_follows_the_rows(
            rows in prop::collection::vec(
                prop::collection::vec((0usize..4, prop::sample::select(vec!["running", "done", "testing", "backoff", "stopped"]), 0u32..8), 0..6),
                1..12),
            restarts in 1u32..5,
            required in prop::collection::btree_set(0usize..4, 0..4),
        ) {
            let names = ["a", "b", "c", "d"];
            let require: Vec<&str> = required.iter().map(|&i| names[i]).collect();
            let t0 = Instant::now();
            let mut w = Window::open(plan(&require, 60, restarts), t0);
            let mut starts_max = BTreeMap::new();
            for (i, row) in rows.iter().enumerate() {
                // Starts only grow, as the supervisor's counter does.
                let mut view: Vec<Seen> = Vec::new();
                for (n, state, starts) in row {
                    let name = names[*n];
                    if view.iter().any(|s| s.name == name) { continue; }
                    let s = starts_max.entry(name).or_insert(*starts);
                    *s = (*s).max(*starts);
                    view.push(seen(name, state, *s));
                }
                let now = t0 + Duration::from_secs(i as u64 * 10);
                let verdict = w.step(now, &view);
                let all_ready = require.iter().all(|r| view.iter().any(|s| s.name == *r && s.ready()));
                match &verdict {
                    Verdict::Healthy => prop_assert!(all_ready),
                    Verdict::Watching => prop_assert!(!all_ready && now < t0 + Duration::from_secs(60)),
                    Verdict::Failed(why) if why.contains("restarted") => {}
                    Verdict::Failed(_) => prop_assert!(!all_ready && now >= t0 + Duration::from_secs(60)),
                }
                if verdict != Verdict::Watching { break; }
            }
        }
    }
}
