//! How the crate's errors become gRPC statuses: what the caller must change decides
//! the code.

use arrow_flight::error::FlightError;
use tonic::Status;

use super::command::CommandError;
use crate::Error;

/// Error to Flight status: what the caller must change decides the code.
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        // Nothing a store's SDK put into an error (a SAS in a URL, say) reaches a client.
        let msg = crate::storage::redact(&e.to_string());
        match &e {
            Error::Spec(_) | Error::InvalidRequest(_) => Status::invalid_argument(msg),
            Error::NotFound { .. } => Status::not_found(msg),
            Error::Delta { .. } => Status::failed_precondition(msg),
            Error::Registry(
                quiver_registry::Error::Conflict { .. } | quiver_registry::Error::AliasMoved { .. },
            ) => Status::aborted(msg),
            Error::Registry(quiver_registry::Error::NotFound { .. }) => Status::not_found(msg),
            Error::Registry(
                quiver_registry::Error::SchemaMismatch(_)
                | quiver_registry::Error::Tampered { .. }
                | quiver_registry::Error::Untrusted(_)
                | quiver_registry::Error::Replication(_),
            ) => Status::failed_precondition(msg),
            Error::Corrupt { .. } => Status::data_loss(msg),
            _ if e.is_user_error() => Status::invalid_argument(msg),
            _ => Status::internal(msg),
        }
    }
}

/// A refused command as a gRPC status: malformed is `INVALID_ARGUMENT`, over a bound
/// `RESOURCE_EXHAUSTED`.
pub(crate) fn command_status(e: CommandError) -> Status {
    match e {
        CommandError::Invalid(m) => Status::invalid_argument(m),
        CommandError::TooLarge(m) => Status::resource_exhausted(m),
    }
}

pub(crate) fn flight_err(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => Status::invalid_argument(other.to_string()),
    }
}
