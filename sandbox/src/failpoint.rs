//! The server's test fail points, as a real `mongod` started with test commands enabled
//! offers them, configured with `configureFailPoint: <name>` and `mode` (`"alwaysOn"`,
//! `"off"`, `{times: n}`, `{skip: n}`):
//! - `failCommand` with `data` (`failCommands`, `errorCode`, `errorLabels`,
//!   `writeConcernError`, `namespace`, `closeConnection`, `blockConnection` +
//!   `blockTimeMS`): fails, delays or cuts the connection of named commands;
//! - `failGetMoreAfterCursorCheckout` with `data.errorCode`: a getMore fails after it has
//!   taken its cursor, so the server's own error labels (ResumableChangeStreamError)
//!   apply, unlike `failCommand`, whose error carries only the labels it is given;
//! - `maxTimeAlwaysTimeOut`: every command with `maxTimeMS` fails with 50
//!   MaxTimeMSExpired.
//!
//! Tests use them to fail one named command at the exact moment that matters (an election
//! during `appendOplogNote`, a write concern error on a destination write, a dropped
//! connection under a change stream) instead of racing a timer against the code under test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bson::{Bson, Document};
use parking_lot::Mutex;

use crate::error::{codes, CmdResult, CommandError};

/// When a configured fail point fires: `times` left (None: until turned off), after
/// letting `skip` matching commands through.
#[derive(Clone, Copy, Debug, Default)]
struct Trigger {
    times: Option<u64>,
    skip: u64,
}

impl Trigger {
    /// Parses `mode`; `None` is `"off"`.
    fn parse(mode: Option<&Bson>) -> CmdResult<Option<Trigger>> {
        let bad = || {
            CommandError::failed_to_parse("mode must be 'alwaysOn', 'off', {times: n} or {skip: n}")
        };
        match mode {
            Some(Bson::String(m)) if m == "off" => Ok(None),
            Some(Bson::String(m)) if m == "alwaysOn" => Ok(Some(Trigger::default())),
            Some(Bson::Document(m)) => {
                if let Some(n) = m.get("times").and_then(as_count) {
                    Ok((n > 0).then_some(Trigger {
                        times: Some(n),
                        skip: 0,
                    }))
                } else if let Some(n) = m.get("skip").and_then(as_count) {
                    Ok(Some(Trigger {
                        times: None,
                        skip: n,
                    }))
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        }
    }

    /// Counts one matching command: whether the fail point fires on it, and whether it
    /// is spent afterwards.
    fn fire(&mut self) -> (bool, bool) {
        if self.skip > 0 {
            self.skip -= 1;
            return (false, false);
        }
        match self.times.as_mut() {
            Some(times) => {
                *times -= 1;
                (true, *times == 0)
            }
            None => (true, false),
        }
    }
}

/// What a configured `failCommand` does to a command it matches.
#[derive(Clone, Debug, Default)]
struct FailCommand {
    trigger: Trigger,
    commands: Vec<String>,
    /// Only commands on this namespace (`db.coll`), when given.
    namespace: Option<String>,
    error_code: Option<i32>,
    error_labels: Option<Vec<String>>,
    write_concern_error: Option<Document>,
    close_connection: bool,
    block: Option<Duration>,
}

/// How a matched command fails.
#[derive(Debug)]
pub enum Injected {
    /// Reply with this error.
    Error(CommandError),
    /// Run the command, then add this `writeConcernError` to its reply.
    WriteConcernError(Document),
    /// Close the connection without replying (a network error to the client).
    CloseConnection,
    /// Hold the command this long, then run it (or apply `then`).
    Block(Duration, Option<Box<Injected>>),
}

/// `failGetMoreAfterCursorCheckout`: the error code and when it fires.
#[derive(Clone, Copy, Debug)]
struct FailGetMore {
    trigger: Trigger,
    error_code: i32,
}

/// The server's fail points.
#[derive(Debug, Default)]
pub struct FailPoints {
    fail_command: Mutex<Option<FailCommand>>,
    fail_get_more: Mutex<Option<FailGetMore>>,
    max_time_always_time_out: Mutex<Option<Trigger>>,
    /// Commands the fail points have acted on since the server started (the reply's
    /// `count`), so a test can assert that its fault fired.
    entered: AtomicU64,
}

impl FailPoints {
    /// `configureFailPoint`: the reply's `count` is how many commands the fail points
    /// have acted on so far.
    pub fn configure(&self, cmd: &Document) -> CmdResult<Document> {
        let name = cmd.get_str("configureFailPoint").map_err(|_| {
            CommandError::bad_value("configureFailPoint needs the fail point's name")
        })?;
        let trigger = Trigger::parse(cmd.get("mode"))?;
        match name {
            "failCommand" => {
                *self.fail_command.lock() = match trigger {
                    Some(trigger) => Some(parse_fail_command(cmd, trigger)?),
                    None => None,
                };
            }
            "failGetMoreAfterCursorCheckout" => {
                *self.fail_get_more.lock() = match trigger {
                    Some(trigger) => {
                        let error_code = cmd
                            .get_document("data")
                            .ok()
                            .and_then(|d| d.get("errorCode"))
                            .and_then(as_count)
                            .ok_or_else(|| {
                                CommandError::failed_to_parse(
                                    "failGetMoreAfterCursorCheckout needs data: {errorCode: <code>}",
                                )
                            })?;
                        Some(FailGetMore {
                            trigger,
                            error_code: error_code as i32,
                        })
                    }
                    None => None,
                };
            }
            "maxTimeAlwaysTimeOut" => *self.max_time_always_time_out.lock() = trigger,
            other => {
                return Err(CommandError::bad_value(format!(
                    "Cannot find failpoint named {other}"
                )))
            }
        }
        Ok(self.count())
    }

    fn count(&self) -> Document {
        bson::doc! {"count": self.entered() as i64}
    }

    /// How many commands the fail points have acted on since the server started.
    pub fn entered(&self) -> u64 {
        self.entered.load(Ordering::SeqCst)
    }

    /// Whether a fail point takes this command (on namespace `ns`), and how it fails it.
    pub fn check(&self, command: &str, ns: &str, cmd: &Document) -> Option<Injected> {
        if let Some(expired) = self.check_max_time(command, cmd) {
            return Some(Injected::Error(expired));
        }
        let mut guard = self.fail_command.lock();
        let point = guard.as_mut()?;
        if !point.commands.iter().any(|c| c == command)
            || point.namespace.as_deref().is_some_and(|n| n != ns)
        {
            return None;
        }
        let (fires, spent) = point.trigger.fire();
        if !fires {
            return None;
        }
        let outcome = if point.close_connection {
            Some(Injected::CloseConnection)
        } else if let Some(code) = point.error_code {
            let mut e = CommandError::new(
                code,
                format!("Failing command {command} via 'failCommand' failpoint"),
            );
            for l in point.error_labels.iter().flatten() {
                e = e.with_label(l);
            }
            Some(Injected::Error(e))
        } else {
            point
                .write_concern_error
                .clone()
                .map(Injected::WriteConcernError)
        };
        let injected = match point.block {
            Some(period) => Injected::Block(period, outcome.map(Box::new)),
            None => outcome?,
        };
        self.entered.fetch_add(1, Ordering::SeqCst);
        if spent {
            *guard = None;
        }
        Some(injected)
    }

    /// `maxTimeAlwaysTimeOut`: a command with `maxTimeMS` fails as if its time ran out;
    /// so does every getMore (the sandbox's cursors do not remember the time limit of the
    /// command that opened them, so it takes each getMore as having one).
    fn check_max_time(&self, command: &str, cmd: &Document) -> Option<CommandError> {
        if !cmd.contains_key("maxTimeMS") && command != "getMore" {
            return None;
        }
        let mut guard = self.max_time_always_time_out.lock();
        let (fires, spent) = guard.as_mut()?.fire();
        if spent {
            *guard = None;
        }
        fires.then(|| {
            self.entered.fetch_add(1, Ordering::SeqCst);
            CommandError::new(codes::MAX_TIME_MS_EXPIRED, "operation exceeded time limit")
        })
    }

    /// `failGetMoreAfterCursorCheckout`: the error a getMore that has taken its cursor
    /// fails with, if the fail point fires.
    pub fn check_get_more(&self) -> Option<CommandError> {
        let mut guard = self.fail_get_more.lock();
        let point = guard.as_mut()?;
        let (fires, spent) = point.trigger.fire();
        let code = point.error_code;
        if spent {
            *guard = None;
        }
        fires.then(|| {
            self.entered.fetch_add(1, Ordering::SeqCst);
            CommandError::new(
                code,
                "Failing getMore via 'failGetMoreAfterCursorCheckout' failpoint",
            )
        })
    }
}

fn parse_fail_command(cmd: &Document, trigger: Trigger) -> CmdResult<FailCommand> {
    let data = cmd.get_document("data").map_err(|_| {
        CommandError::failed_to_parse("failCommand needs data: {failCommands: [...]}")
    })?;
    let commands = data
        .get_array("failCommands")
        .map_err(|_| CommandError::failed_to_parse("data.failCommands must be an array"))?
        .iter()
        .filter_map(|c| c.as_str().map(String::from))
        .collect();
    let block = if data.get_bool("blockConnection").unwrap_or(false) {
        let ms = data.get("blockTimeMS").and_then(as_count).ok_or_else(|| {
            CommandError::failed_to_parse("failCommand with blockConnection needs data.blockTimeMS")
        })?;
        Some(Duration::from_millis(ms))
    } else {
        None
    };
    let point = FailCommand {
        trigger,
        commands,
        namespace: data.get_str("namespace").ok().map(String::from),
        error_code: data.get("errorCode").and_then(as_count).map(|c| c as i32),
        error_labels: data.get_array("errorLabels").ok().map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect()
        }),
        write_concern_error: data.get_document("writeConcernError").ok().cloned(),
        close_connection: data.get_bool("closeConnection").unwrap_or(false),
        block,
    };
    if point.error_code.is_none()
        && point.write_concern_error.is_none()
        && !point.close_connection
        && point.block.is_none()
    {
        return Err(CommandError::failed_to_parse(
            "failCommand needs errorCode, writeConcernError, closeConnection or blockConnection in data",
        ));
    }
    Ok(point)
}

fn as_count(v: &Bson) -> Option<u64> {
    match v {
        Bson::Int32(n) if *n >= 0 => Some(*n as u64),
        Bson::Int64(n) if *n >= 0 => Some(*n as u64),
        Bson::Double(f) if *f >= 0.0 => Some(*f as u64),
        _ => None,
    }
}

/// The namespace of a command as failCommand's `namespace` matches it: `db.coll` for a
/// command naming its collection (a getMore names it in `collection`), else the database.
pub fn command_namespace(db: &str, name: &str, cmd: &Document) -> String {
    match (cmd.get(name), cmd.get_str("collection")) {
        (Some(Bson::String(coll)), _) => format!("{db}.{coll}"),
        (_, Ok(coll)) if name == "getMore" => format!("{db}.{coll}"),
        _ => db.to_string(),
    }
}
