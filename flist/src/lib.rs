//! # flist
//!
//! Images whose metadata (tree, attributes, a BLAKE3 fingerprint of every chunk) is one small
//! file, and whose content lives in content-addressed chunk stores, fetched on demand and verified
//! before use.
//!
//! Layers, each depending only on the ones before it:
//! - [`format`]: the metadata model and its deterministic byte encoding (pure, no I/O).
//! - [`chunk`]: sealing plain bytes into stored objects (zstd, optional convergent encryption)
//!   and opening them again, verified.
//! - [`store`]: where stored objects live (`dir://`, `http(s)://`, `s3://`) and the router that
//!   picks replicas, retries and fails over.
//! - [`source`] and [`pack`]: turning a directory, a tar archive or a container image into chunks
//!   and an flist; [`registry`] pulls images from OCI registries; [`replicate`] copies an
//!   flist's chunks between stores.
//! - [`read`]: reading files of an flist through a router; [`unpack`], [`verify`] and [`diff`]
//!   build on it.
#![deny(missing_docs)]

pub mod assembled;
pub mod cache;
pub mod chunk;
pub mod diff;
pub mod durable;
pub mod faults;
pub mod fetch;
pub mod format;
pub mod fuse;
pub mod overlay;
pub mod pack;
pub mod read;
pub mod registry;
pub mod replicate;
pub mod source;
pub mod store;
pub mod unpack;
pub mod verify;

pub use format::{Flist, Hash};
