//! Arrow IPC bytes from another process, checked before arrow decodes them: the same
//! rules as the Flight server's guard on uploads (`serve::ipc_guard`), for what
//! travels inside plans (a training set's entity rows, table schemas) and for a
//! trace's step files fetched from a server.
//!
//! Why: an LZ4 or ZSTD buffer starts with its declared uncompressed length, which the
//! decoder allocates before any limit applies, so 16 bytes declaring 2^62 bytes abort
//! the process. Here every message must parse, lie inside the bytes given, carry no
//! compression, and declare a row count below a bound; anything else is a clean error
//! naming what arrived.

use std::io::Cursor;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::{FileReader, StreamReader};

/// Most rows one batch from another process may declare.
pub const MAX_ROWS_PER_BATCH: i64 = 1 << 28;

fn message_at(bytes: &[u8], pos: usize, what: &str) -> Result<Option<(usize, i64)>, String> {
    if pos + 4 > bytes.len() {
        return Ok(None);
    }
    let word = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes"));
    let (meta_len, start) = if word == 0xffff_ffff {
        if pos + 8 > bytes.len() {
            return Err(format!("{what}: a message header cut short at byte {pos}"));
        }
        (
            u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize,
            pos + 8,
        )
    } else {
        (word as usize, pos + 4)
    };
    if meta_len == 0 {
        return Ok(None);
    }
    let end = start
        .checked_add(meta_len)
        .filter(|e| *e <= bytes.len())
        .ok_or_else(|| format!("{what}: the message at byte {pos} runs past the end"))?;
    let mut aligned = arrow::buffer::MutableBuffer::new(meta_len);
    aligned.extend_from_slice(&bytes[start..end]);
    let message = arrow::ipc::root_as_message(&aligned)
        .map_err(|e| format!("{what}: an unreadable message at byte {pos}: {e}"))?;
    if let Some(d) = message.header_as_dictionary_batch()
        && d.isDelta()
    {
        return Err(format!(
            "{what}: a delta dictionary at byte {pos}; only whole dictionaries are read from another process"
        ));
    }
    let batch = message
        .header_as_record_batch()
        .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
    let body_len = message.bodyLength();
    if let Some(b) = batch {
        // Every buffer lies inside the body (the reader slices without checking).
        for buf in b.buffers().into_iter().flatten() {
            let inside = buf.offset() >= 0
                && buf.length() >= 0
                && buf
                    .offset()
                    .checked_add(buf.length())
                    .is_some_and(|end| end <= body_len);
            if !inside {
                return Err(format!(
                    "{what}: a buffer [{}, +{}) outside the body of {body_len} bytes at byte {pos}",
                    buf.offset(),
                    buf.length()
                ));
            }
        }
        if let Some(c) = b.compression() {
            return Err(format!(
                "{what}: compressed IPC ({:?}) at byte {pos}; only uncompressed batches are read from another process",
                c.codec()
            ));
        }
        if !(0..=MAX_ROWS_PER_BATCH).contains(&b.length()) {
            return Err(format!(
                "{what}: a batch declaring {} rows at byte {pos}; at most {MAX_ROWS_PER_BATCH}",
                b.length()
            ));
        }
    }
    let body = usize::try_from(message.bodyLength())
        .map_err(|_| format!("{what}: a negative body length at byte {pos}"))?;
    let next = end
        .checked_add(body)
        .filter(|n| *n <= bytes.len())
        .ok_or_else(|| {
            format!("{what}: the body of the message at byte {pos} runs past the end")
        })?;
    Ok(Some((next, message.bodyLength())))
}

/// Check every message of an IPC *stream*.
pub fn check_stream(bytes: &[u8], what: &str) -> Result<(), String> {
    let mut pos = 0;
    while let Some((next, _)) = message_at(bytes, pos, what)? {
        pos = next;
    }
    Ok(())
}

/// Check an IPC *file*: its magic, every message laid out after it, and every block
/// its footer points at (the reader follows the footer).
pub fn check_file(bytes: &[u8], what: &str) -> Result<(), String> {
    const MAGIC: &[u8] = b"ARROW1";
    if bytes.len() < 18 || &bytes[..6] != MAGIC || &bytes[bytes.len() - 6..] != MAGIC {
        return Err(format!("{what}: not an Arrow IPC file"));
    }
    check_stream(&bytes[8..bytes.len() - 10], what)?;
    let footer_len = i32::from_le_bytes(
        bytes[bytes.len() - 10..bytes.len() - 6]
            .try_into()
            .expect("4 bytes"),
    );
    let footer_len = usize::try_from(footer_len)
        .ok()
        .filter(|l| *l + 10 <= bytes.len())
        .ok_or_else(|| format!("{what}: a footer length that runs past the file"))?;
    let start = bytes.len() - 10 - footer_len;
    let mut aligned = arrow::buffer::MutableBuffer::new(footer_len);
    aligned.extend_from_slice(&bytes[start..bytes.len() - 10]);
    let footer = arrow::ipc::root_as_footer(&aligned)
        .map_err(|e| format!("{what}: an unreadable footer: {e}"))?;
    let blocks = footer
        .recordBatches()
        .into_iter()
        .flatten()
        .chain(footer.dictionaries().into_iter().flatten());
    for b in blocks {
        let pos = usize::try_from(b.offset())
            .ok()
            .filter(|p| *p < bytes.len())
            .ok_or_else(|| format!("{what}: a footer block outside the file"))?;
        let meta = usize::try_from(b.metaDataLength())
            .ok()
            .filter(|m| pos.checked_add(*m).is_some_and(|e| e <= bytes.len()))
            .ok_or_else(|| format!("{what}: a footer block whose metadata runs past the file"))?;
        let Some((next, body)) = message_at(bytes, pos, what)? else {
            return Err(format!("{what}: a footer block that names no message"));
        };
        // The reader reads `metaDataLength` bytes at the block: they must be the
        // message's own (its prefix, header and padding), nothing larger.
        if meta > next - pos {
            return Err(format!(
                "{what}: a footer block declaring {meta} bytes of metadata for a message of {}",
                next - pos
            ));
        }
        if body != b.bodyLength() || next > bytes.len() {
            return Err(format!(
                "{what}: a footer block whose body ({} bytes) is not its message's ({body})",
                b.bodyLength()
            ));
        }
    }
    Ok(())
}

/// The batches of an IPC stream from another process, checked first.
pub fn read_stream(bytes: &[u8], what: &str) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    check_stream(bytes, what)?;
    let reader =
        StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| format!("{what}: {e}"))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: {e}"))?;
    Ok((schema, batches))
}

/// The batches of an IPC file from another process, checked first.
pub fn read_file(bytes: &[u8], what: &str) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    check_file(bytes, what)?;
    let reader =
        FileReader::try_new(Cursor::new(bytes), None).map_err(|e| format!("{what}: {e}"))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: {e}"))?;
    Ok((schema, batches))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::ipc::writer::{FileWriter, IpcWriteOptions, StreamWriter};

    use super::*;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter([(
            "x",
            Arc::new(Int64Array::from_iter_values(0..1000)) as arrow::array::ArrayRef,
        )])
        .unwrap()
    }

    /// An LZ4 stream whose first buffer declares 2^62 uncompressed bytes.
    pub(crate) fn lz4_bomb() -> Vec<u8> {
        let b = batch();
        let opts = IpcWriteOptions::default()
            .try_with_compression(Some(arrow::ipc::CompressionType::LZ4_FRAME))
            .unwrap();
        let mut buf = Vec::new();
        let mut w = StreamWriter::try_new_with_options(&mut buf, &b.schema(), opts).unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
        drop(w);
        // Each compressed buffer starts with its uncompressed length (i64): make the
        // largest one claim 2^62 bytes.
        let declared = (b.get_array_memory_size() as i64).to_le_bytes();
        let mut patched = false;
        for i in 0..buf.len().saturating_sub(8) {
            if buf[i..i + 8] == (8000i64).to_le_bytes() {
                buf[i..i + 8].copy_from_slice(&(1i64 << 62).to_le_bytes());
                patched = true;
                break;
            }
        }
        let _ = declared;
        assert!(patched, "found the buffer's declared length");
        buf
    }

    #[test]
    fn plain_streams_and_files_pass_and_compressed_ones_are_refused() {
        let b = batch();
        let mut buf = Vec::new();
        let mut w = StreamWriter::try_new(&mut buf, &b.schema()).unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
        drop(w);
        assert_eq!(read_stream(&buf, "t").unwrap().1[0].num_rows(), 1000);
        let mut file = Vec::new();
        let mut w = FileWriter::try_new(&mut file, &b.schema()).unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
        drop(w);
        assert_eq!(read_file(&file, "t").unwrap().1[0].num_rows(), 1000);
        let e = read_stream(&lz4_bomb(), "the entity rows").unwrap_err();
        assert!(e.contains("compressed IPC"), "{e}");
        // Cut short anywhere: a clean error or a partial stream, never a panic.
        for cut in [1, 7, 20, buf.len() / 2, buf.len() - 1] {
            let _ = read_stream(&buf[..cut], "t");
        }
        assert!(read_file(&file[..file.len() - 3], "t").is_err());
    }
}
