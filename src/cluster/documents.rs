//! The documents of a migrated collection: reads of an index range (the copy's ranges,
//! the verifier's chunks), reads by `_id` or by document key, and the inserts of the copy.
//! Reads return raw BSON, as stored, so documents are passed on without decoding them.

use bson::{doc, Bson, Document, RawDocumentBuf};
use futures_util::TryStreamExt;
use mongodb::options::Hint;

use super::{error_code, Cluster, ClusterError, Side};

/// An open read of one collection's documents.
pub struct DocumentCursor {
    side: Side,
    action: String,
    cursor: mongodb::Cursor<RawDocumentBuf>,
}

impl DocumentCursor {
    /// The next document, or `None` once the read is done.
    pub async fn next(&mut self) -> Result<Option<RawDocumentBuf>, ClusterError> {
        self.cursor
            .try_next()
            .await
            .map_err(|source| ClusterError::Command {
                side: self.side,
                action: self.action.clone(),
                source,
            })
    }
}

/// The documents between two bounds of an index, read on that index: `min` inclusive,
/// `max` exclusive, each a document of the index's fields (none: from the start, to
/// the end).
#[derive(Clone, Debug)]
pub struct IndexRange {
    pub index: Document,
    pub min: Option<Document>,
    pub max: Option<Document>,
}

impl IndexRange {
    /// A range of `_id` values on the `_id` index.
    pub fn ids(min: Option<&Bson>, max: Option<&Bson>) -> IndexRange {
        IndexRange {
            index: doc! {"_id": 1},
            min: min.map(|m| doc! {"_id": m.clone()}),
            max: max.map(|m| doc! {"_id": m.clone()}),
        }
    }
}

/// How much one read asks for: documents per batch, and at most `limit` in all.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadSize {
    pub batch: Option<u32>,
    pub limit: Option<i64>,
}

fn read_action(db: &str, coll: &str) -> String {
    format!("read {db}.{coll}")
}

fn open_error(
    cluster: &Cluster,
    action: &str,
) -> impl FnOnce(mongodb::error::Error) -> ClusterError {
    let side = cluster.side;
    let action = action.to_string();
    move |source| ClusterError::Command {
        side,
        action,
        source,
    }
}

/// Opens a read of the documents of `db.coll` in `range`, in the index's order. Through
/// a router, documents a shard holds but does not own (orphans) are left out.
pub async fn read_index_range(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    range: &IndexRange,
    size: ReadSize,
) -> Result<DocumentCursor, ClusterError> {
    let action = read_action(db, coll);
    let collection = cluster
        .client
        .database(db)
        .collection::<RawDocumentBuf>(coll);
    let mut find = collection
        .find(doc! {})
        .hint(Hint::Keys(range.index.clone()));
    if let Some(min) = &range.min {
        find = find.min(min.clone());
    }
    if let Some(max) = &range.max {
        find = find.max(max.clone());
    }
    open_read(cluster, action, find, size).await
}

/// Sends a prepared `find` with the read's batch size and limit.
async fn open_read(
    cluster: &Cluster,
    action: String,
    mut find: mongodb::action::Find<'_, RawDocumentBuf>,
    size: ReadSize,
) -> Result<DocumentCursor, ClusterError> {
    if let Some(batch) = size.batch {
        find = find.batch_size(batch);
    }
    if let Some(limit) = size.limit {
        find = find.limit(limit);
    }
    let cursor = find.await.map_err(open_error(cluster, &action))?;
    Ok(DocumentCursor {
        side: cluster.side,
        action,
        cursor,
    })
}

/// Opens a read of every document of `db.coll`, in no particular order.
pub async fn read_all(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    size: ReadSize,
) -> Result<DocumentCursor, ClusterError> {
    read_matching(cluster, db, coll, doc! {}, size).await
}

/// Opens a read of the documents of `db.coll` with these `_id`s.
pub async fn read_by_ids(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    ids: &[Bson],
    size: ReadSize,
) -> Result<DocumentCursor, ClusterError> {
    read_matching(cluster, db, coll, doc! {"_id": {"$in": ids}}, size).await
}

/// Opens a read of the documents of `db.coll` that match any of these document keys
/// (`_id`, with the shard key on a sharded collection).
pub async fn read_by_document_keys(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    keys: Vec<Document>,
) -> Result<DocumentCursor, ClusterError> {
    let alternatives: Vec<Bson> = keys.into_iter().map(Bson::Document).collect();
    read_matching(
        cluster,
        db,
        coll,
        doc! {"$or": alternatives},
        ReadSize::default(),
    )
    .await
}

async fn read_matching(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    filter: Document,
    size: ReadSize,
) -> Result<DocumentCursor, ClusterError> {
    let action = read_action(db, coll);
    let collection = cluster
        .client
        .database(db)
        .collection::<RawDocumentBuf>(coll);
    open_read(cluster, action, collection.find(filter), size).await
}

/// How a batch of the copy went.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyInsert {
    /// Every document was inserted.
    Inserted,
    /// The only refusals were duplicate keys: those documents (at these positions of the
    /// batch) are there already, or another document holds their `_id`.
    Duplicates(Vec<usize>),
}

/// Inserts one batch of the copy into `db.coll`: unordered (one refused document does
/// not stop the others) and past document validation (the source accepted them).
pub async fn insert_copy_batch(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    docs: &[RawDocumentBuf],
) -> Result<CopyInsert, ClusterError> {
    match cluster
        .client
        .database(db)
        .collection::<RawDocumentBuf>(coll)
        .insert_many(docs)
        .ordered(false)
        .bypass_document_validation(true)
        .await
    {
        Ok(_) => Ok(CopyInsert::Inserted),
        Err(e) if only_duplicates(&e) => Ok(CopyInsert::Duplicates(duplicate_positions(&e))),
        Err(source) => Err(ClusterError::Command {
            side: cluster.side,
            action: format!("insert into {db}.{coll}"),
            source,
        }),
    }
}

/// Inserts documents into `db.coll` in order, stopping at the first refusal.
pub async fn insert_documents(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    docs: Vec<RawDocumentBuf>,
) -> Result<(), ClusterError> {
    cluster
        .client
        .database(db)
        .collection::<RawDocumentBuf>(coll)
        .insert_many(docs)
        .await
        .map(|_| ())
        .map_err(|source| ClusterError::Command {
            side: cluster.side,
            action: format!("insert into {db}.{coll}"),
            source,
        })
}

/// The positions in the batch of the documents refused as duplicates.
fn duplicate_positions(e: &mongodb::error::Error) -> Vec<usize> {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::InsertMany(im) => im
            .write_errors
            .as_ref()
            .map(|w| w.iter().map(|w| w.index).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// A batch whose only failures are duplicate keys (11000), with no write concern error.
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::InsertMany(im) => {
            im.write_concern_error.is_none()
                && im
                    .write_errors
                    .as_ref()
                    .is_some_and(|w| w.iter().all(|w| w.code == 11000))
        }
        _ => error_code(e) == Some(11000),
    }
}
