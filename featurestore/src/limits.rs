//! Explicit bounds on everything the feature store reads from outside.

/// Bounds on feature repos and requests. Over a bound is a clear, located error.
///
/// ```
/// let mut limits = quiver_featurestore::Limits::default();
/// limits.max_features_per_view = 50;
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
        }
    }
}
