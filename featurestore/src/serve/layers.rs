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

/// The tenant [`Authenticate`] found for `request`.
pub(crate) fn tenant<T>(request: &Request<T>) -> Result<Tenant, Status> {
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
                    let headers = response.headers();
                    let code = headers
                        .get("grpc-status")
                        .map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes()));
                    metrics.request(rpc, code, started.elapsed().as_secs_f64());
                    let message = || {
                        headers
                            .get("grpc-message")
                            .and_then(|v| v.to_str().ok())
                            .map(percent_decode)
                            .unwrap_or_default()
                    };
                    match code {
                        tonic::Code::Ok => {}
                        tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => {
                            tracing::error!(code = ?code, error = %message(), "request failed")
                        }
                        _ => tracing::debug!(code = ?code, error = %message(), "request refused"),
                    }
                }
                r
            }
            .instrument(span),
        )
    }
}

/// gRPC's percent-encoding of `grpc-message`, undone.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
        assert_eq!(percent_decode("no view %60x%60"), "no view `x`");
        assert_eq!(percent_decode("trailing %"), "trailing %");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
