//! Registered models: versions, signed manifests, aliases with history, trusted signers.
//!
//! Layout (sled trees of the registry database):
//!
//! ```text
//! models          name                       -> ModelRecord (JSON)
//! model_versions  name \0 version (u64 BE)   -> ModelVersion (JSON: manifest, signature, tags)
//! aliases         name \0 alias              -> AliasState (JSON)
//! alias_log       name \0 alias \0 seq (BE)  -> AliasEvent (JSON)     every move, kept forever
//! signers         signer name                -> public key (hex)
//! ```
//!
//! # Guarantees
//! - Registration writes the version, the model record and the lineage edges in one
//!   transaction; the artifact is written (and synced) before, under its digest, so a
//!   registered version never points at a missing or partial artifact.
//! - An alias move writes the alias and its log entry in one transaction, optionally
//!   compare-and-set on the alias's current version, so two movers never tear it.
//! - A version loads only if its signer is trusted with the recorded key, the Ed25519
//!   signature matches the canonical JSON of its manifest, and the artifact's bytes hash
//!   to the recorded digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};

use crate::drift::FeatureStats;
use crate::format::Model;
use crate::lineage::{Edge, Lineage, Node, NodeKind, check_id, record_tx};
use crate::signing::{SigningKey, verify_signature};
use crate::store::{canonical_json, now_ms};
use crate::{ArtifactStore, Error, Result};

use crate::limits::{MAX_METRICS, MAX_NAME, MAX_TAGS, MAX_TEXT, MAX_UPSTREAM};

mod manifest;
pub use manifest::*;

fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidKey {
            key: name.chars().take(80).collect(),
            reason: format!(
                "a {what} name is 1 to {MAX_NAME} characters of letters, digits, `_`, `-` and `.`"
            ),
        })
    }
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    crate::lineage::edge_key(a, b)
}

fn vkey(model: &str, version: u64) -> Vec<u8> {
    let mut k = model.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// A version that passed verification, with its parsed model.
#[derive(Debug, Clone)]
pub struct LoadedVersion {
    /// Registry record.
    pub version: ModelVersion,
    /// The model, ready to score.
    pub model: Model,
}

/// The model side of the registry. Open with [`crate::MetadataStore::models`].
#[derive(Debug, Clone)]
pub struct ModelRegistry {
    pub(crate) path: String,
    pub(crate) db: sled::Db,
    pub(crate) models: sled::Tree,
    pub(crate) versions: sled::Tree,
    pub(crate) aliases: sled::Tree,
    pub(crate) alias_log: sled::Tree,
    pub(crate) signers: sled::Tree,
    pub(crate) changes: sled::Tree,
    pub(crate) change_meta: sled::Tree,
    pub(crate) policies: sled::Tree,
    pub(crate) artifacts: ArtifactStore,
    pub(crate) lineage: Lineage,
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        key: key.into(),
        reason: e.to_string(),
    })
}

pub(crate) fn tx_err(path: &str, e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(source) => Error::Storage {
            path: path.into(),
            source,
        },
    }
}

/// Check `model` against its input schema: same columns, same order.
pub fn check_model_inputs(model: &Model, input: &InputSchema) -> Result<()> {
    let cols: Vec<&str> = input.features.iter().map(|f| f.column.as_str()).collect();
    let feats: Vec<&str> = model.features().iter().map(String::as_str).collect();
    if cols != feats {
        return Err(Error::SchemaMismatch(format!(
            "the model takes [{}] but its input schema lists [{}]; they must be the same columns in the same order",
            feats.join(", "),
            cols.join(", ")
        )));
    }
    Ok(())
}

impl ModelRegistry {
    fn storage(&self, source: sled::Error) -> Error {
        Error::Storage {
            path: self.path.clone(),
            source,
        }
    }

    /// The artifact store.
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.artifacts
    }

    /// The lineage graph.
    pub fn lineage(&self) -> &Lineage {
        &self.lineage
    }

    /// Trust `public_key_hex` as signer `name` (replacing an earlier key of that name).
    pub fn trust(&self, name: &str, public_key_hex: &str) -> Result<()> {
        check_name("signer", name)?;
        // Reject malformed keys now rather than at the first load.
        match hex::decode(public_key_hex) {
            Ok(k) if k.len() == 32 => {}
            _ => {
                return Err(Error::Crypto(format!(
                    "`{public_key_hex:.80}` is not an Ed25519 public key (64 hex digits)"
                )));
            }
        }
        self.signers
            .insert(name.as_bytes(), public_key_hex.as_bytes())
            .map_err(|e| self.storage(e))?;
        self.db.flush().map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// Stop trusting signer `name`: versions it signed no longer load.
    pub fn untrust(&self, name: &str) -> Result<bool> {
        let had = self
            .signers
            .remove(name.as_bytes())
            .map_err(|e| self.storage(e))?
            .is_some();
        self.db.flush().map_err(|e| self.storage(e))?;
        Ok(had)
    }

    /// Trusted signers and their public keys.
    pub fn signers(&self) -> Result<Vec<(String, String)>> {
        self.signers
            .iter()
            .map(|r| {
                let (k, v) = r.map_err(|e| self.storage(e))?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                ))
            })
            .collect()
    }

    /// Register a new version, signed by `key` as trusted signer `signer`.
    ///
    /// The artifact is parsed and checked against the input schema first; the input
    /// views (`view:<name>@<version>`) and every [`Registration::upstream`] id become
    /// lineage edges into `model:<name>@<version>`.
    pub fn register(
        &self,
        reg: Registration,
        signer: &str,
        key: &SigningKey,
    ) -> Result<ModelVersion> {
        check_name("model", &reg.model)?;
        reg.check_bounds()?;
        let trusted = self
            .signers
            .get(signer.as_bytes())
            .map_err(|e| self.storage(e))?;
        let public_key = key.public_key_hex();
        match trusted {
            Some(k) if k.as_ref() == public_key.as_bytes() => {}
            Some(_) => {
                return Err(Error::Untrusted(format!(
                    "signer `{signer}` is trusted with another key; the key given has public key {public_key}"
                )));
            }
            None => {
                return Err(Error::Untrusted(format!(
                    "signer `{signer}` is not trusted by this registry; run `quiver registry trust {signer} {public_key}`"
                )));
            }
        }
        let model = Model::from_artifact(&reg.artifact, &reg.input, &reg.stats)?;
        check_model_inputs(&model, &reg.input)?;
        for up in &reg.upstream {
            check_id(up)?;
        }
        let digest = self.artifacts.put(&reg.artifact)?;
        let at = now_ms();
        let mut upstream: Vec<String> = reg
            .input
            .features
            .iter()
            .map(|f| crate::NodeKind::FeatureView.id(&f.view, Some(&f.view_version)))
            .chain(reg.upstream.iter().cloned())
            .collect();
        upstream.sort();
        upstream.dedup();

        let result = (
            &self.models,
            &self.versions,
            &self.lineage.nodes,
            &self.lineage.out,
            &self.lineage.inn,
            &self.changes,
            &self.change_meta,
        )
            .transaction(|(models, versions, tn, to, ti, changes, cmeta)| {
                let abort = ConflictableTransactionError::Abort;
                let mut record = match models.get(reg.model.as_bytes())? {
                    Some(b) => {
                        decode::<ModelRecord>(&format!("model {}", reg.model), &b).map_err(abort)?
                    }
                    None => ModelRecord {
                        name: reg.model.clone(),
                        latest_version: 0,
                        created_at_ms: at,
                    },
                };
                record.latest_version += 1;
                let manifest = Manifest {
                    model: reg.model.clone(),
                    version: record.latest_version,
                    format: model.format().into(),
                    artifact_sha256: digest.clone(),
                    artifact_bytes: reg.artifact.len() as u64,
                    input: reg.input.clone(),
                    metrics: reg.metrics.clone(),
                    training_stats: reg.stats.clone(),
                    upstream: upstream.clone(),
                    description: reg.description.clone(),
                    signer: signer.into(),
                    public_key: public_key.clone(),
                    registered_at_ms: at,
                };
                let signed = manifest.signed_bytes();
                let signature = key.sign(&signed);
                let mv = ModelVersion {
                    manifest,
                    signed_manifest: String::from_utf8(signed).expect("JSON is UTF-8"),
                    signature,
                    tags: reg.tags.clone(),
                };
                write_version_tx((models, versions, tn, to, ti), &record, &mv)?;
                crate::changes::local_log_tx(
                    changes,
                    cmeta,
                    &crate::changes::Change::Version {
                        model: reg.model.clone(),
                        version: record.latest_version,
                    },
                )?;
                Ok(mv)
            });
        let mv = result.map_err(|e| tx_err(&self.path, e))?;
        self.db.flush().map_err(|e| self.storage(e))?;
        tracing::info!(model = %mv.manifest.model, version = mv.manifest.version, digest = %mv.manifest.artifact_sha256, "registered model version");
        Ok(mv)
    }

    /// Every model, by name.
    pub fn models(&self) -> Result<Vec<ModelRecord>> {
        self.models
            .iter()
            .map(|r| {
                let (k, v) = r.map_err(|e| self.storage(e))?;
                decode(&format!("model {}", String::from_utf8_lossy(&k)), &v)
            })
            .collect()
    }

    /// The record of `model`, if it was ever registered.
    pub fn model(&self, model: &str) -> Result<Option<ModelRecord>> {
        match self
            .models
            .get(model.as_bytes())
            .map_err(|e| self.storage(e))?
        {
            Some(b) => Ok(Some(decode(&format!("model {model}"), &b)?)),
            None => Ok(None),
        }
    }

    /// One version, if it exists.
    pub fn version(&self, model: &str, version: u64) -> Result<Option<ModelVersion>> {
        match self
            .versions
            .get(vkey(model, version))
            .map_err(|e| self.storage(e))?
        {
            Some(b) => Ok(Some(decode(&format!("{model}@{version}"), &b)?)),
            None => Ok(None),
        }
    }

    /// Every version of `model`, oldest first.
    pub fn versions(&self, model: &str) -> Result<Vec<ModelVersion>> {
        let mut prefix = model.as_bytes().to_vec();
        prefix.push(0);
        self.versions
            .scan_prefix(prefix)
            .map(|r| {
                let (_, v) = r.map_err(|e| self.storage(e))?;
                decode(&format!("versions of {model}"), &v)
            })
            .collect()
    }

    /// Where `alias` of `model` points, if anywhere.
    pub fn alias(&self, model: &str, alias: &str) -> Result<Option<AliasState>> {
        match self
            .aliases
            .get(key2(model, alias))
            .map_err(|e| self.storage(e))?
        {
            Some(b) => Ok(Some(decode(&format!("alias {model}/{alias}"), &b)?)),
            None => Ok(None),
        }
    }

    /// Every alias of `model`.
    pub fn aliases(&self, model: &str) -> Result<BTreeMap<String, AliasState>> {
        let mut prefix = model.as_bytes().to_vec();
        prefix.push(0);
        let mut out = BTreeMap::new();
        for r in self.aliases.scan_prefix(&prefix) {
            let (k, v) = r.map_err(|e| self.storage(e))?;
            let alias = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.insert(
                alias.clone(),
                decode(&format!("alias {model}/{alias}"), &v)?,
            );
        }
        Ok(out)
    }

    /// Every move of `alias` of `model`, oldest first.
    pub fn alias_history(&self, model: &str, alias: &str) -> Result<Vec<AliasEvent>> {
        let mut prefix = key2(model, alias);
        prefix.push(0);
        self.alias_log
            .scan_prefix(prefix)
            .map(|r| {
                let (_, v) = r.map_err(|e| self.storage(e))?;
                decode(&format!("alias log {model}/{alias}"), &v)
            })
            .collect()
    }

    /// Move `seq` of `alias` of `model`, if it happened.
    pub fn alias_event(&self, model: &str, alias: &str, seq: u64) -> Result<Option<AliasEvent>> {
        let mut key = key2(model, alias);
        key.push(0);
        key.extend_from_slice(&seq.to_be_bytes());
        match self.alias_log.get(key).map_err(|e| self.storage(e))? {
            Some(b) => Ok(Some(decode(&format!("alias log {model}/{alias}"), &b)?)),
            None => Ok(None),
        }
    }

    /// Resolve `selector` (a version number, or an alias) to a version number.
    pub fn resolve(&self, model: &str, selector: &str) -> Result<u64> {
        if let Ok(v) = selector.parse::<u64>() {
            return Ok(v);
        }
        self.alias(model, selector)?
            .map(|a| a.version)
            .ok_or_else(|| Error::NotFound {
                what: format!("alias `{selector}` of model `{model}`"),
            })
    }

    /// Point `alias` of `model` at `to` (or remove it with `None`), in one transaction
    /// with its log entry. With `expect = Some(v)`, the move happens only if the alias
    /// now points at `v` (`Some(None)`: only if it does not exist), else
    /// [`Error::AliasMoved`].
    pub fn move_alias(
        &self,
        model: &str,
        alias: &str,
        to: Option<u64>,
        expect: Option<Option<u64>>,
        by: &str,
        reason: &str,
    ) -> Result<AliasEvent> {
        check_name("model", model)?;
        check_name("alias", alias)?;
        if alias.parse::<u64>().is_ok() {
            return Err(Error::InvalidKey {
                key: alias.into(),
                reason: "an alias cannot be a number (numbers name versions)".into(),
            });
        }
        if let Some(v) = to
            && self.version(model, v)?.is_none()
        {
            return Err(Error::NotFound {
                what: format!("version {v} of model `{model}`"),
            });
        }
        let key = key2(model, alias);
        let at = now_ms();
        let event = (
            &self.aliases,
            &self.alias_log,
            &self.changes,
            &self.change_meta,
        )
            .transaction(|(aliases, log, changes, cmeta)| {
                let abort = ConflictableTransactionError::Abort;
                let cur: Option<AliasState> = match aliases.get(&key)? {
                    Some(b) => Some(decode(&format!("alias {model}/{alias}"), &b).map_err(abort)?),
                    None => None,
                };
                let cur_v = cur.as_ref().map(|c| c.version);
                if let Some(expected) = expect
                    && expected != cur_v
                {
                    return Err(abort(Error::AliasMoved {
                        alias: format!("{model}/{alias}"),
                        expected,
                        found: cur_v,
                    }));
                }
                // The log keeps a counter under the bare key (entries sit under key \0 seq),
                // so numbering continues across removal and re-creation.
                let last = match log.get(&key)? {
                    Some(b) => crate::store::read_u64(&format!("alias log {model}/{alias}"), &b)
                        .map_err(abort)?,
                    None => 0,
                };
                let seq = last + 1;
                let event = AliasEvent {
                    model: model.into(),
                    alias: alias.into(),
                    seq,
                    at_ms: at,
                    from: cur_v,
                    to,
                    by: by.into(),
                    reason: reason.into(),
                };
                write_alias_tx(aliases, log, &key, &event)?;
                crate::changes::local_log_tx(
                    changes,
                    cmeta,
                    &crate::changes::Change::Alias {
                        model: model.into(),
                        alias: alias.into(),
                        seq,
                    },
                )?;
                Ok(event)
            })
            .map_err(|e| tx_err(&self.path, e))?;
        self.db.flush().map_err(|e| self.storage(e))?;
        tracing::info!(model, alias, from = ?event.from, to = ?event.to, by, reason, "alias moved");
        Ok(event)
    }

    /// Replace the tags of a version.
    pub fn set_tags(
        &self,
        model: &str,
        version: u64,
        tags: BTreeMap<String, String>,
    ) -> Result<ModelVersion> {
        check_tags(&tags)?;
        let mv = (&self.versions, &self.changes, &self.change_meta)
            .transaction(|(versions, changes, cmeta)| {
                let mv = retag_tx(versions, model, version, &tags)?;
                crate::changes::local_log_tx(
                    changes,
                    cmeta,
                    &crate::changes::Change::Tags {
                        model: model.into(),
                        version,
                    },
                )?;
                Ok(mv)
            })
            .map_err(|e| tx_err(&self.path, e))?;
        self.db.flush().map_err(|e| self.storage(e))?;
        Ok(mv)
    }

    /// Check the signature and artifact digest of `model`'s versions (one version for
    /// `Some(selector)`, a version number or alias; all for `None`): one result per
    /// version, `Err` with the reason where it fails.
    pub fn verify(
        &self,
        model: &str,
        selector: Option<&str>,
    ) -> Result<Vec<(u64, std::result::Result<(), String>)>> {
        let versions: Vec<u64> = match selector {
            Some(s) => vec![self.resolve(model, s)?],
            None => self
                .versions(model)?
                .iter()
                .map(|v| v.manifest.version)
                .collect(),
        };
        if versions.is_empty() {
            return Err(Error::NotFound {
                what: format!("model `{model}`"),
            });
        }
        Ok(versions
            .into_iter()
            .map(|v| {
                (
                    v,
                    self.load(model, v).map(|_| ()).map_err(|e| e.to_string()),
                )
            })
            .collect())
    }

    /// Check a stored version: trusted signer, matching signature, intact artifact that
    /// parses and matches the input schema. Returns the verified, parsed model.
    pub fn load(&self, model: &str, version: u64) -> Result<LoadedVersion> {
        let mv = self
            .version(model, version)?
            .ok_or_else(|| Error::NotFound {
                what: format!("version {version} of model `{model}`"),
            })?;
        let m = &mv.manifest;
        let what = format!("{model}@{version}");
        if m.model != model || m.version != version {
            return Err(Error::Tampered {
                what,
                reason: format!("the stored manifest names {}@{}", m.model, m.version),
            });
        }
        match self
            .signers
            .get(m.signer.as_bytes())
            .map_err(|e| self.storage(e))?
        {
            Some(k) if k.as_ref() == m.public_key.as_bytes() => {}
            Some(_) => {
                return Err(Error::Untrusted(format!(
                    "{what} was signed by `{}` with a key the registry no longer trusts for that signer",
                    m.signer
                )));
            }
            None => {
                return Err(Error::Untrusted(format!(
                    "{what} was signed by `{}`, who is not trusted",
                    m.signer
                )));
            }
        }
        verify_signature(&m.public_key, mv.signed_manifest.as_bytes(), &mv.signature).map_err(
            |_| Error::Tampered {
                what: what.clone(),
                reason: "its Ed25519 signature does not match its manifest".into(),
            },
        )?;
        let bytes = self.artifacts.get(&m.artifact_sha256)?;
        let model_obj = Model::from_artifact(&bytes, &m.input, &m.training_stats)?;
        check_model_inputs(&model_obj, &m.input)?;
        Ok(LoadedVersion {
            version: mv,
            model: model_obj,
        })
    }

    /// Check a version sent by another registry before a follower stores it: bounded,
    /// its Ed25519 signature matches its manifest under the manifest's key, the
    /// artifact hashes to the manifest's digest, parses and fits the input schema.
    /// Trust is not checked here but where the version is served ([`Self::load`]), by
    /// this registry's own signers.
    pub(crate) fn check_import(&self, mv: &ModelVersion, artifact: &[u8]) -> Result<()> {
        let m = &mv.manifest;
        let what = format!("{}@{}", m.model, m.version);
        check_name("model", &m.model)?;
        check_tags(&mv.tags)?;
        if m.metrics.len() > MAX_METRICS || m.upstream.len() > MAX_UPSTREAM {
            return Err(Error::TooLarge {
                what: format!("{what}: metrics or upstream ids"),
                size: (m.metrics.len() + m.upstream.len()) as u64,
                limit: (MAX_METRICS + MAX_UPSTREAM) as u64,
            });
        }
        for up in &m.upstream {
            check_id(up)?;
        }
        verify_signature(&m.public_key, mv.signed_manifest.as_bytes(), &mv.signature).map_err(
            |_| Error::Tampered {
                what: what.clone(),
                reason: "its Ed25519 signature does not match its manifest".into(),
            },
        )?;
        let digest = crate::sha256_hex(artifact);
        if digest != m.artifact_sha256 || artifact.len() as u64 != m.artifact_bytes {
            return Err(Error::Tampered {
                what,
                reason: format!(
                    "the artifact received ({} bytes, sha256 {digest}) is not the one its manifest names ({} bytes, sha256 {})",
                    artifact.len(),
                    m.artifact_bytes,
                    m.artifact_sha256
                ),
            });
        }
        let model = Model::from_artifact(artifact, &m.input, &m.training_stats)?;
        check_model_inputs(&model, &m.input)
    }

    /// The registry's canary routing key (made with its first local write, imported
    /// by followers), if it has one yet.
    pub fn routing_key(&self) -> Option<[u8; 32]> {
        crate::changes::routing_key(&self.change_meta)
    }

    /// The rollout policy stored for `model`, if one was set.
    pub fn policy(&self, model: &str) -> Result<Option<crate::RolloutPolicy>> {
        match self
            .policies
            .get(model.as_bytes())
            .map_err(|e| self.storage(e))?
        {
            Some(b) => Ok(Some(decode(&format!("policy of {model}"), &b)?)),
            None => Ok(None),
        }
    }

    /// Store `policy` as `model`'s rollout policy (`None`: remove it), checked. Every
    /// server of the model, and every replica that follows this registry, judges its
    /// challenger by it from its next reload.
    pub fn set_policy(&self, model: &str, policy: Option<&crate::RolloutPolicy>) -> Result<()> {
        check_name("model", model)?;
        if self.model(model)?.is_none() {
            return Err(Error::NotFound {
                what: format!("model `{model}`"),
            });
        }
        if let Some(p) = policy {
            p.validate()?;
        }
        (&self.policies, &self.changes, &self.change_meta)
            .transaction(|(policies, changes, cmeta)| {
                write_policy_tx(policies, model, policy)?;
                crate::changes::local_log_tx(
                    changes,
                    cmeta,
                    &crate::changes::Change::Policy {
                        model: model.into(),
                    },
                )?;
                Ok(())
            })
            .map_err(|e| tx_err(&self.path, e))?;
        self.db.flush().map_err(|e| self.storage(e))?;
        tracing::info!(model, set = policy.is_some(), "rollout policy stored");
        Ok(())
    }

    /// A subscriber woken when `model`'s rollout policy changes (for hot reload).
    pub fn watch_policy(&self, model: &str) -> sled::Subscriber {
        self.policies.watch_prefix(model.as_bytes())
    }

    /// A subscriber woken on every alias move of `model` (for hot reload).
    pub fn watch_aliases(&self, model: &str) -> sled::Subscriber {
        let mut prefix = model.as_bytes().to_vec();
        prefix.push(0);
        self.aliases.watch_prefix(prefix)
    }
}

/// Write version `mv` and its model `record`, with the version's lineage node and
/// edges, inside a transaction over `models`, `versions` and the lineage trees: the
/// one write of a version, for [`ModelRegistry::register`] and a follower's import.
pub(crate) fn write_version_tx(
    (models, versions, tn, to, ti): (
        &TransactionalTree,
        &TransactionalTree,
        &TransactionalTree,
        &TransactionalTree,
        &TransactionalTree,
    ),
    record: &ModelRecord,
    mv: &ModelVersion,
) -> ConflictableTransactionResult<(), Error> {
    let m = &mv.manifest;
    versions.insert(
        vkey(&m.model, m.version),
        serde_json::to_vec(mv).expect("versions serialise"),
    )?;
    models.insert(
        m.model.as_bytes(),
        serde_json::to_vec(record).expect("records serialise"),
    )?;
    let id = m.lineage_id();
    let node = Node::new(NodeKind::ModelVersion, &m.model, Some(&m.version))
        .with_attr("format", m.format.clone())
        .with_attr("artifact_sha256", m.artifact_sha256.clone())
        .with_attr("signer", m.signer.clone());
    let edges: Vec<Edge> = m
        .upstream
        .iter()
        .map(|u| Edge {
            from: u.clone(),
            to: id.clone(),
            relation: if u.starts_with("view:") {
                "input_of".into()
            } else {
                "trained_from".into()
            },
        })
        .collect();
    record_tx(tn, to, ti, &[node], &edges)?;
    Ok(())
}

/// Write alias move `event` (its log entry, the alias's counter and state) inside a
/// transaction over `aliases` and `alias_log`; `key` is the alias's key.
fn write_alias_tx(
    aliases: &TransactionalTree,
    log: &TransactionalTree,
    key: &[u8],
    event: &AliasEvent,
) -> ConflictableTransactionResult<(), Error> {
    log.insert(key, &event.seq.to_be_bytes())?;
    let mut lkey = key.to_vec();
    lkey.push(0);
    lkey.extend_from_slice(&event.seq.to_be_bytes());
    log.insert(lkey, serde_json::to_vec(event).expect("events serialise"))?;
    match event.to {
        Some(v) => {
            let state = AliasState {
                version: v,
                seq: event.seq,
                moved_at_ms: event.at_ms,
            };
            aliases.insert(key, serde_json::to_vec(&state).expect("states serialise"))?;
        }
        None => {
            aliases.remove(key)?;
        }
    }
    Ok(())
}

/// Repeat another registry's alias move here (a follower's import): the move must be
/// the next of that alias, start where the alias is here, and name a stored version.
pub(crate) fn import_alias_tx(
    (aliases, log, versions): (&TransactionalTree, &TransactionalTree, &TransactionalTree),
    event: &AliasEvent,
) -> ConflictableTransactionResult<(), Error> {
    let abort = ConflictableTransactionError::Abort;
    let (model, alias) = (&event.model, &event.alias);
    check_name("model", model).map_err(abort)?;
    check_name("alias", alias).map_err(abort)?;
    let key = key2(model, alias);
    let last = match log.get(&key)? {
        Some(b) => {
            crate::store::read_u64(&format!("alias log {model}/{alias}"), &b).map_err(abort)?
        }
        None => 0,
    };
    let here: Option<u64> = match aliases.get(&key)? {
        Some(b) => Some(
            decode::<AliasState>(&format!("alias {model}/{alias}"), &b)
                .map_err(abort)?
                .version,
        ),
        None => None,
    };
    if event.seq != last + 1 || event.from != here {
        return Err(abort(Error::Replication(format!(
            "move {} of alias {model}/{alias} (from {:?}) does not follow move {last} here (at {here:?})",
            event.seq, event.from
        ))));
    }
    if let Some(v) = event.to
        && versions.get(vkey(model, v))?.is_none()
    {
        return Err(abort(Error::Replication(format!(
            "alias {model}/{alias} moves to version {v}, which is not stored here"
        ))));
    }
    write_alias_tx(aliases, log, &key, event)
}

/// Replace the tags of `model`@`version` inside a transaction over `versions`.
pub(crate) fn retag_tx(
    versions: &TransactionalTree,
    model: &str,
    version: u64,
    tags: &BTreeMap<String, String>,
) -> ConflictableTransactionResult<ModelVersion, Error> {
    let abort = ConflictableTransactionError::Abort;
    let key = vkey(model, version);
    let b = versions.get(&key)?.ok_or_else(|| {
        abort(Error::NotFound {
            what: format!("version {version} of model `{model}`"),
        })
    })?;
    let mut mv: ModelVersion = decode(&format!("{model}@{version}"), &b).map_err(abort)?;
    mv.tags = tags.clone();
    versions.insert(
        key.as_slice(),
        serde_json::to_vec(&mv).expect("versions serialise"),
    )?;
    Ok(mv)
}

/// Store or remove `model`'s rollout policy inside a transaction over `policies`.
pub(crate) fn write_policy_tx(
    policies: &TransactionalTree,
    model: &str,
    policy: Option<&crate::RolloutPolicy>,
) -> ConflictableTransactionResult<(), Error> {
    match policy {
        Some(p) => {
            policies.insert(
                model.as_bytes(),
                serde_json::to_vec(p).expect("policies serialise"),
            )?;
        }
        None => {
            policies.remove(model.as_bytes())?;
        }
    }
    Ok(())
}
