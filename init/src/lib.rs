//! # flint init
//!
//! The PID 1 of a flint node, as a library so that its parts run and are tested on a host too:
//! - [`manifest`]: the signed node manifest, verified, then validated into a plan.
//! - [`supervisor`]: runs the services: a pure state machine per service, one loop that owns them.
#![deny(missing_docs)]

pub mod manifest;
pub mod supervisor;
