//! `history`: a point-in-time training set written to a file, with its lineage.

use std::sync::Arc;
use std::time::Instant;

use quiver_featurestore::Error;
use quiver_featurestore::offline::{OutputFormat, parse_feature_refs};
use quiver_featurestore::plan::ScanProgress;
use serde_json::json;

use crate::{Cli, Command, Format, Output, open, print_json, progress_bar, progress_ticker};

pub(crate) async fn history(cli: &Cli) -> anyhow::Result<()> {
    let Command::History {
        entities,
        features,
        out,
        format,
        full_names,
        timestamp_column,
        overwrite,
        engine,
        engine_tls,
    } = &cli.command
    else {
        unreachable!("dispatched on history")
    };
    let engine = engine_tls.engine(engine)?;
    let store = open(cli)?;
    let refs = parse_feature_refs(&features.join(","))?;
    let format = match format {
        Some(Format::Parquet) => OutputFormat::Parquet,
        Some(Format::Csv) => OutputFormat::Csv,
        Some(Format::Delta) => OutputFormat::Delta,
        None => OutputFormat::infer(out),
    };
    if out.exists() && !overwrite {
        anyhow::bail!(Error::InvalidRequest(format!(
            "{} exists; pass --overwrite to replace it",
            out.display()
        )));
    }
    let progress = Arc::new(ScanProgress::default());
    let builder = store
        .historical_features()
        .with_entities_file(entities)
        .with_feature_refs(refs)
        .with_full_feature_names(*full_names)
        .with_timestamp_column(timestamp_column)
        .with_progress(progress.clone())
        .with_engine(engine.clone());
    // The bar's total opens every source table once more: only when a bar is drawn.
    let total: u64 = if !crate::progress_visible(cli.output)
        || engine != quiver_featurestore::offline::Engine::Local
    {
        0
    } else {
        let views = builder.resolve_views()?;
        let mut t = 0;
        for (v, _) in &views {
            for s in &v.definition.sources {
                if let Ok(location) =
                    quiver_featurestore::delta::Location::of_source(store.root(), s)
                    && let Ok(table) = quiver_featurestore::delta::open(&location, None).await
                {
                    t += table.num_rows.unwrap_or(0);
                }
            }
        }
        t
    };
    let bar = progress_bar(cli.output, total);
    let ticker = progress_ticker(&bar, &progress);
    let started = Instant::now();
    let result = builder.await;
    ticker.abort();
    let set = result?;
    bar.set_message("writing");
    set.write(out, format, *overwrite).await?;
    let lineage_id = store.record_training_set(&set)?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if cli.output == Output::Json {
        print_json(&json!({
            "out": out, "rows": set.num_rows(), "columns": set.schema.fields().len(),
            "seconds": secs, "lineage": set.lineage, "lineage_id": lineage_id,
        }))?;
    } else {
        println!(
            "Wrote {} rows x {} columns to {} in {:.2}s ({:.0} rows/s).",
            set.num_rows(),
            set.schema.fields().len(),
            out.display(),
            secs,
            set.num_rows() as f64 / secs.max(1e-9)
        );
        println!("  lineage id {lineage_id}");
        for v in &set.lineage.views {
            println!(
                "  {}@{} ({}): {}",
                v.view,
                v.version,
                quiver_featurestore::cli::short(&v.hash, 12),
                v.features.join(", ")
            );
        }
        for t in &set.lineage.tables {
            println!(
                "  source {} = {} @ Delta version {}",
                t.source, t.location, t.version
            );
        }
    }
    Ok(())
}
