//! `quiver`: manage a feature repo and build training sets.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quiver_featurestore::offline::{OutputFormat, parse_feature_refs};
use quiver_featurestore::plan::ScanProgress;
use quiver_featurestore::{Error, FeatureStore};
use serde_json::json;

mod registry;

const EXAMPLES: &str = "\
Examples:
  quiver init my-features --sample-data     scaffold a repo with a small Delta table
  quiver --repo my-features validate        check YAML and columns against the data
  quiver --repo my-features plan            what apply would change (changes nothing)
  quiver --repo my-features apply           store new versions, all or nothing
  quiver --repo my-features history --entities entities.csv \\
         --features user_txn_stats --out training.parquet
  quiver --repo my-features materialize      write latest values to the online store
  QUIVER_TOKENS=secret-token-16+chars=bank_a:admin quiver --repo my-features serve
  quiver registry keygen --signer ana --out ana.key   create and trust a signing key
  quiver registry register fraud --artifact model.json --features user_txn_stats \\
         --training-data training.parquet --key ana.key --signer ana
  quiver registry alias fraud champion 1             promote (checks the inputs are served)
  quiver registry lineage fraud@champion --format dot | dot -Tsvg > lineage.svg";

/// Define features once in YAML; compute point-in-time correct training sets from
/// Delta tables.
///
/// The repo is the folder of YAML files given by --repo (default: the current folder).
/// Applied definitions are kept, with every version, in <repo>/.quiver/registry.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, after_help = EXAMPLES)]
struct Cli {
    /// Feature repo folder.
    #[arg(long, global = true, env = "QUIVER_REPO", default_value = ".")]
    repo: PathBuf,
    /// Registry folder (default: <repo>/.quiver/registry).
    #[arg(long, global = true, env = "QUIVER_REGISTRY")]
    registry: Option<PathBuf>,
    /// Output format: human text, or one JSON document for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Log more (repeat for more detail); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a feature repo with example definitions.
    ///
    /// Example: quiver init my-features --sample-data
    Init {
        /// Folder to create (default: --repo).
        dir: Option<PathBuf>,
        /// Also write a small Delta table (data/transactions) the example reads.
        #[arg(long)]
        sample_data: bool,
        /// Write into a folder that already has YAML files.
        #[arg(long)]
        force: bool,
    },
    /// Check the repo: YAML syntax, names, references, and columns and types against
    /// the Delta tables. Changes nothing.
    ///
    /// Example: quiver --repo features validate
    Validate,
    /// Show what `apply` would add, change and remove, with field and schema diffs.
    /// Changes nothing.
    ///
    /// Example: quiver --repo features plan --output json
    Plan,
    /// Validate everything, then store each changed definition as a new version in one
    /// transaction. Nothing is stored when anything is wrong.
    ///
    /// Example: quiver --repo features apply
    Apply,
    /// List applied feature views.
    ///
    /// Example: quiver --repo features list
    List,
    /// Show one applied view: definition, features and types, versions.
    ///
    /// Example: quiver --repo features describe user_txn_stats@2 --explain
    Describe {
        /// View name, optionally `@VERSION`.
        view: String,
        /// Also print the DataFusion plan that computes its values as of now.
        #[arg(long)]
        explain: bool,
    },
    /// Write the latest feature values into the online store, incrementally.
    ///
    /// Each view commits its values and its watermark (Delta versions read, event-time
    /// bound) in one transaction: an interrupted run leaves the old state or the new
    /// one, and running it again changes nothing. Windowed aggregates keep sliding at
    /// serving time, so values stay exact between runs.
    ///
    /// Example: quiver materialize --views user_txn_stats --until 2024-03-01T00:00:00Z
    Materialize {
        /// Views to materialize (default: every view with `online: true`).
        #[arg(long, value_delimiter = ',')]
        views: Vec<String>,
        /// Event-time bound: RFC 3339 or a date (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Rebuild from scratch instead of reading only what is new.
        #[arg(long)]
        full: bool,
        /// Ask a running `quiver serve` at this URL to do it (it holds the store).
        #[arg(long, env = "QUIVER_SERVER")]
        server: Option<String>,
        /// Admin token for --server.
        #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Serve features over Arrow Flight, with Prometheus metrics.
    ///
    /// Online lookups, training sets, view scans, uploads and admin actions; any Flight
    /// client (pyarrow, Go, Java, the Rust SDK) can call it: see docs/flight-protocol.md.
    /// Tokens come from --tokens FILE (JSON) or QUIVER_TOKENS=TOKEN=TENANT[:admin],...
    /// Stops gracefully on SIGTERM or Ctrl-C.
    ///
    /// Example: QUIVER_TOKENS=s3cr3t-token-bank-a=bank_a:admin quiver serve --addr 127.0.0.1:8815
    Serve {
        /// Flight address.
        #[arg(long, default_value = "127.0.0.1:8815")]
        addr: std::net::SocketAddr,
        /// Prometheus address, or `none`. The metrics name every tenant's views and
        /// models: keep it on a private address, or require --metrics-token-file.
        #[arg(long, default_value = "127.0.0.1:9815")]
        metrics_addr: String,
        /// File holding the bearer token /metrics requires (env QUIVER_METRICS_TOKEN
        /// gives the token itself).
        #[arg(long)]
        metrics_token_file: Option<PathBuf>,
        /// JSON file of tokens: {"tokens": [{"token": "...", "tenant": "bank_a", "admin": true}]}.
        #[arg(long)]
        tokens: Option<PathBuf>,
        /// Accept every request without a token (local development only).
        #[arg(long)]
        insecure_no_auth: bool,
        /// TLS certificate chain (PEM); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Most keys in one online request.
        #[arg(long)]
        max_keys: Option<usize>,
        /// Do not record scored requests in the audit log (<repo>/.quiver/audit).
        #[arg(long)]
        no_audit: bool,
        /// Rollout policy per model (JSON): canary share, rollback thresholds, drift
        /// threshold, e.g. {"fraud": {"challenger_percent": 5, "max_p99_ms": 20,
        /// "max_error_rate": 0.01, "max_score_psi": 0.15, "max_feature_psi": 0.15}}.
        /// Fields left out and models not listed take those defaults (10 % canary).
        #[arg(long)]
        policies: Option<PathBuf>,
    },
    /// Build a point-in-time correct training set.
    ///
    /// Each entity row (join keys + event_timestamp) gets the features as they were
    /// at its time: windows cover (t - window, t]; values older than the view's ttl
    /// come back null with status EXPIRED; unknown keys get NOT_FOUND.
    ///
    /// Example: quiver history --entities labels.csv --features user_txn_stats,user_login_stats:login_ip_count_30d --out train.parquet
    History {
        /// Entity rows: a .csv or .parquet file, or a Delta table folder.
        #[arg(long)]
        entities: PathBuf,
        /// Features: VIEW, VIEW:FEATURE or VIEW@VERSION:FEATURE, comma-separated.
        #[arg(long, required = true, value_delimiter = ',', num_args = 1..)]
        features: Vec<String>,
        /// Output: a .parquet or .csv file, or a folder for a Delta table.
        #[arg(long)]
        out: PathBuf,
        /// Output format (default: from the --out extension; Delta for a folder).
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Name feature columns VIEW__FEATURE.
        #[arg(long)]
        full_names: bool,
        /// Time column of the entity table.
        #[arg(long, default_value = "event_timestamp")]
        timestamp_column: String,
        /// Replace --out if it exists.
        #[arg(long)]
        overwrite: bool,
    },
    /// Models: register signed versions, move aliases, trace lineage, check drift.
    ///
    /// Example: quiver registry register fraud --artifact model.json --features user_txn_stats --key me.key --signer me
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Parquet,
    Csv,
    Delta,
}

fn main() -> ExitCode {
    quiver_featurestore::cli::exit_quietly_on_closed_stdout();
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info,quiver=debug",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUIVER_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let output = cli.output;
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let user = e.downcast_ref::<Error>().is_none_or(Error::is_user_error);
            if output == Output::Json {
                let kind = e
                    .downcast_ref::<Error>()
                    .map(Error::metric_label)
                    .unwrap_or("usage");
                let mut doc = json!({"error": kind, "message": e.to_string()});
                if let Some(Error::Spec(d)) = e.downcast_ref::<Error>() {
                    doc["problems"] = serde_json::to_value(d).unwrap_or_default();
                }
                println!("{doc}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(if user { 1 } else { 2 })
        }
    }
}

pub(crate) fn open(cli: &Cli) -> anyhow::Result<FeatureStore> {
    let mut b = FeatureStore::builder(&cli.repo);
    if let Some(r) = &cli.registry {
        b = b.with_registry(r);
    }
    Ok(b.build()?)
}

/// [`open`] for commands that only read: a repo never applied gets an empty temporary
/// registry instead of a new one on disk.
pub(crate) fn open_read_only(cli: &Cli) -> anyhow::Result<FeatureStore> {
    let mut b = FeatureStore::builder(&cli.repo).read_only();
    if let Some(r) = &cli.registry {
        b = b.with_registry(r);
    }
    Ok(b.build()?)
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Init {
            dir,
            sample_data,
            force,
        } => {
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
        }
        Command::Validate => {
            let store = open_read_only(&cli)?;
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
        }
        Command::Plan => {
            let plan = open_read_only(&cli)?.plan().await?;
            if cli.output == Output::Json {
                print_json(&plan)?;
            } else {
                print!("{}", plan.render());
            }
        }
        Command::Apply => {
            let report = open(&cli)?.apply().await?;
            if cli.output == Output::Json {
                print_json(&report)?;
            } else if report.apply_id == 0 {
                print!("{}", report.plan.render());
            } else {
                print!("{}", report.plan.render());
                println!("Applied as apply #{}.", report.apply_id);
            }
        }
        Command::List => {
            let views = open_read_only(&cli)?.views()?;
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
        }
        Command::Describe { view, explain } => describe(&cli, view, *explain).await?,
        Command::Materialize {
            views,
            until,
            full,
            server,
            token,
        } => {
            let until_us = until.as_deref().map(parse_time).transpose()?;
            let report = match server {
                Some(url) => {
                    let mut client = quiver_featurestore::client::Client::connect(url).await?;
                    if let Some(t) = token {
                        client = client.with_token(t)?;
                    }
                    let until_text = until_us
                        .and_then(chrono::DateTime::from_timestamp_micros)
                        .map(|t| t.to_rfc3339());
                    let names: Vec<&str> = views.iter().map(String::as_str).collect();
                    let views = (!names.is_empty()).then_some(names.as_slice());
                    client.materialize(views, until_text.as_deref()).await?
                }
                None => {
                    let store = open(&cli)?;
                    let progress = Arc::new(ScanProgress::default());
                    let mut m = store
                        .materialize()
                        .with_full(*full)
                        .with_progress(progress.clone());
                    if !views.is_empty() {
                        m = m.with_views(views.clone());
                    }
                    if let Some(u) = until_us {
                        m = m.with_until(u);
                    }
                    let bar = progress_bar(cli.output, 0);
                    bar.set_message("materializing");
                    let ticker = progress_ticker(&bar, &progress);
                    let result = m.await;
                    ticker.abort();
                    bar.finish_and_clear();
                    serde_json::to_value(result?)?
                }
            };
            if cli.output == Output::Json {
                print_json(&report)?;
            } else {
                println!(
                    "{:<28} {:>8} {:<12} {:>10} {:>10} {:>10} {:>8}  {}",
                    "VIEW", "VERSION", "MODE", "ROWS", "KEYS", "STORED", "SECONDS", "WHY"
                );
                for v in report["views"].as_array().into_iter().flatten() {
                    println!(
                        "{:<28} {:>8} {:<12} {:>10} {:>10} {:>10} {:>8.2}  {}",
                        v["view"].as_str().unwrap_or(""),
                        v["version"],
                        v["mode"].as_str().unwrap_or(""),
                        v["rows_read"],
                        v["keys_written"],
                        v["keys_total"],
                        v["seconds"].as_f64().unwrap_or(0.0),
                        v["reason"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Command::Serve {
            addr,
            metrics_addr,
            metrics_token_file,
            tokens,
            insecure_no_auth,
            tls_cert,
            tls_key,
            max_keys,
            no_audit,
            policies,
        } => {
            use quiver_featurestore::serve::{ServeConfig, ServeLimits, TlsConfig, Tokens};
            let tokens = match (tokens, std::env::var("QUIVER_TOKENS").ok(), insecure_no_auth) {
                (_, _, true) => {
                    eprintln!("warning: --insecure-no-auth: every request is accepted as an admin");
                    Tokens::open()
                }
                (Some(file), _, _) => Tokens::from_file(file)?,
                (None, Some(env), _) => Tokens::from_env_value(&env)?,
                (None, None, false) => anyhow::bail!(Error::InvalidRequest("no tokens: pass --tokens FILE or set QUIVER_TOKENS=TOKEN=TENANT[:admin],... (or --insecure-no-auth for local development)".into())),
            };
            let metrics = match metrics_addr.as_str() {
                "none" => None,
                a => Some(
                    a.parse()
                        .map_err(|e| Error::InvalidRequest(format!("--metrics-addr `{a}`: {e}")))?,
                ),
            };
            let mut limits = ServeLimits::default();
            if let Some(k) = max_keys {
                limits.max_keys = *k;
            }
            let mut config = ServeConfig::new(*addr, tokens)
                .with_metrics_addr(metrics)
                .with_limits(limits);
            let metrics_token = match metrics_token_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .map_err(|e| Error::InvalidRequest(format!("{}: {e}", f.display())))?
                        .trim()
                        .to_owned(),
                ),
                None => std::env::var("QUIVER_METRICS_TOKEN").ok(),
            };
            if let Some(t) = metrics_token {
                config = config.with_metrics_token(t)?;
            }
            if let (Some(c), Some(k)) = (tls_cert, tls_key) {
                let read = |p: &PathBuf| {
                    std::fs::read(p)
                        .map_err(|e| Error::InvalidRequest(format!("{}: {e}", p.display())))
                };
                config = config.with_tls(TlsConfig {
                    cert_pem: read(c)?,
                    key_pem: read(k)?,
                });
            }
            if !no_audit {
                config = config.with_audit(cli.repo.join(".quiver").join("audit"));
            }
            if let Some(path) = policies {
                config.policies = quiver_featurestore::serve::load_policies(path)?;
            }
            let store = open(&cli)?;
            // Handlers first: a supervisor may signal as soon as it reads the address.
            let stop = quiver_featurestore::serve::shutdown_signal()?;
            let server = config.spawn(store).await?;
            let scheme = if tls_cert.is_some() { "https" } else { "http" };
            if cli.output == Output::Json {
                print_json(
                    &json!({"flight": format!("{scheme}://{}", server.addr()), "metrics": server.metrics_addr().map(|a| format!("http://{a}/metrics"))}),
                )?;
            } else {
                println!("Serving Arrow Flight on {scheme}://{}", server.addr());
                if let Some(m) = server.metrics_addr() {
                    println!("Prometheus metrics on http://{m}/metrics");
                }
                println!("Stop with Ctrl-C or SIGTERM.");
            }
            server.run_until(stop).await;
        }
        Command::Registry(cmd) => registry::run(&cli, cmd).await?,
        Command::History {
            entities,
            features,
            out,
            format,
            full_names,
            timestamp_column,
            overwrite,
        } => {
            let store = open(&cli)?;
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
                .with_progress(progress.clone());
            let total: u64 = {
                let views = builder.resolve_views()?;
                let mut t = 0;
                for (v, _) in &views {
                    for s in &v.definition.sources {
                        if let Ok(url) =
                            quiver_featurestore::delta::table_url(store.root(), &s.delta.value)
                        {
                            if let Ok(table) = quiver_featurestore::delta::open(&url, None).await {
                                t += table.num_rows.unwrap_or(0);
                            }
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
        }
    }
    Ok(())
}

/// RFC 3339, or a date meaning midnight UTC.
fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_micros());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_micros());
    }
    anyhow::bail!(Error::InvalidRequest(format!(
        "`{s}` is not a time; write 2024-03-01T00:00:00Z or 2024-03-01"
    )))
}

/// Move `bar` to the rows `progress` counted, every 100 ms, until the task is aborted.
fn progress_ticker(bar: &ProgressBar, progress: &Arc<ScanProgress>) -> tokio::task::JoinHandle<()> {
    let (bar, progress) = (bar.clone(), progress.clone());
    tokio::spawn(async move {
        loop {
            bar.set_position(progress.rows());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn progress_bar(output: Output, total: u64) -> ProgressBar {
    let visible = output == Output::Text && std::io::stderr().is_terminal();
    let bar = if total > 0 {
        ProgressBar::new(total)
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_draw_target(if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {human_pos}/{human_len} source rows ({per_sec}, {elapsed})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("computing features");
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

async fn describe(cli: &Cli, view: &str, explain: bool) -> anyhow::Result<()> {
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
    }
    println!("form      {}", d.view.form());
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
