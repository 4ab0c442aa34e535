//! Following one registry (docs/replicas.md): every `quiver serve` can be followed, and
//! a replica started with [`ServeConfig::with_follow`](super::ServeConfig::with_follow)
//! replays its primary's change log into its own registry.
//!
//! | side | what runs |
//! |---|---|
//! | primary | the `follow` action: a server stream of [`FollowMessage`]s, one per event of the registry's change log after the seq asked for, each signed with the primary's follow key, then a heartbeat every second carrying the log's head; the `blob` action: an artifact or UDF module by SHA-256, in chunks (admin and follower tokens only: the log names every tenant's views and models) |
//! | follower | one task: connect, ask for the events after its cursor, check each event's signature against the key it pinned and its registry against the id it pinned, fetch what an event needs (a version's artifact, the UDF modules a view pins), import it ([`quiver_registry::Replication::import`], one transaction with the cursor), materialize after an apply; on any failure keep serving, back off and resume from the cursor |
//!
//! Guarantees (nothing is taken on trust): a replica imports an event only if it is
//! signed by the follow key and comes from the registry id it was set up with (a fake
//! or compromised path cannot inject one, and nothing is written otherwise); it follows
//! over plain HTTP only on loopback; and it holds a follower credential, which may
//! only `follow`, fetch `blob`s and report a `rollback` of a challenger. A follower
//! never writes its registry otherwise: `apply` and `alias` are refused there, and an
//! automatic rollback is sent to the primary as a `rollback` report (the challenger is
//! held out of routing here at once).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arrow_flight::Action;
use bytes::Bytes;
use futures::StreamExt;
use quiver_registry::{Event, Replication, Sequenced};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::service::Shared;
use crate::client::Client;
use crate::{Error, Result};

/// How often the primary sends a heartbeat when nothing changes.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// A follower that hears nothing for this long reconnects.
const SILENCE: Duration = Duration::from_secs(5);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Events read from the log at once on the primary.
const READ_AHEAD: usize = 16;
/// Size of one chunk of a `blob` answer.
const CHUNK: usize = 4 << 20;

/// One message of the `follow` stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FollowMessage {
    /// The primary's registry id.
    registry: String,
    /// The last seq of the primary's log when the message was sent.
    head: u64,
    /// The next event ([`Sequenced`] as JSON text: the signed bytes), or none for a
    /// heartbeat.
    #[serde(default)]
    event: Option<String>,
    /// Ed25519 signature (hex) of the primary's follow key over
    /// [`signed_message`]`(registry, nonce, head, event)`: every message, heartbeats
    /// included, bound to the follower's session nonce.
    #[serde(default)]
    signature: Option<String>,
}

/// An event or message a replica refuses.
fn refused(message: String) -> Error {
    Error::Registry(quiver_registry::Error::Replication(message))
}

/// What the follow key signs: a domain tag, the registry id, the nonce the follower
/// chose for this stream, the log's head and the event's bytes (empty for a
/// heartbeat). A message of another stream, or a heartbeat replayed or made up on the
/// path, does not verify: a replica is never held at an old state while it believes
/// itself current.
fn signed_message(registry: &str, nonce: &str, head: u64, event: Option<&str>) -> Vec<u8> {
    let mut m = b"quiver-follow-message-v2\0".to_vec();
    m.extend_from_slice(registry.as_bytes());
    m.push(0);
    m.extend_from_slice(nonce.as_bytes());
    m.push(0);
    m.extend_from_slice(&head.to_be_bytes());
    match event {
        Some(e) => {
            m.push(1);
            m.extend_from_slice(e.as_bytes());
        }
        None => m.push(0),
    }
    m
}

/// Which registry a replica follows, and what it pins of it.
#[derive(Clone)]
pub struct FollowConfig {
    /// The primary's Flight URL (`https://host:port`, or `http://` on loopback only).
    pub primary: String,
    /// A follower token of the primary.
    pub token: String,
    /// The primary's follow key (Ed25519 public key, hex): every event must carry its
    /// signature.
    pub primary_key: String,
    /// The primary's registry id: events of any other registry are refused.
    pub registry: String,
    /// The CA certificate (PEM) the primary's TLS certificate must chain to; needed for
    /// `https://`.
    pub ca_pem: Option<Vec<u8>>,
}

impl FollowConfig {
    /// Check what a replica is set up with before it connects: plain HTTP only to a
    /// loopback host (a token and the change log would travel in clear), a pinned key
    /// of 64 hex digits and a registry id.
    pub fn check(&self) -> Result<()> {
        let url = url::Url::parse(&self.primary)
            .map_err(|e| Error::InvalidRequest(format!("--follow `{}`: {e}", self.primary)))?;
        match url.scheme() {
            "https" if self.ca_pem.is_none() => {
                return Err(Error::InvalidRequest(format!(
                    "--follow `{}`: following over https needs the CA the primary's certificate chains to (--follow-ca FILE)",
                    self.primary
                )));
            }
            "https" => {}
            "http" => {
                let loopback = match url.host() {
                    Some(url::Host::Ipv4(a)) => a.is_loopback(),
                    Some(url::Host::Ipv6(a)) => a.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                if !loopback {
                    return Err(Error::InvalidRequest(format!(
                        "--follow `{}`: plain http only to a loopback host; follow another host over https:// (the follower token and the change log would travel in clear)",
                        self.primary
                    )));
                }
            }
            other => {
                return Err(Error::InvalidRequest(format!(
                    "--follow `{}`: scheme `{other}`; expected https://HOST:PORT (or http:// on loopback)",
                    self.primary
                )));
            }
        }
        if self.primary_key.len() != 64 || !self.primary_key.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(Error::InvalidRequest(
                "a replica pins its primary's follow key: 64 hex digits (the primary logs it at start and in `health`)".into(),
            ));
        }
        if self.registry.is_empty() || self.registry.len() > 64 {
            return Err(Error::InvalidRequest(
                "a replica pins its primary's registry id (the primary logs it at start and in `health`)".into(),
            ));
        }
        Ok(())
    }

    /// A message of the stream with session `nonce`, checked: from the pinned registry
    /// and signed by the pinned key for this stream, heartbeats included. Nothing is
    /// imported otherwise.
    pub(crate) fn verified(&self, body: &[u8], nonce: &str) -> Result<(u64, Option<Sequenced>)> {
        let m: FollowMessage =
            serde_json::from_slice(body).map_err(|e| remote("a message of the primary", e))?;
        if m.registry != self.registry {
            return Err(refused(format!(
                "the primary at {} sends registry {}, this replica follows registry {}; refusing",
                self.primary, m.registry, self.registry
            )));
        }
        let sig = m.signature.ok_or_else(|| {
            refused("a message of the primary carries no signature; refusing it".into())
        })?;
        quiver_registry::verify_signature(
            &self.primary_key,
            &signed_message(&m.registry, nonce, m.head, m.event.as_deref()),
            &sig,
        )
        .map_err(|e| {
            refused(format!(
                "a message of the primary is not signed by its pinned follow key for this stream ({e}); refusing it"
            ))
        })?;
        let Some(text) = m.event else {
            return Ok((m.head, None));
        };
        let ev: Sequenced =
            serde_json::from_str(&text).map_err(|e| remote("an event of the primary", e))?;
        if ev.registry != self.registry {
            return Err(refused(format!(
                "a signed event names registry {}, not {}; refusing it",
                ev.registry, self.registry
            )));
        }
        Ok((m.head, Some(ev)))
    }
}

impl std::fmt::Debug for FollowConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowConfig")
            .field("primary", &self.primary)
            .field("token", &"<redacted>")
            .field("primary_key", &self.primary_key)
            .field("registry", &self.registry)
            .finish()
    }
}

/// Refuse to follow with a registry that has a history of its own (its writes would
/// never be the primary's): a replica starts on an empty folder, or on the folder of
/// an earlier run that followed.
pub(crate) fn check_can_follow(store: &crate::FeatureStore) -> Result<()> {
    let log = store.replication()?;
    let (cursor, head) = (log.cursor()?, log.head()?);
    if cursor.primary.is_none() && head > 0 {
        return Err(Error::InvalidRequest(format!(
            "{} has a registry of its own ({head} changes): a replica that follows a primary starts on an empty folder",
            store.root().display()
        )));
    }
    Ok(())
}

/// What a follower knows of its primary, for `health` and `/metrics`.
pub(crate) struct FollowState {
    pub(crate) primary: String,
    connected: AtomicBool,
    primary_head: AtomicU64,
    last_contact_us: AtomicI64,
    last_error: std::sync::Mutex<Option<String>>,
    rollbacks: mpsc::UnboundedSender<(String, u64, String)>,
}

impl FollowState {
    pub(crate) fn new(primary: String) -> (Self, mpsc::UnboundedReceiver<(String, u64, String)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                primary,
                connected: AtomicBool::new(false),
                primary_head: AtomicU64::new(0),
                last_contact_us: AtomicI64::new(0),
                last_error: std::sync::Mutex::new(None),
                rollbacks: tx,
            },
            rx,
        )
    }

    /// Where the model servers of this replica send a rollback.
    pub(crate) fn forward(&self) -> quiver_registry::RollbackForward {
        let tx = self.rollbacks.clone();
        Arc::new(move |model: &str, version: u64, reason: &str| {
            let _ = tx.send((model.to_owned(), version, reason.to_owned()));
        })
    }

    /// The status the `health` action reports.
    pub(crate) fn report(&self, cursor: u64) -> serde_json::Value {
        let head = self.primary_head.load(Ordering::Relaxed);
        let contact = self.last_contact_us.load(Ordering::Relaxed);
        serde_json::json!({
            "primary": self.primary,
            "connected": self.connected.load(Ordering::Relaxed),
            "cursor": cursor,
            "primary_head": head,
            "events_behind": head.saturating_sub(cursor),
            "last_contact": (contact > 0).then(|| crate::cli::format_time(contact)),
            "last_error": self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    }
}

/// The primary's side of `follow`: the events after `after`, then heartbeats, until
/// the follower hangs up or the server stops.
pub(crate) fn events(
    shared: Arc<Shared>,
    after: u64,
    nonce: String,
) -> Result<super::service::FlightStream<arrow_flight::Result>> {
    if nonce.len() < 16 || nonce.len() > 128 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidRequest(
            "`nonce` must be 16 to 128 hex digits, fresh for each follow stream".into(),
        ));
    }
    let log = shared.store.replication()?;
    let registry = log.id()?;
    let key = shared.follow_key.clone().ok_or_else(|| {
        Error::InvalidRequest(
            "this server has no follow key, and replicas import only signed events: start it with --follow-signing-key FILE".into(),
        )
    })?;
    // Subscribe before the first read: a change committed in between still wakes us.
    let sub = log.watch();
    let stop = shared.stopping.clone();
    struct State {
        log: Replication,
        registry: String,
        after: u64,
        pending: VecDeque<Sequenced>,
        sub: sled::Subscriber,
        stop: watch::Receiver<bool>,
        limit: usize,
        key: Arc<quiver_registry::SigningKey>,
        nonce: String,
    }
    let state = State {
        key,
        nonce,
        log,
        registry,
        after,
        pending: VecDeque::new(),
        sub,
        stop,
        limit: shared.limits.max_message_bytes,
    };
    Ok(Box::pin(futures::stream::unfold(
        Some(state),
        |state| async move {
            let mut s = state?;
            loop {
                if *s.stop.borrow() {
                    return None;
                }
                if let Some(ev) = s.pending.pop_front() {
                    s.after = ev.seq;
                    let head = s.log.head().unwrap_or(ev.seq);
                    let text = serde_json::to_string(&ev).expect("events serialise");
                    let signature =
                        s.key
                            .sign(&signed_message(&s.registry, &s.nonce, head, Some(&text)));
                    let body = serde_json::to_vec(&FollowMessage {
                        registry: s.registry.clone(),
                        head,
                        event: Some(text),
                        signature: Some(signature),
                    })
                    .expect("messages serialise");
                    if body.len() > s.limit {
                        let e = Status::resource_exhausted(format!(
                            "event {} is {} bytes, over the message limit of {}",
                            s.after,
                            body.len(),
                            s.limit
                        ));
                        return Some((Err(e), None));
                    }
                    return Some((Ok(arrow_flight::Result { body: body.into() }), Some(s)));
                }
                match s.log.events_after(s.after, READ_AHEAD) {
                    Ok(events) if !events.is_empty() => {
                        s.pending.extend(events);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let status = Status::from(Error::from(e));
                        return Some((Err(status), None));
                    }
                }
                tokio::select! {
                    woken = tokio::time::timeout(HEARTBEAT, &mut s.sub) => {
                        if woken.is_ok() {
                            continue;
                        }
                    }
                    _ = s.stop.changed() => return None,
                }
                let head = s.log.head().unwrap_or(s.after);
                let body = serde_json::to_vec(&FollowMessage {
                    registry: s.registry.clone(),
                    head,
                    event: None,
                    signature: Some(
                        s.key
                            .sign(&signed_message(&s.registry, &s.nonce, head, None)),
                    ),
                })
                .expect("messages serialise");
                return Some((Ok(arrow_flight::Result { body: body.into() }), Some(s)));
            }
        },
    )))
}

/// The primary's side of `blob`: the bytes of an artifact or an applied UDF module,
/// checked against `sha256`, in chunks.
pub(crate) fn blob(
    shared: &Shared,
    kind: &str,
    sha256: &str,
) -> Result<super::service::FlightStream<arrow_flight::Result>> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidRequest(format!(
            "`sha256` must be 64 hex digits, not {sha256:.80?}"
        )));
    }
    let bytes = match kind {
        "artifact" => shared.store.models()?.artifacts().get(sha256)?,
        "udf_module" => shared.store.udf_runtime().module_bytes(sha256)?,
        other => {
            return Err(Error::InvalidRequest(format!(
                "`kind` is \"artifact\" or \"udf_module\", not {other:.80?}"
            )));
        }
    };
    let bytes = Bytes::from(bytes);
    let chunks: Vec<_> = (0..bytes.len().max(1))
        .step_by(CHUNK)
        .map(|start| {
            Ok(arrow_flight::Result {
                body: bytes.slice(start..(start + CHUNK).min(bytes.len())),
            })
        })
        .collect();
    Ok(Box::pin(futures::stream::iter(chunks)))
}

/// The follower: runs until the server stops.
pub(crate) async fn run(
    shared: Arc<Shared>,
    config: FollowConfig,
    mut rollbacks: mpsc::UnboundedReceiver<(String, u64, String)>,
) {
    let state = shared
        .follow
        .as_ref()
        .expect("a follower has a follow state");
    let mut stop = shared.stopping.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        let before = shared
            .store
            .replication()
            .and_then(|l| Ok(l.cursor()?.seq))
            .unwrap_or(0);
        let outcome = tokio::select! {
            r = session(&shared, state, &config, &mut rollbacks) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        state.connected.store(false, Ordering::Relaxed);
        if let Err(e) = outcome {
            let message = crate::storage::redact(&e.to_string());
            shared.metrics.follow_error();
            tracing::warn!(primary = %config.primary, error = %message, "following the primary failed; serving the last state and retrying");
            *state.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
        }
        let after = shared
            .store
            .replication()
            .and_then(|l| Ok(l.cursor()?.seq))
            .unwrap_or(0);
        // A session that imported something earns a quick retry.
        backoff = if after > before {
            Duration::from_millis(100)
        } else {
            (backoff * 2).min(MAX_BACKOFF)
        };
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn remote(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Remote {
        code: "Unavailable".into(),
        message: format!("{what}: {e}"),
    }
}

/// One connection to the primary: read events and import them until it fails.
async fn session(
    shared: &Arc<Shared>,
    state: &FollowState,
    config: &FollowConfig,
    rollbacks: &mut mpsc::UnboundedReceiver<(String, u64, String)>,
) -> Result<()> {
    let log = shared.store.replication()?;
    let connect = async {
        match &config.ca_pem {
            Some(ca) if config.primary.starts_with("https://") => {
                let host = url::Url::parse(&config.primary)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_default();
                Client::connect_tls(&config.primary, ca, host.trim_matches(['[', ']'])).await
            }
            _ => Client::connect(&config.primary).await,
        }
    };
    let mut client = tokio::time::timeout(SILENCE, connect)
        .await
        .map_err(|_| remote("connecting to the primary", "no answer within 5 s"))??
        .with_token(&config.token)?;
    let after = log.cursor()?.seq;
    // A fresh nonce per stream: the primary signs every message of it with this.
    let nonce = {
        let mut b = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .map_err(|_| remote("the random source", "failed"))?;
        hex::encode(b)
    };
    let body = serde_json::to_string(&quiver_flight_proto::actions::Follow {
        after,
        nonce: nonce.clone(),
    })
    .map_err(|e| remote("the follow request", &e.to_string()))?;
    let mut stream = tokio::time::timeout(
        SILENCE,
        client.flight().do_action(Action::new("follow", body)),
    )
    .await
    .map_err(|_| remote("asking the primary to follow", "no answer within 5 s"))??;
    state.connected.store(true, Ordering::Relaxed);
    *state.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    tracing::info!(primary = %config.primary, after, "following the primary");
    loop {
        tokio::select! {
            next = tokio::time::timeout(SILENCE, stream.next()) => {
                let body = match next {
                    Err(_) => return Err(remote("the primary", "no message for 5 s")),
                    Ok(None) => return Err(remote("the primary", "it closed the stream")),
                    Ok(Some(Err(e))) => return Err(e.into()),
                    Ok(Some(Ok(b))) => b,
                };
                let (head, event) = config.verified(&body, &nonce)?;
                state.primary_head.store(head, Ordering::Relaxed);
                state.last_contact_us.store(super::service::now_us(), Ordering::Relaxed);
                if let Some(ev) = event {
                    import(shared, &log, &mut client, ev).await?;
                }
                shared.metrics.follow_position(log.cursor()?.seq, head);
            }
            Some((model, version, reason)) = rollbacks.recv() => {
                let body = serde_json::json!(quiver_flight_proto::actions::Rollback {
                    model: model.clone(), version, reason,
                });
                match client.action("rollback", body).await {
                    Ok(_) => tracing::warn!(%model, version, "rollback sent to the primary"),
                    // Moved meanwhile: the primary's decision stands and reaches us.
                    Err(e) => tracing::info!(%model, version, error = %e, "the primary did not take the rollback"),
                }
            }
        }
    }
}

/// Fetch a blob from the primary, at most `max` bytes.
async fn fetch(client: &mut Client, kind: &str, sha256: &str, max: u64) -> Result<Vec<u8>> {
    let body = serde_json::to_string(&quiver_flight_proto::actions::Blob {
        kind: kind.to_owned(),
        sha256: sha256.to_owned(),
    })
    .map_err(|e| remote("the blob request", &e.to_string()))?;
    let mut chunks = client.flight().do_action(Action::new("blob", body)).await?;
    let mut out = Vec::new();
    while let Some(chunk) = tokio::time::timeout(SILENCE, chunks.next())
        .await
        .map_err(|_| remote("fetching a blob", "no chunk for 5 s"))?
    {
        let chunk = chunk?;
        if (out.len() + chunk.len()) as u64 > max {
            return Err(Error::InvalidRequest(format!(
                "the primary's {kind} {sha256} is over the limit of {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Import one event: fetch what it needs, then one transaction.
async fn import(
    shared: &Arc<Shared>,
    log: &Replication,
    client: &mut Client,
    ev: Sequenced,
) -> Result<()> {
    let udfs = shared.store.udf_runtime();
    if let Event::Apply { definitions, .. } = &ev.event {
        // Modules first: a definition never names a module that is not stored.
        for d in definitions {
            for m in d.definition["udfs"].as_array().into_iter().flatten() {
                let (Some(path), Some(sha)) = (m["path"].as_str(), m["sha256"].as_str()) else {
                    continue;
                };
                if !udfs.has_module(sha) {
                    let bytes = fetch(
                        client,
                        "udf_module",
                        sha,
                        crate::udf::MAX_MODULE_BYTES as u64,
                    )
                    .await?;
                    udfs.import_module(path, sha, &bytes)?;
                }
            }
        }
    }
    let artifact = match ev.artifact() {
        Some(d) => Some(fetch(client, "artifact", d, quiver_registry::MAX_ARTIFACT_BYTES).await?),
        None => None,
    };
    let is_apply = matches!(ev.event, Event::Apply { .. });
    let seq = ev.seq;
    {
        // An apply changes what materialization reads: never during a run.
        let _guard = if is_apply {
            Some(shared.admin.lock().await)
        } else {
            None
        };
        let log = log.clone();
        tokio::task::spawn_blocking(move || log.import(&ev, artifact.as_deref()))
            .await
            .map_err(|e| Error::io("the import task", std::io::Error::other(e)))??;
    }
    tracing::info!(seq, "imported an event of the primary");
    if is_apply {
        // Serve the new versions now rather than at the next scheduled run.
        shared.materialize_scheduled().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(key: &quiver_registry::SigningKey) -> FollowConfig {
        FollowConfig {
            primary: "http://127.0.0.1:1".into(),
            token: "t".into(),
            primary_key: key.public_key_hex(),
            registry: "aaaa".into(),
            ca_pem: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
        }
    }

    const NONCE: &str = "00112233445566778899aabbccddeeff";

    fn message(
        registry: &str,
        event: &Sequenced,
        key: Option<&quiver_registry::SigningKey>,
    ) -> Vec<u8> {
        let text = serde_json::to_string(event).unwrap();
        serde_json::to_vec(&FollowMessage {
            registry: registry.into(),
            head: event.seq,
            signature: key
                .map(|k| k.sign(&signed_message(registry, NONCE, event.seq, Some(&text)))),
            event: Some(text),
        })
        .unwrap()
    }

    fn heartbeat(head: u64, nonce: &str, key: Option<&quiver_registry::SigningKey>) -> Vec<u8> {
        serde_json::to_vec(&FollowMessage {
            registry: "aaaa".into(),
            head,
            event: None,
            signature: key.map(|k| k.sign(&signed_message("aaaa", nonce, head, None))),
        })
        .unwrap()
    }

    #[test]
    fn only_events_signed_by_the_pinned_key_from_the_pinned_registry_pass() {
        let dir = tempfile::tempdir().unwrap();
        let key = quiver_registry::SigningKey::generate(dir.path().join("k")).unwrap();
        let other = quiver_registry::SigningKey::generate(dir.path().join("o")).unwrap();
        let cfg = config(&key);
        let ev = Sequenced {
            registry: "aaaa".into(),
            seq: 1,
            event: Event::RoutingKey {
                key: "00".repeat(32),
            },
        };
        assert!(
            cfg.verified(&message("aaaa", &ev, Some(&key)), NONCE)
                .unwrap()
                .1
                .is_some()
        );
        let refused = |body: Vec<u8>, want: &str| {
            let e = cfg.verified(&body, NONCE).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        refused(message("aaaa", &ev, None), "carries no signature");
        refused(
            message("aaaa", &ev, Some(&other)),
            "not signed by its pinned follow key for this stream",
        );
        refused(
            message("bbbb", &ev, Some(&key)),
            "this replica follows registry aaaa",
        );
        // Signed, then changed on the way.
        let body = message("aaaa", &ev, Some(&key));
        let tampered = String::from_utf8(body)
            .unwrap()
            .replace("\\\"seq\\\":1", "\\\"seq\\\":2");
        refused(
            tampered.into_bytes(),
            "not signed by its pinned follow key for this stream",
        );
        // A signed event that names another registry inside.
        let inside = Sequenced {
            registry: "bbbb".into(),
            ..ev
        };
        refused(message("aaaa", &inside, Some(&key)), "names registry bbbb");
        // Heartbeats are signed for this stream too: none, another stream's, or one
        // whose head was changed on the way are refused.
        assert_eq!(
            cfg.verified(&heartbeat(7, NONCE, Some(&key)), NONCE)
                .unwrap(),
            (7, None)
        );
        refused(heartbeat(7, NONCE, None), "carries no signature");
        refused(
            heartbeat(7, "ffffffffffffffffffffffffffffffff", Some(&key)),
            "for this stream",
        );
        let forged = String::from_utf8(heartbeat(7, NONCE, Some(&key)))
            .unwrap()
            .replace("\"head\":7", "\"head\":9");
        refused(forged.into_bytes(), "for this stream");
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let key = quiver_registry::SigningKey::generate(dir.path().join("k")).unwrap();
        let mut cfg = config(&key);
        for ok in [
            "http://127.0.0.1:8815",
            "http://localhost:1",
            "http://[::1]:2",
            "https://primary.bank:8815",
        ] {
            cfg.primary = ok.into();
            assert!(cfg.check().is_ok(), "{ok}");
        }
        for bad in [
            "http://primary.bank:8815",
            "http://10.0.0.5:8815",
            "ftp://127.0.0.1:1",
        ] {
            cfg.primary = bad.into();
            assert!(cfg.check().is_err(), "{bad}");
        }
        cfg.primary = "https://p:1".into();
        cfg.primary_key = "short".into();
        assert!(cfg.check().is_err());
    }
}
