//! `DoAction`: health, the views a tenant may read, a model's serving status, and the
//! admin actions (`plan`, `apply`, `materialize`, one at a time).

use bytes::Bytes;
use tonic::Status;

use arrow_flight::Action;

use super::FeatureService;
use crate::Error;
use crate::serve::auth::Tenant;

impl FeatureService {
    /// An action's JSON body, bounded by the server's command limit; `empty` is what an
    /// empty body means (`None`: a body is required). Errors name the action and show
    /// `shape`, a body it takes.
    fn body<T: serde::de::DeserializeOwned>(
        &self,
        action: &Action,
        empty: Option<T>,
        shape: &str,
    ) -> Result<T, Status> {
        if action.body.len() > self.shared.limits.max_command_bytes {
            return Err(Status::resource_exhausted(format!(
                "the `{}` body is {} bytes, over the limit of {}",
                action.r#type,
                action.body.len(),
                self.shared.limits.max_command_bytes
            )));
        }
        if action.body.is_empty()
            && let Some(v) = empty
        {
            return Ok(v);
        }
        serde_json::from_slice(&action.body).map_err(|e| {
            Status::invalid_argument(format!("{} body: {e}; send {shape}", action.r#type))
        })
    }

    /// The actions that answer a stream: `follow` (the change log, then heartbeats)
    /// and `blob` (an artifact or UDF module in chunks). Admin only: the log names
    /// every tenant's views and models. `None` for every other action.
    pub(in crate::serve) fn streaming_action(
        &self,
        tenant: &Tenant,
        action: &Action,
    ) -> Result<Option<super::FlightStream<arrow_flight::Result>>, Status> {
        if !matches!(action.r#type.as_str(), "follow" | "blob") {
            return Ok(None);
        }
        if !(tenant.admin || tenant.follower) {
            return Err(Status::permission_denied(format!(
                "tenant `{}` may not run `{}`; replicas follow with a follower token",
                tenant.name, action.r#type
            )));
        }
        if action.r#type == "follow" {
            use quiver_flight_proto::actions::Follow as Body;
            let body: Body = self.body(action, None, "{\"after\": SEQ, \"nonce\": HEX}")?;
            Ok(Some(crate::serve::follow::events(
                self.shared.clone(),
                body.after,
                body.nonce,
            )?))
        } else {
            use quiver_flight_proto::actions::Blob as Body;
            let body: Body = self.body(
                action,
                None,
                "{\"kind\": \"artifact\" | \"udf_module\", \"sha256\": HEX}",
            )?;
            Ok(Some(crate::serve::follow::blob(
                &self.shared,
                &body.kind,
                &body.sha256,
            )?))
        }
    }

    /// On a replica that follows a primary, writes of the registry go to the primary.
    fn not_on_a_follower(&self, action: &str) -> Result<(), Status> {
        match &self.shared.follow {
            Some(f) => Err(Status::failed_precondition(format!(
                "this server follows the registry of {}; send `{action}` there and every replica follows it",
                f.primary
            ))),
            None => Ok(()),
        }
    }

    pub(in crate::serve) async fn action(
        &self,
        tenant: &Tenant,
        action: Action,
    ) -> Result<Bytes, Status> {
        let store = &self.shared.store;
        let admin = || {
            if tenant.admin {
                Ok(())
            } else {
                Err(Status::permission_denied(format!(
                    "tenant `{}` may not run `{}`; it needs an admin token",
                    tenant.name, action.r#type
                )))
            }
        };
        let json = |v: serde_json::Value| Bytes::from(v.to_string());
        Ok(match action.r#type.as_str() {
            "health" => {
                // Any tenant may ask; the answer names only the views it may read.
                use quiver_flight_proto::actions::Health as Body;
                let body: Body =
                    self.body(&action, Some(Body::default()), "{\"max_lag_seconds\": 120}")?;
                if body
                    .max_lag_seconds
                    .is_some_and(|m| !m.is_finite() || m < 0.0)
                {
                    return Err(Status::invalid_argument(
                        "`max_lag_seconds` must be a number >= 0",
                    ));
                }
                let f = self.shared.freshness(body.max_lag_seconds, Some(tenant))?;
                let mut answer = serde_json::to_value(f).unwrap_or_default();
                // What a replica pins (public facts): the registry id and follow key.
                answer["registry"] = store.replication()?.id().map_err(Error::from)?.into();
                if let Some(k) = &self.shared.follow_key {
                    answer["follow_key"] = k.public_key_hex().into();
                }
                if let Some(follow) = &self.shared.follow {
                    let cursor = store.replication()?.cursor().map_err(Error::from)?.seq;
                    answer["follow"] = follow.report(cursor);
                }
                json(answer)
            }
            "list" => {
                let views: Vec<serde_json::Value> = store
                    .views()?
                    .into_iter()
                    .filter(|v| tenant.admin || v.definition.view.readable_by(&tenant.name))
                    .map(|v| {
                        let d = &v.definition;
                        serde_json::json!({
                            "view": d.name(), "version": v.version, "hash": v.hash, "entity": d.entity.name.value,
                            "keys": d.keys(), "features": d.features, "owner": d.view.owner, "form": d.view.form(),
                            "ttl": d.view.ttl.as_ref().map(|t| t.value.to_string()),
                        })
                    })
                    .collect();
                json(serde_json::json!({ "views": views }))
            }
            "model-status" => {
                use quiver_flight_proto::actions::ModelStatus as Body;
                let body: Body = self.body(&action, None, "{\"model\": \"NAME\"}")?;
                let (server, d) = self.score_deployment(tenant, &body.model)?;
                let policy = server.policy();
                let versions: Vec<serde_json::Value> = [&d.champion, &d.challenger]
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        let m = s.metrics.snapshot();
                        serde_json::json!({
                            "alias": s.alias,
                            "version": s.version(),
                            "format": s.loaded.version.manifest.format,
                            "serving_seconds": s.since.elapsed().as_secs_f64(),
                            "requests": m.requests,
                            "errors": m.errors,
                            "p99_us": m.p99_us,
                            "drift": s.drift.report(policy.max_feature_psi, policy.min_requests),
                        })
                    })
                    .collect();
                // The tenant mix of a rollback names other tenants and their shares of
                // traffic: for admins only.
                let rollbacks: Vec<quiver_registry::Rollback> = server
                    .rollbacks()
                    .into_iter()
                    .map(|mut r| {
                        if !tenant.admin
                            && let Some(i) = r.reason.find(" (challenger traffic by tenant:")
                        {
                            r.reason.truncate(i);
                        }
                        r
                    })
                    .collect();
                json(serde_json::json!({
                    "model": server.model(),
                    "challenger_percent": d.challenger_percent,
                    "policy": policy,
                    "versions": versions,
                    "rollbacks": rollbacks,
                }))
            }
            "explain" => {
                use quiver_flight_proto::actions::Explain as Body;
                let body: Body = self.body(
                    &action,
                    None,
                    "{\"view\": \"NAME[@V]\", \"entity\": [[\"KEY\", \"VALUE\"]], \"at\": \"RFC 3339\"}",
                )?;
                let name = body.view.split('@').next().unwrap_or_default();
                // A trace shows the view's raw source rows: its owner (or an admin) may
                // see them, a tenant it is only shared with may not.
                let v = self.readable(tenant, name)?;
                if !tenant.admin && v.definition.view.owner.as_deref() != Some(tenant.name.as_str())
                {
                    return Err(Status::permission_denied(format!(
                        "a trace of `{name}` shows its source rows; only its owner may trace it, not tenant `{}`",
                        tenant.name
                    )));
                }
                let at = crate::cli::parse_time(&body.at)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let mut req =
                    crate::explain::ExplainRequest::new(body.view.clone(), body.entity, at);
                req.table_versions = body.table_versions;
                req.max_rows_per_step = body.max_rows.unwrap_or(1_000).clamp(1, 10_000);
                req.repo_display = "<server>".into();
                // Raw source rows and intermediate stages are for admins; every other
                // tenant sees what the view exposes (docs/debugger.md).
                req.scope = if tenant.admin {
                    crate::explain::TraceScope::All
                } else {
                    crate::explain::TraceScope::ViewOutput
                };
                let mut trace = crate::explain::explain(store, &req).await?;
                let files: Vec<(String, String)> = trace
                    .step_files()?
                    .into_iter()
                    .map(|(n, b)| (n, hex::encode(b)))
                    .collect();
                let answer = serde_json::json!({ "trace": trace, "files": files }).to_string();
                if answer.len() > self.shared.limits.max_message_bytes {
                    return Err(Status::resource_exhausted(format!(
                        "the trace is {} bytes, over the message limit; ask for fewer rows per step (`max_rows`)",
                        answer.len()
                    )));
                }
                Bytes::from(answer)
            }
            "plan" => {
                admin()?;
                self.not_on_a_follower("plan")?;
                json(serde_json::to_value(store.plan().await?).unwrap_or_default())
            }
            "apply" => {
                admin()?;
                self.not_on_a_follower("apply")?;
                let _guard = self.shared.admin.lock().await;
                json(serde_json::to_value(store.apply().await?).unwrap_or_default())
            }
            "rollback" => {
                // A replica's report: remove the challenger alias of `model` if it still
                // names `version`; nothing else (a follower credential can do no more).
                if !(tenant.admin || tenant.follower) {
                    return Err(Status::permission_denied(format!(
                        "tenant `{}` may not run `rollback`; it is a replica's report",
                        tenant.name
                    )));
                }
                self.not_on_a_follower("rollback")?;
                use quiver_flight_proto::actions::Rollback as Body;
                let body: Body = self.body(
                    &action,
                    None,
                    "{\"model\": \"fraud\", \"version\": 3, \"reason\": \"...\"}",
                )?;
                if body.reason.len() > 1024 {
                    return Err(Status::invalid_argument("`reason` is over 1024 bytes"));
                }
                let _guard = self.shared.admin.lock().await;
                let event = store.move_alias(
                    &body.model,
                    quiver_registry::CHALLENGER,
                    None,
                    Some(Some(body.version)),
                    &tenant.name,
                    &body.reason,
                )?;
                json(serde_json::to_value(event).unwrap_or_default())
            }
            "alias" => {
                admin()?;
                self.not_on_a_follower("alias")?;
                use quiver_flight_proto::actions::Alias as Body;
                let body: Body = self.body(
                    &action,
                    None,
                    "{\"model\": \"fraud\", \"alias\": \"champion\", \"to\": 2, \"expect\": 1 | \"none\", \"reason\": \"...\"}",
                )?;
                let expect = match &body.expect {
                    None => None,
                    Some(serde_json::Value::String(s)) if s == "none" => Some(None),
                    Some(v) => Some(Some(v.as_u64().ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "`expect` is a version number or \"none\", not {v}"
                        ))
                    })?)),
                };
                if body.reason.len() > 1024 {
                    return Err(Status::invalid_argument("`reason` is over 1024 bytes"));
                }
                let _guard = self.shared.admin.lock().await;
                // The history records the tenant whose token moved it.
                let event = store.move_alias(
                    &body.model,
                    &body.alias,
                    body.to,
                    expect,
                    &tenant.name,
                    &body.reason,
                )?;
                json(serde_json::to_value(event).unwrap_or_default())
            }
            "policy" => {
                admin()?;
                self.not_on_a_follower("policy")?;
                use quiver_flight_proto::actions::Policy as Body;
                let body: Body = self.body(
                    &action,
                    None,
                    "{\"model\": \"fraud\", \"policy\": {\"challenger_percent\": 5, ...} | null}",
                )?;
                let policy: Option<quiver_registry::RolloutPolicy> = body
                    .policy
                    .map(|v| {
                        quiver_registry::parse_json_config(v.to_string().as_bytes())
                            .map_err(|e| Status::invalid_argument(format!("`policy`: {e}")))
                    })
                    .transpose()?;
                let _guard = self.shared.admin.lock().await;
                store
                    .models()?
                    .set_policy(&body.model, policy.as_ref())
                    .map_err(Error::from)?;
                json(serde_json::json!({"model": body.model, "policy": policy}))
            }
            "materialize" => {
                admin()?;
                use quiver_flight_proto::actions::Materialize as Body;
                let body: Body = self.body(
                    &action,
                    Some(Body::default()),
                    "{\"views\": [...], \"until\": \"RFC 3339\", \"full\": false}",
                )?;
                let mut m = store.materialize().with_full(body.full);
                if let Some(v) = body.views {
                    m = m.with_views(v);
                }
                if let Some(u) = body.until {
                    let t = chrono::DateTime::parse_from_rfc3339(&u)
                        .map_err(|e| Status::invalid_argument(format!("`until` {u:?}: {e}")))?;
                    m = m.with_until(t.timestamp_micros());
                }
                let _guard = self.shared.admin.lock().await;
                // Lag and versions reach /metrics from the watermarks at each scrape.
                let report = m.await?;
                json(serde_json::to_value(report).unwrap_or_default())
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action `{other}`; actions: health, list, model-status, explain, plan, apply, materialize, alias, policy, follow, blob"
                )));
            }
        })
    }
}

pub(in crate::serve) const ACTIONS: [(&str, &str); 12] = [
    (
        "health",
        "Is the server up, and how fresh is its online store: {\"status\": \"ok\"|\"behind\", \"views\": [...]}; body {\"max_lag_seconds\": N} optional",
    ),
    (
        "model-status",
        "A model's served versions, rollout policy, metrics, live feature drift and rollbacks; body {\"model\": NAME}",
    ),
    ("list", "Feature views the caller may read, as JSON"),
    (
        "explain",
        "Replay one entity's value of a view the caller owns, step by step (quiver-debug); body {\"view\", \"entity\": [[KEY, VALUE]], \"at\"}",
    ),
    ("plan", "What apply would change, as JSON (admin)"),
    ("apply", "Apply the feature repo, all or nothing (admin)"),
    (
        "materialize",
        "Materialize views into the online store; body {\"views\", \"until\", \"full\"} (admin)",
    ),
    (
        "alias",
        "Move a model's alias (served at once); body {\"model\", \"alias\", \"to\": VERSION|null, \"expect\": VERSION|\"none\", \"reason\"} (admin)",
    ),
    (
        "policy",
        "Store a model's rollout policy in the registry (every server and replica judges by it); body {\"model\", \"policy\": {...}|null} (admin)",
    ),
    (
        "follow",
        "Stream the registry's change log after a seq, each event signed by this server's follow key, then heartbeats: what replicas follow; body {\"after\": SEQ} (admin or follower)",
    ),
    (
        "blob",
        "An artifact or applied UDF module by SHA-256, in chunks; body {\"kind\": \"artifact\"|\"udf_module\", \"sha256\"} (admin or follower)",
    ),
    (
        "rollback",
        "A replica's report: remove a model's challenger alias if it still names VERSION; body {\"model\", \"version\", \"reason\"} (admin or follower)",
    ),
];
