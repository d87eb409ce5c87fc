//! Collections renamed between the start time and the copy plan: the plan names each
//! collection as the start time did, so the copy lands where the change stream's first
//! events find it and the replayed renames move it (a collection planned under its newer
//! name was overwritten by the replayed rename).

use std::time::{Duration, Instant};

use bson::{doc, Bson, Document, Timestamp};

use super::CopyError;
use crate::actors::SharedEngine;
use crate::checkpoint::{CopyRange, PlannedNamespace};
use crate::cluster::streams::{self, StreamOptions, StreamStart};
use crate::cluster::ClusterError;

/// How long the plan waits for the source's change stream to reach the time the plan
/// was made (moments on a healthy deployment; longer means the stream is stuck, and the
/// copy is retried from the start of planning).
const RENAMES_WAIT: Duration = Duration::from_secs(120);

/// The rename events of the source's change stream from `start` until after the plan
/// listed the collections, oldest first.
pub(super) async fn renames_since(
    engine: &SharedEngine,
    start: Timestamp,
) -> Result<Vec<Document>, CopyError> {
    let source = &engine.source;
    let failed = |e: ClusterError| {
        if e.is_history_lost() {
            return CopyError::HistoryLost(e);
        }
        CopyError::Documents(e.during("read the renames since the start time"))
    };
    let until = source.cluster_time().await?;
    let mut stream = streams::watch_deployment(
        source,
        StreamOptions {
            pipeline: vec![doc! {"$match": {"operationType": "rename"}}],
            expanded_events: true,
            ..StreamOptions::from(StreamStart::At(start), Duration::from_millis(500))
        },
    )
    .await
    .map_err(failed)?;
    let order = |ts: Timestamp| (ts.time, ts.increment);
    let deadline = Instant::now() + RENAMES_WAIT;
    let mut renames = Vec::new();
    loop {
        if let Some(event) = stream.next_if_any().await.map_err(failed)? {
            let event = Document::try_from(event.as_ref()).map_err(|e| {
                failed(ClusterError::failed(
                    source.side,
                    "read the renames since the start time",
                    format!("undecodable change event: {e}"),
                ))
            })?;
            if event
                .get_timestamp("clusterTime")
                .is_ok_and(|ts| order(ts) > order(until))
            {
                break;
            }
            renames.push(event);
            continue;
        }
        let reached = stream
            .resume_token()
            .map_err(failed)?
            .and_then(|t| streams::token_timestamp(&t))
            .is_some_and(|ts| order(ts) >= order(until));
        if reached {
            break;
        }
        if Instant::now() >= deadline {
            return Err(CopyError::Stalled(format!(
                "the source's change stream did not reach the copy plan's time ({until:?}) within {}s; the copy is planned again (if this repeats, check that the source's majority commit point advances: a lagging secondary holds it back)",
                RENAMES_WAIT.as_secs()
            )));
        }
        // An idle deployment (or shard) moves its stream on with a no-op, as the tailer's
        // idle tick does.
        source.append_noop("ferry copy plan").await?;
    }
    Ok(renames)
}

/// Names each planned collection, and its ranges, as the collection was named at the
/// start time, where the change stream's first events find it: the copy lands under that
/// name and the replayed renames move it. Planned under a newer name, a collection renamed
/// between the start time and the listing was overwritten by the replayed rename with
/// the little the replayed writes under its old name had put there.
///
/// `renames` (oldest first) are walked back: each moves the collection with the event's
/// UUID from the event's target back to its source name. A rename into another database
/// (a new collection with its own UUID) matches none. A collection found under a name
/// another one had at the start time was created since: the stream carries all of it, so
/// it leaves the plan.
pub(super) fn name_as_at_start(
    plan: &mut Vec<PlannedNamespace>,
    ranges: &mut Vec<CopyRange>,
    renames: &[Document],
) {
    for event in renames.iter().rev() {
        let Some(Bson::Binary(uuid)) = event.get("collectionUUID") else {
            continue;
        };
        let name = |field: &str| {
            let ns = event.get_document(field).ok()?;
            Some((ns.get_str("db").ok()?, ns.get_str("coll").ok()?))
        };
        let (Some((db, from)), Some((to_db, to))) = (name("ns"), name("to")) else {
            continue;
        };
        if db != to_db {
            continue;
        }
        let Some(moved) = plan
            .iter()
            .position(|p| p.uuid.as_ref() == Some(uuid) && p.db == db && p.coll == to)
        else {
            continue;
        };
        let (old_ns, new_ns) = (plan[moved].ns.clone(), format!("{db}.{from}"));
        if let Some(created) = plan.iter().position(|p| p.ns == new_ns) {
            tracing::info!(ns = %new_ns, "collection created since the start time; its change events carry all of it");
            plan.remove(created);
            ranges.retain(|r| r.ns != new_ns);
        }
        tracing::info!(ns = %old_ns, at_start = %new_ns, "collection renamed since the start time; copying it under its name then");
        for p in plan.iter_mut().filter(|p| p.ns == old_ns) {
            p.coll = from.to_string();
            p.ns = new_ns.clone();
        }
        for r in ranges.iter_mut().filter(|r| r.ns == old_ns) {
            // Range ids begin with their namespace (`ns#i`, or `ns#shard#i`).
            r.id = format!("{new_ns}{}", &r.id[old_ns.len()..]);
            r.ns = new_ns.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u8) -> bson::Binary {
        bson::Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: vec![n; 16],
        }
    }

    fn planned(coll: &str, n: u8) -> PlannedNamespace {
        PlannedNamespace {
            ns: format!("app.{coll}"),
            db: "app".into(),
            coll: coll.into(),
            is_view: false,
            options: Document::new(),
            indexes: Vec::new(),
            documents_estimated: 0,
            bytes_estimated: 0,
            uuid: Some(uuid(n)),
        }
    }

    fn range(coll: &str) -> CopyRange {
        CopyRange {
            id: format!("app.{coll}#0"),
            ns: format!("app.{coll}"),
            index: 0,
            min: None,
            max: None,
            done: false,
            last_id: None,
            documents: 0,
            bytes: 0,
            shard: String::new(),
            key: None,
        }
    }

    fn rename(from: &str, to: &str, n: u8) -> Document {
        let (from_db, from) = from.split_once('.').unwrap();
        let (to_db, to) = to.split_once('.').unwrap();
        doc! {"operationType": "rename", "collectionUUID": uuid(n),
        "ns": {"db": from_db, "coll": from}, "to": {"db": to_db, "coll": to}}
    }

    fn names(plan: &[PlannedNamespace], ranges: &[CopyRange]) -> (Vec<String>, Vec<String>) {
        (
            plan.iter()
                .map(|p| format!("{}={}", p.ns, p.coll))
                .collect(),
            ranges.iter().map(|r| r.id.clone()).collect(),
        )
    }

    /// Renames after the start time are walked back, chains and swaps included; the
    /// copy plan then names each collection as the start time did.
    #[test]
    fn the_plan_names_collections_as_at_the_start_time() {
        // At the start: 1 at a, 2 at b, 3 at c. Since: b -> tmp, a -> b, tmp -> a (a
        // swap), c -> d -> e, and a rename between databases (another UUID: no match).
        let mut plan = vec![planned("b", 1), planned("a", 2), planned("e", 3)];
        let mut ranges = vec![range("b"), range("a"), range("e")];
        let renames = [
            rename("app.b", "app.tmp", 2),
            rename("app.a", "app.b", 1),
            rename("app.tmp", "app.a", 2),
            rename("app.c", "app.d", 3),
            rename("app.d", "app.e", 3),
            rename("app.e", "other.e", 3),
        ];
        name_as_at_start(&mut plan, &mut ranges, &renames);
        assert_eq!(
            names(&plan, &ranges),
            (
                vec!["app.a=a".into(), "app.b=b".into(), "app.c=c".into()],
                vec!["app.a#0".into(), "app.b#0".into(), "app.c#0".into()],
            )
        );
    }

    /// A collection renamed back before the listing keeps its name; one created since
    /// under the old name of a renamed one leaves the plan (its events carry all of it).
    #[test]
    fn a_collection_created_since_under_an_old_name_leaves_the_plan() {
        let mut plan = vec![planned("a", 1), planned("b", 2), planned("c", 3)];
        let mut ranges = vec![range("a"), range("b"), range("c")];
        let renames = [
            rename("app.a", "app.x", 1),
            rename("app.x", "app.a", 1),
            rename("app.c", "app.b", 2),
        ];
        name_as_at_start(&mut plan, &mut ranges, &renames);
        assert_eq!(
            names(&plan, &ranges),
            (
                vec!["app.a=a".into(), "app.c=c".into()],
                vec!["app.a#0".into(), "app.c#0".into()],
            )
        );
    }
}
