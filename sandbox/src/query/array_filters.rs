//! `arrayFilters`: the conditions that the filtered positional operator `$[<identifier>]`
//! selects array elements with, parsed and checked against the update's paths as the
//! server does before it touches any document.

use bson::{Bson, Document};

use super::matcher::Matcher;
use crate::error::{CmdResult, CommandError};

/// The parsed `arrayFilters` of one update statement, by identifier.
#[derive(Clone, Debug, Default)]
pub struct ArrayFilters {
    filters: Vec<(String, Matcher)>,
}

impl ArrayFilters {
    /// No filters (an update without `arrayFilters`).
    pub fn none() -> ArrayFilters {
        ArrayFilters::default()
    }

    /// Parses the `arrayFilters` argument: each filter is a query whose top-level fields
    /// all start with one identifier (`{x: {$gt: 1}}`, `{"x.a": 1, "x.b": 2}`).
    pub fn parse(arg: Option<&Bson>) -> CmdResult<ArrayFilters> {
        let items = match arg {
            None => return Ok(ArrayFilters::none()),
            Some(Bson::Array(items)) => items,
            Some(other) => {
                return Err(CommandError::type_mismatch(format!(
                    "BSON field 'arrayFilters' is the wrong type '{}', expected type 'array'",
                    super::matcher::type_name(other)
                )))
            }
        };
        let mut filters: Vec<(String, Matcher)> = Vec::with_capacity(items.len());
        for item in items {
            let Bson::Document(filter) = item else {
                return Err(CommandError::type_mismatch(format!(
                    "Each array filter must be an object, found {item}"
                )));
            };
            let id = identifier(filter)?;
            if filters.iter().any(|(other, _)| *other == id) {
                return Err(CommandError::failed_to_parse(format!(
                    "Found multiple array filters with the same top-level field name {id}"
                )));
            }
            filters.push((id, Matcher::new(filter)?));
        }
        Ok(ArrayFilters { filters })
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// The filter for `$[id]`; `path` names the update path in the error.
    pub(crate) fn get(&self, id: &str, path: &str) -> CmdResult<&Matcher> {
        self.filters
            .iter()
            .find(|(name, _)| name == id)
            .map(|(_, m)| m)
            .ok_or_else(|| {
                CommandError::bad_value(format!(
                    "No array filter found for identifier '{id}' in path '{path}'"
                ))
            })
    }

    /// Whether the element matches the filter named `id` (the filter sees the element
    /// under the identifier's name).
    pub(crate) fn element_matches(matcher: &Matcher, id: &str, element: &Bson) -> bool {
        let mut probe = Document::new();
        probe.insert(id, element.clone());
        matcher.matches(&probe)
    }

    /// Checks that every `$[id]` in `paths` has a filter and every filter is used;
    /// `update` is shown in the "not used" error as the server shows it.
    pub fn check_usage<'a>(
        &self,
        paths: impl Iterator<Item = &'a str>,
        update: &Document,
    ) -> CmdResult<()> {
        let mut used: Vec<&str> = Vec::new();
        for path in paths {
            for part in path.split('.') {
                if let Some(id) = filtered_identifier(part) {
                    self.get(id, path)?;
                    used.push(id);
                }
            }
        }
        for (id, _) in &self.filters {
            if !used.contains(&id.as_str()) {
                return Err(CommandError::failed_to_parse(format!(
                    "The array filter for identifier '{id}' was not used in the update {update}"
                )));
            }
        }
        Ok(())
    }
}

/// The identifier of a `$[<identifier>]` path component (not of `$[]`).
pub(crate) fn filtered_identifier(part: &str) -> Option<&str> {
    part.strip_prefix("$[")
        .and_then(|rest| rest.strip_suffix(']'))
        .filter(|id| !id.is_empty())
}

/// The one identifier a filter's top-level fields start with.
fn identifier(filter: &Document) -> CmdResult<String> {
    let mut found: Option<&str> = None;
    for key in filter.keys() {
        let id = key.split('.').next().unwrap_or(key);
        match found {
            None => found = Some(id),
            Some(prev) if prev == id => {}
            Some(prev) => {
                return Err(CommandError::failed_to_parse(format!(
                    "Error parsing array filter :: caused by :: Expected a single top-level field name, found '{prev}' and '{id}'"
                )))
            }
        }
    }
    let Some(id) = found else {
        return Err(CommandError::failed_to_parse(
            "Cannot use an expression without a top-level field name in arrayFilters",
        ));
    };
    let valid = id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && id.chars().all(|c| c.is_ascii_alphanumeric());
    if !valid {
        return Err(CommandError::bad_value(format!(
            "Error parsing array filter :: caused by :: The top-level field name must be an alphanumeric string beginning with a lowercase letter, found '{id}'"
        )));
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{bson, doc};

    #[test]
    fn filters_parse_and_reject_bad_identifiers() {
        let f = ArrayFilters::parse(Some(&bson!([{"x": {"$gt": 1}}, {"y.a": 1, "y.b": 2}])))
            .expect("parse");
        let x = f.get("x", "a.$[x]").expect("x");
        assert!(ArrayFilters::element_matches(x, "x", &Bson::Int32(2)));
        assert!(!ArrayFilters::element_matches(x, "x", &Bson::Int32(1)));
        let code = |v: Bson| ArrayFilters::parse(Some(&v)).expect_err("bad").code;
        assert_eq!(code(bson!([{"X": 1}])), 2);
        assert_eq!(code(bson!([{"x": 1, "y": 1}])), 9);
        assert_eq!(code(bson!([{"x": 1}, {"x": 2}])), 9);
        assert_eq!(code(bson!([{}])), 9);
        let err = f
            .check_usage(["a.$[x]"].into_iter(), &doc! {"$set": {"a.$[x]": 1}})
            .expect_err("y unused");
        assert_eq!(err.code, 9);
        assert!(
            err.errmsg.contains("identifier 'y' was not used"),
            "{}",
            err.errmsg
        );
        let err = ArrayFilters::none()
            .check_usage(["a.$[z].b"].into_iter(), &doc! {})
            .expect_err("no filter");
        assert_eq!(
            (err.code, err.errmsg.as_str()),
            (
                2,
                "No array filter found for identifier 'z' in path 'a.$[z].b'"
            )
        );
    }
}
