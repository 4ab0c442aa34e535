//! Every Arrow IPC message a client sends (DoPut, DoExchange) is checked here before
//! arrow decodes it.
//!
//! - **Metadata-only messages pass by.** The Flight spec lets a client send a message
//!   with a descriptor or `app_metadata` and no IPC header (pyarrow's `do_exchange` opens
//!   with one); they carry no data and are dropped from the decoder's input.
//! - **Compressed bodies are refused.** An LZ4 or ZSTD buffer starts with its declared
//!   uncompressed length, which the decoder allocates before any limit applies: a
//!   16-byte buffer declaring 2^62 bytes aborts the process. Clients send uncompressed
//!   IPC (pyarrow's default); gRPC compresses the transport if wanted.
//! - **Only schemas, record batches and dictionary batches** are accepted, with a body
//!   of the length the header declares, and at most `max_rows` rows per batch.

use arrow::ipc::{MessageHeader, root_as_message};
use arrow_flight::FlightData;
use arrow_flight::error::FlightError;
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::Status;

fn refuse(n: usize, why: String) -> FlightError {
    FlightError::Tonic(Box::new(Status::invalid_argument(format!(
        "message {n} of the stream: {why}"
    ))))
}

/// Check one message; `Ok(false)` for a metadata-only message to drop.
fn check(n: usize, m: &FlightData, max_rows: usize) -> Result<bool, FlightError> {
    if m.data_header.is_empty() {
        if !m.data_body.is_empty() {
            return Err(refuse(n, "a data body without an IPC header".into()));
        }
        return Ok(false);
    }
    let msg = root_as_message(&m.data_header).map_err(|e| {
        refuse(
            n,
            format!("the data header is not an Arrow IPC message ({e})"),
        )
    })?;
    if msg.bodyLength() != m.data_body.len() as i64 {
        return Err(refuse(
            n,
            format!(
                "the header declares a body of {} bytes, {} arrived",
                msg.bodyLength(),
                m.data_body.len()
            ),
        ));
    }
    let compressed = |c: Option<arrow::ipc::BodyCompression>| {
        c.map(|c| {
            refuse(
                n,
                format!(
                    "compressed IPC ({:?}) is not accepted; send uncompressed batches (gRPC can compress the transport)",
                    c.codec()
                ),
            )
        })
    };
    match msg.header_type() {
        MessageHeader::Schema => {}
        MessageHeader::RecordBatch => {
            let b = msg
                .header_as_record_batch()
                .ok_or_else(|| refuse(n, "a record batch header that does not parse".into()))?;
            if let Some(e) = compressed(b.compression()) {
                return Err(e);
            }
            if b.length() < 0 || b.length() as u64 > max_rows as u64 {
                return Err(refuse(
                    n,
                    format!("a batch of {} rows; at most {max_rows}", b.length()),
                ));
            }
        }
        MessageHeader::DictionaryBatch => {
            let d = msg
                .header_as_dictionary_batch()
                .ok_or_else(|| refuse(n, "a dictionary header that does not parse".into()))?;
            if let Some(b) = d.data() {
                if let Some(e) = compressed(b.compression()) {
                    return Err(e);
                }
                if b.length() < 0 || b.length() as u64 > max_rows as u64 {
                    return Err(refuse(
                        n,
                        format!("a dictionary of {} values; at most {max_rows}", b.length()),
                    ));
                }
            }
        }
        other => {
            return Err(refuse(
                n,
                format!("IPC message type {other:?}; only schemas and batches are accepted"),
            ));
        }
    }
    Ok(true)
}

/// The client's messages with metadata-only ones dropped and every other one checked;
/// the first refused message ends the stream with `InvalidArgument`.
pub(crate) fn guarded(
    input: BoxStream<'static, Result<FlightData, FlightError>>,
    max_rows: usize,
) -> BoxStream<'static, Result<FlightData, FlightError>> {
    input
        .enumerate()
        .filter_map(move |(n, m)| {
            futures::future::ready(
                match m.and_then(|m| check(n, &m, max_rows).map(|keep| (m, keep))) {
                    Ok((m, true)) => Some(Ok(m)),
                    Ok((_, false)) => None,
                    Err(e) => Some(Err(e)),
                },
            )
        })
        // Nothing after the first error is read.
        .scan(false, |failed, item| {
            let out = (!*failed).then_some(item);
            if let Some(Err(_)) = &out {
                *failed = true;
            }
            futures::future::ready(out)
        })
        .boxed()
}
