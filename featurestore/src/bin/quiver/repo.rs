//! `init`, `validate`, `plan`, `apply`, `list`, `describe`: the feature repo and its
//! applied definitions.

use std::path::Path;
use std::sync::Arc;

use quiver_featurestore::Error;
use serde_json::json;

use crate::{Cli, Command, Output, open, open_read_only, print_json};

pub(crate) async fn init_repo(cli: &Cli) -> anyhow::Result<()> {
    let Command::Init {
        dir,
        sample_data,
        force,
    } = &cli.command
    else {
        unreachable!("dispatched on init")
    };
    let dir = dir.clone().unwrap_or_else(|| cli.repo.clone());
    let written = init(&dir, *sample_data, *force).await?;
    if cli.output == Output::Json {
        print_json(&json!({"repo": dir, "written": written}))?;
    } else {
        println!("Created a feature repo in {}:", dir.display());
        for w in &written {
            println!("  {w}");
        }
        println!("\nNext: quiver --repo {} plan", dir.display());
    }
    Ok(())
}

pub(crate) async fn validate(cli: &Cli) -> anyhow::Result<()> {
    let store = open_read_only(cli)?;
    let resolved = store.validate().await?;
    if cli.output == Output::Json {
        print_json(&json!({
            "valid": true,
            "entities": resolved.repo.entities.len(),
            "sources": resolved.repo.sources.len(),
            "views": resolved.views.len(),
        }))?;
    } else {
        println!(
            "OK: {} entities, {} sources, {} feature views; every column and type checks out against the data.",
            resolved.repo.entities.len(),
            resolved.repo.sources.len(),
            resolved.views.len()
        );
    }
    Ok(())
}

pub(crate) async fn plan(cli: &Cli) -> anyhow::Result<()> {
    let plan = open_read_only(cli)?.plan().await?;
    if cli.output == Output::Json {
        print_json(&plan)?;
    } else {
        print!("{}", plan.render());
    }
    Ok(())
}

pub(crate) async fn apply(cli: &Cli) -> anyhow::Result<()> {
    let report = open(cli)?.apply().await?;
    if cli.output == Output::Json {
        print_json(&report)?;
    } else if report.apply_id == 0 {
        print!("{}", report.plan.render());
    } else {
        print!("{}", report.plan.render());
        println!("Applied as apply #{}.", report.apply_id);
    }
    Ok(())
}

pub(crate) async fn list(cli: &Cli) -> anyhow::Result<()> {
    let views = open_read_only(cli)?.views()?;
    if cli.output == Output::Json {
        let rows: Vec<_> = views
            .iter()
            .map(|v| {
                let d = &v.definition;
                json!({
                    "view": d.name(), "version": v.version, "entity": d.entity.name.value,
                    "form": d.view.form(), "features": d.features, "owner": d.view.owner,
                    "ttl": d.view.ttl.as_ref().map(|t| t.value.to_string()), "hash": v.hash,
                })
            })
            .collect();
        print_json(&rows)?;
    } else if views.is_empty() {
        println!("No views applied yet. Run `quiver plan` and `quiver apply`.");
    } else {
        println!(
            "{:<32} {:>7} {:<12} {:<10} {:>8} {:<10}",
            "VIEW", "VERSION", "ENTITY", "FORM", "FEATURES", "TTL"
        );
        for v in &views {
            let d = &v.definition;
            println!(
                "{:<32} {:>7} {:<12} {:<10} {:>8} {:<10}",
                d.name(),
                v.version,
                d.entity.name.value,
                d.view.form(),
                d.features.len(),
                d.view
                    .ttl
                    .as_ref()
                    .map(|t| t.value.to_string())
                    .unwrap_or_else(|| "-".into())
            );
        }
    }
    Ok(())
}

pub(crate) async fn describe(cli: &Cli, view: &str, explain: bool) -> anyhow::Result<()> {
    let store = open_read_only(cli)?;
    let (name, version) = match view.split_once('@') {
        Some((n, v)) => (
            n,
            Some(v.parse::<u64>().map_err(|_| {
                Error::InvalidRequest(format!("bad version in `{view}`; write VIEW@N"))
            })?),
        ),
        None => (view, None),
    };
    let applied = store.view(name, version)?;
    let history = store.view_history(name)?;
    let plan_text = if explain {
        Some(store.explain_view(name).await?)
    } else {
        None
    };
    let d = &applied.definition;
    if cli.output == Output::Json {
        return print_json(&json!({
            "view": d.name(), "version": applied.version, "hash": applied.hash,
            "definition": d,
            "versions": history.iter().map(|h| json!({"version": h.version, "hash": h.hash, "applied_at_ms": h.applied_at_ms})).collect::<Vec<_>>(),
            "plan": plan_text,
        }));
    }
    println!(
        "view      {} (version {}, {})",
        d.name(),
        applied.version,
        quiver_featurestore::cli::short(&applied.hash, 16)
    );
    println!(
        "entity    {} (keys: {})",
        d.entity.name.value,
        d.keys().join(", ")
    );
    for s in &d.sources {
        println!(
            "source    {} = {} (event time: {})",
            s.name.value, s.delta.value, s.timestamp.value
        );
        // As written: literals and `${ENV_VAR}` references; secrets are never literal.
        for (k, v) in &s.storage_options {
            println!("          {k}: {}", v.value);
        }
    }
    println!("form      {}", d.view.form());
    for u in &d.udfs {
        let fns: Vec<String> = u.functions.iter().map(|f| f.signature()).collect();
        println!(
            "udfs      {} (sha256 {}): {}",
            u.path,
            quiver_featurestore::cli::short(&u.sha256, 12),
            fns.join(", ")
        );
    }
    println!(
        "ttl       {}",
        d.view
            .ttl
            .as_ref()
            .map(|t| t.value.to_string())
            .unwrap_or_else(|| "none".into())
    );
    if let Some(o) = &d.view.owner {
        println!("owner     {o}");
    }
    if let Some(desc) = &d.view.description {
        println!("about     {desc}");
    }
    println!("features:");
    for f in &d.features {
        let how = match &d.view.body {
            quiver_featurestore::spec::ViewBody::Aggregates(a) => a
                .iter()
                .find(|x| x.name.value == f.name)
                .map(|x| {
                    let w = x
                        .window
                        .as_ref()
                        .map(|w| format!(" over {}", w.value))
                        .unwrap_or_else(|| " over all history".into());
                    format!(
                        "{}({}){w}",
                        x.function,
                        x.column.as_ref().map(|c| c.value.as_str()).unwrap_or("*")
                    )
                })
                .unwrap_or_default(),
            quiver_featurestore::spec::ViewBody::Columns(c) => c
                .iter()
                .find(|x| x.name.value == f.name)
                .map(|x| format!("column {}", x.column.value))
                .unwrap_or_default(),
            quiver_featurestore::spec::ViewBody::Sql(_) => "from SQL".into(),
        };
        println!("  {:<28} {:<24} {how}", f.name, f.dtype);
    }
    println!("versions:");
    for h in &history {
        let when = chrono::DateTime::from_timestamp_millis(h.applied_at_ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        println!(
            "  v{:<4} {}  {when}",
            h.version,
            quiver_featurestore::cli::short(&h.hash, 16)
        );
    }
    if let Some(p) = plan_text {
        println!("plan of its values as of now:\n{p}");
    }
    Ok(())
}

const SAMPLE_REPO: &str = r#"# A feature repo: entities, sources (Delta tables) and feature views.
# Reference: see the README's "YAML reference".
kind: Entity
name: user
join_keys: [user_id]
description: A bank customer.
---
kind: Source
name: transactions
delta: data/transactions          # a Delta table folder, relative to this repo
timestamp: ts                     # event time of each row
description: Card transactions.
---
kind: FeatureView
name: user_txn_stats
entity: user
source: transactions
ttl: 45d                          # values whose newest row is older are EXPIRED
owner: bank_a
description: Spending velocity per user.
features:
  - { name: txn_count_7d,          agg: count,                     window: 7d }
  - { name: amount_sum_7d,         agg: sum(amount),               window: 7d }
  - { name: amount_avg_30d,        agg: avg(amount),               window: 30d }
  - { name: distinct_devices_30d,  agg: count_distinct(device_id), window: 30d }
"#;

async fn init(dir: &Path, sample_data: bool, force: bool) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::InvalidRequest(format!("cannot create {}: {e}", dir.display())))?;
    let has_yaml = std::fs::read_dir(dir)?.flatten().any(|e| {
        e.file_name().to_string_lossy().ends_with(".yaml")
            || e.file_name().to_string_lossy().ends_with(".yml")
    });
    if has_yaml && !force {
        anyhow::bail!(Error::InvalidRequest(format!(
            "{} already has YAML files; pass --force to add the example anyway",
            dir.display()
        )));
    }
    let mut written = Vec::new();
    let defs = dir.join("features.yaml");
    std::fs::write(&defs, SAMPLE_REPO)?;
    written.push("features.yaml".to_owned());
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        std::fs::write(&ignore, ".quiver/\n")?;
        written.push(".gitignore".to_owned());
    }
    let entities = dir.join("entities.csv");
    std::fs::write(
        &entities,
        "user_id,event_timestamp\n1,2024-03-01T00:00:00Z\n2,2024-03-01T00:00:00Z\n3,2024-02-15T12:00:00Z\n42,2024-03-01T00:00:00Z\n",
    )?;
    written.push("entities.csv".to_owned());
    if sample_data {
        let url = quiver_featurestore::delta::table_url(dir, "data/transactions")
            .map_err(Error::InvalidRequest)?;
        quiver_featurestore::delta::write(
            &url,
            vec![sample_transactions()?],
            deltalake::protocol::SaveMode::Overwrite,
        )
        .await?;
        written.push("data/transactions (Delta, 2,000 rows)".to_owned());
    }
    Ok(written)
}

/// A small deterministic table of transactions for the scaffolded repo.
fn sample_transactions() -> anyhow::Result<arrow::array::RecordBatch> {
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let n = 2_000usize;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let start = 1_704_067_200_000_000i64; // 2024-01-01T00:00:00Z
    let span = 60 * 86_400 * 1_000_000i64;
    let (mut users, mut ts, mut amount, mut device) = (vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        users.push((next() % 20 + 1) as i64);
        ts.push(start + (next() % span as u64) as i64);
        amount.push(((next() % 50_000) as f64) / 100.0);
        device.push(format!("dev-{}", next() % 8));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("amount", DataType::Float64, true),
        Field::new("device_id", DataType::Utf8, true),
    ]));
    Ok(arrow::array::RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(users)),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            Arc::new(Float64Array::from(amount)),
            Arc::new(StringArray::from(device)),
        ],
    )?)
}
