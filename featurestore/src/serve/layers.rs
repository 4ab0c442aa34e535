//! What every RPC goes through before and after its handler, written once:
//!
//! - [`Authenticate`], a tonic interceptor: the bearer token's [`Tenant`] goes into the
//!   request's extensions, or the call is refused with `Unauthenticated` before any
//!   handler runs. Handlers read it with [`tenant`].
//! - [`RpcLayer`], a tower layer around the whole service: a `flight{rpc=...}` tracing
//!   span, the request counter and latency histogram by method and gRPC code, and a
//!   log line for refused (debug) and failed (error) calls. The code is read from the
//!   response headers, where tonic puts it for every call that fails before its
//!   response stream starts.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::Instrument;

use super::auth::{Tenant, Tokens};
use super::metrics::Metrics;

/// The interceptor that authenticates every call.
#[derive(Clone)]
pub(crate) struct Authenticate(pub(crate) Arc<Tokens>);

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let tenant = self.0.authenticate(&request)?;
        request.extensions_mut().insert(tenant);
        Ok(request)
    }
}

/// The tenant [`Authenticate`] found for `request`. A replica's credential
/// ([`Tenant::follower`]) is refused here: every handler reads its caller through this
/// function, so a follower token reaches nothing but the replication actions, which
/// read it through [`tenant_or_follower`].
pub(crate) fn tenant<T>(request: &Request<T>) -> Result<Tenant, Status> {
    let t = tenant_or_follower(request)?;
    if t.follower {
        return Err(Status::permission_denied(format!(
            "`{}` holds a replica's credential: it may only follow this registry and report rollbacks",
            t.name
        )));
    }
    Ok(t)
}

/// [`tenant`], a replica's credential included: for `do_action` only, which admits a
/// follower to `follow`, `blob` and `rollback` alone.
pub(crate) fn tenant_or_follower<T>(request: &Request<T>) -> Result<Tenant, Status> {
    request
        .extensions()
        .get::<Tenant>()
        .cloned()
        .ok_or_else(|| Status::internal("the request was not authenticated"))
}

/// Adds [`Rpc`] around a service.
#[derive(Clone)]
pub(crate) struct RpcLayer(pub(crate) Arc<Metrics>);

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = Rpc<S>;
    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// A service with per-RPC spans, metrics and logs.
#[derive(Clone)]
pub(crate) struct Rpc<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The method of a gRPC path (`/arrow.flight.protocol.FlightService/DoGet`), as a
/// label of bounded cardinality.
fn method(path: &str) -> &'static str {
    const METHODS: [&str; 10] = [
        "Handshake",
        "ListFlights",
        "GetFlightInfo",
        "PollFlightInfo",
        "GetSchema",
        "DoGet",
        "DoPut",
        "DoExchange",
        "DoAction",
        "ListActions",
    ];
    let name = path.rsplit('/').next().unwrap_or("");
    METHODS
        .into_iter()
        .find(|m| *m == name)
        .unwrap_or("unknown")
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S, B, RB> tower_service::Service<http::Request<B>> for Rpc<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = method(request.uri().path());
        let span = tracing::info_span!("flight", rpc);
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(
            async move {
                let r = response.await;
                if let Ok(response) = &r {
                    let (code, message) = outcome(response.headers());
                    metrics.request(rpc, code, started.elapsed().as_secs_f64());
                    match code {
                        tonic::Code::Ok => {}
                        tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => {
                            tracing::error!(code = ?code, error = %message, "request failed")
                        }
                        _ => tracing::debug!(code = ?code, error = %message, "request refused"),
                    }
                }
                r
            }
            .instrument(span),
        )
    }
}

/// The gRPC code and message of a response, from its headers (tonic's own parsing,
/// percent-decoding included): `Ok` when the headers carry no status, as for every
/// call whose response stream started.
fn outcome(headers: &http::HeaderMap) -> (tonic::Code, String) {
    match Status::from_header_map(headers) {
        Some(s) => (s.code(), s.message().to_owned()),
        None => (tonic::Code::Ok, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_labels_of_bounded_cardinality() {
        assert_eq!(
            method("/arrow.flight.protocol.FlightService/DoGet"),
            "DoGet"
        );
        assert_eq!(
            method("/arrow.flight.protocol.FlightService/Nope"),
            "unknown"
        );
        assert_eq!(method(""), "unknown");
    }

    #[test]
    fn grpc_messages_are_decoded() {
        let decoded = |m: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-status", "5".parse().unwrap());
            h.insert("grpc-message", m.parse().unwrap());
            let (code, message) = outcome(&h);
            assert_eq!(code, tonic::Code::NotFound);
            message
        };
        assert_eq!(decoded("no view %60x%60"), "no view `x`");
        assert_eq!(decoded("trailing %"), "trailing %");
        assert_eq!(decoded("%zz"), "%zz");
        assert_eq!(outcome(&http::HeaderMap::new()).0, tonic::Code::Ok);
    }
}
