//! `materialize` and `serve`: the online store and the Flight server.

use std::path::PathBuf;
use std::sync::Arc;

use quiver_featurestore::Error;
use quiver_featurestore::plan::ScanProgress;
use serde_json::json;

use crate::{Cli, Command, Output, open, parse_time, print_json, progress_bar, progress_ticker};

pub(crate) async fn materialize(cli: &Cli) -> anyhow::Result<()> {
    let Command::Materialize {
        views,
        until,
        full,
        server,
        token,
        engine,
        engine_tls,
    } = &cli.command
    else {
        unreachable!("dispatched on materialize")
    };
    let engine = engine_tls.engine(engine)?;
    let until_us = until.as_deref().map(parse_time).transpose()?;
    let report = match server {
        Some(url) => {
            let mut client = crate::remote(url, token.as_deref()).await?;
            let until_text = until_us.map(quiver_featurestore::cli::format_time);
            let names: Vec<&str> = views.iter().map(String::as_str).collect();
            let views = (!names.is_empty()).then_some(names.as_slice());
            client.materialize(views, until_text.as_deref()).await?
        }
        None => {
            let store = open(cli)?;
            let progress = Arc::new(ScanProgress::default());
            let mut m = store
                .materialize()
                .with_full(*full)
                .with_engine(engine)
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
            "{:<28} {:>8} {:<12} {:>10} {:>10} {:>10} {:>8}  WHY",
            "VIEW", "VERSION", "MODE", "ROWS", "KEYS", "STORED", "SECONDS"
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
    Ok(())
}

pub(crate) async fn serve(cli: &Cli) -> anyhow::Result<()> {
    let Command::Serve {
        addr,
        metrics_addr,
        metrics_token_file,
        tokens,
        insecure_no_auth,
        tls_cert,
        tls_key,
        max_keys,
        no_audit,
        audit_log,
        materialize_every,
        policies,
        follow,
        follow_token_file,
        follow_key,
        follow_registry,
        follow_ca,
        follow_signing_key,
    } = &cli.command
    else {
        unreachable!("dispatched on serve")
    };
    use quiver_featurestore::serve::{ServeConfig, TlsConfig, Tokens};
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
    let mut config = ServeConfig::new(*addr, tokens).with_metrics_addr(metrics);
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
            std::fs::read(p).map_err(|e| Error::InvalidRequest(format!("{}: {e}", p.display())))
        };
        config = config.with_tls(TlsConfig {
            cert_pem: read(c)?,
            key_pem: read(k)?,
        });
    }
    if !no_audit {
        config = match audit_log {
            Some(text) => config.with_audit_location(quiver_featurestore::audit::location(text)?),
            None => config.with_audit(cli.repo.join(".quiver").join("audit")),
        };
    }
    if let Some(every) = materialize_every {
        config = config.with_materialize_every(std::time::Duration::from_micros(
            every.as_micros().max(0) as u64,
        ));
    }
    if let Some(path) = policies {
        config.policies = quiver_featurestore::serve::load_policies(path)?;
    }
    if let Some(url) = follow {
        let token = match follow_token_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| Error::InvalidRequest(format!("--follow-token-file {}: {e}", f.display())))?
                .trim()
                .to_owned(),
            None => std::env::var("QUIVER_FOLLOW_TOKEN").map_err(|_| {
                Error::InvalidRequest(
                    "--follow needs a follower token of the primary: --follow-token-file FILE or QUIVER_FOLLOW_TOKEN".into(),
                )
            })?,
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!(Error::InvalidRequest(format!(
                "--follow `{url}`: expected http://HOST:PORT or https://HOST:PORT"
            )));
        }
        config = config.with_follow(
            url.clone(),
            token,
            follow_key.clone().unwrap_or_default(),
            follow_registry.clone().unwrap_or_default(),
        );
        if let Some(ca) = follow_ca {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::InvalidRequest(format!("--follow-ca {}: {e}", ca.display())))?;
            config = config.with_follow_ca(pem);
        }
    }
    if let Some(path) = follow_signing_key {
        let key = if path.exists() {
            quiver_registry::SigningKey::load(path)?
        } else {
            quiver_registry::SigningKey::generate(path)?
        };
        config = config.with_follow_signing_key(key);
    }
    let mut store = open(cli)?;
    if let Some(k) = max_keys {
        let mut limits = store.limits().clone();
        limits.max_keys = *k;
        store = store.with_limits(limits);
    }
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
    Ok(())
}
