//! Content-addressed artifact storage.
//!
//! An artifact is stored once under its SHA-256 digest:
//! `<root>/sha256/<first two hex digits>/<the other 62>`. Writes go to a temporary file
//! in the same folder, are synced, then renamed into place, so a crash never leaves a
//! half-written artifact under a digest. Every read recomputes the digest: a file that
//! was changed on disk is refused as [`Error::Tampered`](crate::Error::Tampered).

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

use crate::limits::MAX_ARTIFACT_BYTES;

/// A folder of artifacts addressed by SHA-256.
///
/// ```
/// use quiver_registry::ArtifactStore;
/// let dir = tempfile::tempdir()?;
/// let store = ArtifactStore::new(dir.path());
/// let digest = store.put(b"model bytes")?;
/// assert_eq!(store.get(&digest)?, b"model bytes");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn check_digest(digest: &str) -> Result<()> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(Error::InvalidKey {
            key: digest.chars().take(80).collect(),
            reason: "an artifact digest is 64 lowercase hex digits (SHA-256)".into(),
        })
    }
}

impl ArtifactStore {
    /// Artifacts under folder `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder artifacts live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the artifact with `digest` is (or would be) stored.
    pub fn path_of(&self, digest: &str) -> Result<PathBuf> {
        check_digest(digest)?;
        Ok(self
            .root
            .join("sha256")
            .join(&digest[..2])
            .join(&digest[2..]))
    }

    fn io(&self, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Store `bytes`; returns their digest. Storing the same bytes twice is a no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<String> {
        if bytes.len() as u64 > MAX_ARTIFACT_BYTES {
            return Err(Error::TooLarge {
                what: "artifact".into(),
                size: bytes.len() as u64,
                limit: MAX_ARTIFACT_BYTES,
            });
        }
        let digest = sha256_hex(bytes);
        let path = self.path_of(&digest)?;
        if let Ok(existing) = std::fs::read(&path) {
            if sha256_hex(&existing) == digest {
                return Ok(digest);
            }
            // A damaged copy is replaced by the good bytes below.
            tracing::warn!(%digest, "replacing a damaged artifact copy");
        }
        let dir = path.parent().expect("artifact path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| self.io(dir, e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| self.io(dir, e))?;
        tmp.write_all(bytes).map_err(|e| self.io(&path, e))?;
        tmp.as_file().sync_all().map_err(|e| self.io(&path, e))?;
        tmp.persist(&path).map_err(|e| self.io(&path, e.error))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(digest)
    }

    /// Read the artifact `digest`, checking that its bytes still hash to it.
    pub fn get(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.path_of(digest)?;
        let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                what: format!("artifact {digest} (expected at {})", path.display()),
            },
            _ => self.io(&path, e),
        })?;
        if meta.len() > MAX_ARTIFACT_BYTES {
            return Err(Error::TooLarge {
                what: format!("artifact {digest}"),
                size: meta.len(),
                limit: MAX_ARTIFACT_BYTES,
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| self.io(&path, e))?;
        let actual = sha256_hex(&bytes);
        if actual != digest {
            return Err(Error::Tampered {
                what: format!("artifact {}", path.display()),
                reason: format!("its SHA-256 is {actual}, the registry recorded {digest}"),
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_bytes_on_disk_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(dir.path());
        let d = store.put(b"weights").unwrap();
        assert_eq!(store.put(b"weights").unwrap(), d);
        std::fs::write(store.path_of(&d).unwrap(), b"weightz").unwrap();
        assert!(matches!(store.get(&d), Err(Error::Tampered { .. })));
        // Putting the right bytes again repairs the copy.
        store.put(b"weights").unwrap();
        assert_eq!(store.get(&d).unwrap(), b"weights");
    }

    #[test]
    fn digests_are_validated() {
        let store = ArtifactStore::new("unused");
        assert!(matches!(
            store.get("../../etc/passwd"),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            store.get(&"0".repeat(64)),
            Err(Error::NotFound { .. })
        ));
    }
}
