//! # flist
//!
//! Images whose metadata (tree, attributes, a BLAKE3 fingerprint of every chunk) is one small
//! file, and whose content lives in content-addressed chunk stores, fetched on demand and verified
//! before use.
//!
//! Layers, each depending only on the ones before it:
//! - [`format`]: the metadata model and its deterministic byte encoding (pure, no I/O);
//!   [`rfs`] reads Zero-OS `.fl` files into the same model, and [`metadata`] takes either.
//! - [`chunk`]: sealing plain bytes into stored objects (zstd, optional convergent encryption)
//!   and opening them again, verified.
//! - [`store`]: where stored objects live (`dir://`, `http(s)://`, `s3://`) and the router that
//!   picks replicas, retries and fails over.
//! - [`source`] and [`pack`]: turning a directory, a tar archive or a container image into chunks
//!   and an flist; [`registry`] pulls images from OCI registries; [`replicate`] copies an
//!   flist's chunks between stores.
//! - [`read`]: reading files of an flist through a router; [`unpack`], [`verify`] and [`diff`]
//!   build on it.
//! - [`cache`], [`fetch`] and [`fuse`]: the verified disk cache and the mount that reads through it.
//!
//! The `tools` feature (on by default) brings everything that makes, moves or checks flists
//! ([`source`], [`pack`], [`registry`], [`replicate`], [`unpack`], [`verify`], [`diff`]) and the
//! `flist` CLI. Without it the crate is what a node needs to mount flists, and no more: PID 1
//! depends on it that way.
#![deny(missing_docs)]

pub mod assembled;
pub mod cache;
pub mod chunk;
#[cfg(feature = "tools")]
pub mod convert;
#[cfg(feature = "tools")]
pub mod diff;
pub mod durable;
pub mod faults;
pub mod fetch;
pub mod format;
pub mod fuse;
pub mod metadata;
pub mod overlay;
#[cfg(feature = "tools")]
pub mod pack;
pub mod read;
#[cfg(feature = "tools")]
pub mod registry;
#[cfg(feature = "tools")]
pub mod replicate;
pub mod rfs;
#[cfg(feature = "tools")]
pub mod source;
pub mod store;
pub mod trace;
#[cfg(feature = "tools")]
pub mod unpack;
pub mod utc;
#[cfg(feature = "tools")]
pub mod verify;
pub mod verity;

pub use format::{Flist, Hash};
