//! How registry answers are shown: a model's versions and aliases, a serving status,
//! a lineage graph, the retraining tasks of a view change.

use std::collections::BTreeMap;

use quiver_featurestore::{Error, FeatureStore};
use quiver_registry::{ModelRegistry, Subgraph};
use serde_json::json;

use super::{LineageFormat, split_model};
use crate::print_json;

/// `MODEL` or `MODEL@SELECTOR`.
/// The `model-status` answer as text: one block per served version.
pub(super) fn print_status(s: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    println!(
        "model {}  (challenger share {}%)",
        s["model"].as_str().unwrap_or("?"),
        f(&s["challenger_percent"])
    );
    let p = &s["policy"];
    println!(
        "policy: rollback past {}% errors, p99 {} ms, score PSI {}; inputs drifted past PSI {}",
        f(&p["max_error_rate"]) * 100.0,
        f(&p["max_p99_ms"]),
        f(&p["max_score_psi"]),
        f(&p["max_feature_psi"])
    );
    for v in s["versions"].as_array().into_iter().flatten() {
        println!(
            "\n{} = version {} ({}), {} requests, {} errors, p99 <= {} us",
            v["alias"].as_str().unwrap_or("?"),
            v["version"],
            v["format"].as_str().unwrap_or("?"),
            v["requests"],
            v["errors"],
            v["p99_us"]
        );
        let drift = v["drift"].as_array().cloned().unwrap_or_default();
        if drift.is_empty() {
            println!("  no training statistics: no live drift (register with --training-data)");
            continue;
        }
        println!("  {:<28} {:>8} {:>8} {:>8}", "feature", "rows", "psi", "ks");
        for d in drift {
            println!(
                "  {:<28} {:>8} {:>8.4} {:>8.4}{}",
                d["feature"].as_str().unwrap_or("?"),
                d["live_count"],
                f(&d["psi"]),
                f(&d["ks"]),
                if d["drifted"].as_bool() == Some(true) {
                    "  DRIFTED"
                } else {
                    ""
                }
            );
        }
    }
    let rollbacks = s["rollbacks"].as_array().cloned().unwrap_or_default();
    for r in &rollbacks {
        println!(
            "\nrolled back version {}: {}",
            r["version"],
            r["reason"].as_str().unwrap_or("?")
        );
    }
}

pub(super) fn show(reg: &ModelRegistry, model: &str, json_out: bool) -> anyhow::Result<()> {
    let (name, sel) = split_model(model);
    if let Some(sel) = sel {
        let v = reg.resolve(name, sel).map_err(Error::from)?;
        let mv = reg
            .version(name, v)
            .map_err(Error::from)?
            .ok_or_else(|| Error::NotFound {
                what: format!("{name}@{v}"),
            })?;
        if json_out {
            return print_json(
                &json!({"manifest": mv.manifest, "signature": mv.signature, "tags": mv.tags}),
            );
        }
        let m = &mv.manifest;
        println!("model     {}@{} ({})", m.model, m.version, m.format);
        println!(
            "artifact  sha256 {} ({} bytes)",
            m.artifact_sha256, m.artifact_bytes
        );
        println!(
            "signed by {} ({})",
            m.signer,
            quiver_featurestore::cli::short(&m.public_key, 16)
        );
        if !m.description.is_empty() {
            println!("about     {}", m.description);
        }
        println!("inputs:");
        for f in &m.input.features {
            println!(
                "  {:<28} {}@{}:{} ({})",
                f.column, f.view, f.view_version, f.feature, f.dtype
            );
        }
        if !m.metrics.is_empty() {
            println!(
                "metrics   {}",
                m.metrics
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        if !mv.tags.is_empty() {
            println!(
                "tags      {}",
                mv.tags
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        println!("training stats for {} features", m.training_stats.len());
        println!("lineage   {}", m.upstream.join(", "));
        return Ok(());
    }
    let versions = reg.versions(name).map_err(Error::from)?;
    if versions.is_empty() {
        anyhow::bail!(Error::NotFound {
            what: format!("model `{name}`")
        });
    }
    let aliases = reg.aliases(name).map_err(Error::from)?;
    let mut history = BTreeMap::new();
    for a in aliases.keys() {
        history.insert(a.clone(), reg.alias_history(name, a).map_err(Error::from)?);
    }
    if json_out {
        return print_json(&json!({
            "model": name,
            "versions": versions.iter().map(|v| json!({"version": v.manifest.version, "format": v.manifest.format,
                "artifact_sha256": v.manifest.artifact_sha256, "signer": v.manifest.signer,
                "registered_at_ms": v.manifest.registered_at_ms, "metrics": v.manifest.metrics, "tags": v.tags})).collect::<Vec<_>>(),
            "aliases": aliases, "alias_history": history,
        }));
    }
    println!(
        "{:<8} {:<20} {:<12} {:<18} metrics",
        "version", "format", "signer", "sha256"
    );
    for v in &versions {
        let m = &v.manifest;
        println!(
            "{:<8} {:<20} {:<12} {:<18} {}",
            m.version,
            m.format,
            m.signer,
            quiver_featurestore::cli::short(&m.artifact_sha256, 16),
            m.metrics
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    for (a, events) in &history {
        println!("\nalias {a}:");
        for e in events {
            let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            println!(
                "  #{:<4} {} -> {}  by {}  {}",
                e.seq,
                show(e.from),
                show(e.to),
                e.by,
                e.reason
            );
        }
    }
    Ok(())
}

pub(super) fn print_graph(
    g: &Subgraph,
    format: LineageFormat,
    root: &str,
    down: bool,
    json_out: bool,
) -> anyhow::Result<()> {
    match (format, json_out) {
        (LineageFormat::Json, _) | (LineageFormat::Text, true) => print_json(g)?,
        (LineageFormat::Dot, _) => print!("{}", g.to_dot()),
        (LineageFormat::Openlineage, _) => {
            for e in g.to_openlineage("quiver") {
                println!("{e}");
            }
        }
        (LineageFormat::Text, false) => {
            println!(
                "{} of {root}:",
                if down { "downstream" } else { "upstream" }
            );
            for e in &g.edges {
                println!("  {} -[{}]-> {}", e.from, e.relation, e.to);
            }
            if g.edges.is_empty() {
                println!("  (nothing recorded)");
            }
        }
    }
    Ok(())
}

pub(super) fn impact(store: &FeatureStore, view: &str, json_out: bool) -> anyhow::Result<()> {
    let tasks = store.impact(view)?;
    if json_out {
        return print_json(&json!({"view": view, "tasks": tasks}));
    }
    if tasks.is_empty() {
        println!("No registered model reads {view}.");
        return Ok(());
    }
    println!("Models that read {view} (retrain when its schema changes):");
    for t in &tasks {
        println!(
            "  - {}{}{}",
            t.task,
            if t.aliases.is_empty() {
                String::new()
            } else {
                format!(" [serving as {}]", t.aliases.join(","))
            },
            t.schema_problem
                .as_ref()
                .map(|p| format!("  !! {p}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
