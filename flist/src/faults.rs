//! Fault injection for tests: with the `faults` cargo feature (never in a release build), a named
//! point panics or stalls when the `FLINT_FAULTS` environment variable names it
//! (`POINT=panic`, `POINT=panic-once` (the first time only, in this process) or `POINT=stall`,
//! comma-separated; `fuse.read`, `init.supervisor`, …). Without the feature, [`hit`] is empty and
//! compiles away.

/// Panics or stalls here if `FLINT_FAULTS` says so for `LAYER.OP` (with the `faults` feature).
#[cfg(feature = "faults")]
#[allow(clippy::panic)] // Panicking on request is the point of this test-only build.
pub fn hit(layer: &str, op: &str) {
    let Ok(spec) = std::env::var("FLINT_FAULTS") else { return };
    let point = format!("{layer}.{op}");
    static FIRED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    for item in spec.split(',') {
        match item.split_once('=') {
            Some((p, "panic")) if p == point => panic!("fault injected at {point}"),
            Some((p, "panic-once")) if p == point => {
                let mut fired = crate::durable::lock(&FIRED);
                if !fired.contains(&point) {
                    fired.push(point.clone());
                    drop(fired);
                    panic!("fault injected at {point} (once)");
                }
            }
            Some((p, "stall")) if p == point => std::thread::sleep(std::time::Duration::from_secs(3600)),
            _ => {}
        }
    }
}

/// Nothing: built without the `faults` feature.
#[cfg(not(feature = "faults"))]
#[inline(always)]
pub fn hit(_layer: &str, _op: &str) {}
