//! Loops of PID 1 that outlive a panic in themselves.

use std::time::{Duration, Instant};

/// The first pause after a panic; it doubles with each panic that follows quickly.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause.
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// A run this long before its panic was not a panic loop: the pause starts again from the first.
const STEADY: Duration = Duration::from_secs(60);

/// Runs `work` until it returns; a panic in it is logged (by the hook, with where), reported, and
/// `work` runs again after a pause (1 s, doubling to 30 s while the panics come quickly; a run
/// of a minute without one starts from 1 s again) from the state it left — each loop run this
/// way keeps its state consistent between its steps, so a panic loses one step, never the node.
/// PID 1 must not end because one of its loops hit a bug.
pub fn guard<T>(name: &str, mut work: impl FnMut() -> T) -> T {
    // Half, so that the first panic, doubling it, pauses FIRST_PAUSE.
    let mut pause = FIRST_PAUSE / 2;
    loop {
        let started = Instant::now();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut work)) {
            Ok(done) => return done,
            Err(_) => {
                pause = next_pause(pause, started.elapsed());
                tracing::error!("the {name} loop panicked; it runs again in {} s from its last state", pause.as_secs());
                crate::report::stage("error", format!("the {name} loop panicked and was restarted"));
                std::thread::sleep(pause);
            }
        }
    }
}

/// The pause after a panic that came `ran` after the loop (re)started, `last` the pause before.
fn next_pause(last: Duration, ran: Duration) -> Duration {
    if ran >= STEADY {
        FIRST_PAUSE
    } else {
        last.saturating_mul(2).min(MAX_PAUSE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_panics_back_off_and_a_steady_run_starts_over() {
        // The first panic pauses 1 s whether or not the loop ran long (`last` starts at half).
        let mut pause = FIRST_PAUSE / 2;
        let mut seen = Vec::new();
        for _ in 0..7 {
            pause = next_pause(pause, Duration::from_millis(10));
            seen.push(pause.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(next_pause(MAX_PAUSE, STEADY), FIRST_PAUSE);
        assert_eq!(next_pause(Duration::from_secs(8), STEADY - Duration::from_millis(1)), Duration::from_secs(16));
    }

    #[test]
    fn a_panicking_loop_runs_again_from_its_state() {
        let mut count = 0;
        let done = guard("test", || {
            count += 1;
            if count == 1 {
                std::panic::panic_any("first run");
            }
            count
        });
        assert_eq!(done, 2);
    }
}
