//! Message framing: OP_MSG (both section kinds), the legacy OP_QUERY handshake and its
//! OP_REPLY answer. A malformed message is an error for its connection only.

use bson::{Bson, Document};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::cursor::CursorReply;
use crate::encode;
use crate::error::{codes, CommandError};

pub const OP_REPLY: i32 = 1;
pub const OP_QUERY: i32 = 2004;
pub const OP_COMPRESSED: i32 = 2012;
pub const OP_MSG: i32 = 2013;

/// Largest message accepted, as advertised in `hello` (`maxMessageSizeBytes`).
pub const MAX_MESSAGE_SIZE: usize = 48_000_000;
/// Largest BSON document, as advertised in `hello` (`maxBsonObjectSize`).
pub const MAX_BSON_SIZE: usize = 16 * 1024 * 1024;

const FLAG_CHECKSUM_PRESENT: u32 = 1;
const FLAG_MORE_TO_COME: u32 = 1 << 1;
const FLAG_EXHAUST_ALLOWED: u32 = 1 << 16;
const KNOWN_FLAGS: u32 = FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME | FLAG_EXHAUST_ALLOWED;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// One request read off a connection.
#[derive(Debug)]
pub enum Request {
    /// OP_MSG: the command with kind-1 sections folded in as array fields.
    Msg {
        request_id: i32,
        more_to_come: bool,
        command: Document,
    },
    /// Legacy OP_QUERY against `<db>.$cmd` (only the handshake uses it nowadays).
    Query {
        request_id: i32,
        collection: String,
        query: Document,
    },
}

fn malformed(msg: impl Into<String>) -> WireError {
    WireError::Malformed(msg.into())
}

fn read_i32(buf: &[u8], at: usize) -> Result<i32, WireError> {
    buf.get(at..at + 4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| malformed("truncated integer"))
}

fn read_cstring(buf: &[u8], at: usize) -> Result<(String, usize), WireError> {
    let rest = buf
        .get(at..)
        .ok_or_else(|| malformed("truncated cstring"))?;
    let end = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| malformed("unterminated cstring"))?;
    let s = std::str::from_utf8(&rest[..end]).map_err(|_| malformed("cstring is not UTF-8"))?;
    Ok((s.to_string(), at + end + 1))
}

/// Reads one BSON document at `at`, returning it and the offset after it.
fn read_document(buf: &[u8], at: usize) -> Result<(Document, usize), WireError> {
    let len = read_i32(buf, at)?;
    if len < 5 || len as usize > MAX_BSON_SIZE + 16 * 1024 {
        return Err(malformed(format!("invalid document length {len}")));
    }
    let end = at + len as usize;
    let bytes = buf
        .get(at..end)
        .ok_or_else(|| malformed("document overruns message"))?;
    let doc = match crate::decode::document(bytes) {
        Some(doc) => doc,
        None => {
            Document::from_reader(bytes).map_err(|e| malformed(format!("invalid BSON: {e}")))?
        }
    };
    Ok((doc, end))
}

/// Reads one whole message. `Ok(None)` means a clean end of stream between messages.
pub async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Request>, WireError> {
    let mut header = [0u8; 16];
    match reader.read_exact(&mut header[..4]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    reader.read_exact(&mut header[4..]).await?;
    let length = read_i32(&header, 0)?;
    if length < 16 || length as usize > MAX_MESSAGE_SIZE {
        return Err(malformed(format!("message length {length} out of bounds")));
    }
    let request_id = read_i32(&header, 4)?;
    let op_code = read_i32(&header, 12)?;
    let mut body = vec![0u8; length as usize - 16];
    reader.read_exact(&mut body).await?;
    match op_code {
        OP_MSG => parse_op_msg(request_id, &body),
        OP_QUERY => parse_op_query(request_id, &body),
        OP_COMPRESSED => Err(malformed("compression was not negotiated")),
        other => Err(malformed(format!("unsupported opcode {other}"))),
    }
    .map(Some)
}

fn parse_op_msg(request_id: i32, body: &[u8]) -> Result<Request, WireError> {
    let flags = read_i32(body, 0)? as u32;
    if flags & !KNOWN_FLAGS & 0xffff != 0 {
        return Err(malformed(format!("unknown required flag bits {flags:#x}")));
    }
    let end = if flags & FLAG_CHECKSUM_PRESENT != 0 {
        body.len()
            .checked_sub(4)
            .ok_or_else(|| malformed("missing checksum"))?
    } else {
        body.len()
    };
    let mut at = 4;
    let mut command: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<Bson>)> = Vec::new();
    while at < end {
        let kind = body[at];
        at += 1;
        match kind {
            0 => {
                if command.is_some() {
                    return Err(malformed("more than one kind-0 section"));
                }
                let (doc, next) = read_document(&body[..end], at)?;
                command = Some(doc);
                at = next;
            }
            1 => {
                let size = read_i32(body, at)?;
                if size < 5 {
                    return Err(malformed("invalid document sequence size"));
                }
                let seq_end = at + size as usize;
                if seq_end > end {
                    return Err(malformed("document sequence overruns message"));
                }
                let (identifier, mut pos) = read_cstring(&body[..seq_end], at + 4)?;
                let mut docs = Vec::new();
                while pos < seq_end {
                    let (doc, next) = read_document(&body[..seq_end], pos)?;
                    docs.push(Bson::Document(doc));
                    pos = next;
                }
                sequences.push((identifier, docs));
                at = seq_end;
            }
            other => return Err(malformed(format!("unknown section kind {other}"))),
        }
    }
    let mut command = command.ok_or_else(|| malformed("no kind-0 section"))?;
    for (identifier, docs) in sequences {
        command.insert(identifier, Bson::Array(docs));
    }
    Ok(Request::Msg {
        request_id,
        more_to_come: flags & FLAG_MORE_TO_COME != 0,
        command,
    })
}

fn parse_op_query(request_id: i32, body: &[u8]) -> Result<Request, WireError> {
    let _flags = read_i32(body, 0)?;
    let (collection, at) = read_cstring(body, 4)?;
    let _skip = read_i32(body, at)?;
    let _limit = read_i32(body, at + 4)?;
    let (query, _) = read_document(body, at + 8)?;
    Ok(Request::Query {
        request_id,
        collection,
        query,
    })
}

fn header(buf: &mut Vec<u8>, response_to: i32, op_code: i32) {
    buf.extend_from_slice(&0i32.to_le_bytes()); // length, patched at the end
    buf.extend_from_slice(&next_response_id().to_le_bytes());
    buf.extend_from_slice(&response_to.to_le_bytes());
    buf.extend_from_slice(&op_code.to_le_bytes());
}

fn patch_length(buf: &mut [u8]) {
    let len = buf.len() as i32;
    buf[..4].copy_from_slice(&len.to_le_bytes());
}

fn next_response_id() -> i32 {
    use std::sync::atomic::{AtomicI32, Ordering};
    static NEXT: AtomicI32 = AtomicI32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A command's reply as it is framed: its fields, after a `cursor` whose batch was
/// encoded when it was taken (find, aggregate, getMore), so batches are never built as
/// documents only to be serialized.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    /// Written first, as the `cursor` field, when set.
    pub cursor: Option<CursorReply>,
    /// The other fields (`ok`, `$clusterTime`, ..., or the whole reply).
    pub fields: Document,
}

impl From<Document> for Reply {
    fn from(fields: Document) -> Reply {
        Reply {
            cursor: None,
            fields,
        }
    }
}

impl Reply {
    fn size_hint(&self) -> usize {
        crate::storage::encoded_size(&self.fields)
            + self.cursor.as_ref().map_or(0, CursorReply::size_hint)
    }

    /// Appends the reply as one BSON document.
    fn write(&self, buf: &mut Vec<u8>) -> Result<(), encode::EncodeError> {
        let start = encode::open(buf);
        if let Some(cursor) = &self.cursor {
            cursor.write_element(buf)?;
        }
        for (key, value) in &self.fields {
            encode::element(buf, key, value)?;
        }
        encode::end(buf, start);
        Ok(())
    }
}

/// Encodes an OP_MSG reply: flags 0, one kind-0 section, no checksum.
pub fn encode_msg_reply(response_to: i32, reply: &Reply) -> Vec<u8> {
    let mut buf = Vec::with_capacity(32 + reply.size_hint());
    header(&mut buf, response_to, OP_MSG);
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.push(0);
    reply_document(&mut buf, reply);
    patch_length(&mut buf);
    buf
}

/// Encodes an OP_REPLY carrying one document (legacy handshake answers).
pub fn encode_op_reply(response_to: i32, reply: &Reply) -> Vec<u8> {
    let mut buf = Vec::with_capacity(40 + reply.size_hint());
    header(&mut buf, response_to, OP_REPLY);
    buf.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
    buf.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    buf.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    buf.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    reply_document(&mut buf, reply);
    patch_length(&mut buf);
    buf
}

/// Appends a reply document. One that cannot be encoded (a key with a NUL byte, which
/// only a handler bug could produce) is answered with an InternalError instead of a
/// truncated message.
fn reply_document(buf: &mut Vec<u8>, reply: &Reply) {
    let start = buf.len();
    if let Err(e) = reply.write(buf) {
        tracing::error!(error = %e, "could not encode reply");
        buf.truncate(start);
        let error = CommandError::new(codes::INTERNAL_ERROR, e.to_string()).to_reply();
        if encode::document(buf, &error).is_err() {
            buf.truncate(start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn op_msg(sections: &[u8], flags: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        let len = 16 + 4 + sections.len();
        buf.extend_from_slice(&(len as i32).to_le_bytes());
        buf.extend_from_slice(&7i32.to_le_bytes());
        buf.extend_from_slice(&0i32.to_le_bytes());
        buf.extend_from_slice(&OP_MSG.to_le_bytes());
        buf.extend_from_slice(&flags.to_le_bytes());
        buf.extend_from_slice(sections);
        buf
    }

    #[tokio::test]
    async fn folds_document_sequences_into_the_command() {
        let mut sections = vec![0u8];
        doc! {"insert": "c", "$db": "d"}
            .to_writer(&mut sections)
            .unwrap();
        let mut seq = Vec::new();
        seq.extend_from_slice(b"documents\0");
        doc! {"_id": 1}.to_writer(&mut seq).unwrap();
        doc! {"_id": 2}.to_writer(&mut seq).unwrap();
        sections.push(1);
        sections.extend_from_slice(&((seq.len() + 4) as i32).to_le_bytes());
        sections.extend_from_slice(&seq);
        let msg = op_msg(&sections, 0);
        let req = read_request(&mut &msg[..]).await.unwrap().unwrap();
        match req {
            Request::Msg { command, .. } => {
                assert_eq!(command.get_array("documents").unwrap().len(), 2);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn rejects_oversized_and_truncated_messages() {
        let mut msg = op_msg(&[0u8, 5, 0, 0, 0, 0], 0);
        msg[..4].copy_from_slice(&(100_000_000i32).to_le_bytes());
        assert!(read_request(&mut &msg[..]).await.is_err());
        let msg = op_msg(&[0u8, 50, 0, 0, 0, 0], 0);
        assert!(read_request(&mut &msg[..]).await.is_err());
    }
}
