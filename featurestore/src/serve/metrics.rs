//! Prometheus metrics of the feature server, served as text on `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::online::StatusCounts;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    method: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViewStatus {
    view: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct View {
    view: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunResult {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViewSource {
    view: String,
    source: String,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<Call, Counter>,
    latency: Family<Method, Histogram>,
    values: Family<ViewStatus, Counter>,
    lag: Family<View, Gauge<f64, AtomicU64>>,
    runs: Family<RunResult, Counter>,
    last_success: Gauge<f64, AtomicU64>,
    table_version: Family<ViewSource, Gauge>,
    behind: Family<View, Gauge>,
    follow_cursor: Gauge,
    follow_head: Gauge,
    follow_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Call, Counter>::default();
        registry.register(
            "quiver_flight_requests",
            "Flight requests by method and status code",
            requests.clone(),
        );
        let latency = Family::<Method, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_025, 2.0, 20))
        });
        registry.register(
            "quiver_flight_request_seconds",
            "Flight request latency by method",
            latency.clone(),
        );
        let values = Family::<ViewStatus, Counter>::default();
        registry.register(
            "quiver_online_values",
            "Online values served by view and status (PRESENT = hit)",
            values.clone(),
        );
        let lag = Family::<View, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "quiver_materialization_lag_seconds",
            "Seconds between now and the event-time bound of the last materialization",
            lag.clone(),
        );
        let runs = Family::<RunResult, Counter>::default();
        registry.register(
            "quiver_materialize_runs",
            "Scheduled materialization runs (--materialize-every) by result (ok, error)",
            runs.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "quiver_materialize_last_success_timestamp_seconds",
            "When the last scheduled materialization committed (Unix seconds; 0: none yet)",
            last_success.clone(),
        );
        let table_version = Family::<ViewSource, Gauge>::default();
        registry.register(
            "quiver_materialized_delta_version",
            "Delta version of each source table the online store holds, per view",
            table_version.clone(),
        );
        let behind = Family::<View, Gauge>::default();
        registry.register(
            "quiver_view_behind",
            "1 when an online view is not materialized or serves an older applied version",
            behind.clone(),
        );
        let follow_cursor = Gauge::default();
        registry.register(
            "quiver_follow_cursor",
            "A replica: the last event of the primary's change log imported here",
            follow_cursor.clone(),
        );
        let follow_head = Gauge::default();
        registry.register(
            "quiver_follow_primary_head",
            "A replica: the last event of the primary's change log, as last heard",
            follow_head.clone(),
        );
        let follow_errors = Counter::default();
        registry.register(
            "quiver_follow_errors",
            "A replica: sessions with the primary that failed (connection lost, import refused)",
            follow_errors.clone(),
        );
        Self {
            follow_cursor,
            follow_head,
            follow_errors,
            registry: Mutex::new(registry),
            requests,
            latency,
            values,
            lag,
            runs,
            last_success,
            table_version,
            behind,
        }
    }
}

impl Metrics {
    /// Record one finished request.
    pub fn request(&self, method: &str, code: tonic::Code, seconds: f64) {
        self.requests
            .get_or_create(&Call {
                method: method.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
        self.latency
            .get_or_create(&Method {
                method: method.to_owned(),
            })
            .observe(seconds);
    }

    /// Record the statuses of one online answer.
    pub fn values(&self, view: &str, c: &StatusCounts) {
        for (status, n) in [
            ("PRESENT", c.present),
            ("NOT_FOUND", c.not_found),
            ("EXPIRED", c.expired),
            ("FALLBACK", c.fallback),
        ] {
            if n > 0 {
                self.values
                    .get_or_create(&ViewStatus {
                        view: view.to_owned(),
                        status: status.to_owned(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// Record a scheduled materialization run.
    pub fn materialize_run(&self, ok: bool) {
        self.runs
            .get_or_create(&RunResult {
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
        if ok {
            self.last_success
                .set(chrono::Utc::now().timestamp_micros() as f64 / 1e6);
        }
    }

    /// A follower's position: its cursor and the primary's head.
    pub(crate) fn follow_position(&self, cursor: u64, head: u64) {
        self.follow_cursor.set(cursor as i64);
        self.follow_head.set(head as i64);
    }

    /// A follower's session failed.
    pub(crate) fn follow_error(&self) {
        self.follow_errors.inc();
    }

    /// Set the freshness gauges (lag, Delta versions held, behind) from `f`, judged
    /// without a lag bound (behind: not materialized, or an older applied version).
    pub fn freshness(&self, f: &crate::online::Freshness) {
        for v in &f.views {
            let view = View {
                view: v.view.clone(),
            };
            if let Some(lag) = v.lag_seconds {
                self.lag.get_or_create(&view).set(lag);
            }
            self.behind.get_or_create(&view).set(i64::from(v.behind));
            for t in &v.tables {
                self.table_version
                    .get_or_create(&ViewSource {
                        view: v.view.clone(),
                        source: t.source.clone(),
                    })
                    .set(t.version);
            }
        }
    }

    /// Add a collector of families read at each scrape (the models' metrics).
    pub(crate) fn register_collector(&self, c: impl prometheus_client::collector::Collector) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register_collector(Box::new(c));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry lock");
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
