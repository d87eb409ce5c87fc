//! Driver errors, classified in one place: which side and action failed, whether trying
//! again may succeed, what a server refusal means ([`Refusal`]), and how an operator
//! should read it.

use bson::doc;
use bson::Document;

use super::Side;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{side}: invalid connection string {uri}")]
    Uri {
        side: Side,
        uri: String,
        #[source]
        source: mongodb::error::Error,
    },
    #[error("{side}: {action} failed")]
    Command {
        side: Side,
        action: String,
        #[source]
        source: mongodb::error::Error,
    },
}

/// What a refused command means, by the server's error code: the refusals Ferry expects
/// and handles (most make a replayed command a no-op).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 26 NamespaceNotFound: the collection or database is not there.
    NamespaceMissing,
    /// 48 NamespaceExists: a collection or view of that name is there already.
    NamespaceExists,
    /// 85 IndexOptionsConflict, 86 IndexKeySpecsConflict: an index of that name or key
    /// is there with other options.
    IndexConflict,
    /// 27 IndexNotFound: no index of that name.
    IndexMissing,
    /// 11000 DuplicateKey: a document with that unique key is there already.
    DuplicateKey,
    /// 370 CannotDropShardKeyIndex: the last index the collection's shard key can use.
    ShardKeyIndex,
}

impl Refusal {
    fn of_code(code: i32) -> Option<Refusal> {
        Some(match code {
            26 => Refusal::NamespaceMissing,
            48 => Refusal::NamespaceExists,
            85 | 86 => Refusal::IndexConflict,
            27 => Refusal::IndexMissing,
            11000 => Refusal::DuplicateKey,
            370 => Refusal::ShardKeyIndex,
            _ => return None,
        })
    }
}

impl ClusterError {
    /// What the refusal means, when the server refused the command with a code Ferry
    /// handles.
    pub fn refusal(&self) -> Option<Refusal> {
        self.code().and_then(Refusal::of_code)
    }

    /// Whether the server refused the command for this reason.
    pub fn is(&self, refusal: Refusal) -> bool {
        self.refusal() == Some(refusal)
    }

    /// Whether the server refused the command for one of these reasons.
    pub fn is_any(&self, refusals: &[Refusal]) -> bool {
        self.refusal().is_some_and(|r| refusals.contains(&r))
    }

    pub fn side(&self) -> Side {
        match self {
            ClusterError::Uri { side, .. } | ClusterError::Command { side, .. } => *side,
        }
    }
    /// The server error code, when the failure was a command error.
    pub fn code(&self) -> Option<i32> {
        match self {
            ClusterError::Command { source, .. } => error_code(source),
            ClusterError::Uri { .. } => None,
        }
    }
    /// Whether trying again later may succeed (network trouble, elections, timeouts).
    pub fn is_transient(&self) -> bool {
        match self {
            ClusterError::Command { source, .. } => is_transient(source),
            ClusterError::Uri { .. } => false,
        }
    }

    /// A failure Ferry found in a reply (not one the driver reported), for `action` on
    /// `side`.
    pub fn failed(side: Side, action: impl Into<String>, message: impl Into<String>) -> Self {
        ClusterError::Command {
            side,
            action: action.into(),
            source: mongodb::error::Error::custom(message.into()),
        }
    }

    /// The same failure, said to be of another action (the context the caller knows).
    pub fn during(self, action: impl Into<String>) -> Self {
        match self {
            ClusterError::Command { side, source, .. } => ClusterError::Command {
                side,
                action: action.into(),
                source,
            },
            uri @ ClusterError::Uri { .. } => uri,
        }
    }

    /// A write refused because a document with that unique key (11000 DuplicateKey) is
    /// there already.
    pub fn is_duplicate_key(&self) -> bool {
        self.is(Refusal::DuplicateKey)
    }

    /// The collection a cursor read was renamed or dropped under it (175 QueryPlanKilled,
    /// 26 NamespaceNotFound): reading again finds it by UUID, or finds it gone.
    pub fn is_collection_moved(&self) -> bool {
        self.code() == Some(175) || self.is(Refusal::NamespaceMissing)
    }

    /// A change stream's history is gone (286 ChangeStreamHistoryLost, or 280
    /// ChangeStreamFatalError labelled not resumable): the stream cannot go on from where
    /// it was, and the migration must start over.
    pub fn is_history_lost(&self) -> bool {
        match self {
            ClusterError::Command { source, .. } => is_history_lost(source),
            ClusterError::Uri { .. } => false,
        }
    }

    /// The credentials were refused (18 AuthenticationFailed, or the driver's own
    /// authentication failure).
    pub fn is_auth_failure(&self) -> bool {
        if self.code() == Some(18) {
            return true;
        }
        match self {
            ClusterError::Command { source, .. } => matches!(
                source.kind.as_ref(),
                mongodb::error::ErrorKind::Authentication { .. }
            ),
            ClusterError::Uri { .. } => false,
        }
    }

    /// What the server (or the driver) said, without side or action: see
    /// [`short_error`].
    pub fn server_message(&self) -> String {
        match self {
            ClusterError::Command { source, .. } | ClusterError::Uri { source, .. } => {
                short_error(source)
            }
        }
    }
}

/// See [`ClusterError::is_history_lost`].
fn is_history_lost(e: &mongodb::error::Error) -> bool {
    error_code(e) == Some(286)
        || e.contains_label("NonResumableChangeStreamError") && error_code(e) == Some(280)
}

/// The `writeConcernError` of a successful command reply, as the driver error it stands
/// for (so it is classified like the same failure of a CRUD write).
pub fn write_concern_failure(reply: &Document) -> Option<mongodb::error::Error> {
    use mongodb::error::{ErrorKind, WriteFailure};
    let wce = reply.get_document("writeConcernError").ok()?;
    let mut wce = wce.clone();
    if !wce.contains_key("errorLabels") {
        if let Ok(labels) = reply.get_array("errorLabels") {
            wce.insert("errorLabels", labels.clone());
        }
    }
    let parsed = bson::from_document(wce.clone())
        .ok()
        .or_else(|| bson::from_document(doc! {"code": 64, "errmsg": format!("{wce}")}).ok());
    Some(match parsed {
        Some(parsed) => ErrorKind::Write(WriteFailure::WriteConcernError(parsed)).into(),
        None => mongodb::error::Error::custom(format!("writeConcernError {wce}")),
    })
}

/// The server's error code of a driver error, if it carries one.
pub fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(im) => im
            .write_errors
            .as_ref()
            .and_then(|w| w.first())
            .map(|w| w.code),
        _ => None,
    }
}

/// Server error codes worth retrying after a pause: network trouble, elections,
/// shutdowns, interrupted or timed-out operations, and a write concern not satisfied in
/// time (64 WriteConcernFailed: Ferry's writes are idempotent, so sending them again is
/// safe).
pub fn is_transient_code(code: i32) -> bool {
    matches!(
        code,
        6 | 7 | 43 | 50 | 64 | 89 | 91 | 189 | 262 | 9001 | 10107 | 11600 | 11602 | 13435 | 13436
    )
}

/// A `writeConcernError` of a command reply: transient when its code is (a stepdown or
/// shutdown before the write reached a majority, a wtimeout) or it is labelled
/// retryable. Others (100 UnsatisfiableWriteConcern, ...) need the operator.
pub fn write_concern_error_is_transient(wce: &bson::Document) -> bool {
    let retryable_label = wce
        .get_array("errorLabels")
        .is_ok_and(|l| l.iter().any(|l| l.as_str() == Some("RetryableWriteError")));
    retryable_label || wce.get_i32("code").is_ok_and(is_transient_code)
}

/// Network errors, elections and shutdowns: worth retrying after a pause.
pub fn is_transient(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    if e.contains_label("RetryableWriteError") || e.contains_label("ResumableChangeStreamError") {
        return true;
    }
    // A retryable write concern error means: send the (idempotent) batch again; write
    // errors beside it are met again, or handled, on that attempt.
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => return is_transient_code(w.code),
        ErrorKind::InsertMany(im) => {
            if let Some(w) = &im.write_concern_error {
                if is_transient_code(w.code) {
                    return true;
                }
            }
        }
        _ => {}
    }
    if matches!(
        e.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::Io(_)
    ) {
        return true;
    }
    error_code(e).is_some_and(is_transient_code)
}

/// A driver error as an operator should read it: the server's code, name and message,
/// without the raw reply bytes the driver's own Display includes.
pub fn short_error(e: &mongodb::error::Error) -> String {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Command(c) => format!("{} ({}): {}", c.code_name, c.code, c.message),
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            format!("write error {}: {}", w.code, w.message)
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            format!("write concern error {}: {}", w.code, w.message)
        }
        ErrorKind::InsertMany(im) => match im.write_errors.as_ref().and_then(|w| w.first()) {
            Some(w) => format!("write error {}: {}", w.code, w.message),
            None => "insert failed".to_string(),
        },
        ErrorKind::Authentication { message, .. } => format!("authentication failed: {message}"),
        ErrorKind::ServerSelection { message, .. } => format!("no server available: {message}"),
        other => {
            let mut s = other.to_string();
            s.truncate(300);
            s
        }
    }
}

/// "outer: inner: innermost" for an error and its causes, with driver errors shortened.
pub fn describe_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = match error.downcast_ref::<mongodb::error::Error>() {
        Some(e) => short_error(e),
        None => error.to_string(),
    };
    let mut source = error.source();
    while let Some(s) = source {
        let text = match s.downcast_ref::<mongodb::error::Error>() {
            Some(e) => short_error(e),
            None => s.to_string(),
        };
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    /// A command the server refused with `code`, as the driver reports it.
    fn refused(code: i32) -> ClusterError {
        let command: mongodb::error::CommandError =
            bson::from_document(doc! {"code": code, "codeName": "Test", "errmsg": "refused"})
                .expect("a command error document");
        ClusterError::Command {
            side: Side::Source,
            action: "test".into(),
            source: mongodb::error::ErrorKind::Command(command).into(),
        }
    }

    #[test]
    fn refusals_are_named_by_what_they_mean() {
        assert_eq!(refused(26).refusal(), Some(Refusal::NamespaceMissing));
        assert_eq!(refused(48).refusal(), Some(Refusal::NamespaceExists));
        assert!(refused(85).is(Refusal::IndexConflict));
        assert!(refused(86).is(Refusal::IndexConflict));
        assert!(refused(27).is_any(&[Refusal::NamespaceMissing, Refusal::IndexMissing]));
        assert!(refused(11000).is_duplicate_key());
        assert_eq!(refused(2).refusal(), None);
    }

    #[test]
    fn a_stepdown_is_retried_and_a_lost_history_is_not() {
        assert!(refused(10107).is_transient());
        assert!(!refused(10107).is_history_lost());
        assert!(refused(286).is_history_lost());
        assert!(!refused(286).is_transient());
        // 280 is a lost history only when the server labels it not resumable.
        assert!(!refused(280).is_history_lost());
    }

    #[test]
    fn a_read_under_a_renamed_or_dropped_collection_is_told_apart() {
        assert!(refused(175).is_collection_moved());
        assert!(refused(26).is_collection_moved());
        assert!(!refused(11000).is_collection_moved());
    }

    #[test]
    fn a_failure_keeps_its_side_and_says_the_callers_action() {
        let e = refused(26).during("read app.items again");
        assert_eq!(e.side(), Side::Source);
        assert_eq!(e.to_string(), "source: read app.items again failed");
        assert_eq!(e.server_message(), "Test (26): refused");
    }
}
