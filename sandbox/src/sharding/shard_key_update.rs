//! A shard key update whose document now belongs to another shard: the document leaves
//! its shard as a delete and arrives on the other as an insert, both at one cluster time.

use bson::{Bson, Document};

use crate::error::{codes, CmdResult, CommandError};
use crate::query::matcher::Matcher;
use crate::query::update::UpdateSpec;
use crate::query::ArrayFilters;

use super::catalog::Chunk;
use super::routing::Target;
use super::{Router, Shard, ShardKeyMoveOrder};

/// The documents of `c` that `filter` matches: by `_id` when the filter pins one (one
/// lookup instead of a scan, as the server's `_id` index gives), else every document.
fn matching<'c>(
    c: &'c crate::storage::Collection,
    filter: &Document,
    matcher: &'c Matcher,
) -> Box<dyn Iterator<Item = &'c std::sync::Arc<Document>> + 'c> {
    match super::shard_key::equality_value(filter, "_id") {
        Some(id) => Box::new(
            c.docs
                .get(&crate::query::order::OrdBson(id))
                .into_iter()
                .filter(move |d| matcher.matches(d)),
        ),
        None => Box::new(c.docs.values().filter(move |d| matcher.matches(d))),
    }
}

impl Target<'_> {
    /// A multi update may not change the shard key of any document it matches (the real
    /// shards refuse it with 72 InvalidOptions); checked on every shard's owned documents
    /// before any is written.
    pub(super) fn refuse_multi_key_change(
        &self,
        filter: &Document,
        stmt: &Document,
    ) -> CmdResult<()> {
        self.refuse_key_change(
            filter,
            stmt,
            CommandError::new(
                codes::INVALID_OPTIONS,
                "Multi-update operations are not allowed when updating the shard key field.",
            ),
        )
    }

    /// A single update that names the document by `_id` but not by its full shard key may
    /// not change the shard key (the real router refuses it with 31025).
    pub(super) fn refuse_key_change_without_full_key(
        &self,
        filter: &Document,
        stmt: &Document,
    ) -> CmdResult<()> {
        self.refuse_key_change(
            filter,
            stmt,
            CommandError::new(
                31025,
                "Shard key update is not allowed without specifying the full shard key in the query",
            ),
        )
    }

    /// `refusal` when the update changes the shard key of a document it matches.
    fn refuse_key_change(
        &self,
        filter: &Document,
        stmt: &Document,
        refusal: CommandError,
    ) -> CmdResult<()> {
        let Some(update) = stmt.get("u") else {
            return Ok(());
        };
        let spec = UpdateSpec::parse(update)?;
        let filters = ArrayFilters::parse(stmt.get("arrayFilters"))?;
        let matcher = Matcher::new(filter)?;
        for shard in self.owning_shards() {
            let owned: Vec<&Chunk> = self
                .chunks
                .iter()
                .filter(|c| c.shard == shard.name)
                .collect();
            let storage = shard.server.storage.lock();
            let Some(c) = storage.collection(self.db, self.coll) else {
                continue;
            };
            for d in matching(c, filter, &matcher) {
                let key = self.entry.key.key_of(d);
                if !owned
                    .iter()
                    .any(|ch| super::shard_key::in_range(&key, &ch.min, &ch.max))
                {
                    continue;
                }
                let (new, _) = spec.apply_logged(d, filter, &filters, false)?;
                if self.entry.key.key_of(&new) != key {
                    return Err(refusal);
                }
            }
        }
        Ok(())
    }

    /// A single-document update whose result belongs to another shard: checks the rules
    /// (retryable write or transaction, full shard key equality) and moves the document
    /// as a delete plus an insert at one cluster time. Returns None when the document
    /// stays (or no document matches).
    pub(super) async fn shard_key_move(
        &self,
        shard: &Shard,
        filter: &Document,
        stmt: &Document,
    ) -> CmdResult<Option<i64>> {
        let Some(update) = stmt.get("u") else {
            return Ok(None);
        };
        let spec = UpdateSpec::parse(update)?;
        // The statement's `arrayFilters` take part in computing the new key, as on the
        // shard that applies the update.
        let filters = ArrayFilters::parse(stmt.get("arrayFilters"))?;
        let matcher = Matcher::new(filter)?;
        let (old, new) = {
            let storage = shard.server.storage.lock();
            let Some(c) = storage.collection(self.db, self.coll) else {
                return Ok(None);
            };
            let Some(old) = matching(c, filter, &matcher).next().cloned() else {
                return Ok(None);
            };
            let (new, _) = spec.apply_logged(&old, filter, &filters, false)?;
            (old, new)
        };
        let new_key = self.entry.key.key_of(&new);
        if new_key == self.entry.key.key_of(&old) {
            return Ok(None);
        }
        // Any change of the key (to a value other than null) needs a retryable write or a
        // transaction, whether or not the document changes shard.
        let to_null = self.entry.key.fields.iter().all(|f| {
            matches!(
                crate::query::path::get_path(&new, &f.path),
                None | Some(Bson::Null)
            )
        });
        if !self.retryable && !to_null {
            return Err(CommandError::new(
                codes::ILLEGAL_OPERATION,
                "Must run update to shard key field in a multi-statement transaction or with retryWrites: true.",
            ));
        }
        let destination = self.shard_of_key(&new_key)?;
        if destination.name == shard.name {
            return Ok(None);
        }
        move_document(
            self.router,
            self.db,
            self.coll,
            shard,
            &destination,
            &old,
            new,
        )?;
        Ok(Some(1))
    }
}

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
