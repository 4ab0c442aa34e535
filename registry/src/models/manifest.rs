//! What a registered version records: its input schema, signed manifest, tags and
//! aliases, and the checks a registration passes before anything is written.

use super::*;

/// One input of a model: a feature of a view at a version, as a column of a given type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFeature {
    /// Column name the model sees (equals the model's feature name at this position).
    pub column: String,
    /// Feature view it comes from.
    pub view: String,
    /// Version of that view the model was trained on.
    pub view_version: u64,
    /// Feature name within the view.
    pub feature: String,
    /// Arrow type, as the feature store prints it (`Float64`, `Int64`, ...).
    pub dtype: String,
}

/// The ordered inputs of a model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSchema {
    /// Inputs in the order the model takes them.
    pub features: Vec<InputFeature>,
}

/// What is signed: everything about a version except its mutable tags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name.
    pub model: String,
    /// Version number, from 1.
    pub version: u64,
    /// Artifact format (`logistic_regression`, `mlp`, `onnx`).
    pub format: String,
    /// SHA-256 of the artifact, hex.
    pub artifact_sha256: String,
    /// Artifact size in bytes.
    pub artifact_bytes: u64,
    /// Ordered inputs.
    pub input: InputSchema,
    /// Evaluation metrics (`auc`, `log_loss`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Training-set statistics per input feature (and optionally `__score__`).
    pub training_stats: Vec<FeatureStats>,
    /// Lineage ids this version was made from.
    pub upstream: Vec<String>,
    /// Free text.
    pub description: String,
    /// Who registered it.
    pub signer: String,
    /// The signer's public key, hex.
    pub public_key: String,
    /// When, milliseconds since the epoch.
    pub registered_at_ms: i64,
}

impl Manifest {
    /// The bytes that are signed: canonical JSON of the manifest.
    pub fn signed_bytes(&self) -> Vec<u8> {
        canonical_json(&serde_json::to_value(self).expect("manifests serialise")).into_bytes()
    }

    /// Lineage id of this version.
    pub fn lineage_id(&self) -> String {
        crate::NodeKind::ModelVersion.id(&self.model, Some(&self.version))
    }
}

/// A stored model version.
///
/// The manifest is kept as the exact bytes that were signed (`signed_manifest`), so
/// verification never depends on re-serialising numbers; `manifest` is parsed from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredVersion", into = "StoredVersion")]
pub struct ModelVersion {
    /// The signed part, parsed.
    pub manifest: Manifest,
    /// The signed bytes (canonical JSON of the manifest at registration).
    pub signed_manifest: String,
    /// Ed25519 signature of `signed_manifest`, hex.
    pub signature: String,
    /// Mutable labels.
    pub tags: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct StoredVersion {
    signed_manifest: String,
    signature: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

impl TryFrom<StoredVersion> for ModelVersion {
    type Error = String;
    fn try_from(s: StoredVersion) -> std::result::Result<Self, String> {
        let manifest =
            serde_json::from_str(&s.signed_manifest).map_err(|e| format!("manifest: {e}"))?;
        Ok(Self {
            manifest,
            signed_manifest: s.signed_manifest,
            signature: s.signature,
            tags: s.tags,
        })
    }
}

impl From<ModelVersion> for StoredVersion {
    fn from(v: ModelVersion) -> Self {
        Self {
            signed_manifest: v.signed_manifest,
            signature: v.signature,
            tags: v.tags,
        }
    }
}

/// A model and its latest version number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Model name.
    pub name: String,
    /// Highest version registered.
    pub latest_version: u64,
    /// When the first version was registered.
    pub created_at_ms: i64,
}

/// Where an alias points now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasState {
    /// Model version the alias names.
    pub version: u64,
    /// Number of the last move (1 for the first).
    pub seq: u64,
    /// When it last moved.
    pub moved_at_ms: i64,
}

/// One move of an alias, kept forever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasEvent {
    /// Model.
    pub model: String,
    /// Alias.
    pub alias: String,
    /// Move number, from 1.
    pub seq: u64,
    /// When.
    pub at_ms: i64,
    /// Version before the move (none if the alias was new or removed).
    pub from: Option<u64>,
    /// Version after the move (none if the alias was removed).
    pub to: Option<u64>,
    /// Who moved it (a user, or `rollout` for automatic rollbacks).
    pub by: String,
    /// Why.
    pub reason: String,
}

/// What [`ModelRegistry::register`] needs; build with [`Registration::new`].
#[derive(Debug, Clone)]
pub struct Registration {
    pub(super) model: String,
    pub(super) artifact: Vec<u8>,
    pub(super) input: InputSchema,
    pub(super) metrics: BTreeMap<String, f64>,
    pub(super) stats: Vec<FeatureStats>,
    pub(super) upstream: Vec<String>,
    pub(super) tags: BTreeMap<String, String>,
    pub(super) description: String,
}

impl Registration {
    /// Register `artifact` (the model file's bytes) as a new version of `model`, taking
    /// `input`.
    pub fn new(model: &str, artifact: Vec<u8>, input: InputSchema) -> Self {
        Self {
            model: model.into(),
            artifact,
            input,
            metrics: BTreeMap::new(),
            stats: Vec::new(),
            upstream: Vec::new(),
            tags: BTreeMap::new(),
            description: String::new(),
        }
    }
    /// Add an evaluation metric.
    pub fn metric(mut self, name: &str, value: f64) -> Self {
        self.metrics.insert(name.into(), value);
        self
    }
    /// Training-set statistics per feature, for drift checks.
    pub fn training_stats(mut self, stats: Vec<FeatureStats>) -> Self {
        self.stats = stats;
        self
    }
    /// Record that the model was made from lineage node `id` (a training set, a
    /// federation run, a Delta table, ...). The input views are linked automatically.
    pub fn upstream(mut self, id: &str) -> Self {
        self.upstream.push(id.into());
        self
    }
    /// Add a tag.
    pub fn tag(mut self, key: &str, value: &str) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }
    /// Free-text description.
    pub fn description(mut self, text: &str) -> Self {
        self.description = text.into();
        self
    }

    /// Every part of a registration is bounded, so a bad script cannot bloat the
    /// registry: counts and lengths below, each failure naming the part.
    pub(super) fn check_bounds(&self) -> Result<()> {
        let too_many = |what: &str, n: usize, limit: usize| {
            Err(Error::TooLarge {
                what: what.into(),
                size: n as u64,
                limit: limit as u64,
            })
        };
        if self.metrics.len() > MAX_METRICS {
            return too_many("metrics", self.metrics.len(), MAX_METRICS);
        }
        if self.upstream.len() > MAX_UPSTREAM {
            return too_many("upstream lineage ids", self.upstream.len(), MAX_UPSTREAM);
        }
        if self.stats.len() > crate::limits::MAX_FEATURES + 1 {
            return too_many(
                "training statistics",
                self.stats.len(),
                crate::limits::MAX_FEATURES + 1,
            );
        }
        if self.description.len() > MAX_TEXT {
            return too_many("description", self.description.len(), MAX_TEXT);
        }
        for (k, v) in &self.metrics {
            if k.is_empty() || k.len() > MAX_NAME {
                return Err(Error::InvalidKey {
                    key: k.chars().take(80).collect(),
                    reason: format!("a metric name is 1 to {MAX_NAME} bytes"),
                });
            }
            if !v.is_finite() {
                return Err(Error::InvalidModel(format!(
                    "metric `{k}` is {v}; metrics must be finite"
                )));
            }
        }
        check_tags(&self.tags)
    }
}

pub(crate) fn check_tags(tags: &BTreeMap<String, String>) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::TooLarge {
            what: "tags".into(),
            size: tags.len() as u64,
            limit: MAX_TAGS as u64,
        });
    }
    for (k, v) in tags {
        if k.is_empty() || k.len() > MAX_NAME || v.len() > MAX_TEXT {
            return Err(Error::InvalidKey {
                key: k.chars().take(80).collect(),
                reason: format!(
                    "a tag key is 1 to {MAX_NAME} bytes and its value at most {MAX_TEXT}"
                ),
            });
        }
    }
    Ok(())
}
