//! Explicit bounds on everything the feature store reads from outside: one place for
//! every bound a user may change. A [`crate::FeatureStore`] carries one `Limits`; the
//! repo loader, training sets and the Flight server all read it from there.

/// Bounds on feature repos, training sets and Flight requests. Over a bound is a clear,
/// located error.
///
/// ```
/// let mut limits = quiver_featurestore::Limits::default();
/// limits.max_features_per_view = 50;
/// limits.max_keys = 1_000;
/// assert_eq!(limits.max_depth, 32);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest YAML file read, in bytes.
    pub max_file_bytes: u64,
    /// Most YAML files in one repo.
    pub max_files: usize,
    /// Total bytes of YAML in one repo.
    pub max_repo_bytes: u64,
    /// Most documents (`---` separated) in one file.
    pub max_documents_per_file: usize,
    /// Deepest nesting of lists and mappings.
    pub max_depth: usize,
    /// Most YAML nodes in one file, aliases counted with their full expansion.
    pub max_yaml_nodes: usize,
    /// Longest single scalar, in bytes (SQL bodies included).
    pub max_scalar_bytes: usize,
    /// Most definitions (entities, sources, views together) in one repo.
    pub max_definitions: usize,
    /// Most features in one view.
    pub max_features_per_view: usize,
    /// Longest name of an entity, source, view, feature or column, in bytes.
    pub max_name_len: usize,
    /// Most tags on one view.
    pub max_tags: usize,
    /// Most rows in one entity table for a training set.
    pub max_entity_rows: usize,
    /// Most values (rows × features) of one training set read back for a model check.
    pub max_training_values: usize,

    // The Flight server's requests.
    /// Largest ticket or command, in bytes.
    pub max_command_bytes: usize,
    /// Most entity keys in one online lookup (JSON or exchanged batch).
    pub max_keys: usize,
    /// Most rows of one uploaded entity table.
    pub max_upload_rows: usize,
    /// Most bytes of one uploaded entity table.
    pub max_upload_bytes: usize,
    /// Most uploads one tenant holds at once (its own oldest go first; one tenant's
    /// uploads never evict another's).
    pub max_uploads: usize,
    /// Most bytes of one tenant's uploads held at once (its own oldest go first). The
    /// server holds at most this times the number of tenants.
    pub max_upload_total_bytes: usize,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
}

impl Limits {
    /// The bounds a Flight command is checked against.
    pub fn wire(&self) -> quiver_flight_proto::WireLimits {
        quiver_flight_proto::WireLimits {
            max_command_bytes: self.max_command_bytes,
            max_keys: self.max_keys,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: 4 * 1024 * 1024,
            max_files: 10_000,
            max_repo_bytes: 64 * 1024 * 1024,
            max_documents_per_file: 1_000,
            max_depth: 32,
            max_yaml_nodes: 200_000,
            max_scalar_bytes: 64 * 1024,
            max_definitions: 10_000,
            max_features_per_view: 1_000,
            max_name_len: 128,
            max_tags: 64,
            max_entity_rows: 50_000_000,
            max_training_values: 50_000_000,
            max_command_bytes: quiver_flight_proto::WireLimits::default().max_command_bytes,
            max_keys: quiver_flight_proto::WireLimits::default().max_keys,
            max_upload_rows: 5_000_000,
            max_upload_bytes: 512 * 1024 * 1024,
            max_uploads: 64,
            max_upload_total_bytes: 2 * 1024 * 1024 * 1024,
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}
