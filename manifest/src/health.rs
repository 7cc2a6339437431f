//! When an upgrade counts as good (`health`), and until when a manifest may be applied
//! (`expires`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ServicePlan;

/// The health window if the manifest names none: Flatcar's two minutes.
pub const DEFAULT_WINDOW_SECS: f64 = 120.0;
/// Restarts within the window that make a service crash-looping, by default.
pub const DEFAULT_RESTARTS: u32 = 3;
/// Most restarts a manifest may allow within its window.
pub const MAX_RESTARTS: u32 = 1000;
/// The shortest window: one second (a shorter one fails every upgrade that starts anything).
pub const MIN_WINDOW_SECS: f64 = 1.0;
/// How long the required services must stay ready, by default, before an upgrade counts as
/// good (at most half the window): a service that is ready for a moment and then crashes in a
/// loop must not make its version the last good one.
pub const DEFAULT_SETTLE_SECS: f64 = 10.0;

/// `"health": {"require": [...], "timeout": 120, "restarts": 3}` as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Services that must become ready (oneshots: done); by default every service with a
    /// readiness check, else every service.
    #[serde(default)]
    pub require: Option<Vec<String>>,
    /// Seconds after the upgrade is in place within which they must (default 120).
    #[serde(default)]
    pub timeout: Option<f64>,
    /// A service restarted this many times within the window is crash-looping (default 3).
    #[serde(default)]
    pub restarts: Option<u32>,
    /// Seconds they must then stay ready, none restarting, for the upgrade to count as good
    /// (default 10 or half the window, whichever is shorter; at most the window).
    #[serde(default)]
    pub settle: Option<f64>,
}

/// When an upgrade to this manifest counts as good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPlan {
    /// Services that must be ready.
    pub require: Vec<String>,
    /// Within this long of the upgrade being in place.
    pub window: Duration,
    /// A service (any, required or not) restarted this often within the window fails it.
    pub restarts: u32,
    /// How long the required services must stay ready, without a restart, to count as good.
    pub settle: Duration,
}

impl RawHealth {
    /// Validated against the manifest's services.
    pub fn resolve(&self, services: &[ServicePlan]) -> Result<HealthPlan, String> {
        let window = crate::seconds("health: timeout", self.timeout, DEFAULT_WINDOW_SECS)?;
        if window < Duration::from_secs_f64(MIN_WINDOW_SECS) {
            return Err(format!("health: timeout must be at least {MIN_WINDOW_SECS} s"));
        }
        let settle =
            crate::seconds("health: settle", self.settle, DEFAULT_SETTLE_SECS.min(window.as_secs_f64() / 2.0))?;
        if settle > window {
            return Err(format!("health: settle {} s is longer than the window", settle.as_secs_f64()));
        }
        let restarts = self.restarts.unwrap_or(DEFAULT_RESTARTS);
        if !(1..=MAX_RESTARTS).contains(&restarts) {
            return Err(format!("health: restarts {restarts} is out of range (1 to {MAX_RESTARTS})"));
        }
        let require = match &self.require {
            Some(names) => {
                let mut seen = std::collections::BTreeSet::new();
                for name in names {
                    if !services.iter().any(|s| &s.name == name) {
                        return Err(format!("health: requires unknown service {name:?}"));
                    }
                    if !seen.insert(name) {
                        return Err(format!("health: service {name:?} is named twice"));
                    }
                }
                names.clone()
            }
            None => {
                let checked: Vec<String> = services.iter().filter(|s| s.has_test()).map(|s| s.name.clone()).collect();
                if checked.is_empty() {
                    services.iter().map(|s| s.name.clone()).collect()
                } else {
                    checked
                }
            }
        };
        Ok(HealthPlan { require, window, restarts, settle })
    }
}

/// The latest expiry a manifest may name: year 9999, far inside what a `SystemTime` holds.
const MAX_EXPIRES: u64 = flist::utc::MAX_SECS;

/// `expires` as written: an RFC 3339 time (`2026-12-10T12:00:00Z`) or seconds since the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawExpires {
    /// RFC 3339.
    Text(String),
    /// Seconds since the epoch.
    Seconds(u64),
}

impl RawExpires {
    /// Seconds since the epoch, bounded.
    pub fn resolve(&self) -> Result<u64, String> {
        let secs = match self {
            RawExpires::Seconds(s) => *s,
            RawExpires::Text(t) => flist::utc::parse_rfc3339(t).map_err(|e| format!("expires: {e}"))?,
        };
        if secs > MAX_EXPIRES {
            return Err(format!("expires: {secs} is after the year 9999"));
        }
        Ok(secs)
    }
}

/// Whether a manifest that expires at `expires` (seconds since the epoch) has expired at `now`.
pub fn expired(expires: Option<u64>, now: SystemTime) -> bool {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    expires.is_some_and(|e| now >= e)
}

/// A span such as `7d`, `12h`, `90m`, `3600s` or `3600`, in seconds (for `netboot sign --expires`).
pub fn parse_span(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{text:?}: not a number followed by s, m, h, d or w"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("{text:?}: the unit is s, m, h, d or w")),
    };
    n.checked_mul(scale).filter(|s| *s <= MAX_EXPIRES).ok_or_else(|| format!("{text:?} is too long"))
}
