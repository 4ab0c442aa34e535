//! Ed25519 signatures of model versions (ring).
//!
//! A registrant holds a private key in a PKCS#8 file (`quiver registry keygen` writes one
//! with mode 0600). The registry keeps the public keys it trusts, by signer name; a
//! version signed by a key the registry does not trust, or whose signature does not
//! match its manifest, never loads.

use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::{Error, Result};

/// A private Ed25519 key that signs model versions.
///
/// ```
/// use quiver_registry::{SigningKey, verify_signature};
/// let dir = tempfile::tempdir()?;
/// let key = SigningKey::generate(dir.path().join("alice.key"))?;
/// let sig = key.sign(b"manifest");
/// verify_signature(&key.public_key_hex(), b"manifest", &sig)?;
/// assert!(verify_signature(&key.public_key_hex(), b"other", &sig).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public {})", self.public_key_hex())
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

impl SigningKey {
    /// Create a new key and write it to `path` (PKCS#8, readable by the owner only).
    /// Refuses to overwrite an existing file.
    pub fn generate(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| {
            Error::Crypto("the system random source failed while generating a key".into())
        })?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(|e| io(path, e))?;
        std::io::Write::write_all(&mut file, doc.as_ref()).map_err(|e| io(path, e))?;
        file.sync_all().map_err(|e| io(path, e))?;
        Self::from_pkcs8(doc.as_ref(), path)
    }

    /// Read a key written by [`SigningKey::generate`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
        if meta.len() > 4096 {
            return Err(Error::Crypto(format!(
                "{} is {} bytes; an Ed25519 PKCS#8 key is under 100",
                path.display(),
                meta.len()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        Self::from_pkcs8(&bytes, path)
    }

    fn from_pkcs8(bytes: &[u8], path: &Path) -> Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes).map_err(|e| {
            Error::Crypto(format!(
                "{} is not an Ed25519 PKCS#8 private key ({e}); create one with `quiver registry keygen`",
                path.display()
            ))
        })?;
        Ok(Self { pair })
    }

    /// The public half, hex encoded (64 digits).
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// Sign `message`; the signature is hex encoded (128 digits).
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.pair.sign(message).as_ref())
    }
}

/// Check `signature_hex` over `message` with `public_key_hex`.
pub fn verify_signature(public_key_hex: &str, message: &[u8], signature_hex: &str) -> Result<()> {
    let pk = hex::decode(public_key_hex)
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| {
            Error::Crypto(format!(
                "`{public_key_hex:.80}` is not a hex Ed25519 public key (64 hex digits)"
            ))
        })?;
    let sig = hex::decode(signature_hex)
        .ok()
        .filter(|s| s.len() == 64)
        .ok_or_else(|| Error::Crypto("the signature is not 128 hex digits".into()))?;
    UnparsedPublicKey::new(&ED25519, pk)
        .verify(message, &sig)
        .map_err(|_| Error::Crypto("the Ed25519 signature does not match".into()))
}
