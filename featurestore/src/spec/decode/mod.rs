//! From located YAML nodes to typed definitions, collecting every problem found.

use std::collections::BTreeMap;
use std::path::Path;

use super::yaml::{Loc, Node, Value};
use super::{
    AggFunction, AggregateFeature, ColumnFeature, Diagnostic, Duration, Entity, FeatureView,
    Origin, Source, Spanned, SqlBody, ViewBody, nearest,
};
use crate::limits::Limits;

mod features;

/// One decoded document.
#[derive(Debug)]
pub(crate) enum Definition {
    Entity(Entity),
    Source(Source),
    View(FeatureView),
}

pub(crate) const KINDS: [&str; 3] = ["Entity", "Source", "FeatureView"];

pub(crate) struct Decoder<'a> {
    pub(crate) file: &'a Path,
    pub(crate) limits: &'a Limits,
    pub(crate) diags: Vec<Diagnostic>,
}

/// Reads one mapping, remembering which keys were used so the rest can be reported.
struct MapReader<'n> {
    node: &'n Node,
    pairs: &'n [(Node, Node)],
    used: Vec<bool>,
    what: String,
}

fn scalar_text(node: &Node) -> Option<&str> {
    match &node.value {
        Value::Scalar { text, .. } if !node.is_null() => Some(text),
        _ => None,
    }
}

impl<'n> MapReader<'n> {
    fn get(&mut self, key: &str) -> Option<&'n Node> {
        let pos = self
            .pairs
            .iter()
            .position(|(k, _)| scalar_text(k) == Some(key))?;
        self.used[pos] = true;
        let v = &self.pairs[pos].1;
        (!v.is_null()).then_some(v)
    }
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(file: &'a Path, limits: &'a Limits) -> Self {
        Self {
            file,
            limits,
            diags: Vec::new(),
        }
    }

    fn err(&mut self, loc: Loc, message: impl Into<String>, hint: Option<String>) {
        self.diags
            .push(Diagnostic::new(self.file, loc, message).with_hint_opt(hint));
    }

    fn map<'n>(&mut self, node: &'n Node, what: &str) -> Option<MapReader<'n>> {
        match &node.value {
            Value::Map(pairs) => Some(MapReader {
                node,
                pairs,
                used: vec![false; pairs.len()],
                what: what.to_owned(),
            }),
            _ => {
                self.err(
                    node.loc,
                    format!(
                        "{what} must be a mapping of `key: value` lines, found {}",
                        node.shape()
                    ),
                    None,
                );
                None
            }
        }
    }

    /// Report keys that were never read, with the nearest valid key.
    fn finish(&mut self, reader: MapReader<'_>, allowed: &[&str]) {
        for ((k, _), used) in reader.pairs.iter().zip(&reader.used) {
            if *used {
                continue;
            }
            let key = scalar_text(k).unwrap_or("");
            let hint = match nearest(key, allowed.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("valid keys here: {}", allowed.join(", ")),
            };
            self.err(
                k.loc,
                format!("unknown key `{key}` in {}", reader.what),
                Some(hint),
            );
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<Spanned<String>> {
        match &node.value {
            Value::Scalar { text, .. } if !node.is_null() => Some(Spanned {
                value: text.clone(),
                loc: node.loc,
            }),
            _ => {
                self.err(
                    node.loc,
                    format!("{what} must be a single value, found {}", node.shape()),
                    None,
                );
                None
            }
        }
    }

    fn required(
        &mut self,
        r: &mut MapReader<'_>,
        key: &str,
        example: &str,
    ) -> Option<Spanned<String>> {
        match r.get(key) {
            Some(n) => self.string(n, &format!("`{key}`")),
            None => {
                let what = r.what.clone();
                self.err(
                    r.node.loc,
                    format!("{what} is missing `{key}`"),
                    Some(format!("add a line like `{key}: {example}`")),
                );
                None
            }
        }
    }

    fn optional(&mut self, r: &mut MapReader<'_>, key: &str) -> Option<Spanned<String>> {
        let node = r.get(key)?;
        self.string(node, &format!("`{key}`"))
    }

    /// A name used for definitions and features: `[A-Za-z_][A-Za-z0-9_]*`.
    fn name(&mut self, s: Spanned<String>, what: &str) -> Option<Spanned<String>> {
        let v = &s.value;
        let ok_chars = v
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if v.len() > self.limits.max_name_len {
            self.err(
                s.loc,
                format!(
                    "{what} is {} bytes long, over the limit of {}",
                    v.len(),
                    self.limits.max_name_len
                ),
                Some("use a shorter name".into()),
            );
            return None;
        }
        if !ok_chars {
            let fixed: String = v
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            self.err(
                s.loc,
                format!("{what} `{v}` is not a valid name"),
                Some(format!(
                    "use letters, digits and `_`, starting with a letter or `_`, like `{}`",
                    if fixed.starts_with(|c: char| c.is_ascii_digit()) {
                        format!("_{fixed}")
                    } else {
                        fixed
                    }
                )),
            );
            return None;
        }
        Some(s)
    }

    /// A column of user data: any non-empty text within the name length bound.
    fn column(&mut self, s: Spanned<String>, what: &str) -> Option<Spanned<String>> {
        if s.value.is_empty() || s.value.len() > self.limits.max_name_len {
            self.err(
                s.loc,
                format!(
                    "{what} must be 1 to {} bytes long",
                    self.limits.max_name_len
                ),
                None,
            );
            return None;
        }
        Some(s)
    }

    fn duration(&mut self, s: Spanned<String>) -> Option<Spanned<Duration>> {
        match s.value.parse::<Duration>() {
            Ok(d) => Some(Spanned {
                value: d,
                loc: s.loc,
            }),
            Err(msg) => {
                self.err(
                    s.loc,
                    msg,
                    Some("for example `window: 7d`, `ttl: 45d` or `window: 30m`".into()),
                );
                None
            }
        }
    }

    fn list<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.err(
                    node.loc,
                    format!("{what} must be a list, found {}", node.shape()),
                    Some(format!("write `{what}: [a, b]` or one `- item` per line")),
                );
                None
            }
        }
    }

    fn string_list(&mut self, node: &Node, what: &str) -> Option<Vec<Spanned<String>>> {
        // A single value is accepted as a list of one.
        if let Value::Scalar { .. } = node.value {
            return self.string(node, what).map(|s| vec![s]);
        }
        let items = self.list(node, what)?;
        let mut out = Vec::new();
        for item in items {
            out.push(self.string(item, what)?);
        }
        Some(out)
    }

    /// Decode one document; `None` when it had errors (already recorded).
    pub(crate) fn document(&mut self, node: &Node) -> Option<Definition> {
        let origin = Origin {
            file: self.file.to_path_buf(),
            loc: node.loc,
        };
        let mut r = self.map(node, "a definition")?;
        let Some(kind) = r.get("kind") else {
            self.err(
                node.loc,
                "definition has no `kind`".to_owned(),
                Some(format!(
                    "start it with `kind: ` and one of {}",
                    KINDS.join(", ")
                )),
            );
            return None;
        };
        let kind = self.string(kind, "`kind`")?;
        match kind.value.as_str() {
            "Entity" => {
                r.what = "Entity".into();
                self.entity(r, origin).map(Definition::Entity)
            }
            "Source" => {
                r.what = "Source".into();
                self.source(r, origin).map(Definition::Source)
            }
            "FeatureView" => {
                r.what = "FeatureView".into();
                self.view(r, origin).map(Definition::View)
            }
            other => {
                let hint = match nearest(other, KINDS) {
                    Some(k) => format!("did you mean `{k}`?"),
                    None => format!("use one of {}", KINDS.join(", ")),
                };
                self.err(kind.loc, format!("unknown kind `{other}`"), Some(hint));
                None
            }
        }
    }

    fn description(&mut self, r: &mut MapReader<'_>) -> Option<String> {
        self.optional(r, "description").map(|s| s.value)
    }

    fn entity(&mut self, mut r: MapReader<'_>, origin: Origin) -> Option<Entity> {
        let before = self.diags.len();
        let name = self
            .required(&mut r, "name", "user")
            .and_then(|n| self.name(n, "entity name"));
        let join_keys = match r.get("join_keys") {
            Some(n) => self.string_list(n, "join_keys"),
            None => {
                self.err(
                    r.node.loc,
                    "Entity is missing `join_keys`",
                    Some("add a line like `join_keys: [user_id]`".into()),
                );
                None
            }
        };
        let join_keys = join_keys.map(|keys| {
            keys.into_iter()
                .filter_map(|k| self.column(k, "a join key"))
                .collect::<Vec<_>>()
        });
        if let Some(keys) = &join_keys {
            if keys.is_empty() {
                self.err(
                    r.node.loc,
                    "`join_keys` is empty",
                    Some("name at least one column, like `join_keys: [user_id]`".into()),
                );
            }
            for (i, k) in keys.iter().enumerate() {
                if keys[..i].iter().any(|p| p.value == k.value) {
                    self.err(
                        k.loc,
                        format!("join key `{}` is listed twice", k.value),
                        None,
                    );
                }
            }
        }
        let description = self.description(&mut r);
        self.finish(r, &["kind", "name", "join_keys", "description"]);
        (self.diags.len() == before).then(|| Entity {
            name: name.unwrap(),
            join_keys: join_keys.unwrap(),
            description,
            origin,
        })
    }

    fn source(&mut self, mut r: MapReader<'_>, origin: Origin) -> Option<Source> {
        let before = self.diags.len();
        let name = self
            .required(&mut r, "name", "transactions")
            .and_then(|n| self.name(n, "source name"));
        let delta = self.required(&mut r, "delta", "data/transactions");
        let timestamp = self
            .required(&mut r, "timestamp", "ts")
            .and_then(|c| self.column(c, "`timestamp`"));
        let created_timestamp = self
            .optional(&mut r, "created_timestamp")
            .and_then(|c| self.column(c, "`created_timestamp`"));
        let storage_options = match (r.get("storage_options"), &delta) {
            (None, _) => Some(BTreeMap::new()),
            (Some(node), Some(delta)) => self.storage_options(node, delta),
            (Some(_), None) => None,
        };
        let description = self.description(&mut r);
        self.finish(
            r,
            &[
                "kind",
                "name",
                "delta",
                "storage_options",
                "timestamp",
                "created_timestamp",
                "description",
            ],
        );
        if let (Some(ts), Some(created)) = (&timestamp, &created_timestamp)
            && ts.value == created.value
        {
            self.err(
                created.loc,
                "`created_timestamp` must be a different column from `timestamp`",
                Some("leave `created_timestamp` out if the table has no such column".into()),
            );
        }
        (self.diags.len() == before).then(|| Source {
            name: name.unwrap(),
            delta: delta.unwrap(),
            storage_options: storage_options.unwrap(),
            timestamp: timestamp.unwrap(),
            created_timestamp,
            description,
            origin,
        })
    }

    /// `storage_options:` of a source: a bounded mapping whose keys the table's store
    /// reads and whose secrets are `${ENV_VAR}` references.
    fn storage_options(
        &mut self,
        node: &Node,
        delta: &Spanned<String>,
    ) -> Option<BTreeMap<String, Spanned<String>>> {
        let Value::Map(pairs) = &node.value else {
            self.err(
                node.loc,
                format!(
                    "`storage_options` must be a mapping, found {}",
                    node.shape()
                ),
                Some("write `storage_options: { aws_region: eu-west-1 }`".into()),
            );
            return None;
        };
        let scheme = delta.value.trim().split_once("://").map(|(s, _)| s);
        let Some(family) = scheme.and_then(crate::storage::family) else {
            self.err(
                node.loc,
                format!(
                    "`storage_options` apply to object-store tables (s3://, az://, abfss://, gs://), and `{}` is not one",
                    delta.value
                ),
                Some("remove `storage_options`".into()),
            );
            return None;
        };
        if pairs.len() > crate::storage::MAX_OPTIONS {
            self.err(
                node.loc,
                format!(
                    "{} storage options, over the limit of {}",
                    pairs.len(),
                    crate::storage::MAX_OPTIONS
                ),
                None,
            );
            return None;
        }
        let before = self.diags.len();
        let mut out = BTreeMap::new();
        for (k, v) in pairs {
            let (Some(k), Some(v)) = (
                self.string(k, "a storage option name"),
                self.string(v, "a storage option value"),
            ) else {
                continue;
            };
            if let Err(m) = crate::storage::check_key(family, &k.value) {
                self.err(k.loc, m, None);
            } else if let Err(m) = crate::storage::parse_value(&k.value, &v.value) {
                self.err(v.loc, m, None);
            }
            if out.insert(k.value.clone(), v).is_some() {
                self.err(k.loc, format!("`{}` is given twice", k.value), None);
            }
        }
        (self.diags.len() == before).then_some(out)
    }

    fn view(&mut self, mut r: MapReader<'_>, origin: Origin) -> Option<FeatureView> {
        let before = self.diags.len();
        let name = self
            .required(&mut r, "name", "user_txn_stats")
            .and_then(|n| self.name(n, "view name"));
        let entity = self.required(&mut r, "entity", "user");
        let source = r.get("source");
        let sources = r.get("sources");
        let sources: Option<Vec<Spanned<String>>> = match (source, sources) {
            (Some(s), None) => self.string(s, "`source`").map(|s| vec![s]),
            (None, Some(list)) => self.string_list(list, "sources"),
            (Some(s), Some(_)) => {
                self.err(s.loc, "write either `source` or `sources`, not both", None);
                None
            }
            (None, None) => {
                self.err(
                    r.node.loc,
                    "FeatureView is missing `source`",
                    Some("add a line like `source: transactions`".into()),
                );
                None
            }
        };
        let ttl = self.optional(&mut r, "ttl").and_then(|t| self.duration(t));
        let owner = self
            .optional(&mut r, "owner")
            .and_then(|o| self.name(o, "owner"));
        let description = self.description(&mut r);
        let online = match self.optional(&mut r, "online") {
            None => true,
            Some(v) => match v.value.as_str() {
                "true" => true,
                "false" => false,
                other => {
                    self.err(
                        v.loc,
                        format!("`online` must be true or false, found `{other}`"),
                        None,
                    );
                    true
                }
            },
        };
        let tags = r.get("tags").and_then(|t| self.tags(t));
        let fallback = match self.optional(&mut r, "fallback") {
            None => super::Fallback::None,
            Some(f) => match super::Fallback::from_name(&f.value) {
                Some(v @ (super::Fallback::Mean | super::Fallback::Median)) => {
                    self.err(
                        f.loc,
                        format!(
                            "fallback `{}` is a statistic of served values at materialization time, which a training set cannot reproduce as of each row's time (training/serving skew)",
                            f.value
                        ),
                        Some("use `fallback: zero` (0 with status FALLBACK, online and in training sets) or impute in the model".into()),
                    );
                    v
                }
                Some(v) => v,
                None => {
                    let hint = match nearest(&f.value, super::Fallback::NAMES) {
                        Some(n) => format!("did you mean `{n}`?"),
                        None => format!("use one of {}", super::Fallback::NAMES.join(", ")),
                    };
                    self.err(f.loc, format!("unknown fallback `{}`", f.value), Some(hint));
                    super::Fallback::None
                }
            },
        };
        let shared_with = match r.get("shared_with") {
            None => Vec::new(),
            Some(n) => self
                .string_list(n, "shared_with")
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| self.name(t, "tenant"))
                .map(|t| t.value)
                .collect(),
        };
        let udfs = match r.get("udfs") {
            None => Vec::new(),
            Some(n) => {
                let list = self.string_list(n, "udfs").unwrap_or_default();
                if r.get("sql").is_none() && !list.is_empty() {
                    self.err(
                        n.loc,
                        "`udfs` are called from a view's SQL; this view has no `sql:`",
                        Some("write the view as a `sql:` view that calls the functions".into()),
                    );
                }
                let mut out: Vec<Spanned<String>> = Vec::new();
                for m in list {
                    if m.value.trim().is_empty() {
                        self.err(m.loc, "a UDF module path is empty", None);
                    } else if out.iter().any(|o| o.value == m.value) {
                        self.err(m.loc, format!("module `{}` is listed twice", m.value), None);
                    } else {
                        out.push(m);
                    }
                }
                out
            }
        };
        let sql = r.get("sql");
        let features = r.get("features");
        let ts_override = r.get("timestamp");
        let body = match sql {
            Some(sql_node) => self.sql_body(sql_node, features, ts_override),
            None => {
                if let Some(t) = ts_override {
                    self.err(t.loc, "`timestamp` is only for SQL views; aggregate and column views use their source's", None);
                }
                match features {
                    Some(f) => self.features(f),
                    None => {
                        self.err(r.node.loc, "FeatureView has neither `features` nor `sql`", Some("add `features:` with one `- { name: ..., agg: ..., window: ... }` per feature, or a `sql:` body".into()));
                        None
                    }
                }
            }
        };
        self.finish(
            r,
            &[
                "kind",
                "name",
                "entity",
                "source",
                "sources",
                "ttl",
                "features",
                "sql",
                "timestamp",
                "owner",
                "shared_with",
                "description",
                "tags",
                "online",
                "fallback",
                "udfs",
            ],
        );
        if let (Some(body), Some(sources)) = (&body, &sources) {
            if !matches!(body, ViewBody::Sql(_)) && sources.len() != 1 {
                let loc = sources.get(1).map(|s| s.loc).unwrap_or(origin.loc);
                self.err(
                    loc,
                    "aggregate and column views read exactly one source",
                    Some("use a `sql:` view to combine sources".into()),
                );
            }
            if sources.is_empty() {
                self.err(origin.loc, "`sources` is empty", None);
            }
        }
        (self.diags.len() == before).then(|| FeatureView {
            name: name.unwrap(),
            entity: entity.unwrap(),
            sources: sources.unwrap(),
            ttl,
            body: body.unwrap(),
            owner: owner.map(|o| o.value),
            description,
            tags: tags.unwrap_or_default(),
            online,
            fallback,
            shared_with,
            udfs,
            origin,
        })
    }
}
