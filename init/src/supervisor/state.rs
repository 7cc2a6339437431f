//! One service's life as a pure state machine: [`step`] takes the state and an event and returns
//! the new state and the actions to perform. No I/O, no clock: the caller passes `now`, so every
//! path is tested exactly, and the loop in [`super`] only performs the actions.

use std::time::{Duration, Instant};

use flint_manifest::RestartPolicy;
use nix::sys::signal::Signal;

/// Restart pacing: doubling delays, forgotten once a service has run long enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub first: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Uptime after which a crash counts as the first again.
    pub stable: Duration,
    /// Longest wait between two failed readiness checks (see [`Backoff::test_delay`]).
    pub test_interval: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(500),
            max: Duration::from_secs(60),
            stable: Duration::from_secs(30),
            test_interval: Duration::from_millis(250),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.saturating_sub(1).min(20)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// The wait after a failed readiness check of a service started `age` ago: half its age,
    /// from 20 ms up to `test_interval`. A service is most likely to become ready just after its
    /// start, so checks come soon then and grow sparse (about a dozen in its first 2 s), rather
    /// than every `test_interval` from the first.
    pub fn test_delay(&self, age: Duration) -> Duration {
        const SOONEST: Duration = Duration::from_millis(20);
        (age / 2).max(SOONEST).min(self.test_interval)
    }
}

/// Where a service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for its dependencies to be up.
    Waiting,
    /// Asked to start; the loop is spawning it.
    Starting,
    /// Running since `since`.
    Running {
        /// Its pid (and process group).
        pid: i32,
        /// Start time.
        since: Instant,
        /// Its readiness check passed (or it has none).
        ready: bool,
        /// The readiness check in flight, if any.
        test_pid: Option<i32>,
        /// When to run the next readiness check; `None` when none is due (ready, or no check).
        next_test: Option<Instant>,
    },
    /// A oneshot that completed.
    Done,
    /// Exited or failed; starts again at `until`.
    Backoff {
        /// When.
        until: Instant,
    },
    /// Asked to stop: SIGKILL at `deadline`.
    Stopping {
        /// Its pid.
        pid: i32,
        /// When to stop asking nicely.
        deadline: Instant,
        /// Start again once it is gone.
        restart: bool,
    },
    /// Stopped on request; stays down until started.
    Stopped,
}

/// A service's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Where it is.
    pub phase: Phase,
    /// Consecutive failures, for the backoff.
    pub failures: u32,
    /// Times it was started.
    pub starts: u32,
}

impl Default for State {
    fn default() -> Self {
        State { phase: Phase::Waiting, failures: 0, starts: 0 }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Time passed, or another service changed: re-check dependencies and deadlines.
    Tick,
    /// The loop spawned the service.
    Spawned(i32),
    /// The loop could not spawn it.
    SpawnFailed,
    /// The loop spawned the readiness check.
    TestSpawned(i32),
    /// The readiness check could not be spawned.
    TestSpawnFailed,
    /// A readiness check init made itself (a port) passed or not.
    Checked {
        /// It passed.
        success: bool,
    },
    /// A process exited: the service or its readiness check.
    Exited {
        /// Which.
        pid: i32,
        /// Exit status 0.
        success: bool,
    },
    /// Operator: start (after a stop).
    Start,
    /// Operator or shutdown: stop and stay down.
    Stop,
    /// Operator or reconcile: stop, then start again.
    Restart,
}

/// What the loop must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Spawn the service, then report [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn,
    /// Run the readiness check: spawn its command, then report [`Event::TestSpawned`] or
    /// [`Event::TestSpawnFailed`]; or try its port, then report [`Event::Checked`].
    SpawnTest,
    /// Send a signal to a process group.
    SignalGroup(i32, Signal),
    /// Log why something happened.
    Note(&'static str),
}

/// The service's fixed facts the machine needs.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Runs once.
    pub oneshot: bool,
    /// Has a readiness check.
    pub has_test: bool,
    /// The check is a port init tries itself: it costs next to nothing, so it runs every
    /// [`PORT_TEST_EVERY`] until it passes instead of ever more sparsely.
    pub port_test: bool,
    /// How long the check may keep failing after a start.
    pub test_timeout: Duration,
    /// Stop signal.
    pub stop_signal: Signal,
    /// Grace before SIGKILL.
    pub stop_timeout: Duration,
    /// Whether it starts again once it ended.
    pub restart: RestartPolicy,
}

/// The wait between two tries of a port readiness check.
pub const PORT_TEST_EVERY: Duration = Duration::from_millis(20);

/// How often a stuck kill is repeated.
const KILL_AGAIN: Duration = Duration::from_secs(5);

/// Advances one service.
pub fn step(
    s: State,
    event: Event,
    now: Instant,
    deps_up: bool,
    spec: &Spec,
    backoff: &Backoff,
) -> (State, Vec<Action>) {
    use Phase::*;
    let failed = |s: State, why: &'static str| {
        let failures = s.failures.saturating_add(1);
        let until = crate::later(now, backoff.delay(failures));
        (State { phase: Backoff { until }, failures, ..s }, vec![Action::Note(why)])
    };
    // A readiness check ended: ready once one passed; else the next is due after a wait.
    let checked = |s: State, pid: i32, since: Instant, ready: bool, success: bool| {
        let ready = ready || success;
        let delay =
            if spec.port_test { PORT_TEST_EVERY } else { backoff.test_delay(now.saturating_duration_since(since)) };
        let next_test = (!ready).then_some(crate::later(now, delay));
        let note = if success { vec![Action::Note("ready")] } else { vec![] };
        (State { phase: Running { pid, since, ready, test_pid: None, next_test }, ..s }, note)
    };
    let stop = |s: State, pid: i32, restart: bool| {
        let deadline = crate::later(now, spec.stop_timeout);
        (State { phase: Stopping { pid, deadline, restart }, ..s }, vec![Action::SignalGroup(pid, spec.stop_signal)])
    };
    match (s.phase, event) {
        // Operator requests.
        (Running { pid, .. }, Event::Stop) => stop(s, pid, false),
        (Running { pid, .. }, Event::Restart) => stop(State { failures: 0, ..s }, pid, true),
        (Stopping { pid, deadline, .. }, Event::Stop) => {
            (State { phase: Stopping { pid, deadline, restart: false }, ..s }, vec![])
        }
        (Stopping { pid, deadline, .. }, Event::Start | Event::Restart) => {
            (State { phase: Stopping { pid, deadline, restart: true }, ..s }, vec![])
        }
        (Waiting | Backoff { .. } | Done | Stopped, Event::Stop) => (State { phase: Stopped, ..s }, vec![]),
        (Stopped | Done | Backoff { .. }, Event::Start | Event::Restart) => {
            step(State { phase: Waiting, failures: 0, ..s }, Event::Tick, now, deps_up, spec, backoff)
        }
        (Starting, Event::Stop) => (State { phase: Stopped, ..s }, vec![]),

        // Starting.
        (Waiting, Event::Tick | Event::Start | Event::Restart) if deps_up => {
            (State { phase: Starting, starts: s.starts.saturating_add(1), ..s }, vec![Action::Spawn])
        }
        (Starting, Event::Spawned(pid)) => {
            // A oneshot is up once it completed, not while it runs.
            let ready = !spec.has_test && !spec.oneshot;
            let next_test = spec.has_test.then_some(now);
            let phase = Running { pid, since: now, ready, test_pid: None, next_test };
            let actions = if spec.has_test { vec![Action::SpawnTest] } else { vec![Action::Note("running")] };
            (State { phase, ..s }, actions)
        }
        (Starting, Event::SpawnFailed) => failed(s, "could not be started"),

        // Readiness.
        (Running { pid, since, ready: false, test_pid: None, next_test: Some(due) }, Event::Tick) if now >= due => {
            if now.duration_since(since) > spec.test_timeout {
                let (st, mut actions) = stop(State { failures: s.failures.saturating_add(1), ..s }, pid, true);
                actions.push(Action::Note("readiness check timed out: restarting"));
                (st, actions)
            } else {
                (s, vec![Action::SpawnTest])
            }
        }
        (Running { pid, since, ready, next_test, .. }, Event::TestSpawned(test)) => {
            (State { phase: Running { pid, since, ready, test_pid: Some(test), next_test }, ..s }, vec![])
        }
        (Running { pid, since, ready, .. }, Event::TestSpawnFailed) => {
            let next_test = Some(crate::later(now, backoff.test_interval));
            (State { phase: Running { pid, since, ready, test_pid: None, next_test }, ..s }, vec![])
        }
        (Running { pid, since, ready, test_pid: Some(test), .. }, Event::Exited { pid: exited, success })
            if exited == test =>
        {
            checked(s, pid, since, ready, success)
        }
        (Running { pid, since, ready, test_pid: None, .. }, Event::Checked { success }) => {
            checked(s, pid, since, ready, success)
        }

        // The service exits.
        (Running { pid, since, test_pid, .. }, Event::Exited { pid: exited, success }) if exited == pid => {
            let mut actions = vec![Action::SignalGroup(pid, Signal::SIGKILL)];
            if let Some(t) = test_pid {
                actions.push(Action::SignalGroup(t, Signal::SIGKILL));
            }
            let s = if now.duration_since(since) >= backoff.stable { State { failures: 0, ..s } } else { s };
            let (st, more) = if spec.oneshot && success {
                (State { phase: Done, failures: 0, ..s }, vec![Action::Note("completed")])
            } else if success && spec.restart != RestartPolicy::Always {
                (
                    State { phase: Done, failures: 0, ..s },
                    vec![Action::Note("exited; not started again (restart policy)")],
                )
            } else if spec.restart == RestartPolicy::Never {
                let s = State { failures: s.failures.saturating_add(1), ..s };
                (State { phase: Stopped, ..s }, vec![Action::Note("failed; not started again (restart: never)")])
            } else if success {
                failed(s, "exited")
            } else {
                failed(s, "failed")
            };
            actions.extend(more);
            (st, actions)
        }
        (Stopping { pid, restart, .. }, Event::Exited { pid: exited, .. }) if exited == pid => {
            let actions = vec![Action::SignalGroup(pid, Signal::SIGKILL), Action::Note("stopped")];
            if restart && s.failures > 0 {
                // Restarted because it failed (its readiness check timed out): paced.
                let until = crate::later(now, backoff.delay(s.failures));
                (State { phase: Backoff { until }, ..s }, actions)
            } else if restart {
                let (st, more) = step(State { phase: Waiting, ..s }, Event::Tick, now, deps_up, spec, backoff);
                (st, actions.into_iter().chain(more).collect())
            } else {
                (State { phase: Stopped, ..s }, actions)
            }
        }
        (Stopping { pid, restart, deadline }, Event::Tick) if now >= deadline => {
            let phase = Stopping { pid, restart, deadline: crate::later(now, KILL_AGAIN) };
            (
                State { phase, ..s },
                vec![Action::SignalGroup(pid, Signal::SIGKILL), Action::Note("did not stop in time: killed")],
            )
        }
        (Backoff { until }, Event::Tick) if now >= until => {
            step(State { phase: Waiting, ..s }, Event::Tick, now, deps_up, spec, backoff)
        }
        _ => (s, vec![]),
    }
}

impl State {
    /// Up for its dependents: running and ready, or a oneshot that completed.
    pub fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Running { ready: true, .. } | Phase::Done)
    }

    /// Nothing of it runs any more.
    pub fn is_down(&self) -> bool {
        matches!(self.phase, Phase::Waiting | Phase::Done | Phase::Backoff { .. } | Phase::Stopped)
    }

    /// The next moment a [`Event::Tick`] may change something.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Running { ready: false, test_pid: None, next_test, .. } => next_test,
            Phase::Backoff { until } => Some(until),
            Phase::Stopping { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// Processes of this service, main first.
    pub fn pids(&self) -> Vec<i32> {
        match self.phase {
            Phase::Running { pid, test_pid, .. } => std::iter::once(pid).chain(test_pid).collect(),
            Phase::Stopping { pid, .. } => vec![pid],
            _ => vec![],
        }
    }

    /// A short word for `list`.
    pub fn word(&self) -> &'static str {
        match self.phase {
            Phase::Waiting => "waiting",
            Phase::Starting => "starting",
            Phase::Running { ready: true, .. } => "running",
            Phase::Running { ready: false, .. } => "testing",
            Phase::Done => "done",
            Phase::Backoff { .. } => "backoff",
            Phase::Stopping { .. } => "stopping",
            Phase::Stopped => "stopped",
        }
    }
}

#[cfg(test)]
mod tests;
