//! `quiver registry ...`: the model registry from the command line.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use quiver_featurestore::model_inputs::{read_training_data, training_stats};
use quiver_featurestore::offline::parse_feature_refs;
use quiver_featurestore::{Error, FeatureStore};
use quiver_registry::{ModelRegistry, Registration, SigningKey};
use serde_json::json;

use crate::{Cli, Output, print_json};
use report::{impact, print_graph, print_status, show};

mod report;

#[derive(Debug, Subcommand)]
pub(crate) enum RegistryCommand {
    /// Create an Ed25519 signing key (PKCS#8, mode 0600) and trust it as SIGNER.
    ///
    /// Example: quiver registry keygen --signer ana --out ana.key
    Keygen {
        /// Signer name the registry will know the key by.
        #[arg(long)]
        signer: String,
        /// Key file to create (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Trust a public key (64 hex digits) as SIGNER; replaces an earlier key of that name.
    ///
    /// Example: quiver registry trust ana 3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29
    Trust {
        /// Signer name.
        signer: String,
        /// Public key, hex.
        public_key: String,
    },
    /// Stop trusting SIGNER: every version it signed stops loading.
    Untrust {
        /// Signer name.
        signer: String,
    },
    /// List trusted signers.
    Signers,
    /// Register a model file as a new, signed version.
    ///
    /// The artifact is a native model (JSON: logistic_regression or mlp), whose feature
    /// names must equal the columns of --features in order, or an ONNX file (exported
    /// by skl2onnx, onnxmltools, torch.onnx) taking one [batch, features] float tensor
    /// in the order of --features and giving the positive-class probability in an
    /// output named `probabilities` (or its only output). With --training-data (the
    /// Parquet written by `quiver history`) the training statistics used for drift
    /// checks are computed and the training set is linked in lineage.
    ///
    /// Example: quiver registry register fraud --artifact model.json --features user_txn_stats:txn_count_1h,user_txn_stats:amount_avg_7d --training-data train.parquet --key ana.key --signer ana --metric auc=0.91
    ///
    /// Example: quiver registry register fraud --artifact gbm.onnx --features user_txn_stats --training-data train.parquet --key ana.key --signer ana
    Register {
        /// Model name.
        model: String,
        /// Model file.
        #[arg(long)]
        artifact: PathBuf,
        /// Inputs in model order: VIEW, VIEW:FEATURE or VIEW@VERSION:FEATURE, comma-separated.
        #[arg(long, required = true, value_delimiter = ',', num_args = 1..)]
        features: Vec<String>,
        /// Columns are named VIEW__FEATURE (as `history --full-names` writes them).
        #[arg(long)]
        full_names: bool,
        /// Training set (Parquet from `quiver history`) for statistics and lineage.
        #[arg(long)]
        training_data: Option<PathBuf>,
        /// Private key file (from `keygen`).
        #[arg(long, env = "QUIVER_SIGNING_KEY")]
        key: PathBuf,
        /// Signer name the key is trusted as.
        #[arg(long, env = "QUIVER_SIGNER")]
        signer: String,
        /// Evaluation metric NAME=VALUE (repeatable).
        #[arg(long = "metric", value_parser = parse_metric)]
        metrics: Vec<(String, f64)>,
        /// Tag KEY=VALUE (repeatable).
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// Extra lineage input, e.g. federation_run:ID (repeatable).
        #[arg(long)]
        upstream: Vec<String>,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List models with their latest version and aliases.
    List,
    /// Show a model (versions and aliases), or one version: MODEL@VERSION or MODEL@ALIAS.
    ///
    /// Example: quiver registry show fraud@champion
    Show {
        /// MODEL or MODEL@VERSION|ALIAS.
        model: String,
    },
    /// Point ALIAS of MODEL at VERSION (or remove it with --delete), atomically and with
    /// history. Refused when the model's inputs are no longer served by the applied
    /// views (a removed feature or a changed type).
    ///
    /// Example: quiver registry alias fraud champion 3 --expect 2 --reason "auc +0.02"
    Alias {
        /// Model name.
        model: String,
        /// Alias (champion, challenger, any name).
        alias: String,
        /// Version to point at.
        #[arg(required_unless_present = "delete")]
        version: Option<u64>,
        /// Remove the alias.
        #[arg(long, conflicts_with = "version")]
        delete: bool,
        /// Move only if the alias now points at this version (`none`: only if unset).
        #[arg(long)]
        expect: Option<String>,
        /// Why (kept in the alias history).
        #[arg(long, default_value = "")]
        reason: String,
        /// Who (default: $USER). With --server, the token's tenant is recorded.
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
        /// Move it on a running `quiver serve` (which holds the registry) instead, with
        /// an admin token: it serves the new version at once.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Bearer token for --server (an admin tenant's).
        #[arg(
            long,
            env = "QUIVER_TOKEN",
            hide_env_values = true,
            requires = "server"
        )]
        token: Option<String>,
    },
    /// Show, set or clear a model's rollout policy in the registry: canary share,
    /// rollback thresholds, drift threshold. Every server of the model, and every
    /// replica that follows this registry, judges its challenger by it; models without
    /// one take `quiver serve --policies` or the defaults.
    ///
    /// Example: quiver registry policy fraud --set policy.json --server http://primary:8815
    /// (policy.json: {"challenger_percent": 5, "max_p99_ms": 20, "max_error_rate": 0.01})
    Policy {
        /// Model name.
        model: String,
        /// Store the policy in this JSON file (fields left out take the defaults).
        #[arg(long, value_name = "FILE")]
        set: Option<PathBuf>,
        /// Remove the stored policy.
        #[arg(long, conflicts_with = "set")]
        clear: bool,
        /// Change it on a running `quiver serve` (which holds the registry), with an
        /// admin token.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Bearer token for --server (an admin tenant's).
        #[arg(
            long,
            env = "QUIVER_TOKEN",
            hide_env_values = true,
            requires = "server"
        )]
        token: Option<String>,
    },
    /// Check signatures and artifact digests: one version, or every version of MODEL.
    ///
    /// Example: quiver registry verify fraud
    Verify {
        /// MODEL or MODEL@VERSION|ALIAS.
        model: String,
    },
    /// What a model version was made from (or, with --down, what was made from a node).
    ///
    /// Example: quiver registry lineage fraud@champion --format dot | dot -Tsvg > lineage.svg
    Lineage {
        /// MODEL@VERSION|ALIAS, or a lineage id (view:NAME@V, delta:URI@V, training_set:ID, ...).
        node: String,
        /// Walk downstream instead of upstream.
        #[arg(long)]
        down: bool,
        /// text, dot (Graphviz), openlineage (JSON lines of RunEvents) or json.
        #[arg(long, value_enum, default_value_t = LineageFormat::Text)]
        format: LineageFormat,
    },
    /// Which model versions depend on a feature view, as retraining tasks.
    ///
    /// Example: quiver registry impact user_txn_stats
    Impact {
        /// VIEW or VIEW@VERSION.
        view: String,
    },
    /// Drift of live values against a model version's training statistics (PSI, KS).
    ///
    /// Example: quiver registry drift fraud@champion --live last_week.parquet
    Drift {
        /// MODEL@VERSION|ALIAS.
        model: String,
        /// Parquet file with the live feature values (same column names).
        #[arg(long)]
        live: PathBuf,
        /// PSI above which a feature counts as drifted.
        #[arg(long, default_value_t = quiver_registry::DEFAULT_PSI_THRESHOLD)]
        psi_threshold: f64,
    },
    /// What a running `quiver serve` serves for MODEL: champion and challenger
    /// versions, canary share, rollout policy, per-version requests, errors and p99,
    /// live feature drift (PSI and KS of recently served inputs against each version's
    /// training statistics) and automatic rollbacks.
    ///
    /// Example: quiver registry status fraud --server http://127.0.0.1:8815 --token $QUIVER_TOKEN
    Status {
        /// Model name.
        model: String,
        /// URL of the running `quiver serve`.
        #[arg(long, env = "QUIVER_SERVER", default_value = "http://127.0.0.1:8815")]
        server: String,
        /// Bearer token of a tenant that may read the model's views.
        #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// One scored row from the audit log (`<repo>/.quiver/audit`, a Delta table), by
    /// the `request_id` that `score` returned: time, tenant, entity, inputs, model
    /// version, score and contributions. Works while `quiver serve` runs.
    ///
    /// Example: quiver registry audit 19a8e2b1c4f-5e0c1d2a3b4c5d6e-0 --output json
    Audit {
        /// The request id.
        request_id: String,
        /// The audit table: a folder or a Delta table URL on object storage
        /// (default: <repo>/.quiver/audit).
        #[arg(long, value_name = "PATH|URL")]
        table: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LineageFormat {
    Text,
    Dot,
    Openlineage,
    Json,
}

fn parse_metric(s: &str) -> Result<(String, f64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: write NAME=VALUE, e.g. auc=0.91"))?;
    let v: f64 = v
        .parse()
        .map_err(|_| format!("`{v}` in `{s}` is not a number"))?;
    if !v.is_finite() {
        return Err(format!("`{s}`: metric values must be finite"));
    }
    Ok((k.to_owned(), v))
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: write KEY=VALUE, e.g. team=risk"))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn split_model(s: &str) -> (&str, Option<&str>) {
    match s.split_once('@') {
        Some((m, sel)) => (m, Some(sel)),
        None => (s, None),
    }
}

fn open_store(cli: &Cli) -> anyhow::Result<FeatureStore> {
    // Registry commands are short; wait a little for another one to finish.
    let mut b = FeatureStore::builder(&cli.repo).with_lock_wait(std::time::Duration::from_secs(10));
    if let Some(r) = &cli.registry {
        b = b.with_registry(r);
    }
    Ok(b.build()?)
}

fn resolve(reg: &ModelRegistry, s: &str) -> anyhow::Result<(String, u64)> {
    let (model, sel) = split_model(s);
    let sel = sel.ok_or_else(|| {
        Error::InvalidRequest(format!("`{s}`: write MODEL@VERSION or MODEL@ALIAS"))
    })?;
    Ok((
        model.to_owned(),
        reg.resolve(model, sel).map_err(Error::from)?,
    ))
}

pub(crate) async fn run(cli: &Cli, cmd: &RegistryCommand) -> anyhow::Result<()> {
    let json_out = cli.output == Output::Json;
    if let RegistryCommand::Audit { request_id, table } = cmd {
        // The audit table is Delta, not the registry: no lock to wait for.
        let text = table
            .clone()
            .unwrap_or_else(|| cli.repo.join(".quiver").join("audit").display().to_string());
        let location = quiver_featurestore::delta::Location::parse(std::path::Path::new(""), &text)
            .map_err(|m| Error::InvalidRequest(format!("audit log {text}: {m}")))?;
        let found = quiver_featurestore::audit::lookup_at(&location, request_id).await?;
        let Some(rec) = found else {
            anyhow::bail!(Error::NotFound {
                what: format!(
                    "no request `{request_id}` in the audit log {}",
                    table.clone().unwrap_or_else(|| cli
                        .repo
                        .join(".quiver")
                        .join("audit")
                        .display()
                        .to_string())
                ),
            });
        };
        if json_out {
            let mut v = serde_json::to_value(&rec)?;
            for k in ["entity", "inputs", "contributions"] {
                if let Some(text) = v.get(k).and_then(|t| t.as_str())
                    && let Ok(parsed) = serde_json::from_str::<serde_json::Value>(text)
                {
                    v[k] = parsed;
                }
            }
            print_json(&v)?;
        } else {
            let time = quiver_featurestore::cli::format_time(rec.time_us);
            println!("request   {}", rec.request_id);
            println!("time      {time}");
            println!("tenant    {}", rec.tenant);
            println!(
                "model     {}@{} ({})",
                rec.model, rec.model_version, rec.model_alias
            );
            println!("entity    {}", rec.entity);
            println!("score     {}", rec.score);
            println!("inputs    {}", rec.inputs);
            if let Some(c) = &rec.contributions {
                println!("explained {c}");
            }
        }
        return Ok(());
    }
    if let RegistryCommand::Status {
        model,
        server,
        token,
    } = cmd
    {
        // Live state is in the server's memory: ask it.
        let status = crate::remote(server, token.as_deref())
            .await?
            .action("model-status", serde_json::json!({ "model": model }))
            .await?;
        if json_out {
            print_json(&status)?;
        } else {
            print_status(&status);
        }
        return Ok(());
    }
    if let RegistryCommand::Alias {
        model,
        alias,
        version,
        delete,
        expect,
        reason,
        by,
        server,
        token,
    } = cmd
    {
        let expect = parse_expect(expect.as_deref())?;
        let to = if *delete { None } else { *version };
        let ev = match server {
            // A running server holds the registry: it moves the alias and serves it.
            Some(url) => {
                let mut body = json!({"model": model, "alias": alias, "to": to, "reason": reason});
                match expect {
                    None => {}
                    Some(None) => body["expect"] = json!("none"),
                    Some(Some(v)) => body["expect"] = json!(v),
                }
                let ev = crate::remote(url, token.as_deref())
                    .await?
                    .action("alias", body)
                    .await?;
                serde_json::from_value(ev)?
            }
            None => open_store(cli)?.move_alias(model, alias, to, expect, by, reason)?,
        };
        print_alias_event(&ev, json_out)?;
        return Ok(());
    }
    if let RegistryCommand::Policy {
        model,
        set,
        clear,
        server,
        token,
    } = cmd
    {
        let policy = match set {
            Some(path) => Some(quiver_featurestore::serve::load_policies_value(
                path,
                &quiver_registry::read_json_config::<serde_json::Value>(path, 1 << 20)
                    .map_err(Error::InvalidRequest)?,
                model,
            )?),
            None => None,
        };
        let stored = match server {
            Some(url) => {
                let mut client = crate::remote(url, token.as_deref()).await?;
                if set.is_some() || *clear {
                    client
                        .action("policy", json!({"model": model, "policy": policy}))
                        .await?["policy"]
                        .clone()
                } else {
                    client
                        .action("model-status", json!({"model": model}))
                        .await?["policy"]
                        .clone()
                }
            }
            None => {
                let reg = open_store(cli)?.models()?;
                if set.is_some() || *clear {
                    reg.set_policy(model, policy.as_ref())
                        .map_err(Error::from)?;
                }
                serde_json::to_value(reg.policy(model).map_err(Error::from)?)?
            }
        };
        if json_out {
            print_json(&json!({"model": model, "policy": stored}))?;
        } else if stored.is_null() {
            println!("{model}: no policy stored; servers use --policies or the defaults");
        } else {
            println!("{model}: {}", serde_json::to_string_pretty(&stored)?);
        }
        return Ok(());
    }
    let store = open_store(cli)?;
    let reg = store.models()?;
    match cmd {
        RegistryCommand::Keygen { signer, out } => {
            let key = SigningKey::generate(out).map_err(Error::from)?;
            reg.trust(signer, &key.public_key_hex())
                .map_err(Error::from)?;
            if json_out {
                print_json(
                    &json!({"signer": signer, "public_key": key.public_key_hex(), "key_file": out}),
                )?;
            } else {
                println!("Wrote {} and trusted it as `{signer}`.", out.display());
                println!("public key {}", key.public_key_hex());
                println!(
                    "Other registries trust it with: quiver registry trust {signer} {}",
                    key.public_key_hex()
                );
            }
        }
        RegistryCommand::Trust { signer, public_key } => {
            reg.trust(signer, public_key).map_err(Error::from)?;
            if json_out {
                print_json(&json!({"signer": signer, "public_key": public_key}))?;
            } else {
                println!("Trusted `{signer}`.");
            }
        }
        RegistryCommand::Untrust { signer } => {
            let had = reg.untrust(signer).map_err(Error::from)?;
            if json_out {
                print_json(&json!({"signer": signer, "removed": had}))?;
            } else if had {
                println!("`{signer}` is no longer trusted; versions it signed will not load.");
            } else {
                println!("`{signer}` was not trusted.");
            }
        }
        RegistryCommand::Signers => {
            let s = reg.signers().map_err(Error::from)?;
            if json_out {
                print_json(
                    &s.iter()
                        .map(|(n, k)| json!({"signer": n, "public_key": k}))
                        .collect::<Vec<_>>(),
                )?;
            } else {
                for (n, k) in s {
                    println!("{n:<20} {k}");
                }
            }
        }
        RegistryCommand::Register {
            model,
            artifact,
            features,
            full_names,
            training_data,
            key,
            signer,
            metrics,
            tags,
            upstream,
            description,
        } => {
            let refs = parse_feature_refs(&features.join(","))?;
            let input = store.input_schema(&refs, *full_names)?;
            let meta = std::fs::metadata(artifact)
                .map_err(|e| Error::InvalidRequest(format!("{}: {e}", artifact.display())))?;
            if meta.len() > quiver_registry::MAX_ARTIFACT_BYTES {
                anyhow::bail!(Error::InvalidRequest(format!(
                    "{} is {} bytes; artifacts are at most {}",
                    artifact.display(),
                    meta.len(),
                    quiver_registry::MAX_ARTIFACT_BYTES
                )));
            }
            let bytes = std::fs::read(artifact)
                .map_err(|e| Error::InvalidRequest(format!("{}: {e}", artifact.display())))?;
            let key = SigningKey::load(key).map_err(Error::from)?;
            let mut r = Registration::new(model, bytes, input.clone()).description(description);
            for (k, v) in metrics {
                r = r.metric(k, *v);
            }
            for (k, v) in tags {
                r = r.tag(k, v);
            }
            for u in upstream {
                r = r.upstream(u);
            }
            let mut rows = None;
            if let Some(path) = training_data {
                let cols: Vec<String> = input.features.iter().map(|f| f.column.clone()).collect();
                let data = read_training_data(path, &cols, store.limits())?;
                rows = Some(data.rows);
                r = r.training_stats(training_stats(&data, &cols));
                if let Some(id) = &data.lineage_id {
                    r = r.upstream(id);
                }
            }
            let mv = reg.register(r, signer, &key).map_err(Error::from)?;
            let m = &mv.manifest;
            if json_out {
                print_json(
                    &json!({"model": m.model, "version": m.version, "artifact_sha256": m.artifact_sha256,
                    "format": m.format, "signer": m.signer, "upstream": m.upstream, "training_rows": rows}),
                )?;
            } else {
                println!(
                    "Registered {}@{} ({}, sha256 {}), signed by {}.",
                    m.model,
                    m.version,
                    m.format,
                    quiver_featurestore::cli::short(&m.artifact_sha256, 16),
                    m.signer
                );
                println!(
                    "inputs    {}",
                    m.input
                        .features
                        .iter()
                        .map(|f| format!("{}@{}:{}", f.view, f.view_version, f.feature))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if let Some(n) = rows {
                    println!("stats     from {n} training rows");
                }
                println!("lineage   {}", m.upstream.join(", "));
                println!(
                    "\nNext: quiver registry alias {} challenger {}",
                    m.model, m.version
                );
            }
        }
        RegistryCommand::List => {
            let models = reg.models().map_err(Error::from)?;
            let mut rows = Vec::new();
            for m in &models {
                let aliases = reg.aliases(&m.name).map_err(Error::from)?;
                rows.push(json!({"model": m.name, "latest_version": m.latest_version,
                    "aliases": aliases.iter().map(|(a, s)| (a.clone(), s.version)).collect::<BTreeMap<_, _>>()}));
            }
            if json_out {
                print_json(&rows)?;
            } else if rows.is_empty() {
                println!("No models registered yet. See `quiver registry register --help`.");
            } else {
                println!("{:<24} {:>8}  aliases", "model", "latest");
                for r in &rows {
                    let aliases = r["aliases"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(a, v)| format!("{a}={v}"))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    println!(
                        "{:<24} {:>8}  {aliases}",
                        r["model"].as_str().unwrap_or(""),
                        r["latest_version"]
                    );
                }
            }
        }
        RegistryCommand::Show { model } => show(&reg, model, json_out)?,
        RegistryCommand::Verify { model } => {
            let (name, sel) = split_model(model);
            let results = reg.verify(name, sel).map_err(Error::from)?;
            let bad = results.iter().filter(|(_, r)| r.is_err()).count();
            if json_out {
                let docs: Vec<_> = results
                    .iter()
                    .map(|(v, r)| json!({"model": name, "version": v, "ok": r.is_ok(), "error": r.as_ref().err()}))
                    .collect();
                print_json(&docs)?;
            } else {
                for (v, r) in &results {
                    match r {
                        Ok(()) => {
                            println!("{name}@{v}  OK (signature and artifact digest verified)")
                        }
                        Err(e) => println!("{name}@{v}  FAILED: {e}"),
                    }
                }
            }
            if bad > 0 {
                anyhow::bail!(Error::InvalidRequest(format!(
                    "{bad} version(s) of `{name}` failed verification"
                )));
            }
        }
        RegistryCommand::Lineage { node, down, format } => {
            let lineage = reg.lineage();
            let id = if quiver_registry::Node::parse_kind(node).is_some() {
                node.clone()
            } else {
                let (m, v) = resolve(&reg, node)?;
                quiver_registry::NodeKind::ModelVersion.id(&m, Some(&v))
            };
            let g = if *down {
                lineage.downstream(&id)
            } else {
                lineage.upstream(&id)
            }
            .map_err(Error::from)?;
            print_graph(&g, *format, &id, *down, json_out)?;
        }
        RegistryCommand::Impact { view } => impact(&store, view, json_out)?,
        RegistryCommand::Audit { .. }
        | RegistryCommand::Status { .. }
        | RegistryCommand::Alias { .. }
        | RegistryCommand::Policy { .. } => {
            unreachable!("answered before the registry opens")
        }
        RegistryCommand::Drift {
            model,
            live,
            psi_threshold,
        } => {
            let (m, v) = resolve(&reg, model)?;
            let mv = reg
                .version(&m, v)
                .map_err(Error::from)?
                .ok_or_else(|| Error::NotFound {
                    what: format!("{m}@{v}"),
                })?;
            let stats = &mv.manifest.training_stats;
            if stats.is_empty() {
                anyhow::bail!(Error::InvalidRequest(format!(
                    "{m}@{v} has no training statistics; register it with --training-data"
                )));
            }
            let cols: Vec<String> = stats.iter().map(|s| s.name.clone()).collect();
            let data = read_training_data(live, &cols, store.limits())?;
            let live_cols: HashMap<String, Vec<f64>> = data.columns;
            let report = quiver_registry::drift_report(stats, &live_cols, *psi_threshold);
            if json_out {
                print_json(
                    &json!({"model": m, "version": v, "rows": data.rows, "psi_threshold": psi_threshold, "features": report}),
                )?;
            } else {
                println!(
                    "{m}@{v} against {} live rows (PSI threshold {psi_threshold}):",
                    data.rows
                );
                println!(
                    "{:<32} {:>10} {:>8} {:>8}  ",
                    "feature", "live", "PSI", "KS"
                );
                for r in &report {
                    println!(
                        "{:<32} {:>10} {:>8.4} {:>8.4}  {}",
                        r.feature,
                        r.live_count,
                        r.psi,
                        r.ks,
                        if r.drifted { "DRIFTED" } else { "ok" }
                    );
                }
            }
        }
    }
    Ok(())
}

fn print_alias_event(ev: &quiver_registry::AliasEvent, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        print_json(ev)?;
    } else {
        let show = |v: Option<u64>| v.map_or("(none)".to_string(), |v| v.to_string());
        println!(
            "{}/{}: {} -> {} (move #{})",
            ev.model,
            ev.alias,
            show(ev.from),
            show(ev.to),
            ev.seq
        );
    }
    Ok(())
}

/// `--expect`: a version number or `none` (move only if the alias is unset).
fn parse_expect(expect: Option<&str>) -> Result<Option<Option<u64>>, Error> {
    match expect {
        None => Ok(None),
        Some("none") => Ok(Some(None)),
        Some(v) => v.parse::<u64>().map(|v| Some(Some(v))).map_err(|_| {
            Error::InvalidRequest(format!("--expect `{v}`: give a version number or `none`"))
        }),
    }
}
