//! The coordinator's shared state (the phase, the open round's protocol server and
//! tasks, what each bank last reported) and the two views of it: the `Status`
//! document and the metrics snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::config::CoordinatorConfig;
use super::summary::{RoundRecord, RunSummary};
use crate::protocol::secagg::{Roster, Server};
use crate::service::BankReport;
use crate::service::rpc::{STAGES, Work};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Phase {
    Running,
    Done(Box<RunSummary>),
    Failed(String),
}

pub(super) struct State {
    pub(super) phase: Phase,
    pub(super) round: u64,
    pub(super) stage: u32,
    /// Per client: the current stage's input (one shared copy when every bank gets the
    /// same); removed once it answered.
    pub(super) tasks: BTreeMap<u32, Arc<Work>>,
    pub(super) server: Option<Server>,
    pub(super) last_seen: BTreeMap<u32, f64>,
    pub(super) reports: BTreeMap<u32, BankReport>,
    pub(super) history: Vec<RoundRecord>,
    pub(super) rejected: Vec<String>,
    pub(super) rejected_total: u64,
    /// Banks proven to have broken the protocol (by their own signed messages), by
    /// client id, with what they did: left out of every later round of the run.
    pub(super) excluded: BTreeMap<u32, String>,
    /// The current round's stage wall times so far.
    pub(super) stage_seconds: Vec<f64>,
    /// Protocol message bytes per stage, received and sent.
    pub(super) received: [u64; STAGES],
    pub(super) sent: [u64; STAGES],
}

pub(super) struct Shared {
    pub(super) cfg: CoordinatorConfig,
    pub(super) names: Vec<String>,
    pub(super) roster: Arc<Roster>,
    pub(super) state: Mutex<State>,
    /// Woken when new tasks are out (pollers) or a submission came in (the driver).
    pub(super) tasks_out: Notify,
    pub(super) answered: Notify,
    pub(super) started: Instant,
}

pub(super) fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.state.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn metrics_text(s: &Shared) -> String {
    let st = lock(s);
    let now = s.started.elapsed().as_secs_f64();
    let snapshot = super::metrics::Snapshot {
        state: match st.phase {
            Phase::Running => "running",
            Phase::Done(_) => "done",
            Phase::Failed(_) => "failed",
        },
        round: st.round,
        stage: st.stage,
        history: &st.history,
        banks: s
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), st.last_seen.get(&(i as u32)).map(|t| now - t)))
            .collect(),
        epsilon: st.history.iter().map(|h| h.epsilon).fold(0.0, f64::max),
        bank_epsilon: st
            .history
            .iter()
            .filter_map(|h| h.bank_epsilon)
            .reduce(f64::max),
        rejected: st.rejected_total,
        received: st.received,
        sent: st.sent,
    };
    super::metrics::render(&snapshot)
}

pub(super) fn status_json(s: &Shared) -> serde_json::Value {
    let st = lock(s);
    let now = s.started.elapsed().as_secs_f64();
    let (state, message) = match &st.phase {
        Phase::Running => ("running", None),
        Phase::Done(sum) => ("done", Some(sum.stopped.clone())),
        Phase::Failed(m) => ("failed", Some(m.clone())),
    };
    let banks: Vec<_> = s
        .names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let id = i as u32;
            serde_json::json!({
                "bank": n,
                "seconds_since_seen": st.last_seen.get(&id).map(|t| now - t),
                "epsilon": st.reports.get(&id).map(|r| r.epsilon),
                "waiting_on": st.tasks.contains_key(&id),
            })
        })
        .collect();
    serde_json::json!({
        "state": state,
        "message": message,
        "round": st.round,
        "rounds": s.cfg.rounds,
        "stage": st.stage,
        "budget": s.cfg.budget,
        "banks": banks,
        "history": st.history,
        "rejected": st.rejected,
    })
}
