//! The read-only web page of a trace: `quiver-debug serve TRACE_DIR`.
//!
//! One HTML page with its script and style embedded in the binary (nothing is fetched
//! from the network), served on 127.0.0.1 with the trace (`/trace.json`) and each
//! step's rows as JSON (`/steps/N`). Only GET; nothing on disk changes.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::util::display::array_value_to_string;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
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

async fn step(State(t): State<Arc<TraceDir>>, Path(i): Path<usize>) -> Response {
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

/// The page's routes over the trace in `trace`.
pub fn router(trace: TraceDir) -> Router {
    let json = serde_json::to_string(&trace.trace).unwrap_or_default();
    Router::new()
        .route(
            "/",
            get(|| async { respond("text/html; charset=utf-8", INDEX.to_owned()) }),
        )
        .route(
            "/app.js",
            get(|| async { respond("text/javascript; charset=utf-8", SCRIPT.to_owned()) }),
        )
        .route(
            "/app.css",
            get(|| async { respond("text/css; charset=utf-8", STYLE.to_owned()) }),
        )
        .route(
            "/trace.json",
            get(move || async move { respond("application/json", json) }),
        )
        .route("/steps/{i}", get(step))
        .with_state(Arc::new(trace))
}

/// Serve `trace` on `127.0.0.1:port` (0: any free port); calls `ready` with the
/// address once listening, then serves until the process ends.
pub async fn serve(
    trace: TraceDir,
    port: u16,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    ready(listener.local_addr()?);
    axum::serve(listener, router(trace)).await?;
    Ok(())
}
