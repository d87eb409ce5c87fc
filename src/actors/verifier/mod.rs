//! Verifier: proves the destination holds what the source holds. Per namespace it
//! compares a digest of (document count, sum mod 2^128 of a 128-bit hash of each
//! document's raw BSON, sum of sizes) on both sides — a sum with a count notices a
//! document applied twice, raw bytes make field order and numeric types count — plus
//! index definitions and collection options. Hashing runs on a crossbeam worker pool,
//! off the actor threads.

use std::collections::{BTreeMap, HashMap};

use bson::{doc, Bson, Document};

pub mod baseline;
pub mod digest;

use self::digest::Scan;
pub use self::digest::{Digest, HashPool};

use self::baseline::{CutoverPlan, Recheck};
use super::SharedEngine;
use crate::cluster::namespaces::NamespaceKind;
use crate::cluster::{Cluster, ClusterError};
use crate::report::{Mismatch, Verification};

/// Largest collection for which a mismatch is located down to an example `_id`.
const LOCATE_LIMIT: u64 = 2_000_000;

/// What a namespace is on one side: kind, options, indexes.
#[derive(Clone, Debug, PartialEq)]
struct Shape {
    is_view: bool,
    options: Document,
    indexes: BTreeMap<String, Document>,
}

/// Index definition as compared: everything but the version and namespace.
fn comparable_index(spec: &Document, strict: bool) -> Document {
    let mut d = Document::new();
    for (k, v) in spec {
        if matches!(k.as_str(), "v" | "ns" | "background" | "prepareUnique") {
            continue;
        }
        if !strict
            && matches!(
                k.as_str(),
                "unique" | "expireAfterSeconds" | "prepareUnique"
            )
        {
            continue;
        }
        if k == "unique" && v == &Bson::Boolean(false) {
            continue;
        }
        d.insert(k.clone(), normalize_numbers(v));
    }
    d
}

/// 1, 1.0 and Int64(1) are the same index direction or TTL.
fn normalize_numbers(v: &Bson) -> Bson {
    match v {
        Bson::Int32(i) => Bson::Int64(*i as i64),
        Bson::Double(d) if d.fract() == 0.0 => Bson::Int64(*d as i64),
        Bson::Document(d) => Bson::Document(
            d.iter()
                .map(|(k, v)| (k.clone(), normalize_numbers(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

async fn shapes(
    engine: &SharedEngine,
    cluster: &Cluster,
    strict: bool,
) -> Result<BTreeMap<String, Shape>, ClusterError> {
    let mut out = BTreeMap::new();
    for namespace in crate::cluster::namespaces::in_scope(cluster, &engine.filter).await? {
        let (db, name) = (namespace.db.clone(), namespace.coll.as_str());
        if namespace.kind == NamespaceKind::TimeSeries {
            continue;
        }
        let is_view = namespace.kind == NamespaceKind::View;
        let indexes = if is_view {
            BTreeMap::new()
        } else {
            cluster
                .index_specs(&db, name)
                .await?
                .into_iter()
                .map(|i| {
                    (
                        i.get_str("name").unwrap_or_default().to_string(),
                        comparable_index(&i, strict),
                    )
                })
                .collect()
        };
        let options = namespace.options.clone();
        out.insert(
            format!("{db}.{name}"),
            Shape {
                is_view,
                options,
                indexes,
            },
        );
    }
    Ok(out)
}

/// Compares both sides. `strict` also compares unique and TTL options (after finalize).
pub async fn verify(engine: &SharedEngine, strict: bool) -> Result<Verification, ClusterError> {
    compare(engine, strict, true, None).await
}

/// The comparison at cutover: where the baseline verification covers a namespace, only
/// its differing chunks and changed documents are read again; the rest in full.
pub async fn verify_at_cutover(engine: &SharedEngine) -> Result<Verification, ClusterError> {
    let plan = if engine.config.cutover.baseline_verification {
        engine
            .baseline
            .plan(
                &engine.destination,
                engine.destination_topology.is_sharded(),
            )
            .await
    } else {
        None
    };
    match &plan {
        Some(p) => tracing::info!(
            namespaces = p.namespaces.len(),
            "verifying from the baseline: re-reading only differing chunks and changed documents"
        ),
        None => tracing::info!("verifying every document on both sides"),
    }
    compare(engine, false, true, plan.as_ref()).await
}

/// Reads a namespace's differing chunks and changed documents on both sides: the
/// documents read when all agree, `None` at the first difference.
async fn recheck(
    engine: &SharedEngine,
    db: &str,
    coll: &str,
    plan: &Recheck,
) -> Result<Option<u64>, ClusterError> {
    let mut read = 0;
    for chunk in &plan.chunks {
        let (a, b) = futures_util::try_join!(
            baseline::digest_range(&engine.source, db, coll, chunk),
            baseline::digest_range(&engine.destination, db, coll, chunk)
        )?;
        if a != b {
            return Ok(None);
        }
        read += a.count;
    }
    for ids in plan.ids.chunks(baseline::CHUNK) {
        let (a, b) = futures_util::try_join!(
            baseline::digest_ids(&engine.source, db, coll, ids),
            baseline::digest_ids(&engine.destination, db, coll, ids)
        )?;
        if a != b {
            return Ok(None);
        }
        read += a.count;
    }
    Ok(Some(read))
}

/// On two sharded sides, a collection sharded on the source and on the destination
/// with different shard keys (`config.collections.key`; `unique` too), or sharded on the
/// source and not on the destination (Ferry shards every such collection before copying
/// it, and follows `shardCollection` events). A destination may shard what the source
/// does not (`[sharding]` entries).
async fn shard_keys_differ(
    engine: &SharedEngine,
    ns: &str,
    is_view: bool,
) -> Result<Option<Mismatch>, ClusterError> {
    if is_view || !engine.source_topology.is_sharded() || !engine.destination_topology.is_sharded()
    {
        return Ok(None);
    }
    let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
    let (source, destination) = futures_util::try_join!(
        crate::cluster::ownership::sharded_collection(&engine.source, db, coll),
        crate::cluster::ownership::sharded_collection(&engine.destination, db, coll)
    )?;
    match (source, destination) {
        (Some(s), Some(d)) if s.key != d.key || s.unique != d.unique => Ok(Some(Mismatch {
            namespace: ns.to_string(),
            kind: "shard key".into(),
            detail: format!(
                "source sharded on {} (unique: {}), destination on {} (unique: {})",
                s.key, s.unique, d.key, d.unique
            ),
        })),
        (Some(s), None) => Ok(Some(Mismatch {
            namespace: ns.to_string(),
            kind: "shard key".into(),
            detail: format!(
                "source sharded on {} (unique: {}), destination not sharded",
                s.key, s.unique
            ),
        })),
        _ => Ok(None),
    }
}

/// Compares namespaces, options and index definitions only (no document scan): after
/// finalize, which changes index options but no data.
pub async fn verify_definitions(
    engine: &SharedEngine,
    strict: bool,
) -> Result<Verification, ClusterError> {
    compare(engine, strict, false, None).await
}

async fn compare(
    engine: &SharedEngine,
    strict: bool,
    documents: bool,
    plan: Option<&CutoverPlan>,
) -> Result<Verification, ClusterError> {
    let source = shapes(engine, &engine.source, strict).await?;
    let dest = shapes(engine, &engine.destination, strict).await?;
    let mut v = Verification {
        baseline_documents: plan.map_or(0, |p| p.baseline_documents),
        ..Verification::default()
    };
    let pool = HashPool::new(2);
    for (ns, s) in &source {
        v.namespaces_checked += 1;
        let Some(d) = dest.get(ns) else {
            v.mismatches.push(Mismatch {
                namespace: ns.clone(),
                kind: "missing".into(),
                detail: "exists on the source but not on the destination".into(),
            });
            continue;
        };
        if s.is_view != d.is_view || s.options != d.options {
            v.mismatches.push(Mismatch {
                namespace: ns.clone(),
                kind: "options".into(),
                detail: format!("source options {} vs destination {}", s.options, d.options),
            });
        }
        // A shard key's supporting index that Ferry created (the source had none) is
        // expected on the destination only.
        let dest_indexes: BTreeMap<String, Document> = d
            .indexes
            .iter()
            .filter(|(name, spec)| {
                s.indexes.contains_key(*name)
                    || !crate::actors::copier::destination::is_added_supporting_index(
                        &engine.config,
                        ns,
                        spec,
                    )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if s.indexes != dest_indexes {
            let only_source: Vec<&String> = s
                .indexes
                .iter()
                .filter(|(k, v)| dest_indexes.get(*k) != Some(v))
                .map(|(k, _)| k)
                .collect();
            let only_dest: Vec<&String> = dest_indexes
                .iter()
                .filter(|(k, v)| s.indexes.get(*k) != Some(v))
                .map(|(k, _)| k)
                .collect();
            v.mismatches.push(Mismatch {
                namespace: ns.clone(),
                kind: "indexes".into(),
                detail: format!(
                    "differing indexes: source {only_source:?}, destination {only_dest:?}"
                ),
            });
        }
        if let Some(mismatch) = shard_keys_differ(engine, ns, s.is_view).await? {
            v.mismatches.push(mismatch);
        }
        if s.is_view || !documents {
            continue;
        }
        let (db, coll) = ns.split_once('.').unwrap_or((ns.as_str(), ""));
        if let Some(r) = plan.and_then(|p| p.namespaces.get(ns)) {
            match recheck(engine, db, coll, r).await? {
                Some(read) => {
                    v.documents_checked += read;
                    v.namespaces_rechecked += 1;
                    continue;
                }
                None => {
                    tracing::warn!(namespace = %ns, "a changed document differs; comparing the whole namespace")
                }
            }
        }
        let (a, b) = futures_util::try_join!(
            pool.digest(&engine.source, db, coll),
            pool.digest(&engine.destination, db, coll)
        )?;
        v.documents_checked += a.count;
        if a != b {
            let kind = if a.count != b.count {
                "count"
            } else {
                "content"
            };
            let example = if a.count.max(b.count) <= LOCATE_LIMIT {
                locate(engine, db, coll)
                    .await?
                    .unwrap_or_else(|| "no single differing document found".into())
            } else {
                "collection too large to locate an example".into()
            };
            v.mismatches.push(Mismatch {
                namespace: ns.clone(),
                kind: kind.into(),
                detail: format!("source {} documents / {} bytes, destination {} documents / {} bytes; {example}", a.count, a.bytes, b.count, b.bytes),
            });
        }
    }
    for ns in dest.keys() {
        if !source.contains_key(ns) {
            v.mismatches.push(Mismatch {
                namespace: ns.clone(),
                kind: "extra".into(),
                detail: "exists on the destination but not on the source".into(),
            });
        }
    }
    v.passed = v.mismatches.is_empty();
    Ok(v)
}

async fn id_hashes(
    cluster: &Cluster,
    db: &str,
    coll: &str,
) -> Result<HashMap<Vec<u8>, (u128, String)>, ClusterError> {
    let mut scan = Scan::open(cluster, db, coll).await?;
    let mut out = HashMap::new();
    while let Some(d) = scan.next().await? {
        let id = d.get("_id").ok().flatten();
        let (key, shown) = match id {
            Some(v) => {
                let owned = v.to_raw_bson();
                let shown = Bson::try_from(owned.clone())
                    .map(|b| b.to_string())
                    .unwrap_or_default();
                let mut key = vec![v.element_type() as u8];
                key.extend_from_slice(
                    &bson::to_vec(&doc! {"v": Bson::try_from(owned).unwrap_or(Bson::Null)})
                        .unwrap_or_default(),
                );
                (key, shown)
            }
            None => (Vec::new(), "(no _id)".into()),
        };
        out.insert(key, (xxhash_rust::xxh3::xxh3_128(d.as_bytes()), shown));
    }
    Ok(out)
}

/// Finds one document that differs, for the mismatch message.
async fn locate(
    engine: &SharedEngine,
    db: &str,
    coll: &str,
) -> Result<Option<String>, ClusterError> {
    let a = id_hashes(&engine.source, db, coll).await?;
    let b = id_hashes(&engine.destination, db, coll).await?;
    for (k, (h, shown)) in &a {
        match b.get(k) {
            None => {
                return Ok(Some(format!(
                    "example: _id {shown} missing on the destination"
                )))
            }
            Some((h2, _)) if h2 != h => return Ok(Some(format!("example: _id {shown} differs"))),
            _ => {}
        }
    }
    for (k, (_, shown)) in &b {
        if !a.contains_key(k) {
            return Ok(Some(format!(
                "example: _id {shown} exists only on the destination"
            )));
        }
    }
    Ok(None)
}

/// `ferry verify --config F [--strict]`: compares both sides now and prints every
/// mismatch; exit 0 when they match. Meaningful once writes to the source have stopped.
pub fn verify_command(path: &std::path::Path, strict: bool) -> std::process::ExitCode {
    use std::process::ExitCode;
    let config = match crate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        use crate::cluster::Side;
        let source = Cluster::connect(Side::Source, &config.source.connection()).await?;
        let destination =
            Cluster::connect(Side::Destination, &config.destination.connection()).await?;
        let checkpoints = crate::checkpoint::Checkpoints::new(
            destination.clone(),
            crate::checkpoint::LeaseTerms::new(config.runtime.lease_duration()),
        );
        let engine = super::Engine::assemble(
            config.clone(),
            source,
            destination,
            checkpoints,
            crate::progress::Progress::new(),
        )
        .await
        .map_err(|e| match e {
            super::EngineError::Cluster(e) => e,
            super::EngineError::Filter(e) => ClusterError::failed(
                Side::Source,
                format!("namespace filter: {e}"),
                e.to_string(),
            ),
        })?;
        let engine = std::sync::Arc::new(engine);
        verify(&engine, strict).await
    });
    match result {
        Ok(v) if v.passed => {
            println!(
                "verification passed: {} namespaces, {} documents",
                v.namespaces_checked, v.documents_checked
            );
            ExitCode::SUCCESS
        }
        Ok(v) => {
            println!("verification FAILED: {} mismatches", v.mismatches.len());
            for m in &v.mismatches {
                println!("  {} [{}]: {}", m.namespace, m.kind, m.detail);
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", crate::cluster::describe_error(&e));
            ExitCode::FAILURE
        }
    }
}
