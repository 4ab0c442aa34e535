//! The gRPC handlers: check the caller against its client certificate, hand out the
//! current stage's task, take submissions, answer `Status`; the protocol work is the
//! round driver's (`round`) and `secagg::Server`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::{Phase, Shared, State, lock, status_json};
use prost::Message;

use crate::protocol::secagg::{
    AdvertiseKeys, ConsistencySig, MaskedInput, Server, ShareKeys, UnmaskResponse,
};
use crate::service::BankReport;
use crate::service::rpc::{
    Ack, MessageError, PollRequest, Stage, StatusReply, StatusRequest, Submission, Task, Work, pb,
    submission_stage, task_stage,
};

use crate::limits::MAX_REPORT_BYTES;

pub(super) struct Rpc(pub(super) Arc<Shared>);

impl Rpc {
    /// The client id of the bank named in a request, checked against the TLS client
    /// certificate's common name.
    fn caller<T>(&self, req: &tonic::Request<T>, bank: &str) -> Result<u32, tonic::Status> {
        let id = self.0.names.iter().position(|n| n == bank).ok_or_else(|| {
            tonic::Status::permission_denied(format!("`{bank}` is not in the roster"))
        })?;
        let certs = req
            .peer_certs()
            .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
        let cn = certs
            .first()
            .and_then(|c| crate::service::pki::common_name(c));
        if cn.as_deref() != Some(bank) {
            return Err(tonic::Status::permission_denied(format!(
                "the client certificate is for {:?}, not `{bank}`",
                cn.unwrap_or_default()
            )));
        }
        Ok(id as u32)
    }
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for Rpc {
    async fn poll(
        &self,
        req: tonic::Request<PollRequest>,
    ) -> Result<tonic::Response<Task>, tonic::Status> {
        let id = self.caller(&req, &req.get_ref().bank)?;
        let wait = Duration::from_millis(u64::from(req.get_ref().wait_ms.min(10_000)));
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.0.tasks_out.notified();
            let open = {
                let mut st = lock(&self.0);
                st.last_seen
                    .insert(id, self.0.started.elapsed().as_secs_f64());
                match &st.phase {
                    Phase::Failed(m) => {
                        return Ok(tonic::Response::new(Task {
                            round: st.round,
                            work: Some(Work::Failed(pb::Failed { message: m.clone() })),
                        }));
                    }
                    Phase::Done(sum) => {
                        let task = Task {
                            round: sum.rounds,
                            work: Some(Work::Done(pb::Done {
                                summary_json: serde_json::to_string(&**sum).unwrap_or_default(),
                            })),
                        };
                        st.tasks.remove(&id);
                        return Ok(tonic::Response::new(task));
                    }
                    Phase::Running => {
                        if let Some(work) = st.tasks.get(&id).cloned() {
                            let stage = task_stage(&work).unwrap_or_default() as usize;
                            if let Some(b) = st.sent.get_mut(stage) {
                                *b += work.encoded_len() as u64;
                            }
                            Some((st.round, work))
                        } else {
                            None
                        }
                    }
                }
            };
            if let Some((round, work)) = open {
                // The copy the response needs is made after the state is unlocked.
                return Ok(tonic::Response::new(Task {
                    round,
                    work: Some(Work::clone(&work)),
                }));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                return Ok(tonic::Response::new(Task {
                    round: 0,
                    work: Some(Work::Wait(pb::Wait {})),
                }));
            }
        }
    }

    async fn submit(
        &self,
        req: tonic::Request<Submission>,
    ) -> Result<tonic::Response<Ack>, tonic::Status> {
        let id = self.caller(&req, &req.get_ref().bank)?;
        let bytes = req.get_ref().encoded_len() as u64;
        let Submission {
            bank,
            round,
            stage: msg,
        } = req.into_inner();
        let stage = msg.as_ref().map(submission_stage);
        // Checked and converted before the state is locked: only the protocol step needs it.
        let checked = msg.map(Received::check);
        let mut st = lock(&self.0);
        if let Some(b) = stage.and_then(|s| st.received.get_mut(s as usize)) {
            *b += bytes;
        }
        let refuse = |st: &mut State, reason: String| {
            let stage = stage.map_or_else(|| "none".to_string(), |s| s.to_string());
            tracing::warn!(%bank, round, %stage, %reason, "submission rejected");
            st.rejected_total += 1;
            if st.rejected.len() < 1000 {
                st.rejected
                    .push(format!("{bank} round {round} stage {stage}: {reason}"));
            }
            Ok(tonic::Response::new(Ack {
                accepted: false,
                reason,
            }))
        };
        let (Some(stage), Some(checked)) = (stage, checked) else {
            return refuse(&mut st, "the submission carries no stage message".into());
        };
        if st.phase != Phase::Running || round != st.round || stage != st.stage {
            let r = format!(
                "the coordinator is at round {} stage {}, not round {round} stage {stage}",
                st.round, st.stage
            );
            return refuse(&mut st, r);
        }
        if !st.tasks.contains_key(&id) {
            return refuse(
                &mut st,
                "no task of this stage is open for this bank".into(),
            );
        }
        let result = checked.and_then(|received| {
            if let Received::SitOut(r) = &received {
                // A bank sitting the round out, saying why (its budget): public facts only.
                tracing::warn!(%bank, reason = ?r.refused, "bank sits this round out");
            }
            match st.server.as_mut() {
                Some(server) => received.apply(server),
                None => Err("no round is open".into()),
            }
        });
        // Either way this bank is done with the stage: a malformed or refused message
        // drops it from the round.
        st.tasks.remove(&id);
        self.0.answered.notify_one();
        match result {
            Ok(report) => {
                if let Some(r) = report {
                    st.reports.insert(id, r);
                }
                Ok(tonic::Response::new(Ack {
                    accepted: true,
                    reason: String::new(),
                }))
            }
            Err(reason) => refuse(&mut st, reason),
        }
    }

    async fn status(
        &self,
        _req: tonic::Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusReply>, tonic::Status> {
        Ok(tonic::Response::new(StatusReply {
            json: status_json(&self.0).to_string(),
        }))
    }
}

/// A bank's report: public facts, bounded.
fn parse_report(json: &str) -> Result<BankReport, String> {
    if json.len() > MAX_REPORT_BYTES {
        return Err(format!("report over {} KiB", MAX_REPORT_BYTES >> 10));
    }
    serde_json::from_str(json).map_err(|e| format!("report: {e}"))
}

/// A stage's message, checked and in the protocol's types.
enum Received {
    Join(AdvertiseKeys, Option<BankReport>),
    SitOut(BankReport),
    Shares(ShareKeys),
    Masked(MaskedInput),
    Consistency(ConsistencySig),
    Unmask(UnmaskResponse),
}

impl Received {
    fn check(msg: Stage) -> Result<Self, String> {
        fn conv<P, T: TryFrom<P, Error = MessageError>>(m: P) -> Result<T, String> {
            T::try_from(m).map_err(|e| e.to_string())
        }
        Ok(match msg {
            Stage::Join(j) => {
                let keys = j.keys.ok_or("the join message carries no keys")?;
                let report = (!j.report_json.is_empty())
                    .then(|| parse_report(&j.report_json))
                    .transpose()?;
                Self::Join(conv(keys)?, report)
            }
            Stage::SitOut(s) => {
                let report = parse_report(&s.report_json)?;
                if report.refused.is_none() {
                    return Err("a bank sitting a round out must say why in its report".into());
                }
                Self::SitOut(report)
            }
            Stage::ShareKeys(m) => Self::Shares(conv(m)?),
            Stage::Masked(m) => Self::Masked(conv(m)?),
            Stage::Consistency(m) => Self::Consistency(conv(m)?),
            Stage::Unmask(m) => Self::Unmask(conv(m)?),
        })
    }

    /// Hand the message to the protocol's server; a join's report comes back.
    fn apply(self, server: &mut Server) -> Result<Option<BankReport>, String> {
        let p = |e: crate::protocol::ProtocolError| e.to_string();
        match self {
            Self::Join(keys, report) => server.receive_keys(keys).map(|()| report).map_err(p),
            Self::SitOut(report) => Ok(Some(report)),
            Self::Shares(m) => server.receive_shares(m).map(|()| None).map_err(p),
            Self::Masked(m) => server.receive_masked(m).map(|()| None).map_err(p),
            Self::Consistency(m) => server.receive_consistency(m).map(|()| None).map_err(p),
            Self::Unmask(m) => server.receive_unmask(m).map(|()| None).map_err(p),
        }
    }
}
