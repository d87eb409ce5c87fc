//! The query engine: BSON ordering, dotted paths, filters, sort, projection, update
//! operators and aggregation pipelines. Pure functions over `bson` values, no I/O.

// `CommandError` is the crate-wide error type (defined in `error.rs`); boxing it here alone
// would make this module's signatures differ from every other handler's.
#![allow(clippy::result_large_err)]

pub mod aggregate;
pub mod array_filters;
pub mod expr;
pub mod matcher;
mod numeric;
pub mod order;
pub mod path;
pub mod projection;
pub mod sort;
pub mod update;
pub mod update_log;
mod write_path;

pub use aggregate::run_pipeline;
pub use array_filters::ArrayFilters;
pub use matcher::Matcher;
pub use order::{compare, type_rank, values_equal, OrdBson};
pub use path::{get_path, lookup_values};
pub use projection::Projection;
pub use sort::SortSpec;
pub use update::{upsert_seed, UpdateSpec};
pub use update_log::{diff, UpdateDescription, UpdateLog};
