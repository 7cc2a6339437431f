//! The health window after an upgrade: a pure step function from what the supervisor shows to a
//! verdict. The upgrade is good once every required service is ready (a oneshot: done) and has
//! stayed so, none restarting, for the plan's settle time; it fails if one is not ready when the
//! window ends, or if any service restarts as often as the manifest allows within it (a crash
//! loop). The node loop feeds it the supervisor's rows each second and
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
    /// Since when every required service has been ready, and their starts then.
    ready_since: Option<(Instant, Vec<u32>)>,
}

impl Window {
    /// A window opened at `now` (the upgrade in place).
    pub fn open(plan: HealthPlan, now: Instant) -> Window {
        Window { plan, opened: now, baseline: BTreeMap::new(), ready_since: None }
    }

    /// When the window ends.
    pub fn deadline(&self) -> Instant {
        crate::later(self.opened, self.plan.window)
    }

    /// The window's length.
    pub fn length(&self) -> Duration {
        self.plan.window
    }

    /// Whether the required services (one at least) were all ready at the last [`Window::step`];
    /// the settle time may still be running.
    pub fn all_ready(&self) -> bool {
        self.ready_since.is_some() && !self.plan.require.is_empty()
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
            let starts: Vec<u32> =
                self.plan.require.iter().map(|r| seen.iter().find(|s| &s.name == r).map_or(0, |s| s.starts)).collect();
            // A restart in between means it was not ready all along: the settle time starts again.
            let since = match self.ready_since.take() {
                Some((at, before)) if before == starts => at,
                _ => now,
            };
            self.ready_since = Some((since, starts));
            if now.saturating_duration_since(since) >= self.plan.settle {
                Verdict::Healthy
            } else {
                Verdict::Watching
            }
        } else if now >= self.deadline() {
            Verdict::Failed(format!(
                "not ready within the {} s health window: {}",
                self.plan.window.as_secs_f64(),
                waiting.join(", ")
            ))
        } else {
            self.ready_since = None;
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
        settled(require, secs, restarts, 0)
    }

    fn settled(require: &[&str], secs: u64, restarts: u32, settle: u64) -> HealthPlan {
        HealthPlan {
            require: require.iter().map(|s| s.to_string()).collect(),
            window: Duration::from_secs(secs),
            restarts,
            settle: Duration::from_secs(settle),
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

    #[test]
    fn ready_for_a_moment_is_not_healthy_until_it_stays_ready_for_the_settle_time() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut w = Window::open(settled(&["web"], 20, 3, 5), t0);
        assert!(!w.all_ready());
        assert_eq!(w.step(at(1), &[seen("web", "running", 1)]), Verdict::Watching);
        // Ready, not yet settled: what the start's traces end on.
        assert!(w.all_ready());
        assert_eq!(w.step(at(4), &[seen("web", "running", 1)]), Verdict::Watching);
        // It crashed and was restarted between two looks: ready again, but the settle time restarts.
        assert_eq!(w.step(at(5), &[seen("web", "running", 2)]), Verdict::Watching);
        assert_eq!(w.step(at(9), &[seen("web", "running", 2)]), Verdict::Watching);
        assert_eq!(w.step(at(10), &[seen("web", "running", 2)]), Verdict::Healthy);
        // Not ready in between also restarts it; settling may run past the window's end.
        let mut late = Window::open(settled(&["web"], 10, 3, 5), t0);
        assert_eq!(late.step(at(2), &[seen("web", "running", 1)]), Verdict::Watching);
        assert_eq!(late.step(at(8), &[seen("web", "testing", 1)]), Verdict::Watching);
        assert!(!late.all_ready());
        assert_eq!(late.step(at(9), &[seen("web", "running", 1)]), Verdict::Watching);
        assert_eq!(late.step(at(12), &[seen("web", "running", 1)]), Verdict::Watching);
        assert_eq!(late.step(at(14), &[seen("web", "running", 1)]), Verdict::Healthy);
        // After the window's end, a service that stops being ready fails it.
        let mut flaps = Window::open(settled(&["web"], 10, 3, 5), t0);
        assert_eq!(flaps.step(at(9), &[seen("web", "running", 1)]), Verdict::Watching);
        assert!(matches!(flaps.step(at(11), &[seen("web", "backoff", 1)]), Verdict::Failed(_)));
        // A crash loop that is ready between crashes fails on its restarts, never healthy.
        let mut looping = Window::open(settled(&["web"], 60, 2, 10), t0);
        assert_eq!(looping.step(at(1), &[seen("web", "running", 1)]), Verdict::Watching);
        assert_eq!(looping.step(at(2), &[seen("web", "running", 2)]), Verdict::Watching);
        let Verdict::Failed(why) = looping.step(at(3), &[seen("web", "running", 3)]) else { panic!() };
        assert!(why.contains("web restarted 2 times"), "{why}");
        // Nothing required: healthy once settled, but never "all ready" (a trace would end at once).
        let mut none = Window::open(settled(&[], 10, 3, 5), t0);
        assert_eq!(none.step(at(1), &[seen("web", "running", 1)]), Verdict::Watching);
        assert!(!none.all_ready());
        assert_eq!(none.step(at(7), &[seen("web", "running", 1)]), Verdict::Healthy);
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
            settle_steps in 0u64..3,
        ) {
            let names = ["a", "b", "c", "d"];
            let require: Vec<&str> = required.iter().map(|&i| names[i]).collect();
            let t0 = Instant::now();
            let mut w = Window::open(settled(&require, 60, restarts, settle_steps * 10), t0);
            let mut starts_max = BTreeMap::new();
            // A model of the settle time: since which look every required service has been
            // ready with the same starts.
            let mut ready_run: Option<(usize, Vec<u32>)> = None;
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
                let starts: Vec<u32> = require.iter()
                    .map(|r| view.iter().find(|s| s.name == *r).map_or(0, |s| s.starts)).collect();
                ready_run = match ready_run.take() {
                    Some((first, before)) if all_ready && before == starts => Some((first, before)),
                    _ if all_ready => Some((i, starts)),
                    _ => None,
                };
                let settled = ready_run.as_ref().is_some_and(|(first, _)| (i - first) as u64 >= settle_steps);
                match &verdict {
                    Verdict::Healthy => prop_assert!(all_ready && settled),
                    Verdict::Watching => prop_assert!(
                        (!all_ready && now < t0 + Duration::from_secs(60)) || (all_ready && !settled)
                    ),
                    Verdict::Failed(why) if why.contains("restarted") => {}
                    Verdict::Failed(_) => prop_assert!(!all_ready && now >= t0 + Duration::from_secs(60)),
                }
                if verdict != Verdict::Watching { break; }
            }
        }
    }
}
