//! The feature repo: YAML definitions of entities, sources and feature views.
//!
//! A repo is a folder of `.yaml`/`.yml` files (multi-document allowed). [`load_repo`]
//! reads and checks it without touching any data: syntax, bounds ([`crate::Limits`]),
//! names, references between definitions. Checks that need the Delta tables (columns,
//! types, SQL) happen when the repo is resolved against its data
//! ([`crate::FeatureStore::validate`]).
//!
//! Every type here serializes to the canonical, location-free form that `apply` hashes
//! and versions; locations are kept only for error messages.

mod decode;
mod diag;
mod duration;
mod load;
pub(crate) mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use diag::{Diagnostic, Diagnostics, nearest, suggest};
pub use duration::Duration;

pub use load::load_repo;
pub use yaml::Loc;

/// A value with the position it was written at. Serializes as the bare value.
#[derive(Debug, Clone, Default)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it was written (default when read back from the registry).
    pub loc: Loc,
}

impl<T> Spanned<T> {
    /// A value with no position.
    pub fn bare(value: T) -> Self {
        Self {
            value,
            loc: Loc::default(),
        }
    }
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Serialize> Serialize for Spanned<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Spanned::bare)
    }
}

impl<T: fmt::Display> fmt::Display for Spanned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

/// Where a definition was written: file (relative to the repo) and document start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origin {
    /// File relative to the repo root.
    pub file: PathBuf,
    /// Start of the document.
    pub loc: Loc,
}

/// `kind: Entity` — what features describe, identified by its join keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    /// Unique name.
    pub name: Spanned<String>,
    /// Columns that identify one entity, in order.
    pub join_keys: Vec<Spanned<String>>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where it was defined.
    #[serde(skip)]
    pub origin: Origin,
}

/// `kind: Source` — a Delta table of events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// Unique name; SQL views refer to the table by it.
    pub name: Spanned<String>,
    /// Path relative to the repo root, or a URL (`file://`, `s3://`, `az://`,
    /// `abfss://`, `gs://`).
    pub delta: Spanned<String>,
    /// Options of an object-store table (`aws_region`, `azure_storage_account_name`,
    /// ...), as written: literal text or `${ENV_VAR}`, secrets only the latter
    /// ([`crate::storage`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_options: BTreeMap<String, Spanned<String>>,
    /// Event-time column: when the row became true in the world.
    pub timestamp: Spanned<String>,
    /// Optional created-time column: breaks ties between rows with equal event time
    /// (the row created last wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_timestamp: Option<Spanned<String>>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where it was defined.
    #[serde(skip)]
    pub origin: Origin,
}

/// Aggregate functions over a window of source rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggFunction {
    /// Rows (`count`) or non-null values (`count(col)`). Empty window: 0.
    Count,
    /// Sum of non-null values. Empty window: 0.
    Sum,
    /// Mean of non-null values. Empty window: null.
    Avg,
    /// Smallest non-null value. Empty window: null.
    Min,
    /// Largest non-null value. Empty window: null.
    Max,
    /// Sample standard deviation of non-null values. Fewer than two values: null.
    Stddev,
    /// Number of distinct non-null values. Empty window: 0.
    CountDistinct,
    /// The non-null value of the newest row in the window. Empty window: null.
    Last,
}

impl AggFunction {
    /// Every function, for suggestions and docs.
    pub const ALL: [AggFunction; 8] = [
        AggFunction::Count,
        AggFunction::Sum,
        AggFunction::Avg,
        AggFunction::Min,
        AggFunction::Max,
        AggFunction::Stddev,
        AggFunction::CountDistinct,
        AggFunction::Last,
    ];

    /// The name written in YAML.
    pub fn name(self) -> &'static str {
        match self {
            AggFunction::Count => "count",
            AggFunction::Sum => "sum",
            AggFunction::Avg => "avg",
            AggFunction::Min => "min",
            AggFunction::Max => "max",
            AggFunction::Stddev => "stddev",
            AggFunction::CountDistinct => "count_distinct",
            AggFunction::Last => "last",
        }
    }

    /// Parse a function name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for AggFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A feature that is a column of the source, served as of a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnFeature {
    /// Feature name.
    pub name: Spanned<String>,
    /// Source column (defaults to the name).
    pub column: Spanned<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A feature computed by an aggregate over a window of source rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregateFeature {
    /// Feature name.
    pub name: Spanned<String>,
    /// The function.
    pub function: AggFunction,
    /// Aggregated column; `None` only for `count` of rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<Spanned<String>>,
    /// Rows with event time in `(t - window, t]`; `None` means all history up to `t`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Spanned<Duration>>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A view computed by DataFusion SQL over declared sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlBody {
    /// The query (one SELECT).
    pub sql: Spanned<String>,
    /// Event-time column of the query's output (default: the first source's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Spanned<String>>,
    /// Output columns served as features (default: all but keys and timestamps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<Spanned<String>>>,
}

/// The three forms of a feature view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewBody {
    /// Source columns that already hold feature values, served as of a time.
    Columns(Vec<ColumnFeature>),
    /// Windowed aggregates over raw events.
    Aggregates(Vec<AggregateFeature>),
    /// A SQL query whose output rows are served as of a time.
    Sql(SqlBody),
}

/// `kind: FeatureView` — named features of one entity from one or more sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureView {
    /// Unique name.
    pub name: Spanned<String>,
    /// The entity the features describe.
    pub entity: Spanned<String>,
    /// Sources read; aggregate and column views read exactly one.
    pub sources: Vec<Spanned<String>>,
    /// Values whose newest row is older than this are served as EXPIRED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Spanned<Duration>>,
    /// How features are computed.
    pub body: ViewBody,
    /// Tenant that owns the view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Whether materialization writes it to the online store.
    #[serde(default = "yes")]
    pub online: bool,
    /// What online serving returns, with status FALLBACK, for keys it does not know.
    #[serde(default, skip_serializing_if = "Fallback::is_none")]
    pub fallback: Fallback,
    /// Tenants besides the owner that may read the view.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
    /// WebAssembly UDF modules its SQL calls: paths relative to the repo root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub udfs: Vec<Spanned<String>>,
    /// Where it was defined.
    #[serde(skip)]
    pub origin: Origin,
}

fn yes() -> bool {
    true
}

/// Values served for unknown keys, computed over all keys at materialization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Unknown keys get null values and status NOT_FOUND.
    #[default]
    None,
    /// The mean of each numeric feature over all keys.
    Mean,
    /// The median of each numeric feature over all keys.
    Median,
    /// Zero for each numeric feature.
    Zero,
}

impl Fallback {
    /// Every choice, for errors.
    pub const NAMES: [&'static str; 4] = ["none", "mean", "median", "zero"];

    /// True for the default.
    pub fn is_none(&self) -> bool {
        *self == Fallback::None
    }

    /// Parse a YAML value.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Fallback::None,
            "mean" => Fallback::Mean,
            "median" => Fallback::Median,
            "zero" => Fallback::Zero,
            _ => return None,
        })
    }
}

impl FeatureView {
    /// True when `tenant` may read the view: its owner, a tenant it is shared with, or
    /// anyone when it has no owner.
    pub fn readable_by(&self, tenant: &str) -> bool {
        match &self.owner {
            None => true,
            Some(o) => o == tenant || self.shared_with.iter().any(|t| t == tenant),
        }
    }
}

impl FeatureView {
    /// Names of the features the view declares (SQL views without a `features:` list
    /// declare theirs only once resolved against the data).
    pub fn declared_features(&self) -> Vec<&str> {
        match &self.body {
            ViewBody::Columns(c) => c.iter().map(|f| f.name.value.as_str()).collect(),
            ViewBody::Aggregates(a) => a.iter().map(|f| f.name.value.as_str()).collect(),
            ViewBody::Sql(s) => s
                .features
                .iter()
                .flatten()
                .map(|f| f.value.as_str())
                .collect(),
        }
    }

    /// The form, in words.
    pub fn form(&self) -> &'static str {
        match &self.body {
            ViewBody::Columns(_) => "columns",
            ViewBody::Aggregates(_) => "aggregates",
            ViewBody::Sql(_) => "sql",
        }
    }
}

/// Every definition of a repo, checked for syntax, bounds and references.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureRepo {
    /// The repo folder.
    pub root: PathBuf,
    /// Entities by name.
    pub entities: BTreeMap<String, Entity>,
    /// Sources by name.
    pub sources: BTreeMap<String, Source>,
    /// Views by name.
    pub views: BTreeMap<String, FeatureView>,
}

/// Column names a view may not use for features: they are part of every result.
pub const RESERVED_COLUMNS: [&str; 1] = ["event_timestamp"];

/// Suffix of the per-view status column in results.
pub const STATUS_SUFFIX: &str = "__status";
/// Suffix of the per-view value-time column in results.
pub const EVENT_TS_SUFFIX: &str = "__event_timestamp";
