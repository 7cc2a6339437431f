//! How far the node's clock can be believed, in three states:
//!
//! - *trusted*: an SNTP server answered, or the RTC reads later than both the initramfs's build
//!   time (the mtime of `/init`) and the last time recorded on the cache disk;
//! - *coarse*: only a boot server's HTTP `Date` set it, which may move the clock forward, never
//!   back, and never makes it trusted;
//! - *unknown*.
//!
//! SNTP runs in the background, off the boot's critical path; what needs a trusted clock (TLS
//! certificate checks, manifest expiry) asks for it and says so when it has none.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The clock's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Nothing vouches for it.
    Unknown,
    /// Moved forward to a server's `Date`; good to seconds, not to be relied on.
    Coarse,
    /// SNTP, or an RTC later than every floor.
    Trusted,
}

/// The state and what set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clock {
    /// Its state.
    pub trust: Trust,
    /// What set it (`SNTP 10.0.2.2`, `the RTC`, `the Date of http://…`).
    pub source: String,
}

impl std::fmt::Display for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.trust {
            Trust::Unknown => write!(f, "unknown"),
            Trust::Coarse => write!(f, "coarse ({})", self.source),
            Trust::Trusted => write!(f, "trusted ({})", self.source),
        }
    }
}

static CLOCK: Mutex<Clock> = Mutex::new(Clock { trust: Trust::Unknown, source: String::new() });
static CHANGED: Condvar = Condvar::new();
/// Whether this process sets the machine's clock (PID 1 does; `init run` on a host never).
static IN_CHARGE: AtomicBool = AtomicBool::new(false);
/// Where the time is recorded once trusted (the cache disk's state directory).
static RECORD_IN: OnceLock<PathBuf> = OnceLock::new();

/// The clock's state now.
pub fn now() -> Clock {
    flist::durable::lock(&CLOCK).clone()
}

fn set(trust: Trust, source: String) {
    {
        let mut clock = flist::durable::lock(&CLOCK);
        *clock = Clock { trust, source };
        tracing::info!("clock: {clock}");
        crate::report::stage("clock", clock.to_string());
        CHANGED.notify_all();
    }
    record_kept();
}

/// Waits up to `timeout` for the clock to be trusted; whether it is.
pub fn wait_trusted(timeout: Duration) -> bool {
    let clock = flist::durable::lock(&CLOCK);
    let (clock, _) = CHANGED
        .wait_timeout_while(clock, timeout, |c| c.trust != Trust::Trusted)
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    clock.trust == Trust::Trusted
}

/// Seconds since 1970 of a time (0 before it).
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether a clock reading `now` may be trusted as it is: later than the build and than the
/// last time recorded (when there is one). A build time of 0 (unknown) vouches for nothing.
pub fn rtc_plausible(now: u64, built: u64, recorded: Option<u64>) -> bool {
    built > 0 && now > built && recorded.is_none_or(|r| now > r)
}

/// How far to step a clock reading `now` forward to a server's `date`, if at all: never back,
/// and not for less than two seconds (the answer's own age).
pub fn forward_step(now: SystemTime, date: SystemTime) -> Option<Duration> {
    date.duration_since(now).ok().filter(|d| *d >= Duration::from_secs(2))
}

/// The initramfs's build time: the mtime its builder gives every file, `/init` included.
pub fn built() -> u64 {
    std::fs::metadata("/init").and_then(|m| m.modified()).map_or(0, unix)
}

const RECORD: &str = "clock";

/// The time last recorded in `state_dir`.
pub fn recorded(state_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(state_dir.join(RECORD)).ok()?.trim().parse().ok()
}

/// Records the time in `state_dir`, if the clock is trusted: a floor for the next boot's RTC.
pub fn record(state_dir: &Path) {
    if now().trust != Trust::Trusted {
        return;
    }
    let secs = unix(SystemTime::now()).to_string();
    if let Err(e) = flist::durable::write_whole(&state_dir.join(RECORD), secs.as_bytes()) {
        tracing::warn!("clock: recording the time in {}: {e}", state_dir.display());
    }
}

/// Records the time where [`judge_rtc`] was told to (before a reboot or power off).
pub fn record_kept() {
    if let Some(dir) = RECORD_IN.get() {
        record(dir);
    }
}

/// Under `init run`: the host keeps its own clock (init never sets it), and it is trusted.
pub fn trust_host() {
    set(Trust::Trusted, "the host's clock (init run)".into());
}

/// Once the cache disk is there: trusts the RTC if it reads later than the build and the time
/// last recorded in `state_dir` (the disk's), and records the time there whenever it is trusted.
pub fn judge_rtc(state_dir: Option<&Path>) {
    if let Some(dir) = state_dir {
        let _ = RECORD_IN.set(dir.to_path_buf());
    }
    if now().trust == Trust::Trusted {
        if let Some(dir) = state_dir {
            record(dir);
        }
        return;
    }
    let (now_secs, built) = (unix(SystemTime::now()), built());
    if rtc_plausible(now_secs, built, state_dir.and_then(recorded)) {
        set(Trust::Trusted, "the RTC: later than the build and the last recorded time".into());
    }
}

/// A server said it is `date` (its HTTP `Date`): unless the clock is trusted, moves it forward to
/// that, and calls it coarse.
pub fn server_date(date: SystemTime, source: &str) {
    if !IN_CHARGE.load(Ordering::Relaxed) || now().trust == Trust::Trusted {
        return;
    }
    let Some(step) = forward_step(SystemTime::now(), date) else { return };
    match crate::time::step_clock(step.as_secs_f64()) {
        Ok(()) => set(Trust::Coarse, format!("the Date of {source}, {} s ahead of the clock", step.as_secs())),
        Err(e) => tracing::warn!("clock: stepping to the Date of {source}: {e}"),
    }
}

/// Takes charge of the machine's clock (PID 1 only) and asks each SNTP server in turn (one
/// second each) on a thread of its own, so that nothing waits for an answer that may never come;
/// the first answer sets the clock and trusts it.
pub fn start_sntp(servers: Vec<String>) {
    IN_CHARGE.store(true, Ordering::Relaxed);
    let spawned = std::thread::Builder::new().name("sntp".into()).spawn(move || {
        crate::guard::guard("sntp", || {
            for server in &servers {
                match crate::time::query(server, Duration::from_secs(1)) {
                    Ok(sample) => match crate::time::step_clock(sample.offset) {
                        Ok(()) => {
                            return set(Trust::Trusted, format!("SNTP {server}, off by {:.3} s", sample.offset));
                        }
                        Err(e) => tracing::warn!("clock: setting it from {server}: {e}"),
                    },
                    Err(e) => tracing::info!("clock: {}", crate::error_chain(&e)),
                }
            }
            tracing::warn!("clock: no SNTP server answered ({}); it stays {}", servers.join(", "), now());
        })
    });
    if let Err(e) = spawned {
        tracing::warn!("clock: no SNTP thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rtc_is_trusted_only_past_every_floor() {
        let built = 1_790_000_000;
        assert!(rtc_plausible(built + 10, built, None));
        assert!(rtc_plausible(built + 10, built, Some(built + 5)));
        assert!(!rtc_plausible(built + 10, built, Some(built + 20)), "earlier than the last recorded time");
        assert!(!rtc_plausible(built - 1, built, None), "earlier than the build");
        assert!(!rtc_plausible(0, built, None), "1970");
        assert!(!rtc_plausible(built + 10, 0, None), "an unknown build time vouches for nothing");
    }

    #[test]
    fn a_server_date_moves_the_clock_forward_never_back() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(forward_step(now, now + Duration::from_secs(3600)), Some(Duration::from_secs(3600)));
        assert_eq!(forward_step(now, now - Duration::from_secs(3600)), None, "never back");
        assert_eq!(forward_step(now, now + Duration::from_millis(1500)), None, "within the Date's own precision");
        assert_eq!(forward_step(now, now), None);
    }

    #[test]
    fn the_states_read_as_they_are() {
        let c = |trust, source: &str| Clock { trust, source: source.into() }.to_string();
        assert_eq!(c(Trust::Unknown, ""), "unknown");
        assert_eq!(c(Trust::Coarse, "the Date of http://x"), "coarse (the Date of http://x)");
        assert_eq!(c(Trust::Trusted, "SNTP a"), "trusted (SNTP a)");
    }
}
