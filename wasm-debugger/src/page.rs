//! The read-only web page of a trace: `quiver-debug serve TRACE_DIR`.
//!
//! One HTML page with its script and style embedded in the binary (nothing is fetched
//! from the network), served on 127.0.0.1 with the trace (`trace.json`) and each
//! step's rows as JSON (`steps/N`). Only GET; nothing on disk changes.
//!
//! Guarantees: every route sits under a random 128-bit token printed in the URL
//! (`http://127.0.0.1:PORT/TOKEN/`), so another local user or a web page guessing
//! ports reads nothing; and a request is answered only when its `Host` is
//! `127.0.0.1:PORT`, `localhost:PORT` or `[::1]:PORT`, so a page that rebinds its own
//! DNS name to 127.0.0.1 (DNS rebinding) cannot read the trace through the browser
//! either: its requests carry its own host name.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::util::display::array_value_to_string;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::folder::TraceDir;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");
/// Most rows of one step sent to the page (the file keeps them all).
pub const MAX_PAGE_ROWS: usize = 2_000;

fn respond(kind: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::HeaderName::from_static("content-security-policy"),
                "default-src 'self'; style-src 'self'; script-src 'self'",
            ),
            (
                header::HeaderName::from_static("x-content-type-options"),
                "nosniff",
            ),
        ],
        body,
    )
        .into_response()
}

/// A batch as `{"columns": [...], "types": [...], "rows": [[...]], "total": N}`:
/// cells as display text, nulls as null.
pub fn batch_json(batch: &RecordBatch) -> serde_json::Value {
    let schema = batch.schema();
    let n = batch.num_rows().min(MAX_PAGE_ROWS);
    let rows: Vec<Vec<serde_json::Value>> = (0..n)
        .map(|r| {
            batch
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(r) {
                        serde_json::Value::Null
                    } else {
                        array_value_to_string(c, r).unwrap_or_default().into()
                    }
                })
                .collect()
        })
        .collect();
    serde_json::json!({
        "columns": schema.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>(),
        "types": schema.fields().iter().map(|f| f.data_type().to_string()).collect::<Vec<_>>(),
        "rows": rows,
        "total": batch.num_rows(),
    })
}

async fn step(State(t): State<Arc<TraceDir>>, Path((_, i)): Path<(String, usize)>) -> Response {
    let Some(step) = t.trace.steps.get(i) else {
        return (StatusCode::NOT_FOUND, format!("no step {i}")).into_response();
    };
    let load = |f: &Option<String>| -> Result<serde_json::Value, String> {
        match f {
            None => Ok(serde_json::Value::Null),
            Some(rel) => t
                .rows(rel)
                .map(|b| batch_json(&b))
                .map_err(|e| e.to_string()),
        }
    };
    match (load(&step.file), load(&step.output_file)) {
        (Ok(rows), Ok(output)) => respond(
            "application/json",
            serde_json::json!({ "rows": rows, "output": output }).to_string(),
        ),
        (Err(e), _) | (_, Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// Who may read the page: requests for `Host` `127.0.0.1:port`, `localhost:port` or
/// `[::1]:port`, under the path `/token/`.
#[derive(Debug, Clone)]
pub struct Access {
    /// The random path prefix.
    pub token: String,
    /// The port the page listens on.
    pub port: u16,
}

impl Access {
    /// A fresh random token (128 bits from the system's random source, hex) for `port`.
    pub fn random(port: u16) -> anyhow::Result<Self> {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
        Ok(Self {
            token: hex::encode(b),
            port,
        })
    }

    fn host_ok(&self, host: &str) -> bool {
        let p = self.port;
        [
            format!("127.0.0.1:{p}"),
            format!("localhost:{p}"),
            format!("[::1]:{p}"),
        ]
        .iter()
        .any(|h| h.eq_ignore_ascii_case(host))
    }

    fn token_ok(&self, path: &str) -> bool {
        let first = path
            .strip_prefix('/')
            .unwrap_or("")
            .split('/')
            .next()
            .unwrap_or("");
        let (a, b) = (first.as_bytes(), self.token.as_bytes());
        // Same time whatever the first differing byte.
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

async fn guard(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !access.host_ok(host) {
        return (
            StatusCode::FORBIDDEN,
            "this page answers only requests for 127.0.0.1, localhost or [::1] on its own port",
        )
            .into_response();
    }
    if !access.token_ok(req.uri().path()) {
        return (
            StatusCode::NOT_FOUND,
            "not found; open the URL quiver-debug serve printed, token included",
        )
            .into_response();
    }
    next.run(req).await
}

/// The page's routes over the trace in `trace`, under `/{token}/`, behind the
/// [`Access`] checks.
pub fn router(trace: TraceDir, access: Access) -> Router {
    let json = serde_json::to_string(&trace.trace).unwrap_or_default();
    Router::new()
        .route(
            "/{token}",
            get(|Path(t): Path<String>| async move { Redirect::permanent(&format!("/{t}/")) }),
        )
        .route(
            "/{token}/",
            get(|| async { respond("text/html; charset=utf-8", INDEX.to_owned()) }),
        )
        .route(
            "/{token}/app.js",
            get(|| async { respond("text/javascript; charset=utf-8", SCRIPT.to_owned()) }),
        )
        .route(
            "/{token}/app.css",
            get(|| async { respond("text/css; charset=utf-8", STYLE.to_owned()) }),
        )
        .route(
            "/{token}/trace.json",
            get(move || async move { respond("application/json", json) }),
        )
        .route("/{token}/steps/{i}", get(step))
        .with_state(Arc::new(trace))
        .layer(middleware::from_fn_with_state(Arc::new(access), guard))
}

/// Serve `trace` on `127.0.0.1:port` (0: any free port); calls `ready` with the
/// page's URL (token included) once listening, then serves until the process ends.
pub async fn serve(trace: TraceDir, port: u16, ready: impl FnOnce(String)) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    let access = Access::random(addr.port())?;
    ready(format!("http://{addr}/{}/", access.token));
    axum::serve(listener, router(trace, access)).await?;
    Ok(())
}
