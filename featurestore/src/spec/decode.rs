//! From located YAML nodes to typed definitions, collecting every problem found.

use std::collections::BTreeMap;
use std::path::Path;

use super::yaml::{Loc, Node, Value};
use super::{
    AggFunction, AggregateFeature, ColumnFeature, Diagnostic, Duration, Entity, FeatureView,
    Origin, Source, Spanned, SqlBody, ViewBody, nearest,
};
use crate::limits::Limits;

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
        let description = self.description(&mut r);
        self.finish(
            r,
            &[
                "kind",
                "name",
                "delta",
                "timestamp",
                "created_timestamp",
                "description",
            ],
        );
        if let (Some(ts), Some(created)) = (&timestamp, &created_timestamp) {
            if ts.value == created.value {
                self.err(
                    created.loc,
                    "`created_timestamp` must be a different column from `timestamp`",
                    Some("leave `created_timestamp` out if the table has no such column".into()),
                );
            }
        }
        (self.diags.len() == before).then(|| Source {
            name: name.unwrap(),
            delta: delta.unwrap(),
            timestamp: timestamp.unwrap(),
            created_timestamp,
            description,
            origin,
        })
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
        if let Some(udfs) = r.get("udfs") {
            self.err(
                udfs.loc,
                "WebAssembly UDFs (`udfs`) are not available in this version of quiver",
                Some("compute the value in SQL for now, or in the source table".into()),
            );
        }
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
            origin,
        })
    }

    fn tags(&mut self, node: &Node) -> Option<BTreeMap<String, String>> {
        let Value::Map(pairs) = &node.value else {
            self.err(
                node.loc,
                format!("`tags` must be a mapping, found {}", node.shape()),
                Some("write `tags: { team: fraud }`".into()),
            );
            return None;
        };
        if pairs.len() > self.limits.max_tags {
            self.err(
                node.loc,
                format!(
                    "{} tags, over the limit of {}",
                    pairs.len(),
                    self.limits.max_tags
                ),
                None,
            );
            return None;
        }
        let mut out = BTreeMap::new();
        for (k, v) in pairs {
            let k = self.string(k, "a tag name")?;
            let v = self.string(v, "a tag value")?;
            out.insert(k.value, v.value);
        }
        Some(out)
    }

    fn sql_body(
        &mut self,
        sql: &Node,
        features: Option<&Node>,
        ts: Option<&Node>,
    ) -> Option<ViewBody> {
        let sql = self.string(sql, "`sql`")?;
        if sql.value.trim().is_empty() {
            self.err(
                sql.loc,
                "`sql` is empty",
                Some("write one SELECT over the view's sources".into()),
            );
            return None;
        }
        let timestamp = match ts {
            Some(t) => {
                let s = self.string(t, "`timestamp`")?;
                Some(self.column(s, "`timestamp`")?)
            }
            None => None,
        };
        let features = match features {
            None => None,
            Some(f) => {
                let items = self.list(f, "features")?;
                self.check_feature_count(f, items.len())?;
                let mut names = Vec::new();
                for item in items {
                    let name = match &item.value {
                        Value::Scalar { .. } => self.string(item, "a feature")?,
                        Value::Map(_) => {
                            let mut r = self.map(item, "a SQL view feature")?;
                            let n = self.required(&mut r, "name", "value");
                            if let Some(agg) = r.get("agg") {
                                self.err(agg.loc, "SQL views compute features in their query, not with `agg`", Some("aggregate in the SQL, or move this feature to an aggregate view".into()));
                            }
                            self.finish(r, &["name", "description"]);
                            n?
                        }
                        Value::Seq(_) => {
                            self.err(item.loc, "a feature must be a name or a mapping", None);
                            return None;
                        }
                    };
                    names.push(self.name(name, "feature name")?);
                }
                Some(names)
            }
        };
        Some(ViewBody::Sql(SqlBody {
            sql,
            timestamp,
            features,
        }))
    }

    fn check_feature_count(&mut self, node: &Node, n: usize) -> Option<()> {
        if n > self.limits.max_features_per_view {
            self.err(
                node.loc,
                format!(
                    "{n} features, over the limit of {} per view",
                    self.limits.max_features_per_view
                ),
                Some("split the features over several views".into()),
            );
            return None;
        }
        if n == 0 {
            self.err(
                node.loc,
                "`features` is empty",
                Some("list at least one feature".into()),
            );
            return None;
        }
        Some(())
    }

    fn features(&mut self, node: &Node) -> Option<ViewBody> {
        let items = self.list(node, "features")?;
        self.check_feature_count(node, items.len())?;
        let mut columns = Vec::new();
        let mut aggs = Vec::new();
        let mut first_kind: Option<(bool, Loc)> = None;
        for item in items {
            let before = self.diags.len();
            let (is_agg, col, agg) = match &item.value {
                Value::Scalar { .. } => {
                    let Some(n) = self
                        .string(item, "a feature")
                        .and_then(|n| self.name(n, "feature name"))
                    else {
                        continue;
                    };
                    (
                        false,
                        Some(ColumnFeature {
                            column: n.clone(),
                            name: n,
                            description: None,
                        }),
                        None,
                    )
                }
                Value::Map(_) => {
                    let Some(mut r) = self.map(item, "a feature") else {
                        continue;
                    };
                    r.what = "a feature".into();
                    let name = self
                        .required(&mut r, "name", "txn_count_7d")
                        .and_then(|n| self.name(n, "feature name"));
                    let agg = self.optional(&mut r, "agg");
                    let window = self.optional(&mut r, "window");
                    let column = self.optional(&mut r, "column");
                    let description = self.description(&mut r);
                    self.finish(r, &["name", "agg", "window", "column", "description"]);
                    match (agg, name) {
                        (Some(agg), Some(name)) => {
                            if let Some(c) = &column {
                                self.err(c.loc, "`column` is for plain column features; an aggregate names its column inside `agg`", Some(format!("write `agg: {}({})`", agg.value.split('(').next().unwrap_or("sum"), c.value)));
                            }
                            let window = window.and_then(|w| self.duration(w));
                            let parsed = self.aggregate(&agg);
                            match parsed {
                                Some((function, column)) => (
                                    true,
                                    None,
                                    Some(AggregateFeature {
                                        name,
                                        function,
                                        column,
                                        window,
                                        description,
                                    }),
                                ),
                                None => continue,
                            }
                        }
                        (None, Some(name)) => {
                            if let Some(w) = &window {
                                self.err(
                                    w.loc,
                                    "`window` needs an aggregate",
                                    Some(
                                        "add `agg:` (like `agg: sum(amount)`), or remove `window`"
                                            .into(),
                                    ),
                                );
                            }
                            let column = match column {
                                Some(c) => self.column(c, "`column`"),
                                None => Some(name.clone()),
                            };
                            let Some(column) = column else { continue };
                            (
                                false,
                                Some(ColumnFeature {
                                    name,
                                    column,
                                    description,
                                }),
                                None,
                            )
                        }
                        (_, None) => continue,
                    }
                }
                Value::Seq(_) => {
                    self.err(
                        item.loc,
                        "a feature must be a name or a mapping like `{ name: ..., agg: ... }`",
                        None,
                    );
                    continue;
                }
            };
            if self.diags.len() != before {
                continue;
            }
            match first_kind {
                None => first_kind = Some((is_agg, item.loc)),
                Some((k, loc)) if k != is_agg => {
                    self.err(
                        item.loc,
                        format!(
                            "this view mixes aggregates and plain columns (the first feature, line {}, is {})",
                            loc.line,
                            if k { "an aggregate" } else { "a plain column" }
                        ),
                        Some("put aggregates and plain columns in two views".into()),
                    );
                    continue;
                }
                _ => {}
            }
            if let Some(c) = col {
                columns.push(c);
            }
            if let Some(a) = agg {
                aggs.push(a);
            }
        }
        let names: Vec<&Spanned<String>> = columns
            .iter()
            .map(|c| &c.name)
            .chain(aggs.iter().map(|a| &a.name))
            .collect();
        let mut dupes = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if let Some(prev) = names[..i].iter().find(|p| p.value == n.value) {
                dupes.push((
                    n.loc,
                    format!(
                        "feature `{}` is defined twice (first at line {})",
                        n.value, prev.loc.line
                    ),
                ));
            }
        }
        for (loc, msg) in dupes {
            self.err(loc, msg, Some("give each feature its own name".into()));
        }
        match first_kind {
            Some((true, _)) => Some(ViewBody::Aggregates(aggs)),
            Some((false, _)) => Some(ViewBody::Columns(columns)),
            None => None,
        }
    }

    /// `count`, `count(*)`, `sum(amount)`, `count_distinct(device_id)`, ...
    fn aggregate(
        &mut self,
        agg: &Spanned<String>,
    ) -> Option<(AggFunction, Option<Spanned<String>>)> {
        let text = agg.value.trim();
        let (fname, arg) = match text.find('(') {
            None => (text, None),
            Some(open) => {
                if !text.ends_with(')') {
                    self.err(
                        agg.loc,
                        format!("`{text}` is missing its closing `)`"),
                        Some(format!("write `{})`", text)),
                    );
                    return None;
                }
                (
                    text[..open].trim(),
                    Some(text[open + 1..text.len() - 1].trim()),
                )
            }
        };
        let names: Vec<&str> = AggFunction::ALL.iter().map(|f| f.name()).collect();
        let Some(function) = AggFunction::from_name(&fname.to_ascii_lowercase()) else {
            let hint = match nearest(fname, names.iter().copied()) {
                Some(n) => format!("did you mean `{n}`?"),
                None => format!("use one of {}", names.join(", ")),
            };
            self.err(agg.loc, format!("unknown aggregate `{fname}`"), Some(hint));
            return None;
        };
        let arg = arg.filter(|a| !a.is_empty() && *a != "*");
        let column = match (function, arg) {
            (AggFunction::Count, None) => None,
            (_, None) => {
                self.err(
                    agg.loc,
                    format!("`{function}` needs a column"),
                    Some(format!(
                        "write `{function}(amount)` with the column to aggregate"
                    )),
                );
                return None;
            }
            (_, Some(a)) => {
                let a = a.trim_matches('"');
                if a.contains(',') || a.contains('(') {
                    self.err(
                        agg.loc,
                        format!("`{text}`: an aggregate takes exactly one column"),
                        Some("write expressions in a `sql:` view".into()),
                    );
                    return None;
                }
                // Point at the column inside the text when it sits on the same line.
                let offset = agg.value.find(a).unwrap_or(0) as u32;
                Some(self.column(
                    Spanned {
                        value: a.to_owned(),
                        loc: Loc {
                            line: agg.loc.line,
                            col: agg.loc.col + offset,
                        },
                    },
                    "an aggregate's column",
                )?)
            }
        };
        Some((function, column))
    }
}
