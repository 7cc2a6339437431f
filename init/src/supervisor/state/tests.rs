#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::*;

const SPEC: Spec = Spec {
    oneshot: false,
    has_test: false,
    port_test: false,
    test_timeout: Duration::from_secs(10),
    stop_signal: Signal::SIGTERM,
    stop_timeout: Duration::from_secs(3),
    restart: RestartPolicy::Always,
};

fn bo() -> Backoff {
    Backoff {
        first: Duration::from_secs(1),
        max: Duration::from_secs(8),
        stable: Duration::from_secs(30),
        test_interval: Duration::from_millis(500),
    }
}

/// Drives one machine with a clock.
struct Run {
    s: State,
    now: Instant,
    spec: Spec,
    deps_up: bool,
}

impl Run {
    fn new(spec: Spec) -> Run {
        Run { s: State::default(), now: Instant::now(), spec, deps_up: true }
    }
    fn ev(&mut self, e: Event) -> Vec<Action> {
        let (s, a) = step(self.s, e, self.now, self.deps_up, &self.spec, &bo());
        self.s = s;
        a.into_iter().filter(|a| !matches!(a, Action::Note(_))).collect()
    }
    fn at(&mut self, secs: f64) -> Vec<Action> {
        self.now += Duration::from_secs_f64(secs);
        self.ev(Event::Tick)
    }
}

#[test]
fn waits_for_dependencies_then_starts() {
    let mut r = Run::new(SPEC);
    r.deps_up = false;
    assert_eq!(r.ev(Event::Tick), vec![]);
    assert_eq!(r.s.phase, Phase::Waiting);
    r.deps_up = true;
    assert_eq!(r.ev(Event::Tick), vec![Action::Spawn]);
    assert_eq!(r.ev(Event::Spawned(10)), vec![]);
    assert!(r.s.is_up());
}

#[test]
fn crashes_back_off_exponentially_up_to_the_cap_and_stable_uptime_resets() {
    let mut r = Run::new(SPEC);
    r.ev(Event::Tick);
    let mut pid = 100;
    r.ev(Event::Spawned(pid));
    let mut delays = Vec::new();
    for _ in 0..6 {
        assert_eq!(r.ev(Event::Exited { pid, success: false }), vec![Action::SignalGroup(pid, Signal::SIGKILL)]);
        let Phase::Backoff { until } = r.s.phase else { panic!("{:?}", r.s) };
        delays.push(until.duration_since(r.now).as_secs());
        // Nothing before the deadline, a spawn at it.
        assert_eq!(r.at(until.duration_since(r.now).as_secs_f64() - 0.01), vec![]);
        assert_eq!(r.at(0.01), vec![Action::Spawn]);
        pid += 1;
        r.ev(Event::Spawned(pid));
    }
    assert_eq!(delays, vec![1, 2, 4, 8, 8, 8]);
    // Up for longer than `stable`: the next crash is a first one again.
    r.now += Duration::from_secs(31);
    r.ev(Event::Exited { pid, success: false });
    let Phase::Backoff { until } = r.s.phase else { panic!() };
    assert_eq!(until.duration_since(r.now), Duration::from_secs(1));
}

#[test]
fn oneshot_completes_or_retries() {
    let mut r = Run::new(Spec { oneshot: true, ..SPEC });
    r.ev(Event::Tick);
    r.ev(Event::Spawned(5));
    assert!(!r.s.is_up(), "a running oneshot is not done");
    r.ev(Event::Exited { pid: 5, success: false });
    assert!(matches!(r.s.phase, Phase::Backoff { .. }));
    assert_eq!(r.at(1.0), vec![Action::Spawn]);
    r.ev(Event::Spawned(6));
    r.ev(Event::Exited { pid: 6, success: true });
    assert_eq!(r.s.phase, Phase::Done);
    assert!(r.s.is_up());
    assert_eq!(r.at(100.0), vec![], "a completed oneshot stays done");
}

#[test]
fn a_port_check_is_tried_every_20_ms_until_it_passes_or_times_out() {
    let spec = Spec { has_test: true, port_test: true, ..SPEC };
    let mut r = Run::new(spec);
    r.ev(Event::Tick);
    assert_eq!(r.ev(Event::Spawned(7)), vec![Action::SpawnTest]);
    let started = r.now;
    // Well past the age where a command's checks are 500 ms apart: still every 20 ms.
    for _ in 0..200 {
        assert_eq!(r.ev(Event::Checked { success: false }), vec![]);
        assert!(!r.s.is_up());
        let due = r.s.deadline().unwrap();
        assert_eq!(due.duration_since(r.now), PORT_TEST_EVERY);
        r.now = due - Duration::from_millis(1);
        assert_eq!(r.ev(Event::Tick), vec![], "a check before it was due");
        r.now = due;
        assert_eq!(r.ev(Event::Tick), vec![Action::SpawnTest]);
    }
    assert_eq!(r.now.duration_since(started), PORT_TEST_EVERY * 200);
    assert_eq!(r.ev(Event::Checked { success: true }), vec![]);
    assert!(r.s.is_up());
    assert_eq!(r.s.deadline(), None);
    // A late result changes nothing once ready; nor does an exit of some other process.
    assert_eq!(r.ev(Event::Checked { success: false }), vec![]);
    assert!(r.s.is_up());

    // Never passing: restarted once test_timeout has gone by, as for a command.
    let mut r = Run::new(spec);
    r.ev(Event::Tick);
    r.ev(Event::Spawned(8));
    let started = r.now;
    let mut restarted = false;
    for _ in 0..1000 {
        r.ev(Event::Checked { success: false });
        r.now = r.s.deadline().unwrap();
        if r.ev(Event::Tick) == vec![Action::SignalGroup(8, Signal::SIGTERM)] {
            restarted = true;
            break;
        }
    }
    assert!(restarted, "{:?}", r.s);
    assert!(r.now.duration_since(started) > spec.test_timeout);
    assert!(r.now.duration_since(started) <= spec.test_timeout + PORT_TEST_EVERY);
    assert!(matches!(r.s.phase, Phase::Stopping { pid: 8, restart: true, .. }), "{:?}", r.s);
}

#[test]
fn readiness_is_checked_until_it_passes_then_bounded() {
    let mut r = Run::new(Spec { has_test: true, ..SPEC });
    r.ev(Event::Tick);
    assert_eq!(r.ev(Event::Spawned(7)), vec![Action::SpawnTest]);
    assert!(!r.s.is_up());
    // Failed checks are retried soon after the start, then more and more sparsely, up to
    // test_interval apart.
    let started = r.now;
    let mut delays = Vec::new();
    for test in 70..90 {
        r.ev(Event::TestSpawned(test));
        assert_eq!(r.ev(Event::Exited { pid: test, success: false }), vec![]);
        let due = r.s.deadline().unwrap();
        delays.push(due.duration_since(r.now));
        r.now = due - Duration::from_millis(1);
        assert_eq!(r.ev(Event::Tick), vec![], "a check before it was due");
        r.now = due;
        assert_eq!(r.ev(Event::Tick), vec![Action::SpawnTest]);
    }
    assert_eq!(delays[0], Duration::from_millis(20));
    assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
    assert_eq!(*delays.last().unwrap(), Duration::from_millis(500));
    let first_two_seconds = delays
        .iter()
        .scan(Duration::ZERO, |t, d| {
            *t += *d;
            Some(*t)
        })
        .take_while(|t| *t <= Duration::from_secs(2))
        .count();
    assert!((8..=16).contains(&first_two_seconds), "{first_two_seconds} checks in 2 s: {delays:?}");
    assert!(r.now.duration_since(started) > Duration::from_secs(3));
    r.ev(Event::TestSpawned(91));
    r.ev(Event::Exited { pid: 91, success: true });
    assert!(r.s.is_up());
    assert_eq!(r.s.deadline(), None);

    // A check that never passes: after test_timeout, stop and restart with backoff.
    let mut r = Run::new(Spec { has_test: true, ..SPEC });
    r.ev(Event::Tick);
    r.ev(Event::Spawned(8));
    for i in 0..40 {
        if let Some(a) = r.ev(Event::TestSpawned(80 + i)).first() {
            panic!("{a:?}");
        }
        r.ev(Event::Exited { pid: 80 + i, success: false });
        let actions = r.at(0.5);
        if actions.contains(&Action::SignalGroup(8, Signal::SIGTERM)) {
            assert!(i >= 19, "gave up too early, after {i} checks");
            break;
        }
        assert_eq!(actions, vec![Action::SpawnTest]);
    }
    assert!(matches!(r.s.phase, Phase::Stopping { restart: true, .. }));
    r.ev(Event::Exited { pid: 8, success: false });
    assert!(matches!(r.s.phase, Phase::Backoff { .. }), "{:?}", r.s);
}

#[test]
fn stop_escalates_to_sigkill_after_the_grace() {
    let mut r = Run::new(SPEC);
    r.ev(Event::Tick);
    r.ev(Event::Spawned(9));
    assert_eq!(r.ev(Event::Stop), vec![Action::SignalGroup(9, Signal::SIGTERM)]);
    assert_eq!(r.at(2.9), vec![]);
    assert_eq!(r.at(0.1), vec![Action::SignalGroup(9, Signal::SIGKILL)]);
    assert_eq!(r.at(5.0), vec![Action::SignalGroup(9, Signal::SIGKILL)], "kill repeated while stuck");
    r.ev(Event::Exited { pid: 9, success: false });
    assert_eq!(r.s.phase, Phase::Stopped);
    assert_eq!(r.at(1000.0), vec![], "a stopped service stays down");
    assert_eq!(r.ev(Event::Start), vec![Action::Spawn]);
}

#[test]
fn restart_stops_then_starts_at_once() {
    let mut r = Run::new(SPEC);
    r.ev(Event::Tick);
    r.ev(Event::Spawned(11));
    assert_eq!(r.ev(Event::Restart), vec![Action::SignalGroup(11, Signal::SIGTERM)]);
    assert_eq!(
        r.ev(Event::Exited { pid: 11, success: false }),
        vec![Action::SignalGroup(11, Signal::SIGKILL), Action::Spawn]
    );
    assert_eq!(r.s.starts, 2);
}

#[test]
fn stray_events_change_nothing() {
    // Every event in every phase either moves as specified above or leaves the state alone; a
    // foreign pid never does anything.
    let phases = [
        Phase::Waiting,
        Phase::Starting,
        Phase::Done,
        Phase::Stopped,
        Phase::Backoff { until: Instant::now() + Duration::from_secs(100) },
    ];
    for phase in phases {
        let s = State { phase, failures: 0, starts: 1 };
        let (s2, a) = step(s, Event::Exited { pid: 4242, success: true }, Instant::now(), true, &SPEC, &bo());
        assert_eq!((s2, a), (s, vec![]));
    }
    let running = State {
        phase: Phase::Running { pid: 1, since: Instant::now(), ready: true, test_pid: None, next_test: None },
        failures: 0,
        starts: 1,
    };
    for e in [Event::Tick, Event::Start, Event::Spawned(3), Event::Exited { pid: 2, success: false }] {
        let (s2, a) = step(running, e, Instant::now(), true, &SPEC, &bo());
        assert_eq!((s2, a), (running, vec![]), "{e:?}");
    }
}

#[test]
fn restart_policies_decide_what_an_exit_leads_to() {
    let exit = |restart, success| {
        let mut r = Run::new(Spec { restart, ..SPEC });
        r.ev(Event::Tick);
        r.ev(Event::Spawned(7));
        r.ev(Event::Exited { pid: 7, success });
        r.s
    };
    use RestartPolicy::*;
    assert!(matches!(exit(Always, true).phase, Phase::Backoff { .. }), "always: a clean exit starts again");
    assert!(matches!(exit(Always, false).phase, Phase::Backoff { .. }));
    assert_eq!(exit(OnFailure, true).phase, Phase::Done, "on-failure: a clean exit (power-off) is the end");
    assert!(matches!(exit(OnFailure, false).phase, Phase::Backoff { .. }), "on-failure: a crash starts again");
    assert_eq!(exit(Never, true).phase, Phase::Done);
    let failed = exit(Never, false);
    assert_eq!((failed.phase, failed.failures), (Phase::Stopped, 1), "never: a crash stays down, counted");
    // An operator's start still works after either.
    let mut r = Run::new(Spec { restart: Never, ..SPEC });
    r.ev(Event::Tick);
    r.ev(Event::Spawned(7));
    r.ev(Event::Exited { pid: 7, success: false });
    assert_eq!(r.ev(Event::Start), vec![Action::Spawn]);
}

#[test]
fn durations_past_what_an_instant_holds_never_panic() {
    // Validation bounds what a manifest may say; the machine must survive what it missed.
    let huge = Spec { stop_timeout: Duration::MAX, test_timeout: Duration::MAX, has_test: true, ..SPEC };
    let backoff =
        Backoff { first: Duration::MAX, max: Duration::MAX, stable: Duration::MAX, test_interval: Duration::MAX };
    let now = Instant::now();
    let (s, _) = step(State::default(), Event::Tick, now, true, &huge, &backoff);
    let (s, _) = step(s, Event::Spawned(7), now, true, &huge, &backoff);
    let (s, _) = step(s, Event::TestSpawnFailed, now, true, &huge, &backoff);
    let (stopping, actions) = step(s, Event::Stop, now, true, &huge, &backoff);
    assert_eq!(actions, vec![Action::SignalGroup(7, Signal::SIGTERM)]);
    assert!(stopping.deadline().is_some_and(|d| d > now), "the grace is as long as an Instant allows");
    let (s, _) = step(stopping, Event::Exited { pid: 7, success: false }, now, true, &huge, &backoff);
    assert_eq!(s.phase, Phase::Stopped);
    let (s, _) = step(s, Event::Start, now, true, &huge, &backoff);
    let (s, _) = step(s, Event::Spawned(8), now, true, &huge, &backoff);
    let (s, _) = step(s, Event::Exited { pid: 8, success: false }, now, true, &huge, &backoff);
    assert!(matches!(s.phase, Phase::Backoff { until } if until > now), "{:?}", s.phase);
}

#[test]
fn later_saturates() {
    let now = Instant::now();
    assert_eq!(crate::later(now, Duration::from_secs(3)), now + Duration::from_secs(3));
    assert!(crate::later(now, Duration::MAX) > now);
}
