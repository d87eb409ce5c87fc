//! A shard key update whose document now belongs to another shard: the document leaves
//! its shard as a delete and arrives on the other as an insert, both at one cluster time.

use bson::{Bson, Document};

use crate::error::{codes, CmdResult, CommandError};

use super::{Router, Shard, ShardKeyMoveOrder};

/// Moves a document to another shard: deleted on `from`, inserted (as `new`) on `to`,
/// both logged at one cluster time; the order follows the router's
/// [`ShardKeyMoveOrder`].
pub fn move_document(
    router: &Router,
    db: &str,
    coll: &str,
    from: &Shard,
    to: &Shard,
    old: &Document,
    new: Document,
) -> CmdResult<()> {
    super::sharding_admin::clone_collection_shape(&from.server, &to.server, db, coll);
    let order = router.settings.read().shard_key_move_order;
    let id = old.get("_id").cloned().unwrap_or(Bson::Null);
    // Both shards locked in name order (no deadlock with another move), so nothing is
    // logged on either between the two writes.
    let (first, second) = if from.name < to.name {
        (&from.server, &to.server)
    } else {
        (&to.server, &from.server)
    };
    let mut a = first.storage.lock();
    let mut b = second.storage.lock();
    let (source, destination) = if from.name < to.name {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    if destination.collection(db, coll).is_some_and(|c| {
        c.docs
            .contains_key(&crate::query::order::OrdBson(id.clone()))
    }) {
        return Err(CommandError::new(
            codes::DUPLICATE_KEY,
            format!("E11000 duplicate key error collection: {db}.{coll} index: _id_ dup key: {{ _id: {id} }}"),
        ));
    }
    let ts = source.next_timestamp();
    source.pinned_time = Some(ts);
    destination.pinned_time = Some(ts);
    let result = match order {
        ShardKeyMoveOrder::DeleteFirst => {
            source.delete(db, coll, &id);
            destination.insert(db, coll, new).map(|_| ())
        }
        ShardKeyMoveOrder::InsertFirst => {
            let inserted = destination.insert(db, coll, new).map(|_| ());
            if inserted.is_ok() {
                source.delete(db, coll, &id);
            }
            inserted
        }
    };
    source.pinned_time = None;
    destination.pinned_time = None;
    drop(a);
    drop(b);
    from.server.oplog_appended.notify_waiters();
    to.server.oplog_appended.notify_waiters();
    result
}
