//! `quiver`: manage a feature repo and build training sets.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quiver_featurestore::plan::ScanProgress;
use quiver_featurestore::{Error, FeatureStore};
use serde_json::json;

mod history;
mod registry;
mod repo;
mod serve;

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
        /// Where to read and compute the views' rows: `local` (default) or
        /// `ballista://HOST:PORT` (docs/scale-out.md); records are stored here.
        #[arg(
            long,
            env = "QUIVER_ENGINE",
            default_value = "local",
            value_name = "ENGINE",
            conflicts_with = "server"
        )]
        engine: String,
        #[command(flatten)]
        engine_tls: EngineTls,
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
        /// Do not record scored requests in the audit log.
        #[arg(long, conflicts_with = "audit_log")]
        no_audit: bool,
        /// Where scored requests are recorded: a folder, or a Delta table URL on object
        /// storage (s3://, az://, abfss://, gs://; credentials from the standard
        /// environment variables) that several replicas can share.
        /// Default: <repo>/.quiver/audit.
        #[arg(long, value_name = "PATH|URL")]
        audit_log: Option<String>,
        /// Materialize the applied views into this server's online store every
        /// DURATION (incremental runs, e.g. 30s, 5m): how each replica behind a load
        /// balancer stays fresh. Freshness: /healthz?max_lag_seconds=N (503 when
        /// behind), the `health` action, /metrics. Default: only on request.
        #[arg(long, value_name = "DURATION")]
        materialize_every: Option<quiver_featurestore::spec::Duration>,
        /// Rollout policy per model (JSON): canary share, rollback thresholds, drift
        /// threshold, e.g. {"fraud": {"challenger_percent": 5, "max_p99_ms": 20,
        /// "max_error_rate": 0.01, "max_score_psi": 0.15, "max_feature_psi": 0.15}}.
        /// Fields left out and models not listed take those defaults (10 % canary).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Follow the registry of the `quiver serve` at URL (a replica): its feature
        /// definitions, model versions and aliases arrive as they change there, and
        /// this server refuses `apply` and alias moves of its own. Start it on an
        /// empty repo folder; it verifies every model version against its own trusted
        /// signers (`quiver registry trust` before serving), and imports only events
        /// signed by the primary's follow key from the registry id it pins
        /// (--follow-key, --follow-registry; the primary logs both at start and shows
        /// them in `health`). Plain http:// only to a loopback host. A follower token
        /// of the primary comes from --follow-token-file or QUIVER_FOLLOW_TOKEN.
        /// Example: quiver serve --repo replica1 --follow https://primary:8815 --follow-key 3b6a...
        /// --follow-registry 9f2c... --materialize-every 30s
        #[arg(long, value_name = "URL", requires_all = ["follow_key", "follow_registry"])]
        follow: Option<String>,
        /// File holding a follower token of the primary (env QUIVER_FOLLOW_TOKEN gives
        /// the token itself).
        #[arg(long, requires = "follow")]
        follow_token_file: Option<PathBuf>,
        /// The primary's follow key (64 hex digits): every event must be signed by it.
        #[arg(long, value_name = "HEX", requires = "follow")]
        follow_key: Option<String>,
        /// The primary's registry id: events of another registry are refused.
        #[arg(long, value_name = "ID", requires = "follow")]
        follow_registry: Option<String>,
        /// The CA certificate (PEM) the primary's TLS certificate chains to, for
        /// --follow https://.
        #[arg(long, value_name = "FILE", requires = "follow")]
        follow_ca: Option<PathBuf>,
        /// Let replicas follow this server: sign its change log with the Ed25519 key in
        /// FILE (made there, mode 0600, when missing). Replicas pin its public key.
        #[arg(long, value_name = "FILE")]
        follow_signing_key: Option<PathBuf>,
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
        /// Where to compute: `local` (this process, the default) or
        /// `ballista://HOST:PORT`, an Apache DataFusion Ballista scheduler running
        /// quiver's binaries (docs/scale-out.md); the rows are the same either way.
        #[arg(
            long,
            env = "QUIVER_ENGINE",
            default_value = "local",
            value_name = "ENGINE"
        )]
        engine: String,
        #[command(flatten)]
        engine_tls: EngineTls,
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

/// Mutual TLS to a Ballista cluster on another machine (docs/ballista-tls.md).
#[derive(Debug, clap::Args)]
pub(crate) struct EngineTls {
    /// The Ballista cluster's CA certificate (PEM): the scheduler's and executors'
    /// certificates must chain to it. Needed for a `ballista://` engine that is not on
    /// this machine, with --engine-tls-cert and --engine-tls-key.
    #[arg(
        long,
        env = "QUIVER_ENGINE_TLS_CA",
        value_name = "FILE",
        requires_all = ["engine_tls_cert", "engine_tls_key"]
    )]
    engine_tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), signed by the cluster's CA and on the
    /// scheduler's and executors' allowlists as a `client`.
    #[arg(
        long,
        env = "QUIVER_ENGINE_TLS_CERT",
        value_name = "FILE",
        requires = "engine_tls_ca"
    )]
    engine_tls_cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(
        long,
        env = "QUIVER_ENGINE_TLS_KEY",
        value_name = "FILE",
        requires = "engine_tls_ca"
    )]
    engine_tls_key: Option<PathBuf>,
}

impl EngineTls {
    /// The engine `text` names, over mutual TLS when the flags give its files.
    pub(crate) fn engine(
        &self,
        text: &str,
    ) -> anyhow::Result<quiver_featurestore::offline::Engine> {
        let engine = quiver_featurestore::offline::Engine::parse(text)?;
        match (
            &self.engine_tls_ca,
            &self.engine_tls_cert,
            &self.engine_tls_key,
        ) {
            #[cfg(feature = "ballista")]
            (Some(ca), Some(cert), Some(key)) => {
                let tls = quiver_featurestore::offline::ClusterTls::from_files(ca, cert, key)?;
                Ok(engine.with_tls(tls))
            }
            #[cfg(not(feature = "ballista"))]
            (Some(_), _, _) => anyhow::bail!(
                "--engine-tls-ca: this build of quiver has no Ballista client (cargo feature `ballista`)"
            ),
            _ => Ok(engine),
        }
    }
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
    quiver_featurestore::cli::init_logging(cli.verbose, Some("quiver"));
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
                let mut doc = json!({"error": kind, "message": quiver_featurestore::storage::redact(&e.to_string())});
                if let Some(Error::Spec(d)) = e.downcast_ref::<Error>() {
                    doc["problems"] = serde_json::to_value(d).unwrap_or_default();
                }
                println!("{doc}");
            } else {
                eprintln!(
                    "error: {}",
                    quiver_featurestore::storage::redact(&format!("{e:#}"))
                );
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

/// One command: each group's handlers live in their own file and call the library.
async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Init { .. } => repo::init_repo(&cli).await,
        Command::Validate => repo::validate(&cli).await,
        Command::Plan => repo::plan(&cli).await,
        Command::Apply => repo::apply(&cli).await,
        Command::List => repo::list(&cli).await,
        Command::Describe { view, explain } => repo::describe(&cli, view, *explain).await,
        Command::Materialize { .. } => serve::materialize(&cli).await,
        Command::Serve { .. } => serve::serve(&cli).await,
        Command::History { .. } => history::history(&cli).await,
        Command::Registry(cmd) => registry::run(&cli, cmd).await,
    }
}

/// RFC 3339, or a date meaning midnight UTC.
fn parse_time(s: &str) -> anyhow::Result<i64> {
    Ok(quiver_featurestore::cli::parse_time(s)?)
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

/// A Flight client of a running `quiver serve`, with the bearer token when given.
pub(crate) async fn remote(
    url: &str,
    token: Option<&str>,
) -> anyhow::Result<quiver_featurestore::client::Client> {
    let client = quiver_featurestore::client::Client::connect(url).await?;
    Ok(match token {
        Some(t) => client.with_token(t)?,
        None => client,
    })
}

/// Whether progress bars are drawn: text output to a terminal.
fn progress_visible(output: Output) -> bool {
    output == Output::Text && std::io::stderr().is_terminal()
}

fn progress_bar(output: Output, total: u64) -> ProgressBar {
    let visible = progress_visible(output);
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
