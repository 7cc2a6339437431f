//! `dir://PATH`: a local directory, the store a packer writes first and a netboot server serves.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use super::{flat_object_path, object_path, Store, StoreError};
use crate::format::Hash;

pub(crate) struct DirStore {
    root: PathBuf,
    url: String,
}

impl DirStore {
    pub(crate) fn new(path: &str) -> Self {
        DirStore { root: PathBuf::from(path), url: format!("dir://{path}") }
    }

    fn failed(&self, e: std::io::Error) -> StoreError {
        StoreError::Failed { store: self.url.clone(), why: e.to_string() }
    }
}

impl Store for DirStore {
    fn get(&self, id: &Hash) -> Result<Vec<u8>, StoreError> {
        let read = |path: String| fs::read(self.root.join(path));
        match read(object_path(id)).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => read(flat_object_path(id)),
            _ => Err(e),
        }) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound { store: self.url.clone(), id: *id })
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    fn has(&self, id: &Hash) -> Result<bool, StoreError> {
        Ok(self.root.join(object_path(id)).exists() || self.root.join(flat_object_path(id)).exists())
    }

    /// Written to a temporary file, synced, then renamed: a crash never leaves half an object
    /// under a valid name.
    fn put(&self, id: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.root.join(object_path(id));
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| self.failed(e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| self.failed(e))?;
        tmp.write_all(bytes).map_err(|e| self.failed(e))?;
        tmp.as_file().sync_data().map_err(|e| self.failed(e))?;
        tmp.persist(&path).map_err(|e| self.failed(e.error))?;
        Ok(())
    }

    fn url(&self) -> &str {
        &self.url
    }

    /// Objects in the fan-out directories and flat ones (rfs's layout); anything else (temporary
    /// files of writers) is not one.
    #[cfg(feature = "tools")]
    fn list(&self) -> Result<Vec<Hash>, StoreError> {
        let mut ids = Vec::new();
        let fans = match fs::read_dir(&self.root) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(self.failed(e)),
        };
        for fan in fans {
            let fan = fan.map_err(|e| self.failed(e))?;
            if !fan.file_type().map_err(|e| self.failed(e))?.is_dir() {
                ids.extend(super::id_of_name(&fan.file_name().to_string_lossy()));
                continue;
            }
            for object in fs::read_dir(fan.path()).map_err(|e| self.failed(e))? {
                let object = object.map_err(|e| self.failed(e))?;
                ids.extend(super::id_of_name(&object.file_name().to_string_lossy()));
            }
        }
        Ok(ids)
    }

    #[cfg(feature = "tools")]
    fn delete(&self, id: &Hash) -> Result<(), StoreError> {
        for path in [object_path(id), flat_object_path(id)] {
            match fs::remove_file(self.root.join(path)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(self.failed(e)),
                _ => {}
            }
        }
        Ok(())
    }
}
