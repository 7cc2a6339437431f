//! Loops of PID 1 that outlive a panic in themselves.

/// Runs `work` until it returns; a panic in it is logged (by the hook, with where), reported, and
/// `work` runs again after a pause (1 s, doubling to 30 s) from the state it left — each loop run
/// this way keeps its state consistent between its steps, so a panic loses one step, never the
/// node. PID 1 must not end because one of its loops hit a bug.
pub fn guard<T>(name: &str, mut work: impl FnMut() -> T) -> T {
    let mut pause = std::time::Duration::from_secs(1);
    loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut work)) {
            Ok(done) => return done,
            Err(_) => {
                tracing::error!("the {name} loop panicked; it runs again in {} s from its last state", pause.as_secs());
                crate::report::stage("error", format!("the {name} loop panicked and was restarted"));
                std::thread::sleep(pause);
                pause = pause.saturating_mul(2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}
