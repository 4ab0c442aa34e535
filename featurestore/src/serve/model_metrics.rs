//! The metrics of the models a server scores, per served version: a prometheus-client
//! [`Collector`] that reads the model servers at each scrape (the families change as
//! models deploy and roll back, so they are not registered up front).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use quiver_registry::{ModelServer, WatchHandle};

/// Model servers by model name, created on the first `score` and kept hot-reloading.
pub(crate) type ModelServers = Arc<Mutex<HashMap<String, (Arc<ModelServer>, WatchHandle)>>>;

type Labels = Vec<(String, String)>;

/// Reads every model server at scrape time.
#[derive(Debug)]
pub(crate) struct ModelMetrics(pub(crate) ModelServers);

/// `v` as a label value: the text encoder writes values as given, so quotes,
/// backslashes and newlines are escaped here.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Default)]
struct Families {
    requests: Vec<(Labels, u64)>,
    errors: Vec<(Labels, u64)>,
    p99: Vec<(Labels, f64)>,
    scores: Vec<(Labels, f64, Vec<u64>)>,
    rollbacks: Vec<(Labels, u64)>,
    psi: Vec<(Labels, f64)>,
    ks: Vec<(Labels, f64)>,
    drifted: Vec<(Labels, u64)>,
    drift_rows: Vec<(Labels, u64)>,
}

impl ModelMetrics {
    fn families(&self) -> Families {
        let servers: Vec<Arc<ModelServer>> = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(s, _)| s.clone())
            .collect();
        let mut f = Families::default();
        for server in &servers {
            let model = label_value(server.model());
            let d = server.deployment();
            for served in [&d.champion, &d.challenger].into_iter().flatten() {
                let m = served.metrics.snapshot();
                let labels: Labels = vec![
                    ("model".into(), model.clone()),
                    ("version".into(), served.version().to_string()),
                    ("alias".into(), served.alias.to_string()),
                ];
                f.requests.push((labels.clone(), m.requests));
                f.errors.push((labels.clone(), m.errors));
                f.p99.push((labels.clone(), m.p99_us as f64 / 1e6));
                f.scores
                    .push((labels.clone(), m.score_sum, m.score_counts.clone()));
                let policy = server.policy();
                for r in served
                    .drift
                    .report(policy.max_feature_psi, policy.min_requests)
                {
                    let mut l = labels.clone();
                    l.push(("feature".into(), label_value(&r.feature)));
                    f.psi.push((l.clone(), r.psi));
                    f.ks.push((l.clone(), r.ks));
                    f.drifted.push((l.clone(), u64::from(r.drifted)));
                    f.drift_rows.push((l, r.live_count));
                }
            }
            f.rollbacks.push((
                vec![("model".into(), model)],
                server.rollbacks().len() as u64,
            ));
        }
        f
    }
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        e.encode_family(labels)?
            .encode_counter::<NoLabelSet, _, u64>(v, None)?;
    }
    Ok(())
}

fn gauges<V: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, V)],
) -> Result<(), std::fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        e.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

impl Collector for ModelMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let f = self.families();
        let enc = &mut encoder;
        counters(
            enc,
            "quiver_model_requests",
            "Rows scored by model version and alias",
            &f.requests,
        )?;
        counters(
            enc,
            "quiver_model_errors",
            "Rows that failed to score",
            &f.errors,
        )?;
        gauges(
            enc,
            "quiver_model_latency_p99_seconds",
            "99th percentile scoring latency per row (an upper bound within 3.1%)",
            &f.p99,
        )?;
        if !f.scores.is_empty() {
            let mut e = enc.encode_descriptor(
                "quiver_model_score",
                "Scores over 20 bins of [0, 1]",
                None,
                MetricType::Histogram,
            )?;
            for (labels, sum, counts) in &f.scores {
                let bins = counts.len().max(1);
                let mut buckets: Vec<(f64, u64)> = counts
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ((i + 1) as f64 / bins as f64, *c))
                    .collect();
                buckets.push((f64::MAX, 0));
                let count = counts.iter().sum();
                e.encode_family(labels)?
                    .encode_histogram::<NoLabelSet>(*sum, count, &buckets, None)?;
            }
        }
        counters(
            enc,
            "quiver_model_rollbacks",
            "Automatic rollbacks of the challenger",
            &f.rollbacks,
        )?;
        gauges(
            enc,
            "quiver_model_feature_psi",
            "PSI of recent served inputs against the version's training statistics",
            &f.psi,
        )?;
        gauges(
            enc,
            "quiver_model_feature_ks",
            "Kolmogorov-Smirnov statistic of recent served inputs against the training statistics",
            &f.ks,
        )?;
        gauges(
            enc,
            "quiver_model_feature_drifted",
            "1 when the feature's PSI is above the policy's max_feature_psi",
            &f.drifted,
        )?;
        gauges(
            enc,
            "quiver_model_feature_drift_rows",
            "Recent non-null values the drift measures cover",
            &f.drift_rows,
        )
    }
}
