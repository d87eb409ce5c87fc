//! Text index definitions as the server stores them. A key such as `{title: "text"}` is
//! kept as `{_fts: "text", _ftsx: 1}` with the text fields moved into `weights`, and the
//! defaults (`default_language`, `language_override`, `textIndexVersion`) written out, so
//! listIndexes reports what a real server reports, and a definition read from a real
//! server's listIndexes (already in that form) is stored unchanged.

use bson::{Bson, Document};

/// Default language of a text index without `default_language`.
const DEFAULT_LANGUAGE: &str = "english";
/// Field naming a document's own language when the index sets no `language_override`.
const LANGUAGE_OVERRIDE: &str = "language";
/// The text index version servers since 3.2 build.
const TEXT_INDEX_VERSION: i32 = 3;

/// The stored form of an index spec: unchanged unless its key has `"text"` fields.
pub fn normalize(spec: Document) -> Document {
    let Ok(key) = spec.get_document("key") else {
        return spec;
    };
    let is_text = |v: &Bson| matches!(v, Bson::String(s) if s == "text");
    if !key.values().any(is_text) {
        return spec;
    }
    let mut weights = spec.get_document("weights").cloned().unwrap_or_default();
    let mut stored_key = Document::new();
    for (field, dir) in key {
        // Already in stored form (a definition read from listIndexes).
        if field == "_ftsx" {
            continue;
        }
        if field == "_fts" {
            stored_key.insert("_fts", "text");
            stored_key.insert("_ftsx", 1);
            continue;
        }
        if is_text(dir) {
            if !stored_key.contains_key("_fts") {
                stored_key.insert("_fts", "text");
                stored_key.insert("_ftsx", 1);
            }
            if !weights.contains_key(field) {
                weights.insert(field.clone(), 1);
            }
        } else {
            stored_key.insert(field.clone(), dir.clone());
        }
    }
    let mut out = Document::new();
    for (k, v) in &spec {
        match k.as_str() {
            "key" => {
                out.insert("key", stored_key.clone());
            }
            "weights" => {}
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out.insert("weights", weights);
    if !out.contains_key("default_language") {
        out.insert("default_language", DEFAULT_LANGUAGE);
    }
    if !out.contains_key("language_override") {
        out.insert("language_override", LANGUAGE_OVERRIDE);
    }
    if !out.contains_key("textIndexVersion") {
        out.insert("textIndexVersion", TEXT_INDEX_VERSION);
    }
    out
}
