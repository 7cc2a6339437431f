//! Supervision.
pub mod state;
