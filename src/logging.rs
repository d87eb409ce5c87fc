//! Log output: lowercase prose with structured fields, text or JSON, to stderr.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; `RUST_LOG` overrides `level`.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},mongodb=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
