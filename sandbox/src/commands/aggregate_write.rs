//! The aggregation stages that write: `$out` and `$merge`, as the last stage of an
//! `aggregate` on a replica set member.
//!
//! `$out` writes like the real 6.0/7.0 server: into a temporary collection
//! `tmp.agg_out.<uuid>` of the target database, created with the target's options and
//! indexes, then renamed over the target (`dropTarget`). A change stream therefore sees a
//! create, the index builds and the inserts on the temporary collection, then a rename
//! that replaces the target. `$merge` writes document by document into the target:
//! inserts, replacements or updates, each its own event.

use bson::{doc, Bson, Document};

use crate::auth::roles::Action;
use crate::dispatch::Ctx;
use crate::error::{codes, CmdResult, CommandError};
use crate::query::order::OrdBson;
use crate::query::update_log::pipeline_log;
use crate::query::UpdateLog;

/// Whether a pipeline ends with a stage that writes (`$out` or `$merge`).
pub fn writing_stage(pipeline: &[Document]) -> Option<&Document> {
    pipeline
        .last()
        .filter(|s| s.contains_key("$out") || s.contains_key("$merge"))
}

/// Refuses a writing stage anywhere but last, as the server does.
pub fn check_placement(pipeline: &[Document]) -> CmdResult<()> {
    let len = pipeline.len();
    for (i, stage) in pipeline.iter().enumerate() {
        for name in ["$out", "$merge"] {
            if stage.contains_key(name) && i + 1 != len {
                return Err(CommandError::new(
                    40601,
                    format!("{name} can only be the final stage in the pipeline"),
                ));
            }
        }
    }
    Ok(())
}

/// Writes the pipeline's result `docs` as the final stage `stage` says.
pub fn write(ctx: &mut Ctx<'_>, stage: &Document, docs: Vec<Document>) -> CmdResult<()> {
    if let Some(spec) = stage.get("$out") {
        let (db, coll) = target(ctx, spec, "$out")?;
        return out(ctx, &db, &coll, docs);
    }
    let spec = stage.get("$merge").cloned().unwrap_or(Bson::Null);
    merge(ctx, &spec, docs)
}

/// `"coll"` or `{db, coll}` -> (db, coll) in the command's database by default.
fn target(ctx: &Ctx<'_>, spec: &Bson, stage: &str) -> CmdResult<(String, String)> {
    match spec {
        Bson::String(coll) => Ok((ctx.db.clone(), coll.clone())),
        Bson::Document(d) => {
            let db = d.get_str("db").unwrap_or(&ctx.db).to_string();
            let coll = d.get_str("coll").map_err(|_| {
                CommandError::new(
                    codes::FAILED_TO_PARSE,
                    format!("{stage} requires a 'coll' string naming the target collection"),
                )
            })?;
            Ok((db, coll.to_string()))
        }
        _ => Err(CommandError::new(
            codes::FAILED_TO_PARSE,
            format!("{stage} only supports a string or object argument"),
        )),
    }
}

fn require_writes(ctx: &Ctx<'_>, db: &str, coll: &str) -> CmdResult<()> {
    ctx.require(Action::Insert, db, coll)?;
    ctx.require(Action::Remove, db, coll)
}

/// `$out`: fill a temporary collection shaped like the target, then rename it over the
/// target. A duplicate `_id` fails the stage and leaves the target as it was.
fn out(ctx: &mut Ctx<'_>, db: &str, coll: &str, docs: Vec<Document>) -> CmdResult<()> {
    require_writes(ctx, db, coll)?;
    ctx.require(Action::CreateCollection, db, coll)?;
    let mut storage = ctx.storage();
    let (options, indexes) = match storage.collection(db, coll) {
        Some(c) if c.is_view() => {
            return Err(CommandError::new(
                codes::COMMAND_NOT_SUPPORTED_ON_VIEW,
                format!("Cannot write the results of $out to a view: {db}.{coll}"),
            ))
        }
        Some(c) => (
            c.options.clone(),
            c.indexes
                .iter()
                .filter(|i| i.name != "_id_")
                .map(|i| {
                    let mut spec = i.spec.clone();
                    spec.remove("v");
                    spec.remove("ns");
                    spec
                })
                .collect::<Vec<_>>(),
        ),
        None => (Document::new(), Vec::new()),
    };
    if options.contains_key("capped") {
        return Err(CommandError::new(
            17152,
            format!("namespace '{db}.{coll}' is capped so it can't be used for $out"),
        ));
    }
    let temp = format!(
        "tmp.agg_out.{}",
        uuid_text(&crate::storage::new_uuid().bytes)
    );
    storage.create_collection(db, &temp, options)?;
    let filled = (|| {
        if !indexes.is_empty() {
            storage.create_indexes(db, &temp, indexes)?;
        }
        for d in docs {
            storage.insert(db, &temp, d)?;
        }
        storage.rename_collection((db, &temp), (db, coll), true)
    })();
    if filled.is_err() {
        storage.drop_collection(db, &temp);
    }
    filled
}

/// A UUID's canonical text (8-4-4-4-12 hex digits), as the server names `$out`'s
/// temporary collection.
fn uuid_text(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// What `$merge` does with a result document that matches / does not match one in the
/// target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WhenMatched {
    Replace,
    KeepExisting,
    Merge,
    Fail,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WhenNotMatched {
    Insert,
    Discard,
    Fail,
}

fn merge(ctx: &mut Ctx<'_>, spec: &Bson, docs: Vec<Document>) -> CmdResult<()> {
    let (into, on, matched, not_matched) = match spec {
        Bson::String(_) => (
            target(ctx, spec, "$merge")?,
            vec!["_id".to_string()],
            WhenMatched::Merge,
            WhenNotMatched::Insert,
        ),
        Bson::Document(d) => {
            let into = target(ctx, d.get("into").unwrap_or(&Bson::Null), "$merge 'into'")?;
            let on = match d.get("on") {
                None => vec!["_id".to_string()],
                Some(Bson::String(f)) => vec![f.clone()],
                Some(Bson::Array(fields)) => fields
                    .iter()
                    .map(|f| f.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        CommandError::new(51134, "$merge 'on' array elements must be strings")
                    })?,
                Some(_) => {
                    return Err(CommandError::new(
                        51186,
                        "$merge 'on' field must be either a string or an array of strings",
                    ))
                }
            };
            let matched = match d.get("whenMatched") {
                None => WhenMatched::Merge,
                Some(Bson::String(s)) => match s.as_str() {
                    "replace" => WhenMatched::Replace,
                    "keepExisting" => WhenMatched::KeepExisting,
                    "merge" => WhenMatched::Merge,
                    "fail" => WhenMatched::Fail,
                    other => {
                        return Err(CommandError::new(
                            codes::BAD_VALUE,
                            format!("Enumeration value '{other}' for field 'whenMatched' is not a valid value."),
                        ))
                    }
                },
                Some(Bson::Array(_)) => {
                    return Err(CommandError::new(
                        115,
                        "$merge with a whenMatched pipeline is not implemented by ferry-sandbox",
                    ))
                }
                Some(_) => {
                    return Err(CommandError::new(
                        51191,
                        "$merge 'whenMatched' must be a string or an array",
                    ))
                }
            };
            let not_matched = match d.get_str("whenNotMatched").unwrap_or("insert") {
                "insert" => WhenNotMatched::Insert,
                "discard" => WhenNotMatched::Discard,
                "fail" => WhenNotMatched::Fail,
                other => {
                    return Err(CommandError::new(
                        codes::BAD_VALUE,
                        format!("Enumeration value '{other}' for field 'whenNotMatched' is not a valid value."),
                    ))
                }
            };
            (into, on, matched, not_matched)
        }
        _ => {
            return Err(CommandError::new(
                codes::FAILED_TO_PARSE,
                "$merge only supports a string or object argument",
            ))
        }
    };
    let (db, coll) = into;
    require_writes(ctx, &db, &coll)?;
    ctx.require(Action::Update, &db, &coll)?;
    let mut storage = ctx.storage();
    if on != ["_id"] {
        let supported = storage.collection(&db, &coll).is_some_and(|c| {
            c.indexes.iter().any(|i| {
                i.unique && i.key.len() == on.len() && on.iter().all(|f| i.key.contains_key(f))
            })
        });
        if !supported {
            return Err(CommandError::new(
                51183,
                "Cannot find index to verify that join fields will be unique",
            ));
        }
    }
    for d in docs {
        let mut key = Document::new();
        for field in &on {
            match crate::query::path::get_path(&d, field) {
                Some(v) if !matches!(v, Bson::Array(_)) => {
                    key.insert(field.clone(), v.clone());
                }
                _ => {
                    return Err(CommandError::new(
                        51132,
                        format!("$merge write error: 'on' field '{field}' cannot be missing, null, undefined or an array"),
                    ))
                }
            }
        }
        let existing = storage.collection(&db, &coll).and_then(|c| {
            c.docs
                .values()
                .find(|e| {
                    on.iter().all(|f| {
                        crate::query::path::get_path(e, f).is_some_and(|v| {
                            OrdBson(v.clone()) == OrdBson(key.get(f).cloned().unwrap_or(Bson::Null))
                        })
                    })
                })
                .map(|e| (**e).clone())
        });
        match existing {
            None => match not_matched {
                WhenNotMatched::Insert => {
                    storage.insert(&db, &coll, d)?;
                }
                WhenNotMatched::Discard => {}
                WhenNotMatched::Fail => {
                    return Err(CommandError::new(
                        13113,
                        "$merge could not find a matching document in the target collection for at least one document in the source collection",
                    ))
                }
            },
            Some(before) => {
                let id = before.get("_id").cloned().unwrap_or(Bson::Null);
                let (after, log) = match matched {
                    WhenMatched::KeepExisting => continue,
                    WhenMatched::Fail => {
                        return Err(CommandError::new(
                            codes::DUPLICATE_KEY,
                            format!("$merge failed: E11000 duplicate key error collection: {db}.{coll} dup key: {key}"),
                        ))
                    }
                    WhenMatched::Replace => {
                        let mut after = doc! {"_id": id.clone()};
                        after.extend(d.into_iter().filter(|(k, _)| k != "_id"));
                        (after, UpdateLog::Replacement)
                    }
                    WhenMatched::Merge => {
                        let mut after = before.clone();
                        for (k, v) in d {
                            if k != "_id" {
                                after.insert(k, v);
                            }
                        }
                        let log = pipeline_log(&before, &after);
                        (after, log)
                    }
                };
                storage.update(&db, &coll, &id, after, log)?;
            }
        }
    }
    Ok(())
}
