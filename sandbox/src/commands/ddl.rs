//! Collection and index DDL: create, drop, dropDatabase, renameCollection, collMod,
//! createIndexes, dropIndexes, listCollections, listIndexes.

use bson::{doc, Bson, Document};

use crate::auth::roles::Action;
use crate::commands::read::cursor_reply;
use crate::dispatch::Ctx;
use crate::error::{codes, CmdResult, CommandError};
use crate::query::matcher::Matcher;
use crate::storage::split_ns;

/// Fields every command may carry that are not options of the command itself.
const GENERIC_ARGUMENTS: &[&str] = &[
    "$db",
    "lsid",
    "txnNumber",
    "$clusterTime",
    "$readPreference",
    "writeConcern",
    "readConcern",
    "comment",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "maxTimeMS",
    "autocommit",
    "startTransaction",
    "$audit",
    "$client",
    "bypassDocumentValidation",
];

/// The command's own options: everything but its name and the generic arguments.
pub fn command_options(cmd: &Document, name: &str) -> Document {
    cmd.iter()
        .filter(|(k, _)| k.as_str() != name && !GENERIC_ARGUMENTS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub fn create(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    let options = command_options(ctx.cmd, "create");
    for (k, _) in &options {
        if !matches!(
            k.as_str(),
            "capped"
                | "size"
                | "max"
                | "validator"
                | "validationLevel"
                | "validationAction"
                | "collation"
                | "viewOn"
                | "pipeline"
                | "changeStreamPreAndPostImages"
                | "timeseries"
                | "clusteredIndex"
                | "expireAfterSeconds"
                | "storageEngine"
                | "indexOptionDefaults"
                | "idIndex"
                | "encryptedFields"
                | "autoIndexId"
        ) {
            return Err(CommandError::new(
                40415,
                format!("BSON field 'create.{k}' is an unknown field."),
            ));
        }
    }
    if options.get_bool("capped").unwrap_or(false) && !options.contains_key("size") {
        return Err(CommandError::new(
            codes::INVALID_OPTIONS,
            "the 'size' field is required when 'capped' is true",
        ));
    }
    if let Ok(v) = options.get_document("validator") {
        Matcher::new(v)?;
    }
    if let Some(view_on) = options.get("viewOn") {
        if !matches!(view_on, Bson::String(_)) {
            return Err(CommandError::type_mismatch(
                "'viewOn' option must be a string",
            ));
        }
    }
    ctx.server
        .storage
        .lock()
        .create_collection(&ctx.db, &coll, options)?;
    Ok(doc! {})
}

pub fn drop(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    let mut storage = ctx.server.storage.lock();
    let n_indexes = storage
        .collection(&ctx.db, &coll)
        .map(|c| c.indexes.len() as i32);
    if !storage.drop_collection(&ctx.db, &coll) {
        if ctx.server.version_parts().0 < 7 {
            return Err(CommandError::ns_not_found("ns not found"));
        }
        return Ok(doc! {});
    }
    Ok(doc! {"ns": ctx.ns(&coll), "nIndexesWas": n_indexes.unwrap_or(0)})
}

pub fn drop_database(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    if matches!(ctx.db.as_str(), "admin" | "local" | "config") {
        return Err(CommandError::new(
            codes::ILLEGAL_OPERATION,
            format!("Dropping the '{}' database is prohibited.", ctx.db),
        ));
    }
    let dropped = ctx.server.storage.lock().drop_database(&ctx.db);
    Ok(if dropped {
        doc! {"dropped": ctx.db.clone()}
    } else {
        doc! {}
    })
}

pub fn rename_collection(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    if ctx.db != "admin" {
        return Err(CommandError::unauthorized(
            "renameCollection may only be run against the admin database.",
        ));
    }
    let from = ctx
        .cmd
        .get_str("renameCollection")
        .map_err(|_| CommandError::type_mismatch("renameCollection must be a string"))?;
    let to = ctx
        .cmd
        .get_str("to")
        .map_err(|_| CommandError::type_mismatch("'to' must be a string"))?;
    let (from_db, from_coll) = split_ns(from);
    let (to_db, to_coll) = split_ns(to);
    if from_db == to_db {
        ctx.require(Action::RenameCollectionSameDb, from_db, from_coll)?;
    } else {
        ctx.require(Action::Find, from_db, from_coll)?;
        ctx.require(Action::DropCollection, from_db, from_coll)?;
        ctx.require(Action::Insert, to_db, to_coll)?;
        ctx.require(Action::CreateCollection, to_db, to_coll)?;
    }
    if from == to {
        return Err(CommandError::new(
            codes::ILLEGAL_OPERATION,
            "Can't rename a collection to itself",
        ));
    }
    let drop_target = ctx.cmd.get_bool("dropTarget").unwrap_or(false);
    let mut storage = ctx.server.storage.lock();
    if storage
        .collection(from_db, from_coll)
        .is_some_and(|c| c.is_view())
    {
        // Views cannot be renamed (a real server answers 166 CommandNotSupportedOnView).
        return Err(CommandError::new(
            codes::COMMAND_NOT_SUPPORTED_ON_VIEW,
            format!("cannot rename view {from}: drop it and create it again under the new name"),
        ));
    }
    storage.rename_collection((from_db, from_coll), (to_db, to_coll), drop_target)?;
    Ok(doc! {})
}

pub fn coll_mod(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    let options = command_options(ctx.cmd, "collMod");
    ctx.server
        .storage
        .lock()
        .coll_mod(&ctx.db, &coll, options)?;
    Ok(doc! {})
}

pub fn create_indexes(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    let specs: Vec<Document> = ctx
        .cmd
        .get_array("indexes")
        .map_err(|_| CommandError::type_mismatch("'indexes' must be an array"))?
        .iter()
        .map(|v| {
            v.as_document()
                .cloned()
                .ok_or_else(|| CommandError::type_mismatch("each index must be a document"))
        })
        .collect::<CmdResult<_>>()?;
    if specs.is_empty() {
        return Err(CommandError::bad_value(
            "Must specify at least one index to create",
        ));
    }
    for spec in &specs {
        if !spec.contains_key("name") {
            return Err(CommandError::failed_to_parse("Error in specification: the 'name' field is a required property of an index specification"));
        }
    }
    let mut storage = ctx.server.storage.lock();
    let existed = storage.collection(&ctx.db, &coll).map(|c| c.indexes.len());
    let created = storage.create_indexes(&ctx.db, &coll, specs)?;
    let before = existed.unwrap_or(1) as i32;
    let mut reply = doc! {
        "numIndexesBefore": before,
        "numIndexesAfter": before + created as i32,
        "createdCollectionAutomatically": existed.is_none(),
    };
    if created == 0 {
        reply.insert("note", "all indexes already exist");
    }
    Ok(reply)
}

pub fn drop_indexes(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    let mut storage = ctx.server.storage.lock();
    let c = storage
        .collection(&ctx.db, &coll)
        .ok_or_else(|| CommandError::ns_not_found(format!("ns not found {}", ctx.ns(&coll))))?;
    let was = c.indexes.len() as i32;
    let names: Vec<String> = match ctx.cmd.get("index") {
        Some(Bson::String(s)) => vec![s.clone()],
        Some(Bson::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        Some(Bson::Document(key)) => match c.indexes.iter().find(|i| &i.key == key) {
            Some(i) => vec![i.name.clone()],
            None => {
                return Err(CommandError::new(
                    codes::INDEX_NOT_FOUND,
                    format!("can't find index with key: {key}"),
                ))
            }
        },
        _ => {
            return Err(CommandError::type_mismatch(
                "'index' must be a string, array or document",
            ))
        }
    };
    storage.drop_indexes(&ctx.db, &coll, &names)?;
    Ok(doc! {"nIndexesWas": was})
}

pub fn list_collections(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let name_only = ctx.cmd.get_bool("nameOnly").unwrap_or(false);
    let filter = match ctx.cmd.get_document("filter") {
        Ok(f) => Some(Matcher::new(f)?),
        Err(_) => None,
    };
    let mut out = Vec::new();
    {
        let storage = ctx.server.storage.lock();
        if let Some(db) = storage.dbs.get(&ctx.db) {
            for (name, c) in &db.collections {
                let entry = if c.is_view() {
                    doc! {"name": name.clone(), "type": "view", "options": c.options.clone(), "info": {"readOnly": true}}
                } else if c.options.contains_key("timeseries") {
                    // A time-series collection is listed as its own type, without a
                    // UUID or an `_id` index (those belong to its buckets collection,
                    // which the sandbox does not model).
                    doc! {"name": name.clone(), "type": "timeseries", "options": c.options.clone(), "info": {"readOnly": false}}
                } else {
                    let id_index = c.index("_id_").map(|i| i.spec.clone()).unwrap_or_default();
                    doc! {"name": name.clone(), "type": "collection", "options": c.options.clone(),
                    "info": {"readOnly": false, "uuid": c.uuid.clone()}, "idIndex": id_index}
                };
                if filter.as_ref().is_some_and(|m| !m.matches(&entry)) {
                    continue;
                }
                out.push(if name_only { doc! {"name": name.clone(), "type": entry.get_str("type").unwrap_or("collection")} } else { entry });
            }
        }
    }
    if ctx.db == "local" && !out.iter().any(|d| d.get_str("name") == Ok("oplog.rs")) {
        out.push(doc! {"name": "oplog.rs", "type": "collection", "options": {"capped": true, "size": 1_073_741_824i64}, "info": {"readOnly": false}});
    }
    let batch = ctx
        .cmd
        .get_document("cursor")
        .ok()
        .and_then(|c| c.get("batchSize"))
        .and_then(as_usize);
    let ns = format!("{}.$cmd.listCollections", ctx.db);
    Ok(cursor_reply(ctx, ns, out, batch))
}

pub fn list_indexes(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    let specs: Vec<Document> = {
        let storage = ctx.server.storage.lock();
        let c = storage.collection(&ctx.db, &coll).ok_or_else(|| {
            CommandError::ns_not_found(format!("ns does not exist: {}", ctx.ns(&coll)))
        })?;
        if c.is_view() {
            return Err(CommandError::new(
                codes::COMMAND_NOT_SUPPORTED_ON_VIEW,
                format!("Namespace {} is a view, not a collection", ctx.ns(&coll)),
            ));
        }
        c.indexes.iter().map(|i| i.spec.clone()).collect()
    };
    let batch = ctx
        .cmd
        .get_document("cursor")
        .ok()
        .and_then(|c| c.get("batchSize"))
        .and_then(as_usize);
    let ns = ctx.ns(&coll);
    Ok(cursor_reply(ctx, ns, specs, batch))
}

pub fn as_usize(v: &Bson) -> Option<usize> {
    match v {
        Bson::Int32(i) if *i >= 0 => Some(*i as usize),
        Bson::Int64(i) if *i >= 0 => Some(*i as usize),
        Bson::Double(d) if *d >= 0.0 => Some(*d as usize),
        _ => None,
    }
}
