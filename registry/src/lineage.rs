//! The lineage graph: what produced what.
//!
//! Nodes are named by stable ids:
//!
//! | kind | id |
//! |---|---|
//! | Delta table at a version | `delta:<table uri>@<version>` |
//! | feature view at a version | `view:<name>@<version>` |
//! | training set | `training_set:<sha-256 of its request>` |
//! | federation run | `federation_run:<run id>` |
//! | model version | `model:<name>@<version>` |
//! | serving endpoint | `endpoint:<name>` |
//!
//! An edge `from → to` says `to` was made from (or serves) `from`. Edges are written by
//! `quiver history` (tables → views → training set), by model registration (views,
//! training set, federation run → model) and by serving (model → endpoint). The graph
//! lives in three sled trees (`lineage_nodes`, `lineage_out`, `lineage_in`) of the
//! registry database; recording is idempotent.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

use crate::limits::MAX_TRAVERSAL;

/// Kind of a lineage node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A Delta table at a version.
    DeltaTable,
    /// A feature view definition at a version.
    FeatureView,
    /// A training set built by `quiver history` or the SDK.
    TrainingSet,
    /// A federated training run.
    FederationRun,
    /// A registered model version.
    ModelVersion,
    /// A serving endpoint.
    Endpoint,
}

impl NodeKind {
    /// The id prefix of this kind.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::DeltaTable => "delta",
            Self::FeatureView => "view",
            Self::TrainingSet => "training_set",
            Self::FederationRun => "federation_run",
            Self::ModelVersion => "model",
            Self::Endpoint => "endpoint",
        }
    }

    /// The lineage id of the node of this kind named `name` at `version`:
    /// `<prefix>:<name>[@<version>]`. Every id in the graph is built here.
    ///
    /// ```
    /// use quiver_registry::NodeKind;
    /// assert_eq!(NodeKind::FeatureView.id("user_txn_stats", Some(&3)), "view:user_txn_stats@3");
    /// assert_eq!(NodeKind::TrainingSet.id("ab12", None), "training_set:ab12");
    /// ```
    pub fn id(self, name: &str, version: Option<&dyn std::fmt::Display>) -> String {
        match version {
            Some(v) => format!("{}:{name}@{v}", self.prefix()),
            None => format!("{}:{name}", self.prefix()),
        }
    }

    /// The prefix shared by every version of `name`'s id (`view:NAME@`), for
    /// [`Lineage::nodes_with_prefix`].
    pub fn versions_prefix(self, name: &str) -> String {
        format!("{}:{name}@", self.prefix())
    }

    fn from_prefix(p: &str) -> Option<Self> {
        Some(match p {
            "delta" => Self::DeltaTable,
            "view" => Self::FeatureView,
            "training_set" => Self::TrainingSet,
            "federation_run" => Self::FederationRun,
            "model" => Self::ModelVersion,
            "endpoint" => Self::Endpoint,
            _ => return None,
        })
    }
}

/// One node of the lineage graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Stable id, `<kind prefix>:<name>[@<version>]`.
    pub id: String,
    /// What it is.
    pub kind: NodeKind,
    /// Facts about it (row counts, ε spent, paths, ...).
    #[serde(default)]
    pub attrs: BTreeMap<String, Value>,
    /// When it was first recorded, milliseconds since the epoch.
    pub recorded_at_ms: i64,
}

impl Node {
    /// A node of `kind` named `name`, optionally at `version`.
    pub fn new(kind: NodeKind, name: &str, version: Option<&dyn std::fmt::Display>) -> Self {
        Self {
            id: kind.id(name, version),
            kind,
            attrs: BTreeMap::new(),
            recorded_at_ms: crate::store::now_ms(),
        }
    }

    /// The kind named by `id`'s prefix, if it is a lineage id.
    pub fn parse_kind(id: &str) -> Option<NodeKind> {
        id.split_once(':')
            .and_then(|(p, _)| NodeKind::from_prefix(p))
    }

    /// Add a fact.
    pub fn with_attr(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.attrs.insert(key.into(), value.into());
        self
    }

    /// Name part of the id (between the prefix and the last `@`).
    pub fn name(&self) -> &str {
        Self::split_id(&self.id).map_or(self.id.as_str(), |(_, name, _)| name)
    }

    /// The parts of a lineage id built by [`NodeKind::id`]: kind, name, version. Ids
    /// of training sets, federation runs and endpoints have no version part.
    pub fn split_id(id: &str) -> Option<(NodeKind, &str, Option<&str>)> {
        let (prefix, rest) = id.split_once(':')?;
        let kind = NodeKind::from_prefix(prefix)?;
        Some(match (kind, rest.rsplit_once('@')) {
            (NodeKind::TrainingSet | NodeKind::FederationRun | NodeKind::Endpoint, _) => {
                (kind, rest, None)
            }
            (_, Some((name, version))) => (kind, name, Some(version)),
            (_, None) => (kind, rest, None),
        })
    }
}

/// An edge `from → to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Edge {
    /// Upstream node id.
    pub from: String,
    /// Downstream node id.
    pub to: String,
    /// How `to` relates to `from` (`reads`, `computes`, `trained_on`, `serves`, ...).
    pub relation: String,
}

/// A set of nodes and edges: what a query returns and what exports take.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Subgraph {
    /// Nodes, by id.
    pub nodes: BTreeMap<String, Node>,
    /// Edges among them.
    pub edges: BTreeSet<Edge>,
}

pub(crate) fn check_id(id: &str) -> Result<NodeKind> {
    let kind = id
        .split_once(':')
        .and_then(|(p, _)| NodeKind::from_prefix(p))
        .ok_or_else(|| Error::InvalidKey {
            key: id.chars().take(80).collect(),
            reason: "a lineage id starts with delta:, view:, training_set:, federation_run:, model: or endpoint:".into(),
        })?;
    if id.len() > 2048 || id.contains('\0') {
        return Err(Error::InvalidKey {
            key: id.chars().take(80).collect(),
            reason: "a lineage id is at most 2048 bytes without NUL".into(),
        });
    }
    Ok(kind)
}

pub(crate) fn edge_key(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

/// Write `nodes` and `edges` inside a transaction over the three lineage trees (ids
/// must have been checked with [`check_id`]).
pub(crate) fn record_tx(
    tn: &sled::transaction::TransactionalTree,
    to: &sled::transaction::TransactionalTree,
    ti: &sled::transaction::TransactionalTree,
    nodes: &[Node],
    edges: &[Edge],
) -> sled::transaction::ConflictableTransactionResult<(), Error> {
    for n in nodes {
        let merged = match tn.get(n.id.as_bytes())? {
            Some(old) => match serde_json::from_slice::<Node>(&old) {
                Ok(mut old) => {
                    for (k, v) in &n.attrs {
                        old.attrs.insert(k.clone(), v.clone());
                    }
                    old
                }
                Err(_) => n.clone(),
            },
            None => n.clone(),
        };
        tn.insert(
            n.id.as_bytes(),
            serde_json::to_vec(&merged).expect("nodes serialise"),
        )?;
    }
    for e in edges {
        for id in [&e.from, &e.to] {
            if tn.get(id.as_bytes())?.is_none() {
                let kind =
                    check_id(id).map_err(sled::transaction::ConflictableTransactionError::Abort)?;
                let node = Node {
                    id: id.clone(),
                    kind,
                    attrs: BTreeMap::new(),
                    recorded_at_ms: crate::store::now_ms(),
                };
                tn.insert(
                    id.as_bytes(),
                    serde_json::to_vec(&node).expect("nodes serialise"),
                )?;
            }
        }
        to.insert(edge_key(&e.from, &e.to), e.relation.as_bytes())?;
        ti.insert(edge_key(&e.to, &e.from), e.relation.as_bytes())?;
    }
    Ok(())
}

/// Lineage queries over the registry's trees.
#[derive(Debug, Clone)]
pub struct Lineage {
    pub(crate) nodes: sled::Tree,
    pub(crate) out: sled::Tree,
    pub(crate) inn: sled::Tree,
    pub(crate) path: String,
}

impl Lineage {
    fn storage(&self, source: sled::Error) -> Error {
        Error::Storage {
            path: self.path.clone(),
            source,
        }
    }

    /// Record `nodes` (existing ones keep their first record, new attributes are
    /// merged in) and `edges`, atomically.
    pub fn record(&self, nodes: &[Node], edges: &[Edge]) -> Result<()> {
        use sled::Transactional;
        for n in nodes {
            check_id(&n.id)?;
        }
        for e in edges {
            check_id(&e.from)?;
            check_id(&e.to)?;
        }
        (&self.nodes, &self.out, &self.inn)
            .transaction(|(tn, to, ti)| record_tx(tn, to, ti, nodes, edges))
            .map_err(|e| match e {
                sled::transaction::TransactionError::Abort(e) => e,
                sled::transaction::TransactionError::Storage(e) => self.storage(e),
            })
    }

    /// The node `id`, if recorded.
    pub fn node(&self, id: &str) -> Result<Option<Node>> {
        match self.nodes.get(id.as_bytes()).map_err(|e| self.storage(e))? {
            Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                Error::Corrupt {
                    key: format!("lineage node {id}"),
                    reason: e.to_string(),
                }
            })?)),
            None => Ok(None),
        }
    }

    /// Every node whose id starts with `prefix` (for example `view:user_txn_stats@`).
    pub fn nodes_with_prefix(&self, prefix: &str) -> Result<Vec<Node>> {
        let mut out = Vec::new();
        for item in self.nodes.scan_prefix(prefix.as_bytes()) {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            out.push(serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                key: format!("lineage node {}", String::from_utf8_lossy(&k)),
                reason: e.to_string(),
            })?);
        }
        Ok(out)
    }

    fn neighbours(&self, tree: &sled::Tree, id: &str) -> Result<Vec<(String, String)>> {
        let mut prefix = id.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in tree.scan_prefix(&prefix) {
            let (k, rel) = item.map_err(|e| self.storage(e))?;
            out.push((
                String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                String::from_utf8_lossy(&rel).into_owned(),
            ));
        }
        Ok(out)
    }

    fn walk(&self, start: &str, upstream: bool) -> Result<Subgraph> {
        let mut g = Subgraph::default();
        let first = self.node(start)?.ok_or_else(|| Error::NotFound {
            what: format!("lineage node `{start}`"),
        })?;
        g.nodes.insert(start.to_owned(), first);
        let mut queue = VecDeque::from([start.to_owned()]);
        while let Some(id) = queue.pop_front() {
            let tree = if upstream { &self.inn } else { &self.out };
            for (other, relation) in self.neighbours(tree, &id)? {
                let edge = if upstream {
                    Edge {
                        from: other.clone(),
                        to: id.clone(),
                        relation,
                    }
                } else {
                    Edge {
                        from: id.clone(),
                        to: other.clone(),
                        relation,
                    }
                };
                g.edges.insert(edge);
                if !g.nodes.contains_key(&other) {
                    if g.nodes.len() >= MAX_TRAVERSAL {
                        return Err(Error::TooLarge {
                            what: format!("lineage of {start}"),
                            size: g.nodes.len() as u64,
                            limit: MAX_TRAVERSAL as u64,
                        });
                    }
                    if let Some(n) = self.node(&other)? {
                        g.nodes.insert(other.clone(), n);
                        queue.push_back(other);
                    }
                }
            }
        }
        Ok(g)
    }

    /// Everything `id` was made from, transitively (including `id`).
    pub fn upstream(&self, id: &str) -> Result<Subgraph> {
        self.walk(id, true)
    }

    /// Everything made from `id`, transitively (including `id`).
    pub fn downstream(&self, id: &str) -> Result<Subgraph> {
        self.walk(id, false)
    }
}

impl Subgraph {
    /// Merge `other` into `self`.
    pub fn merge(&mut self, other: Subgraph) {
        self.nodes.extend(other.nodes);
        self.edges.extend(other.edges);
    }

    /// Graphviz DOT, one box per node coloured by kind.
    pub fn to_dot(&self) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::from(
            "digraph lineage {\n  rankdir=LR;\n  node [shape=box, style=filled, fontname=\"Helvetica\"];\n",
        );
        for n in self.nodes.values() {
            let colour = match n.kind {
                NodeKind::DeltaTable => "#dae8fc",
                NodeKind::FeatureView => "#d5e8d4",
                NodeKind::TrainingSet => "#fff2cc",
                NodeKind::FederationRun => "#e1d5e7",
                NodeKind::ModelVersion => "#f8cecc",
                NodeKind::Endpoint => "#f5f5f5",
            };
            out.push_str(&format!("  \"{}\" [fillcolor=\"{colour}\"];\n", esc(&n.id)));
        }
        for e in &self.edges {
            out.push_str(&format!(
                "  \"{}\" -> \"{}\" [label=\"{}\"];\n",
                esc(&e.from),
                esc(&e.to),
                esc(&e.relation)
            ));
        }
        out.push_str("}\n");
        out
    }

    /// OpenLineage run events (spec 2-0-2), one `COMPLETE` event per node that has
    /// inputs: the node is the job's output, its direct upstream nodes the inputs.
    /// Run ids are UUIDs derived from the node id, so exporting twice gives the same
    /// events.
    pub fn to_openlineage(&self, namespace: &str) -> Vec<Value> {
        let mut inputs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for e in &self.edges {
            inputs
                .entry(e.to.as_str())
                .or_default()
                .push(e.from.as_str());
        }
        let dataset = |id: &str| serde_json::json!({"namespace": namespace, "name": id});
        inputs
            .into_iter()
            .map(|(out, ins)| {
                let node = self.nodes.get(out);
                let time = node.map_or(0, |n| n.recorded_at_ms);
                let h = Sha256::digest(out.as_bytes());
                let mut b = [0u8; 16];
                b.copy_from_slice(&h[..16]);
                b[6] = (b[6] & 0x0f) | 0x40;
                b[8] = (b[8] & 0x3f) | 0x80;
                let x = hex::encode(b);
                let run_id = format!("{}-{}-{}-{}-{}", &x[0..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32]);
                let event_time = rfc3339(time);
                serde_json::json!({
                    "eventType": "COMPLETE",
                    "eventTime": event_time,
                    "run": {"runId": run_id, "facets": {}},
                    "job": {"namespace": namespace, "name": format!("produce {out}"), "facets": {}},
                    "inputs": ins.iter().map(|i| dataset(i)).collect::<Vec<_>>(),
                    "outputs": [dataset(out)],
                    "producer": concat!("urn:quiver:registry:", env!("CARGO_PKG_VERSION")),
                    "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
                })
            })
            .collect()
    }
}

/// RFC 3339 UTC text of a millisecond timestamp.
fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
