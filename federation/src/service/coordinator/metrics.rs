//! Prometheus metrics of the coordinator, served as OpenMetrics text on `/metrics`
//! (`metrics_listen` in its config).
//!
//! Everything is rendered from a snapshot of the coordinator's state at scrape time,
//! so a scrape never races a round: the values are what `status` would show.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `quiver_fed_state{state}` | gauge | 1 for the run's state: running, done or failed |
//! | `quiver_fed_round`, `quiver_fed_stage` | gauge | where the run is |
//! | `quiver_fed_rounds_completed` | counter | rounds whose sum was unmasked (round 0 included) |
//! | `quiver_fed_round_seconds` | histogram | wall time of completed rounds |
//! | `quiver_fed_stage_seconds{stage}` | counter | wall time spent per protocol stage |
//! | `quiver_fed_round_contributors` | gauge | banks in the last round's sum |
//! | `quiver_fed_bank_dropped_rounds{bank}` | counter | rounds a bank was not in the sum |
//! | `quiver_fed_bank_seconds_since_seen{bank}` | gauge | since the bank last polled |
//! | `quiver_fed_epsilon`, `quiver_fed_bank_epsilon` | gauge | record-level and bank-level ε spent |
//! | `quiver_fed_rejected_messages` | counter | bank messages the coordinator refused |
//! | `quiver_fed_received_bytes{stage}`, `quiver_fed_sent_bytes{stage}` | counter | protocol payload bytes |

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::summary::RoundRecord;

/// Protocol stages, for the `stage` label.
pub(crate) const STAGES: [&str; 5] = ["keys", "shares", "masked", "consistency", "unmask"];

/// What a scrape shows.
#[derive(Debug, Default)]
pub(crate) struct Snapshot<'a> {
    pub state: &'static str,
    pub round: u64,
    pub stage: u32,
    pub history: &'a [RoundRecord],
    pub banks: Vec<(String, Option<f64>)>,
    pub epsilon: f64,
    pub bank_epsilon: Option<f64>,
    pub rejected: u64,
    pub received: [u64; 5],
    pub sent: [u64; 5],
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stage {
    stage: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Bank {
    bank: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// The OpenMetrics text of `s`.
pub(crate) fn render(s: &Snapshot<'_>) -> String {
    let mut r = Registry::default();
    let state = Family::<State, Gauge>::default();
    for name in ["running", "done", "failed"] {
        state
            .get_or_create(&State { state: name.into() })
            .set(i64::from(name == s.state));
    }
    r.register("quiver_fed_state", "State of the run (1: current)", state);
    let round = Gauge::<i64>::default();
    round.set(s.round as i64);
    r.register(
        "quiver_fed_round",
        "Current round (0: feature statistics)",
        round,
    );
    let stage = Gauge::<i64>::default();
    stage.set(i64::from(s.stage));
    r.register("quiver_fed_stage", "Current protocol stage (0 to 4)", stage);
    let done = Counter::<u64>::default();
    done.inc_by(s.history.len() as u64);
    r.register(
        "quiver_fed_rounds_completed",
        "Rounds whose sum was unmasked",
        done,
    );
    let secs = Histogram::new(exponential_buckets(0.05, 2.0, 14));
    for h in s.history {
        secs.observe(h.seconds);
    }
    r.register(
        "quiver_fed_round_seconds",
        "Wall time of completed rounds",
        secs,
    );
    let stage_secs = Family::<Stage, FloatCounter>::default();
    for (i, name) in STAGES.iter().enumerate() {
        let total: f64 = s
            .history
            .iter()
            .filter_map(|h| h.stage_seconds.get(i))
            .sum();
        stage_secs
            .get_or_create(&Stage {
                stage: (*name).into(),
            })
            .inc_by(total);
    }
    r.register(
        "quiver_fed_stage_seconds",
        "Wall time spent per protocol stage over completed rounds (keys includes local training)",
        stage_secs,
    );
    let contributors = Gauge::<i64>::default();
    contributors.set(s.history.last().map_or(0, |h| h.contributors.len() as i64));
    r.register(
        "quiver_fed_round_contributors",
        "Banks in the last round's sum",
        contributors,
    );
    let dropped = Family::<Bank, Counter>::default();
    let seen = Family::<Bank, FloatGauge>::default();
    for (bank, since) in &s.banks {
        let l = Bank { bank: bank.clone() };
        dropped.get_or_create(&l).inc_by(
            s.history
                .iter()
                .filter(|h| h.dropped.contains(bank))
                .count() as u64,
        );
        if let Some(t) = since {
            seen.get_or_create(&l).set(*t);
        }
    }
    r.register(
        "quiver_fed_bank_dropped_rounds",
        "Rounds a bank was not in the sum",
        dropped,
    );
    r.register(
        "quiver_fed_bank_seconds_since_seen",
        "Seconds since the bank last polled",
        seen,
    );
    let eps = FloatGauge::default();
    eps.set(s.epsilon);
    r.register(
        "quiver_fed_epsilon",
        "Record-level ε spent (largest over the banks)",
        eps,
    );
    if let Some(e) = s.bank_epsilon {
        let g = FloatGauge::default();
        g.set(e);
        r.register("quiver_fed_bank_epsilon", "Bank-level ε spent", g);
    }
    let rejected = Counter::<u64>::default();
    rejected.inc_by(s.rejected);
    r.register(
        "quiver_fed_rejected_messages",
        "Bank messages the coordinator refused",
        rejected,
    );
    for (name, help, values) in [
        (
            "quiver_fed_received_bytes",
            "Protocol payload bytes received from banks",
            &s.received,
        ),
        (
            "quiver_fed_sent_bytes",
            "Protocol payload bytes sent to banks",
            &s.sent,
        ),
    ] {
        let f = Family::<Stage, Counter>::default();
        for (i, v) in values.iter().enumerate() {
            f.get_or_create(&Stage {
                stage: STAGES[i].into(),
            })
            .inc_by(*v);
        }
        r.register(name, help, f);
    }
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}
