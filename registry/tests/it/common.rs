//! Shared fixture: a registry on disk with one trusted signer.

use quiver_registry::{ArtifactStore, MetadataStore, ModelRegistry, SigningKey};

/// A registry in a temp folder (deleted on drop) that trusts `key` as `signer`.
pub(crate) struct Fixture {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) reg: ModelRegistry,
    pub(crate) key: SigningKey,
}

pub(crate) fn fixture(signer: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let meta = MetadataStore::open(dir.path().join("registry")).unwrap();
    let reg = meta
        .models(ArtifactStore::new(dir.path().join("artifacts")))
        .unwrap();
    let key = SigningKey::generate(dir.path().join(format!("{signer}.key"))).unwrap();
    reg.trust(signer, &key.public_key_hex()).unwrap();
    Fixture {
        _dir: dir,
        reg,
        key,
    }
}
