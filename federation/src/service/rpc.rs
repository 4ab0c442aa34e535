//! The gRPC surface `quiver.federation.v1.Coordinator`: messages (prost, written by
//! hand so the build needs no `protoc`) and the tonic glue for its four unary methods.
//!
//! ```text
//! service Coordinator {
//!   rpc Poll(PollRequest) returns (Task);          // long poll: what should this bank do now
//!   rpc Submit(Submission) returns (Ack);          // a stage's message
//!   rpc Status(StatusRequest) returns (StatusReply);
//! }
//! ```
//!
//! Workers dial out to the coordinator (banks accept no inbound connections); every
//! call is mutually authenticated by TLS, and the bank named in a request must be the
//! common name of the client certificate that made it.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{BoxFuture, Service, StdError, http};

/// Service name.
pub const SERVICE: &str = "quiver.federation.v1.Coordinator";
/// Largest gRPC message either side accepts (a masked vector of 16 M words).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Kinds of [`Task`].
pub mod task_kind {
    /// Nothing to do yet; poll again.
    pub const WAIT: u32 = 0;
    /// Run stage `stage` of round `round`.
    pub const STAGE: u32 = 1;
    /// Training is over; `payload` is the final model.
    pub const DONE: u32 = 2;
    /// The run failed; `message` says why.
    pub const FAILED: u32 = 3;
}

/// A worker asking for work.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PollRequest {
    /// The bank's name (must match its certificate).
    #[prost(string, tag = "1")]
    pub bank: String,
    /// How long the coordinator may hold the call, at most 10 s.
    #[prost(uint32, tag = "2")]
    pub wait_ms: u32,
}

/// What a bank should do now.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Task {
    /// See [`task_kind`].
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    /// Aggregation round (0 is the feature-statistics round).
    #[prost(uint64, tag = "2")]
    pub round: u64,
    /// Secure-aggregation stage, 0 to 4.
    #[prost(uint32, tag = "3")]
    pub stage: u32,
    /// The stage's input for this bank ([`crate::wire`] encoding).
    #[prost(bytes = "vec", tag = "4")]
    pub payload: Vec<u8>,
    /// The round's plan (JSON) at stage 0, the run summary at the end.
    #[prost(string, tag = "5")]
    pub plan_json: String,
    /// Why the run failed.
    #[prost(string, tag = "6")]
    pub message: String,
}

/// A bank's message for one stage.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Submission {
    /// The bank's name (must match its certificate).
    #[prost(string, tag = "1")]
    pub bank: String,
    /// Round.
    #[prost(uint64, tag = "2")]
    pub round: u64,
    /// Stage.
    #[prost(uint32, tag = "3")]
    pub stage: u32,
    /// The protocol message ([`crate::wire`] encoding).
    #[prost(bytes = "vec", tag = "4")]
    pub payload: Vec<u8>,
    /// Public facts about the bank's round at stage 0 (JSON): ε spent, lineage.
    #[prost(string, tag = "5")]
    pub report_json: String,
}

/// Whether a submission was taken.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    /// Taken.
    #[prost(bool, tag = "1")]
    pub accepted: bool,
    /// Why not.
    #[prost(string, tag = "2")]
    pub reason: String,
}

/// Ask for the run's status.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {}

/// The run's status (JSON, see `quiver-fed status --help`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusReply {
    /// Status document.
    #[prost(string, tag = "1")]
    pub json: String,
}

/// What the coordinator implements.
#[tonic::async_trait]
pub trait CoordinatorRpc: Send + Sync + 'static {
    /// Long poll for the next task.
    async fn poll(
        &self,
        req: tonic::Request<PollRequest>,
    ) -> Result<tonic::Response<Task>, tonic::Status>;
    /// Take a stage message.
    async fn submit(
        &self,
        req: tonic::Request<Submission>,
    ) -> Result<tonic::Response<Ack>, tonic::Status>;
    /// The run's status.
    async fn status(
        &self,
        req: tonic::Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusReply>, tonic::Status>;
}

/// The tonic service wrapping a [`CoordinatorRpc`].
#[derive(Debug)]
pub struct CoordinatorServer<T> {
    inner: Arc<T>,
}

impl<T> CoordinatorServer<T> {
    /// Wrap `inner`.
    pub fn new(inner: Arc<T>) -> Self {
        Self { inner }
    }
}

impl<T> Clone for CoordinatorServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> tonic::server::NamedService for CoordinatorServer<T> {
    const NAME: &'static str = SERVICE;
}

/// One unary method as a tonic `UnaryService`.
struct Unary<T, F>(Arc<T>, F);

impl<T, Req, Resp, F, Fut> tonic::server::UnaryService<Req> for Unary<T, F>
where
    T: Send + Sync + 'static,
    Req: Send + 'static,
    F: Fn(Arc<T>, tonic::Request<Req>) -> Fut + Clone + Send + 'static,
    Fut:
        std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Future = BoxFuture<tonic::Response<Resp>, tonic::Status>;
    fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
        let (inner, f) = (self.0.clone(), self.1.clone());
        Box::pin(async move { f(inner, request).await })
    }
}

fn codec<A, B>() -> tonic_prost::ProstCodec<A, B> {
    tonic_prost::ProstCodec::default()
}

impl<T, B> Service<http::Request<B>> for CoordinatorServer<T>
where
    T: CoordinatorRpc,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        fn grpc<
            A: prost::Message + Default + Send + 'static,
            R: prost::Message + Send + 'static,
        >() -> tonic::server::Grpc<tonic_prost::ProstCodec<R, A>> {
            tonic::server::Grpc::new(codec::<R, A>())
                .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), Some(MAX_MESSAGE_BYTES))
        }
        match req.uri().path() {
            "/quiver.federation.v1.Coordinator/Poll" => Box::pin(async move {
                let svc = Unary(inner, |t: Arc<T>, r| async move { t.poll(r).await });
                Ok(grpc::<PollRequest, Task>().unary(svc, req).await)
            }),
            "/quiver.federation.v1.Coordinator/Submit" => Box::pin(async move {
                let svc = Unary(inner, |t: Arc<T>, r| async move { t.submit(r).await });
                Ok(grpc::<Submission, Ack>().unary(svc, req).await)
            }),
            "/quiver.federation.v1.Coordinator/Status" => Box::pin(async move {
                let svc = Unary(inner, |t: Arc<T>, r| async move { t.status(r).await });
                Ok(grpc::<StatusRequest, StatusReply>().unary(svc, req).await)
            }),
            _ => Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            }),
        }
    }
}

/// Client of the coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl CoordinatorClient {
    /// Over an established channel.
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            inner: tonic::client::Grpc::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        }
    }

    async fn unary<A, R>(&mut self, method: &'static str, req: A) -> Result<R, tonic::Status>
    where
        A: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("coordinator not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(method);
        Ok(self
            .inner
            .unary(tonic::Request::new(req), path, codec::<A, R>())
            .await?
            .into_inner())
    }

    /// Long poll for the next task.
    pub async fn poll(&mut self, req: PollRequest) -> Result<Task, tonic::Status> {
        self.unary("/quiver.federation.v1.Coordinator/Poll", req)
            .await
    }

    /// Send a stage message.
    pub async fn submit(&mut self, req: Submission) -> Result<Ack, tonic::Status> {
        self.unary("/quiver.federation.v1.Coordinator/Submit", req)
            .await
    }

    /// The run's status.
    pub async fn status(&mut self) -> Result<StatusReply, tonic::Status> {
        self.unary("/quiver.federation.v1.Coordinator/Status", StatusRequest {})
            .await
    }
}
