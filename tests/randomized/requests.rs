//! How the workload sends commands: as an application does, retrying while the server
//! is between primaries or a connection was dropped, and counting write errors of an
//! ok reply as a failed op.

use std::time::{Duration, Instant};

use bson::Document;
use mongodb::Client;

/// How long a command is retried while the server is stepped down or unreachable.
const RETRY_FOR: Duration = Duration::from_secs(20);

fn state_change(code: Option<i32>) -> bool {
    matches!(code, Some(10107 | 13435 | 11602 | 189 | 91 | 11600))
}

/// Runs a command, retrying while the server is between primaries or the connection
/// was dropped (a fault), as an application would.
pub async fn command(client: &Client, db: &str, cmd: Document) -> mongodb::error::Result<Document> {
    if super::trace() {
        let text: String = cmd.to_string().chars().take(300).collect();
        eprintln!("randomized: trace: {db}: {text}");
    }
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match client.database(db).run_command(cmd.clone()).await {
            Err(e)
                if Instant::now() < deadline
                    && (state_change(ferry::cluster::error_code(&e))
                        || matches!(*e.kind, mongodb::error::ErrorKind::Io(_))
                        || e.contains_label("RetryableWriteError")) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// A write command; write errors in an ok reply (duplicate key, type mismatch) count as
/// a failed op.
pub async fn write(client: &Client, db: &str, cmd: Document) -> Result<(), String> {
    let reply = command(client, db, cmd).await.map_err(|e| e.to_string())?;
    match reply.get_array("writeErrors") {
        Ok(errors) if !errors.is_empty() => Err(format!("{errors:?}")),
        _ => Ok(()),
    }
}
