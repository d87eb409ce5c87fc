//! The records Ferry keeps in a deployment (the destination's `__ferry` database: the
//! lease, the run's state, the copy plan and its ranges): small documents read and
//! written one at a time. Each operation names what it was for (`action`), which the
//! error then says.

use bson::Document;
use futures_util::TryStreamExt;

use super::{Cluster, ClusterError};

/// One collection of records.
pub struct Records<'a> {
    cluster: &'a Cluster,
    collection: mongodb::Collection<Document>,
}

/// Whether an update found the record it was meant for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Updated {
    Matched,
    /// No record matched the filter (and none was inserted).
    NoMatch,
    /// No record matched; one was inserted.
    Inserted,
}

impl<'a> Records<'a> {
    /// The collection `coll` of database `db`.
    pub fn of(cluster: &'a Cluster, db: &str, coll: &str) -> Records<'a> {
        Records {
            cluster,
            collection: cluster.client.database(db).collection(coll),
        }
    }

    fn err(&self, action: &str) -> impl FnOnce(mongodb::error::Error) -> ClusterError {
        let side = self.cluster.side;
        let action = action.to_string();
        move |source| ClusterError::Command {
            side,
            action,
            source,
        }
    }

    /// The record matching `filter`, if any.
    pub async fn find_one(
        &self,
        filter: Document,
        action: &str,
    ) -> Result<Option<Document>, ClusterError> {
        self.collection
            .find_one(filter)
            .await
            .map_err(self.err(action))
    }

    /// Every record matching `filter`, in `sort` order when given.
    pub async fn find_all(
        &self,
        filter: Document,
        sort: Option<Document>,
        action: &str,
    ) -> Result<Vec<Document>, ClusterError> {
        let mut find = self.collection.find(filter);
        if let Some(sort) = sort {
            find = find.sort(sort);
        }
        let cursor = find.await.map_err(self.err(action))?;
        cursor.try_collect().await.map_err(self.err(action))
    }

    /// Applies `update` to the record matching `filter`; with `upsert`, inserts one when
    /// none matches (a duplicate key then means another writer's record holds the `_id`).
    pub async fn update_one(
        &self,
        filter: Document,
        update: Document,
        upsert: bool,
        action: &str,
    ) -> Result<Updated, ClusterError> {
        let result = self
            .collection
            .update_one(filter, update)
            .upsert(upsert)
            .await
            .map_err(self.err(action))?;
        Ok(if result.matched_count > 0 {
            Updated::Matched
        } else if result.upserted_id.is_some() {
            Updated::Inserted
        } else {
            Updated::NoMatch
        })
    }

    /// Replaces the record matching `filter` with `record`, inserting it when none does.
    pub async fn put(
        &self,
        filter: Document,
        record: Document,
        action: &str,
    ) -> Result<(), ClusterError> {
        self.collection
            .replace_one(filter, record)
            .upsert(true)
            .await
            .map(|_| ())
            .map_err(self.err(action))
    }

    /// Deletes the record matching `filter`, if there is one.
    pub async fn delete_one(&self, filter: Document, action: &str) -> Result<(), ClusterError> {
        self.collection
            .delete_one(filter)
            .await
            .map(|_| ())
            .map_err(self.err(action))
    }

    /// Deletes every record matching `filter`.
    pub async fn delete_all(&self, filter: Document, action: &str) -> Result<(), ClusterError> {
        self.collection
            .delete_many(filter)
            .await
            .map(|_| ())
            .map_err(self.err(action))
    }

    /// Drops the collection (a missing one is no error).
    pub async fn drop_all(&self, action: &str) -> Result<(), ClusterError> {
        self.collection.drop().await.map_err(self.err(action))
    }
}
