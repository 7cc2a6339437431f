//! # flint init
//!
//! The PID 1 of a flint node, as a library so that its parts run and are tested on a host too:
//! - [`boot`]: PID 1's early steps, in order, each timed ([`cmdline`] says what to do).
//! - `flint_manifest` (a crate of its own, shared with the boot server): the signed node
//!   manifest, verified, then validated into a plan.
//! - [`supervisor`]: runs the services: a pure state machine per service, one loop that owns them.
//! - [`node`]: keeps the node at its newest valid manifest: fetches it ([`fetch`]), mounts its
//!   flists ([`mounts`]) and hands the supervisor the difference.
//! - [`modules`]: kernel modules the hardware needs (coldplug and hotplug), with dependencies.
//! - [`net`]: NICs up, DHCPv4 on all of them (or static), routes and DNS via netlink.
//! - [`time`]: the clock set by SNTP before anything checks a certificate.
//! - [`power`]: reboot, power off and exit, seen through even when another loop is stuck.
//! - [`runtime`]: the threads of a running init wired together, each loop under a [`guard`].
//! - [`control`]: the control socket (JSON lines) and its client; [`logring`]: services' output.
//! - [`report`]: boot stages told to the boot server's status page; [`logship`]: the console
//!   and services' output (and the numbers) shipped there, bounded and in order.
//! - [`logger`]: the log line of every event, to the console, `/dev/kmsg` or stderr.
//! - [`metrics`]: the node's numbers in Prometheus's text format.
//! - [`identity`]: the node's own key, which signs what it tells and asks the boot server.
//! - [`health`]: whether an upgrade counts as good (a pure step function), else the node rolls back.
#![deny(missing_docs)]

pub mod boot;
pub mod clock;
pub mod cmdline;
pub mod control;
pub mod fetch;
pub mod guard;
pub mod health;
pub mod identity;
pub mod kept;
pub mod logger;
pub mod logring;
pub mod logship;
pub mod metrics;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod node;
pub mod power;
pub mod report;
pub mod runtime;
pub mod supervisor;
pub mod time;
pub mod vm;

/// An error and its causes on one line (`what: why: deeper why`), for logs and control answers.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `now + d`, saturated: a duration too long for an `Instant` (validation bounds every one that
/// comes from outside; this is the second line) gives a year from now, never a panic.
pub fn later(now: std::time::Instant, d: std::time::Duration) -> std::time::Instant {
    const FAR: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);
    now.checked_add(d).or_else(|| now.checked_add(FAR)).unwrap_or(now)
}
