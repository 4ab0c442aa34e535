//! The executor's Flight service as quiver serves it: Ballista's, with every fetch
//! checked before Ballista builds a path from it. Ballista joins the ticket's job id
//! onto the work directory unchecked (`PathBuf::push`), so a job id that is absolute or
//! holds `..` would read shuffle-shaped files anywhere on the host (another cluster's
//! work directory on the same machine). A job id here is one plain path part.

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, PollInfo,
    SchemaResult, Ticket,
};
use ballista_core::serde::decode_protobuf;
use ballista_core::serde::scheduler::Action as BallistaAction;
use ballista_executor::flight_service::BallistaFlightService;
use tonic::{Request, Response, Status, Streaming};

/// The longest job id accepted (Ballista's are 13 characters).
pub const MAX_JOB_ID_LEN: usize = 64;

/// Ballista's executor Flight service behind [`check_fetch`].
pub struct QuiverFlight(pub BallistaFlightService);

/// Refuse a fetch whose job id is not one plain path part: ASCII letters, digits, `-`
/// and `_`, at most [`MAX_JOB_ID_LEN`] characters.
///
/// ```
/// assert!(quiver_ballista::flight::check_job_id("038JDVZ2N6000").is_ok());
/// assert!(quiver_ballista::flight::check_job_id("../other").is_err());
/// assert!(quiver_ballista::flight::check_job_id("/srv/work").is_err());
/// assert!(quiver_ballista::flight::check_job_id("").is_err());
/// ```
pub fn check_job_id(job_id: &str) -> Result<(), Status> {
    let plain = !job_id.is_empty()
        && job_id.len() <= MAX_JOB_ID_LEN
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "job id `{}`: expected at most {MAX_JOB_ID_LEN} letters, digits, `-` or `_`",
            job_id
                .escape_debug()
                .to_string()
                .chars()
                .take(80)
                .collect::<String>()
        )))
    }
}

/// Decode a fetch (a `do_get` ticket or an `IO_BLOCK_TRANSPORT` body) and check it.
pub fn check_fetch(bytes: &[u8]) -> Result<(), Status> {
    match decode_protobuf(bytes) {
        Ok(BallistaAction::FetchPartition { job_id, .. }) => check_job_id(job_id.as_str()),
        // Ballista answers what it cannot decode itself.
        Err(_) => Ok(()),
    }
}

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl FlightService for QuiverFlight {
    type HandshakeStream = <BallistaFlightService as FlightService>::HandshakeStream;
    type ListFlightsStream = <BallistaFlightService as FlightService>::ListFlightsStream;
    type DoGetStream = <BallistaFlightService as FlightService>::DoGetStream;
    type DoPutStream = <BallistaFlightService as FlightService>::DoPutStream;
    type DoExchangeStream = <BallistaFlightService as FlightService>::DoExchangeStream;
    type DoActionStream = <BallistaFlightService as FlightService>::DoActionStream;
    type ListActionsStream = <BallistaFlightService as FlightService>::ListActionsStream;

    async fn handshake(&self, r: Request<Streaming<HandshakeRequest>>) -> R<Self::HandshakeStream> {
        self.0.handshake(r).await
    }

    async fn list_flights(&self, r: Request<Criteria>) -> R<Self::ListFlightsStream> {
        self.0.list_flights(r).await
    }

    async fn get_flight_info(&self, r: Request<FlightDescriptor>) -> R<FlightInfo> {
        self.0.get_flight_info(r).await
    }

    async fn poll_flight_info(&self, r: Request<FlightDescriptor>) -> R<PollInfo> {
        self.0.poll_flight_info(r).await
    }

    async fn get_schema(&self, r: Request<FlightDescriptor>) -> R<SchemaResult> {
        self.0.get_schema(r).await
    }

    async fn do_get(&self, r: Request<Ticket>) -> R<Self::DoGetStream> {
        check_fetch(&r.get_ref().ticket)?;
        self.0.do_get(r).await
    }

    async fn do_put(&self, r: Request<Streaming<FlightData>>) -> R<Self::DoPutStream> {
        self.0.do_put(r).await
    }

    async fn do_exchange(&self, r: Request<Streaming<FlightData>>) -> R<Self::DoExchangeStream> {
        self.0.do_exchange(r).await
    }

    async fn do_action(&self, r: Request<Action>) -> R<Self::DoActionStream> {
        check_fetch(&r.get_ref().body)?;
        self.0.do_action(r).await
    }

    async fn list_actions(&self, r: Request<Empty>) -> R<Self::ListActionsStream> {
        self.0.list_actions(r).await
    }
}
