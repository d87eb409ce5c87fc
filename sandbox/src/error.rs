//! Command errors as the real server reports them: `{ok: 0, errmsg, code, codeName}` plus
//! optional error labels and extra fields (`keyPattern`, `keyValue`, ...).

use bson::{doc, Bson, Document};

/// Server error codes the sandbox uses, with their canonical names.
pub mod codes {
    pub const INTERNAL_ERROR: i32 = 1;
    pub const BAD_VALUE: i32 = 2;
    pub const NO_SUCH_KEY: i32 = 4;
    pub const UNAUTHORIZED: i32 = 13;
    pub const TYPE_MISMATCH: i32 = 14;
    pub const AUTHENTICATION_FAILED: i32 = 18;
    pub const ILLEGAL_OPERATION: i32 = 20;
    pub const NAMESPACE_NOT_FOUND: i32 = 26;
    pub const INDEX_NOT_FOUND: i32 = 27;
    pub const PATH_NOT_VIABLE: i32 = 28;
    pub const CONFLICTING_UPDATE_OPERATORS: i32 = 40;
    pub const CURSOR_NOT_FOUND: i32 = 43;
    pub const NAMESPACE_EXISTS: i32 = 48;
    pub const MAX_TIME_MS_EXPIRED: i32 = 50;
    pub const DOLLAR_PREFIXED_FIELD_NAME: i32 = 52;
    pub const INVALID_ID_FIELD: i32 = 53;
    pub const NOT_SINGLE_VALUE_FIELD: i32 = 54;
    pub const COMMAND_NOT_FOUND: i32 = 59;
    pub const IMMUTABLE_FIELD: i32 = 66;
    pub const INVALID_OPTIONS: i32 = 72;
    pub const INVALID_NAMESPACE: i32 = 73;
    pub const INDEX_OPTIONS_CONFLICT: i32 = 85;
    pub const INDEX_KEY_SPECS_CONFLICT: i32 = 86;
    pub const SHUTDOWN_IN_PROGRESS: i32 = 91;
    pub const CONFLICTING_OPERATION_IN_PROGRESS: i32 = 117;
    pub const COMMAND_NOT_SUPPORTED_ON_VIEW: i32 = 166;
    pub const QUERY_PLAN_KILLED: i32 = 175;
    pub const PRIMARY_STEPPED_DOWN: i32 = 189;
    pub const INVALID_RESUME_TOKEN: i32 = 260;
    pub const CHANGE_STREAM_FATAL_ERROR: i32 = 280;
    pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
    pub const USER_WRITES_BLOCKED: i32 = 371;
    pub const CANNOT_DROP_SHARD_KEY_INDEX: i32 = 370;
    pub const SHARD_NOT_FOUND: i32 = 70;
    pub const NAMESPACE_NOT_SHARDED: i32 = 118;
    pub const TRANSACTION_TOO_OLD: i32 = 225;
    pub const LOCATION40324: i32 = 40324;
    /// A required command field is missing (IDL parser).
    pub const MISSING_REQUIRED_FIELD: i32 = 40414;
    pub const DUPLICATE_KEY: i32 = 11000;
    pub const INTERRUPTED_AT_SHUTDOWN: i32 = 11600;
    pub const INTERRUPTED_DUE_TO_REPL_STATE_CHANGE: i32 = 11602;
    pub const NOT_WRITABLE_PRIMARY: i32 = 10107;
    pub const NOT_PRIMARY_NO_SECONDARY_OK: i32 = 13435;
    pub const FAILED_TO_PARSE: i32 = 9;
    pub const USER_NOT_FOUND: i32 = 11;
    pub const OPERATION_FAILED: i32 = 96;
    pub const DOCUMENT_VALIDATION_FAILURE: i32 = 121;
    pub const INVALID_LENGTH: i32 = 16;
    pub const HOST_UNREACHABLE: i32 = 6;
    pub const NETWORK_TIMEOUT: i32 = 89;
    pub const STALE_CONFIG: i32 = 13388;
    pub const CAPPED_POSITION_LOST: i32 = 136;
    pub const LOCATION51108: i32 = 51108;
    pub const CANNOT_CREATE_INDEX: i32 = 67;
    pub const NO_MATCHING_DOCUMENT: i32 = 47;
    pub const PROTOCOL_ERROR: i32 = 17;
    pub const UNSUPPORTED_OP_QUERY_COMMAND: i32 = 352;

    /// The canonical `codeName` of a code, or "Location<code>" as the server does for
    /// codes without a name.
    pub fn name(code: i32) -> String {
        let n = match code {
            1 => "InternalError",
            2 => "BadValue",
            4 => "NoSuchKey",
            6 => "HostUnreachable",
            9 => "FailedToParse",
            11 => "UserNotFound",
            13 => "Unauthorized",
            14 => "TypeMismatch",
            16 => "InvalidLength",
            18 => "AuthenticationFailed",
            20 => "IllegalOperation",
            26 => "NamespaceNotFound",
            27 => "IndexNotFound",
            28 => "PathNotViable",
            40 => "ConflictingUpdateOperators",
            43 => "CursorNotFound",
            48 => "NamespaceExists",
            50 => "MaxTimeMSExpired",
            52 => "DollarPrefixedFieldName",
            53 => "InvalidIdField",
            54 => "NotSingleValueField",
            59 => "CommandNotFound",
            66 => "ImmutableField",
            67 => "CannotCreateIndex",
            47 => "NoMatchingDocument",
            17 => "ProtocolError",
            352 => "UnsupportedOpQueryCommand",
            23 => "AlreadyInitialized",
            61 => "ShardKeyNotFound",
            70 => "ShardNotFound",
            118 => "NamespaceNotSharded",
            115 => "CommandNotSupported",
            72 => "InvalidOptions",
            73 => "InvalidNamespace",
            85 => "IndexOptionsConflict",
            86 => "IndexKeySpecsConflict",
            89 => "NetworkTimeout",
            91 => "ShutdownInProgress",
            96 => "OperationFailed",
            117 => "ConflictingOperationInProgress",
            121 => "DocumentValidationFailure",
            136 => "CappedPositionLost",
            166 => "CommandNotSupportedOnView",
            175 => "QueryPlanKilled",
            189 => "PrimarySteppedDown",
            260 => "InvalidResumeToken",
            280 => "ChangeStreamFatalError",
            286 => "ChangeStreamHistoryLost",
            370 => "CannotDropShardKeyIndex",
            371 => "UserWritesBlocked",
            11000 => "DuplicateKey",
            11600 => "InterruptedAtShutdown",
            11602 => "InterruptedDueToReplStateChange",
            10107 => "NotWritablePrimary",
            10334 => "BSONObjectTooLarge",
            13435 => "NotPrimaryNoSecondaryOk",
            13388 => "StaleConfig",
            _ => return format!("Location{code}"),
        };
        n.to_string()
    }

    /// Codes a driver may retry a write on (the server labels them `RetryableWriteError`).
    pub fn is_retryable_write(code: i32) -> bool {
        matches!(
            code,
            11600 | 11602 | 10107 | 13435 | 13436 | 189 | 91 | 7 | 6 | 89 | 9001 | 262
        )
    }

    /// Codes after which a change stream may resume (label `ResumableChangeStreamError`).
    pub fn is_resumable_change_stream(code: i32) -> bool {
        is_retryable_write(code) || matches!(code, 63 | 150 | 13388 | 234 | 133 | 43)
    }
}

/// A failed command, rendered as the server's error reply.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandError {
    pub code: i32,
    pub errmsg: String,
    pub labels: Vec<String>,
    /// Extra fields merged into the reply (e.g. `keyPattern`, `keyValue`, `errInfo`).
    pub extra: Document,
}

pub type CmdResult<T> = Result<T, CommandError>;

impl CommandError {
    pub fn new(code: i32, errmsg: impl Into<String>) -> Self {
        CommandError {
            code,
            errmsg: errmsg.into(),
            labels: Vec::new(),
            extra: Document::new(),
        }
    }
    pub fn bad_value(msg: impl Into<String>) -> Self {
        Self::new(codes::BAD_VALUE, msg)
    }
    pub fn type_mismatch(msg: impl Into<String>) -> Self {
        Self::new(codes::TYPE_MISMATCH, msg)
    }
    pub fn failed_to_parse(msg: impl Into<String>) -> Self {
        Self::new(codes::FAILED_TO_PARSE, msg)
    }
    pub fn ns_not_found(msg: impl Into<String>) -> Self {
        Self::new(codes::NAMESPACE_NOT_FOUND, msg)
    }
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        Self::new(codes::UNAUTHORIZED, msg)
    }
    pub fn with_label(mut self, label: &str) -> Self {
        if !self.labels.iter().any(|l| l == label) {
            self.labels.push(label.to_string());
        }
        self
    }
    pub fn with_extra(mut self, key: &str, value: impl Into<Bson>) -> Self {
        self.extra.insert(key, value.into());
        self
    }
    pub fn code_name(&self) -> String {
        codes::name(self.code)
    }
    /// The error reply document (without `$clusterTime`/`operationTime`).
    pub fn to_reply(&self) -> Document {
        let mut d = doc! {
            "ok": 0.0,
            "errmsg": self.errmsg.clone(),
            "code": self.code,
            "codeName": self.code_name(),
        };
        for (k, v) in &self.extra {
            d.insert(k.clone(), v.clone());
        }
        if !self.labels.is_empty() {
            d.insert("errorLabels", self.labels.clone());
        }
        d
    }
    /// The `writeErrors` entry form of this error.
    pub fn to_write_error(&self, index: usize) -> Document {
        let mut d = doc! { "index": index as i32, "code": self.code, "codeName": self.code_name(), "errmsg": self.errmsg.clone() };
        for (k, v) in &self.extra {
            d.insert(k.clone(), v.clone());
        }
        d
    }
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code_name(), self.code, self.errmsg)
    }
}

impl std::error::Error for CommandError {}
