//! Applier: one actor per namespace applying change events in stream order, idempotently.
//! insert/replace/update -> replace-by-key with upsert (update events carry the looked-up
//! document), delete -> delete by key. DDL events are applied by [`apply_ddl`] at a
//! barrier, when every applier is idle.

use std::time::Instant;

use actix::prelude::*;
use bson::{doc, Bson, Document};

use super::SharedEngine;
use crate::cluster::ClusterError;

/// Largest write command Ferry sends: below the 16 MiB BSON limit with headroom.
const MAX_COMMAND_BYTES: usize = 8 * 1024 * 1024;
/// Most statements in one write command (the server allows 100k).
const MAX_STATEMENTS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("destination: {command} on {ns} reported write errors: {detail}")]
    WriteErrors {
        command: &'static str,
        ns: String,
        detail: String,
    },
    #[error("change event without {field} on {ns}: {event}")]
    Malformed {
        ns: String,
        field: &'static str,
        event: String,
    },
}

impl ApplyError {
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Cluster(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Events of one namespace, in stream order. Replies with how many were applied.
#[derive(Message)]
#[rtype(result = "Result<u64, ApplyError>")]
pub struct ApplyEvents(pub Vec<Document>);

pub struct Applier {
    engine: SharedEngine,
    db: String,
    coll: String,
}

impl Applier {
    pub fn new(engine: SharedEngine, db: String, coll: String) -> Applier {
        Applier { engine, db, coll }
    }
}

impl Actor for Applier {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.engine.config.runtime.mailbox_capacity.max(1));
    }
}

impl Handler<ApplyEvents> for Applier {
    type Result = AtomicResponse<Self, Result<u64, ApplyError>>;
    fn handle(&mut self, msg: ApplyEvents, _ctx: &mut Self::Context) -> Self::Result {
        let engine = self.engine.clone();
        let (db, coll) = (self.db.clone(), self.coll.clone());
        AtomicResponse::new(Box::pin(
            async move { apply_events(&engine, &db, &coll, msg.0).await }.into_actor(self),
        ))
    }
}

/// A write statement of one kind; consecutive statements of a kind go in one command.
enum Statement {
    Upsert(Document),
    Delete(Document),
}

fn statement_of(ns: &str, event: &Document) -> Result<Option<Statement>, ApplyError> {
    let malformed = |field| ApplyError::Malformed {
        ns: ns.to_string(),
        field,
        event: short(event),
    };
    let op = event
        .get_str("operationType")
        .map_err(|_| malformed("operationType"))?;
    let key = event
        .get_document("documentKey")
        .map_err(|_| malformed("documentKey"))?;
    match op {
        "insert" | "replace" | "update" => match event.get("fullDocument") {
            Some(Bson::Document(full)) => Ok(Some(Statement::Upsert(
                doc! {"q": key.clone(), "u": full.clone(), "upsert": true},
            ))),
            // The document is gone by the time of the lookup; its delete event follows.
            _ if op == "update" => Ok(None),
            _ => Err(malformed("fullDocument")),
        },
        "delete" => Ok(Some(Statement::Delete(doc! {"q": key.clone(), "limit": 1}))),
        _ => Ok(None),
    }
}

fn short(event: &Document) -> String {
    let mut s = event.to_string();
    s.truncate(300);
    s
}

/// Applies CRUD events of one namespace in order. Returns how many events were applied.
pub async fn apply_events(
    engine: &SharedEngine,
    db: &str,
    coll: &str,
    events: Vec<Document>,
) -> Result<u64, ApplyError> {
    let ns = format!("{db}.{coll}");
    let started = Instant::now();
    let count = events.len() as u64;
    let mut run: Vec<Document> = Vec::new();
    let mut run_is_delete = false;
    let mut run_bytes = 0usize;
    for event in &events {
        let Some(stmt) = statement_of(&ns, event)? else {
            continue;
        };
        let (is_delete, body) = match stmt {
            Statement::Upsert(d) => (false, d),
            Statement::Delete(d) => (true, d),
        };
        let size = bson::to_vec(&body).map(|v| v.len()).unwrap_or(0);
        if !run.is_empty()
            && (is_delete != run_is_delete
                || run.len() >= MAX_STATEMENTS
                || run_bytes + size > MAX_COMMAND_BYTES)
        {
            flush(
                engine,
                db,
                coll,
                &ns,
                std::mem::take(&mut run),
                run_is_delete,
            )
            .await?;
            run_bytes = 0;
        }
        run_is_delete = is_delete;
        run_bytes += size;
        run.push(body);
    }
    if !run.is_empty() {
        flush(engine, db, coll, &ns, run, run_is_delete).await?;
    }
    crate::metrics::record_batch("apply", started.elapsed().as_secs_f64());
    crate::metrics::record_applied(&ns, count);
    Ok(count)
}

async fn flush(
    engine: &SharedEngine,
    db: &str,
    coll: &str,
    ns: &str,
    statements: Vec<Document>,
    delete: bool,
) -> Result<(), ApplyError> {
    let (command, field) = if delete {
        ("delete", "deletes")
    } else {
        ("update", "updates")
    };
    let mut cmd = doc! {command: coll, field: statements, "ordered": true};
    if !delete {
        cmd.insert("bypassDocumentValidation", true);
    }
    let reply = engine.destination.run(db, cmd).await?;
    if let Ok(errors) = reply.get_array("writeErrors") {
        if !errors.is_empty() {
            let detail = errors
                .iter()
                .take(3)
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ApplyError::WriteErrors {
                command,
                ns: ns.to_string(),
                detail,
            });
        }
    }
    Ok(())
}

/// Whether an event is DDL (applied at a barrier rather than by an applier).
pub fn is_ddl(operation_type: &str) -> bool {
    matches!(
        operation_type,
        "create"
            | "drop"
            | "rename"
            | "dropDatabase"
            | "createIndexes"
            | "dropIndexes"
            | "modify"
            | "shardCollection"
    )
}

/// Index definition as created during copy and sync: unique and TTL are applied at
/// finalize, because the destination passes through states the source never had
/// (documents copied at different times) and must not refuse or expire them.
pub fn relaxed_index(spec: &Document) -> Document {
    let mut d = Document::new();
    for (k, v) in spec {
        match k.as_str() {
            "v" | "ns" | "unique" | "expireAfterSeconds" | "prepareUnique" | "background" => {}
            _ => {
                d.insert(k.clone(), v.clone());
            }
        }
    }
    d
}

/// Applies one DDL event to the destination; replays after a restart are harmless.
pub async fn apply_ddl(engine: &SharedEngine, event: &Document) -> Result<(), ApplyError> {
    let dest = &engine.destination;
    let op = event.get_str("operationType").unwrap_or_default();
    let ns = event.get_document("ns").cloned().unwrap_or_default();
    let db = ns.get_str("db").unwrap_or_default().to_string();
    let coll = ns.get_str("coll").unwrap_or_default().to_string();
    let desc = event
        .get_document("operationDescription")
        .cloned()
        .unwrap_or_default();
    let ignore = |codes: &'static [i32]| {
        move |r: Result<Document, ClusterError>| match r {
            Ok(_) => Ok(()),
            Err(e) if e.code().is_some_and(|c| codes.contains(&c)) => Ok(()),
            Err(e) => Err(ApplyError::from(e)),
        }
    };
    tracing::info!(op, db = %db, coll = %coll, "applying ddl");
    match op {
        "create" => {
            let mut cmd = doc! {"create": &coll};
            for (k, v) in &desc {
                if k != "idIndex" {
                    cmd.insert(k.clone(), v.clone());
                }
            }
            ignore(&[48])(dest.run(&db, cmd).await)
        }
        "drop" => ignore(&[26])(dest.run(&db, doc! {"drop": &coll}).await),
        "dropDatabase" => ignore(&[26])(dest.run(&db, doc! {"dropDatabase": 1}).await),
        "rename" => {
            let to = event.get_document("to").cloned().unwrap_or_default();
            let target = format!(
                "{}.{}",
                to.get_str("db").unwrap_or_default(),
                to.get_str("coll").unwrap_or_default()
            );
            let target_allowed = engine.filter.allows(
                to.get_str("db").unwrap_or_default(),
                to.get_str("coll").unwrap_or_default(),
            );
            if !target_allowed {
                return ignore(&[26])(dest.run(&db, doc! {"drop": &coll}).await);
            }
            ignore(&[26])(
                dest.run("admin", doc! {"renameCollection": format!("{db}.{coll}"), "to": target, "dropTarget": true}).await,
            )
        }
        "createIndexes" => {
            let indexes: Vec<Bson> = desc
                .get_array("indexes")
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.as_document())
                        .map(|i| Bson::Document(relaxed_index(i)))
                        .collect()
                })
                .unwrap_or_default();
            if indexes.is_empty() {
                return Ok(());
            }
            ignore(&[85, 86])(
                dest.run(&db, doc! {"createIndexes": &coll, "indexes": indexes})
                    .await,
            )
        }
        "dropIndexes" => {
            let names: Vec<Bson> = desc
                .get_array("indexes")
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.as_document())
                        .filter_map(|i| i.get_str("name").ok())
                        .map(|n| Bson::String(n.into()))
                        .collect()
                })
                .unwrap_or_default();
            for name in names {
                ignore(&[26, 27])(
                    dest.run(&db, doc! {"dropIndexes": &coll, "index": name})
                        .await,
                )?;
            }
            Ok(())
        }
        "modify" => {
            let mut cmd = doc! {"collMod": &coll};
            for (k, v) in &desc {
                if k == "index" {
                    // Unique and TTL settings are made effective at finalize.
                    let mut index = v.as_document().cloned().unwrap_or_default();
                    index.remove("unique");
                    index.remove("expireAfterSeconds");
                    index.remove("prepareUnique");
                    if index.keys().all(|k| k == "name" || k == "keyPattern") {
                        continue;
                    }
                    cmd.insert("index", index);
                } else {
                    cmd.insert(k.clone(), v.clone());
                }
            }
            if cmd.len() == 1 {
                return Ok(());
            }
            ignore(&[26])(dest.run(&db, cmd).await)
        }
        _ => Ok(()),
    }
}
