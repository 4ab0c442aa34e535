//! `quiver-debug`: replay one entity's feature value step by step, keep it as a trace
//! folder, look at it in a browser.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use quiver_featurestore::FeatureStore;
use quiver_featurestore::explain::{self, ExplainRequest, Trace, Verdict};
use quiver_wasm_debugger::{folder, page};

#[derive(Parser)]
#[command(
    name = "quiver-debug",
    version,
    about = "Replay one entity's feature value step by step, with every version pinned",
    long_about = "Replay one entity's feature value at one time with every version pinned \
(view definition hash, Delta table versions, UDF module hashes), record each step \
(source rows, each plan stage's rows for the entity, each UDF call with its fuel and logs, \
the window and TTL decisions, the value), and compare it with the online store's value.",
    after_help = "Examples:
  quiver-debug trace --repo features/ user_txn_stats --entity user_id=42 --at 2024-03-01T12:00:00Z
  quiver-debug trace --repo features/ user_device_novelty@3 --entity user_id=42 --at 2024-03-01 \\
      --table-version transactions=17 --out trace-42 --check
  quiver-debug show trace-42
  quiver-debug serve trace-42            # then open the printed http://127.0.0.1:PORT/"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More logging on stderr (-v, -vv); QUIVER_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Replay VIEW for one entity as of --at and write a trace folder.
    Trace {
        /// The feature repo.
        #[arg(long, env = "QUIVER_REPO", default_value = ".")]
        repo: PathBuf,
        /// Replay on a running `quiver serve` instead (its `explain` action): only views
        /// the token's tenant owns. The repo is then not read here.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Bearer token for --server.
        #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The view: NAME (current version) or NAME@VERSION.
        view: String,
        /// A join key and its value, KEY=VALUE; once per key of the view's entity.
        #[arg(long = "entity", value_name = "KEY=VALUE", required = true)]
        entity: Vec<String>,
        /// As-of time: RFC 3339 (2024-03-01T12:00:00Z) or a date (midnight UTC).
        #[arg(long)]
        at: String,
        /// Read source NAME at Delta version V (default: the newest), SOURCE=V.
        #[arg(long = "table-version", value_name = "SOURCE=V")]
        table_version: Vec<String>,
        /// The trace folder to write (replaced if it holds a trace).
        #[arg(long, default_value = "quiver-trace")]
        out: PathBuf,
        /// Fuel of each UDF call.
        #[arg(long, default_value_t = 10_000_000_000)]
        fuel: u64,
        /// Most rows kept per step.
        #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        max_rows: u64,
        /// Exit with code 3 unless the verdict is MATCH.
        #[arg(long)]
        check: bool,
        /// Text for people, JSON (trace.json) for scripts.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print a trace folder's steps and verdict.
    Show {
        /// The trace folder.
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Show a trace folder on a local, read-only web page (127.0.0.1).
    Serve {
        /// The trace folder.
        dir: PathBuf,
        /// Port; 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

fn pair(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => bail!("`{s}`: {what} is KEY=VALUE"),
    }
}

fn print_text(t: &Trace, dir: Option<&std::path::Path>) {
    println!(
        "{} {}@{} {} as of {}",
        t.verdict,
        t.view,
        t.view_version,
        t.entity
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        t.at
    );
    println!("  {}", t.reason);
    for s in &t.steps {
        println!("  {:>3}. [{:?}] {}", s.index + 1, s.kind, s.title);
    }
    let values: Vec<String> = t
        .computed
        .values
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "  replayed: status {} {}",
        t.computed.status,
        values.join(" ")
    );
    if let Some(o) = &t.online.value {
        let values: Vec<String> = o.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  online:   status {} {}", o.status, values.join(" "));
    }
    if let Some(d) = dir {
        println!(
            "  trace: {} (quiver-debug serve {})",
            d.display(),
            d.display()
        );
    }
    println!("  reproduce: {}", t.command);
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Trace {
            repo,
            server,
            token,
            view,
            entity,
            at,
            table_version,
            out,
            fuel,
            max_rows,
            check,
            output,
        } => {
            let at_us = quiver_featurestore::cli::parse_time(&at)?;
            let entity = entity
                .iter()
                .map(|e| pair(e, "--entity"))
                .collect::<anyhow::Result<Vec<_>>>()?;
            // Local: whoever runs this holds the repo and its storage, so every step.
            let mut req = ExplainRequest::new(view, entity, at_us).with_all_steps();
            for tv in &table_version {
                let (k, v) = pair(tv, "--table-version")?;
                let v: i64 = v
                    .parse()
                    .with_context(|| format!("`{tv}`: a Delta version is a number"))?;
                req.table_versions.insert(k, v);
            }
            req.fuel = fuel;
            req.max_rows_per_step = max_rows as usize;
            req.repo_display = repo.display().to_string();
            let trace = match server {
                None => {
                    let store = FeatureStore::builder(&repo).read_only().build()?;
                    let mut trace = explain::explain(&store, &req).await?;
                    folder::write(&out, &mut trace)?;
                    trace
                }
                Some(url) => {
                    let mut client = quiver_featurestore::client::Client::connect(&url).await?;
                    if let Some(t) = &token {
                        client = client.with_token(t)?;
                    }
                    let answer = client
                        .action(
                            "explain",
                            serde_json::json!(quiver_flight_proto::actions::Explain {
                                view: req.view.clone(),
                                entity: req.entity.clone(),
                                at: at.clone(),
                                table_versions: req.table_versions.clone(),
                                max_rows: Some(req.max_rows_per_step),
                            }),
                        )
                        .await?;
                    let mut trace: Trace = serde_json::from_value(answer["trace"].clone())
                        .context("the server's trace does not match this quiver-debug's format")?;
                    // The command is rebuilt here from the trace's fields, every argument
                    // quoted: never the text the server sent.
                    trace.origin = vec!["--server".into(), url.clone()];
                    trace.command = trace.reproduce();
                    let files: Vec<(String, String)> =
                        serde_json::from_value(answer["files"].clone())
                            .context("the server's step files")?;
                    let files = files
                        .into_iter()
                        .map(|(n, h)| {
                            let bytes = hex::decode(h).context("a step file is not hex")?;
                            // Bytes from another process: checked before anything decodes
                            // them (no compression, sizes inside the file).
                            quiver_featurestore::ipc::check_file(&bytes, &format!("step file {n}"))
                                .map_err(anyhow::Error::msg)?;
                            Ok((n, bytes))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    folder::write_with_files(&out, &trace, &files)?;
                    trace
                }
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&trace)?),
                Output::Text => print_text(&trace, Some(&out)),
            }
            Ok(if check && trace.verdict != Verdict::Match {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Show { dir, output } => {
            let t = folder::read(&dir)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&t.trace)?),
                Output::Text => print_text(&t.trace, Some(&dir)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { dir, port } => {
            let t = folder::read(&dir)?;
            page::serve(t, port, |url| {
                // The first line of stdout is the page's URL with its token (scripts
                // and tests read it).
                println!("{url}");
                eprintln!("serving {} read-only; Ctrl-C to stop", dir.display());
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    quiver_featurestore::cli::exit_quietly_on_closed_stdout();
    let cli = Cli::parse();
    quiver_featurestore::cli::init_logging(cli.verbose, Some("quiver_wasm_debugger"));
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // Errors of the feature store say whose fault they are; the rest are about
            // the command line or the trace folder: the user's.
            let user = e
                .downcast_ref::<quiver_featurestore::Error>()
                .is_none_or(|e| e.is_user_error());
            ExitCode::from(if user { 1 } else { 2 })
        }
    }
}
