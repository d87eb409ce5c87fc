//! The `failCommand` fail point, as a real `mongod` started with test commands enabled
//! offers it: `configureFailPoint: "failCommand"` with `mode` (`"alwaysOn"`, `"off"`,
//! `{times: n}`, `{skip: n}`) and `data` (`failCommands`, `errorCode`, `errorLabels`,
//! `writeConcernError`, `namespace`; `closeConnection` and `blockConnection` are not
//! offered). Tests use it to fail one named command at
//! the exact moment that matters (an election during `appendOplogNote`, a write concern
//! error on a destination write) instead of racing a timer against the code under test.

use bson::{Bson, Document};
use parking_lot::Mutex;

use crate::error::{CmdResult, CommandError};

/// What a configured `failCommand` does to a command it matches.
#[derive(Clone, Debug, Default)]
struct FailCommand {
    commands: Vec<String>,
    /// Only commands on this namespace (`db.coll`), when given.
    namespace: Option<String>,
    /// Commands still to fail (`None`: until turned off).
    times: Option<u64>,
    /// Matching commands to let through before failing.
    skip: u64,
    error_code: Option<i32>,
    error_labels: Option<Vec<String>>,
    write_concern_error: Option<Document>,
}

/// How a matched command fails.
#[derive(Debug)]
pub enum Injected {
    /// Reply with this error.
    Error(CommandError),
    /// Run the command, then add this `writeConcernError` to its reply.
    WriteConcernError(Document),
}

/// The server's fail points (only `failCommand` exists here).
#[derive(Debug, Default)]
pub struct FailPoints {
    fail_command: Mutex<Option<FailCommand>>,
    /// Commands the fail point has failed since the server started (the reply's `count`).
    entered: std::sync::atomic::AtomicU64,
}

impl FailPoints {
    /// `configureFailPoint`: the reply's `count` is how many commands the fail point has
    /// failed so far, so a test can assert that its fault fired.
    pub fn configure(&self, cmd: &Document) -> CmdResult<Document> {
        let name = cmd.get_str("configureFailPoint").map_err(|_| {
            CommandError::bad_value("configureFailPoint needs the fail point's name")
        })?;
        if name != "failCommand" {
            return Err(CommandError::bad_value(format!(
                "Cannot find failpoint named {name}"
            )));
        }
        let mut point = FailCommand::default();
        match cmd.get("mode") {
            Some(Bson::String(m)) if m == "off" => {
                *self.fail_command.lock() = None;
                return Ok(self.count());
            }
            Some(Bson::String(m)) if m == "alwaysOn" => {}
            Some(Bson::Document(m)) => {
                if let Some(n) = m.get("times").and_then(as_count) {
                    point.times = Some(n);
                } else if let Some(n) = m.get("skip").and_then(as_count) {
                    point.skip = n;
                } else {
                    return Err(CommandError::failed_to_parse(
                        "mode must be 'alwaysOn', 'off', {times: n} or {skip: n}",
                    ));
                }
            }
            _ => {
                return Err(CommandError::failed_to_parse(
                    "mode must be 'alwaysOn', 'off', {times: n} or {skip: n}",
                ))
            }
        }
        let data = cmd.get_document("data").map_err(|_| {
            CommandError::failed_to_parse("failCommand needs data: {failCommands: [...]}")
        })?;
        point.commands = data
            .get_array("failCommands")
            .map_err(|_| CommandError::failed_to_parse("data.failCommands must be an array"))?
            .iter()
            .filter_map(|c| c.as_str().map(String::from))
            .collect();
        point.namespace = data.get_str("namespace").ok().map(String::from);
        point.error_code = data.get("errorCode").and_then(as_count).map(|c| c as i32);
        point.error_labels = data.get_array("errorLabels").ok().map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect()
        });
        point.write_concern_error = data.get_document("writeConcernError").ok().cloned();
        if point.error_code.is_none() && point.write_concern_error.is_none() {
            return Err(CommandError::failed_to_parse(
                "failCommand needs errorCode or writeConcernError (closeConnection and blockConnection are not offered by the sandbox)",
            ));
        }
        *self.fail_command.lock() = Some(point);
        Ok(self.count())
    }

    fn count(&self) -> Document {
        let n = self.entered.load(std::sync::atomic::Ordering::SeqCst);
        bson::doc! {"count": n as i64}
    }

    /// Whether the fail point takes this command (on namespace `ns`), and how it fails it.
    pub fn check(&self, command: &str, ns: &str) -> Option<Injected> {
        let mut guard = self.fail_command.lock();
        let point = guard.as_mut()?;
        if !point.commands.iter().any(|c| c == command)
            || point.namespace.as_deref().is_some_and(|n| n != ns)
        {
            return None;
        }
        if point.skip > 0 {
            point.skip -= 1;
            return None;
        }
        let injected = if let Some(code) = point.error_code {
            let mut e = CommandError::new(
                code,
                format!("Failing command {command} via 'failCommand' failpoint"),
            );
            if let Some(labels) = &point.error_labels {
                for l in labels {
                    e = e.with_label(l);
                }
            }
            Injected::Error(e)
        } else {
            Injected::WriteConcernError(point.write_concern_error.clone().unwrap_or_default())
        };
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(times) = point.times.as_mut() {
            *times -= 1;
            if *times == 0 {
                *guard = None;
            }
        }
        Some(injected)
    }
}

fn as_count(v: &Bson) -> Option<u64> {
    match v {
        Bson::Int32(n) if *n >= 0 => Some(*n as u64),
        Bson::Int64(n) if *n >= 0 => Some(*n as u64),
        Bson::Double(f) if *f >= 0.0 => Some(*f as u64),
        _ => None,
    }
}
