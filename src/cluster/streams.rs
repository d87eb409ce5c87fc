//! Change streams over a whole deployment: the source's (the tailer, the renames before
//! the copy plan) and the destination's (the baseline's dirty tracking). Resume tokens
//! are handed out and taken back as plain documents.

use std::time::Duration;

use bson::{Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::FullDocumentType;

use super::{Cluster, ClusterError, Side};

/// Where a stream starts.
#[derive(Clone, Debug)]
pub enum StreamStart {
    /// With the first event at or after this cluster time.
    At(Timestamp),
    /// After the event (or the batch end) this resume token names.
    After(Document),
}

/// What a stream carries and how it is read.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub start: StreamStart,
    /// Stages after the stream's own (a `$match`, a `$project`, ...).
    pub pipeline: Vec<Document>,
    /// DDL events beyond the basic ones (`showExpandedEvents`: create, createIndexes,
    /// shardCollection, ...).
    pub expanded_events: bool,
    /// Update events carry the document as it is when the event is read.
    pub full_document_lookup: bool,
    /// Events per getMore.
    pub batch_size: Option<u32>,
    /// How long a getMore waits on an idle stream before returning an empty batch.
    pub max_await: Duration,
}

impl StreamOptions {
    pub fn from(start: StreamStart, max_await: Duration) -> StreamOptions {
        StreamOptions {
            start,
            pipeline: Vec::new(),
            expanded_events: false,
            full_document_lookup: false,
            batch_size: None,
            max_await,
        }
    }
}

/// An open change stream of a whole deployment.
pub struct ChangeStream {
    side: Side,
    stream: mongodb::change_stream::ChangeStream<RawDocumentBuf>,
}

const ACTION: &str = "change stream";

fn stream_error(side: Side) -> impl Fn(mongodb::error::Error) -> ClusterError {
    move |source| ClusterError::Command {
        side,
        action: ACTION.into(),
        source,
    }
}

/// Opens a change stream of every database of the deployment.
pub async fn watch_deployment(
    cluster: &Cluster,
    options: StreamOptions,
) -> Result<ChangeStream, ClusterError> {
    let mut watch = cluster.client.watch().max_await_time(options.max_await);
    if !options.pipeline.is_empty() {
        watch = watch.pipeline(options.pipeline);
    }
    if options.expanded_events {
        watch = watch.show_expanded_events(true);
    }
    if options.full_document_lookup {
        watch = watch.full_document(FullDocumentType::UpdateLookup);
    }
    if let Some(batch) = options.batch_size {
        watch = watch.batch_size(batch);
    }
    watch = match options.start {
        StreamStart::At(ts) => watch.start_at_operation_time(ts),
        StreamStart::After(token) => {
            let token: ResumeToken =
                bson::from_bson(Bson::Document(token.clone())).map_err(|e| {
                    ClusterError::failed(
                        cluster.side,
                        ACTION,
                        format!("the recorded resume token {token} cannot be used: {e}"),
                    )
                })?;
            watch.resume_after(token)
        }
    };
    let stream = watch.await.map_err(stream_error(cluster.side))?;
    Ok(ChangeStream {
        side: cluster.side,
        stream: stream.with_type::<RawDocumentBuf>(),
    })
}

impl ChangeStream {
    /// The next event of the current batch, reading the next batch when this one is
    /// used up; `None` when that batch is empty (the stream is idle).
    pub async fn next_if_any(&mut self) -> Result<Option<RawDocumentBuf>, ClusterError> {
        self.stream
            .next_if_any()
            .await
            .map_err(stream_error(self.side))
    }

    /// Where the stream has got to (the last event returned, or the end of the last
    /// batch), as a document to record and resume after.
    pub fn resume_token(&self) -> Result<Option<Document>, ClusterError> {
        let Some(token) = self.stream.resume_token() else {
            return Ok(None);
        };
        match bson::to_bson(&token) {
            Ok(Bson::Document(d)) => Ok(Some(d)),
            Ok(other) => Err(ClusterError::failed(
                self.side,
                ACTION,
                format!("the stream's resume token is not a document: {other}"),
            )),
            Err(e) => Err(ClusterError::failed(
                self.side,
                ACTION,
                format!("the stream's resume token cannot be encoded: {e}"),
            )),
        }
    }
}

/// The cluster time inside a resume token: `_data` starts with the timestamp's
/// type byte (0x82) and its 8 bytes, big-endian, as hex.
pub fn token_timestamp(token: &Document) -> Option<Timestamp> {
    let data = token.get_str("_data").ok()?;
    if data.len() < 18 || !data[..2].eq_ignore_ascii_case("82") {
        return None;
    }
    let time = u32::from_str_radix(&data[2..10], 16).ok()?;
    let increment = u32::from_str_radix(&data[10..18], 16).ok()?;
    Some(Timestamp { time, increment })
}
