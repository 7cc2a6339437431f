//! # flint init
//!
//! The PID 1 of a flint node, as a library so that its parts run and are tested on a host too:
//! - [`manifest`]: the signed node manifest, verified, then validated into a plan.
//! - [`supervisor`]: runs the services: a pure state machine per service, one loop that owns them.
//! - [`control`]: the control socket (JSON lines) and its client; [`logring`]: services' output.
#![deny(missing_docs)]

pub mod control;
pub mod logring;
pub mod manifest;
pub mod supervisor;
