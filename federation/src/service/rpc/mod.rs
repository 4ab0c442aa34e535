//! The gRPC surface `quiver.federation.v1.Coordinator`, generated from
//! `federation/proto/quiver/federation/v1/coordinator.proto` by `federation/gen`
//! (`./scripts/regen-proto.sh`; the generated file is checked in, so the build needs no
//! `protoc`), and the checked conversions between its messages and the protocol's
//! types ([`convert`]).
//!
//! ```text
//! service Coordinator {
//!   rpc Poll(PollRequest) returns (Task);          // long poll: what should this bank do now
//!   rpc Submit(Submission) returns (Ack);          // one stage's message
//!   rpc Status(StatusRequest) returns (StatusReply);
//! }
//! ```
//!
//! A [`Task`]'s work and a [`Submission`]'s stage are `oneof`s with one case per
//! protocol stage, so which stage a message belongs to is part of its type.

pub mod convert;

/// The generated code (prost messages, tonic client and server).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!("quiver.federation.v1.rs");
}

pub use convert::MessageError;
pub use pb::submission::Stage;
pub use pb::task::Work;
pub use pb::{Ack, PollRequest, StatusReply, StatusRequest, Submission, Task};

pub use crate::limits::{MAX_MESSAGE_BYTES, MAX_TASK_BYTES};

/// Number of secure-aggregation stages in a round.
pub const STAGES: usize = 5;

/// The client of the coordinator, over a connected channel.
pub type CoordinatorClient = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;

/// A client that sends what the server accepts and takes tasks of at most
/// [`MAX_TASK_BYTES`].
pub fn client(channel: tonic::transport::Channel) -> CoordinatorClient {
    CoordinatorClient::new(channel)
        .max_decoding_message_size(MAX_TASK_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The tonic service of an implementation of the coordinator: takes submissions of at
/// most [`MAX_MESSAGE_BYTES`], sends tasks of at most [`MAX_TASK_BYTES`].
pub fn server<T: pb::coordinator_server::Coordinator>(
    rpc: T,
) -> pb::coordinator_server::CoordinatorServer<T> {
    pb::coordinator_server::CoordinatorServer::new(rpc)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_TASK_BYTES)
}

/// The protocol stage (0 to 4) a task's work belongs to; `None` for wait, done and
/// failed.
pub fn task_stage(w: &Work) -> Option<u32> {
    Some(match w {
        Work::Start(_) => 0,
        Work::Keys(_) => 1,
        Work::Shares(_) => 2,
        Work::Survivors(_) => 3,
        Work::Unmask(_) => 4,
        Work::Wait(_) | Work::Done(_) | Work::Failed(_) => return None,
    })
}

/// The protocol stage (0 to 4) a submission belongs to.
pub fn submission_stage(s: &Stage) -> u32 {
    match s {
        Stage::Join(_) | Stage::SitOut(_) => 0,
        Stage::ShareKeys(_) => 1,
        Stage::Masked(_) => 2,
        Stage::Consistency(_) => 3,
        Stage::Unmask(_) => 4,
    }
}
