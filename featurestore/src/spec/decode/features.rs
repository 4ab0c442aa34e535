//! The body of a feature view: its features (columns, aggregates, SQL), their count
//! and its tags.

use super::*;

impl Decoder<'_> {
    pub(super) fn tags(&mut self, node: &Node) -> Option<BTreeMap<String, String>> {
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

    pub(super) fn sql_body(
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

    pub(super) fn check_feature_count(&mut self, node: &Node, n: usize) -> Option<()> {
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

    pub(super) fn features(&mut self, node: &Node) -> Option<ViewBody> {
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
    pub(super) fn aggregate(
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
