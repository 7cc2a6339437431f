//! An flist's metadata file, whichever system made it: flint's own encoding or a Zero-OS rfs
//! `.fl`, recognised by its first bytes (never by its name).

use crate::format::{DecodeError, Flist, MAGIC};
use crate::rfs::{self, RfsError};

/// The largest metadata file read, in either format.
pub const MAX_LEN: u64 = 1 << 30;

/// Why bytes are not an flist.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum MetadataError {
    #[error(transparent)]
    Flint(#[from] DecodeError),
    #[error(transparent)]
    Rfs(#[from] RfsError),
    #[error("not an flist: neither flint's format nor an rfs .fl (SQLite)")]
    Unknown,
}

/// Reads an flist's metadata: flint's format or an rfs `.fl`.
pub fn parse(bytes: &[u8]) -> Result<Flist, MetadataError> {
    if rfs::is_rfs(bytes) {
        return Ok(rfs::read(bytes)?);
    }
    if !bytes.starts_with(MAGIC) {
        return Err(MetadataError::Unknown);
    }
    Ok(Flist::decode(bytes)?)
}
