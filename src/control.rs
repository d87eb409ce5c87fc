//! Operator requests (cutover, extend, pause, resume, cancel) travelling from the API to
//! the supervisor, with the supervisor's answer.

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// The operator says application writes to the source have stopped.
    Cutover {
        writes_stopped: bool,
    },
    /// Lengthen the cutover window.
    Extend {
        hours: f64,
    },
    Pause,
    Resume,
    Cancel,
}

/// Why a request was refused; `status` is the HTTP status the API answers with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub status: u16,
    pub message: String,
}

impl ControlError {
    pub fn conflict(message: impl Into<String>) -> Self {
        ControlError {
            status: 409,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ControlError {
            status: 400,
            message: message.into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        ControlError {
            status: 503,
            message: message.into(),
        }
    }
}

/// The supervisor's answer: a short JSON body describing what happened.
pub type ControlReply = Result<serde_json::Value, ControlError>;

pub type ControlMessage = (ControlRequest, oneshot::Sender<ControlReply>);

/// Cheap to clone; the API holds one.
#[derive(Clone)]
pub struct ControlHandle {
    tx: mpsc::Sender<ControlMessage>,
}

impl ControlHandle {
    pub fn channel(capacity: usize) -> (ControlHandle, mpsc::Receiver<ControlMessage>) {
        let (tx, rx) = mpsc::channel(capacity);
        (ControlHandle { tx }, rx)
    }

    pub async fn request(&self, request: ControlRequest) -> ControlReply {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send((request, reply_tx))
            .await
            .map_err(|_| ControlError::unavailable("the migration is not running"))?;
        reply_rx
            .await
            .map_err(|_| ControlError::unavailable("the migration stopped before answering"))?
    }
}
