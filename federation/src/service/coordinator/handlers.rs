//! The gRPC handlers: check the caller against its client certificate, hand out the
//! current stage's task, take submissions, answer `Status`; the protocol work is the
//! round driver's (`round`) and `secagg::Server`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::{Phase, Shared, State, lock, status_json};
use crate::protocol::ProtocolError;
use crate::protocol::secagg::{
    AdvertiseKeys, ConsistencySig, MaskedInput, ShareKeys, UnmaskResponse,
};
use crate::service::BankReport;
use crate::service::rpc::{
    self, Ack, PollRequest, StatusReply, StatusRequest, Submission, Task, task_kind,
};
use crate::wire::Wire;

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
impl rpc::CoordinatorRpc for Rpc {
    async fn poll(
        &self,
        req: tonic::Request<PollRequest>,
    ) -> Result<tonic::Response<Task>, tonic::Status> {
        let id = self.caller(&req, &req.get_ref().bank)?;
        let wait = Duration::from_millis(u64::from(req.get_ref().wait_ms.min(10_000)));
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.0.tasks_out.notified();
            {
                let mut st = lock(&self.0);
                st.last_seen
                    .insert(id, self.0.started.elapsed().as_secs_f64());
                match &st.phase {
                    Phase::Failed(m) => {
                        return Ok(tonic::Response::new(Task {
                            kind: task_kind::FAILED,
                            message: m.clone(),
                            ..Default::default()
                        }));
                    }
                    Phase::Done(sum) => {
                        let task = Task {
                            kind: task_kind::DONE,
                            round: sum.rounds,
                            plan_json: serde_json::to_string(&**sum).unwrap_or_default(),
                            ..Default::default()
                        };
                        st.tasks.remove(&id);
                        return Ok(tonic::Response::new(task));
                    }
                    Phase::Running => {
                        if let Some(p) = st.tasks.get(&id).cloned() {
                            let (stage, n) = (st.stage as usize, p.len() as u64);
                            if let Some(b) = st.sent.get_mut(stage) {
                                *b += n;
                            }
                            return Ok(tonic::Response::new(Task {
                                kind: task_kind::STAGE,
                                round: st.round,
                                stage: st.stage,
                                payload: p,
                                plan_json: if st.stage == 0 {
                                    st.plan_json.clone()
                                } else {
                                    String::new()
                                },
                                message: String::new(),
                            }));
                        }
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                return Ok(tonic::Response::new(Task {
                    kind: task_kind::WAIT,
                    ..Default::default()
                }));
            }
        }
    }

    async fn submit(
        &self,
        req: tonic::Request<Submission>,
    ) -> Result<tonic::Response<Ack>, tonic::Status> {
        let id = self.caller(&req, &req.get_ref().bank)?;
        let sub = req.into_inner();
        let mut st = lock(&self.0);
        if let Some(b) = st.received.get_mut(sub.stage as usize) {
            *b += sub.payload.len() as u64;
        }
        let refuse = |st: &mut State, reason: String| {
            tracing::warn!(bank = %sub.bank, round = sub.round, stage = sub.stage, %reason, "submission rejected");
            st.rejected_total += 1;
            if st.rejected.len() < 1000 {
                st.rejected.push(format!(
                    "{} round {} stage {}: {reason}",
                    sub.bank, sub.round, sub.stage
                ));
            }
            Ok(tonic::Response::new(Ack {
                accepted: false,
                reason,
            }))
        };
        if st.phase != Phase::Running || sub.round != st.round || sub.stage != st.stage {
            let r = format!(
                "the coordinator is at round {} stage {}, not round {} stage {}",
                st.round, st.stage, sub.round, sub.stage
            );
            return refuse(&mut st, r);
        }
        if !st.tasks.contains_key(&id) {
            return refuse(
                &mut st,
                "no task of this stage is open for this bank".into(),
            );
        }
        if sub.stage == 0 && sub.payload.is_empty() {
            // A bank sitting the round out, saying why (its budget): public facts only.
            return match serde_json::from_str::<BankReport>(&sub.report_json) {
                Ok(r) if r.refused.is_some() && sub.report_json.len() <= 64 << 10 => {
                    tracing::warn!(bank = %sub.bank, reason = ?r.refused, "bank sits this round out");
                    st.reports.insert(id, r);
                    st.tasks.remove(&id);
                    self.0.answered.notify_one();
                    Ok(tonic::Response::new(Ack {
                        accepted: true,
                        reason: String::new(),
                    }))
                }
                _ => refuse(
                    &mut st,
                    "an empty stage-0 message must carry a refusal report".into(),
                ),
            };
        }
        let result: Result<(), String> = (|| {
            let server = st.server.as_mut().ok_or("no round is open")?;
            let e = |e: crate::wire::WireError| e.to_string();
            let p = |e: ProtocolError| e.to_string();
            match sub.stage {
                0 => server
                    .receive_keys(AdvertiseKeys::decode(&sub.payload).map_err(e)?)
                    .map_err(p),
                1 => server
                    .receive_shares(ShareKeys::decode(&sub.payload).map_err(e)?)
                    .map_err(p),
                2 => server
                    .receive_masked(MaskedInput::decode(&sub.payload).map_err(e)?)
                    .map_err(p),
                3 => server
                    .receive_consistency(ConsistencySig::decode(&sub.payload).map_err(e)?)
                    .map_err(p),
                4 => server
                    .receive_unmask(UnmaskResponse::decode(&sub.payload).map_err(e)?)
                    .map_err(p),
                s => Err(format!("stage {s} does not exist")),
            }
        })();
        if let Err(reason) = result {
            // The sender is treated as dropped for this round.
            st.tasks.remove(&id);
            self.0.answered.notify_one();
            return refuse(&mut st, reason);
        }
        if sub.stage == 0 && !sub.report_json.is_empty() {
            if sub.report_json.len() > 64 << 10 {
                return refuse(&mut st, "report over 64 KiB".into());
            }
            match serde_json::from_str::<BankReport>(&sub.report_json) {
                Ok(r) => {
                    st.reports.insert(id, r);
                }
                Err(e) => return refuse(&mut st, format!("report: {e}")),
            }
        }
        st.tasks.remove(&id);
        self.0.answered.notify_one();
        Ok(tonic::Response::new(Ack {
            accepted: true,
            reason: String::new(),
        }))
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
