//! How a participant operation can end besides success, in business terms.
//! The HTTP answer is chosen once, at the edge (`From<OpError> for ApiError`),
//! so callers inside the service (the event handlers, the retry on a lost
//! insert race) match on outcomes, never on status codes or downcasts.

use crate::http::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Refused on business grounds (no funds, no stock, no slot, or its
    /// compensation already ran): final, retrying changes nothing.
    #[error("{message}")]
    Refused { code: String, message: String },
    /// The call does not fit the record's state, or the lab's epoch.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Worth retrying: a row held by an in-doubt branch, a lost race.
    #[error("{0}")]
    Busy(String),
    /// An injected fault fired; it carries its own answer.
    #[error(transparent)]
    Fault(ApiError),
    /// Something that should not happen: a stored request unreadable, a
    /// task that panicked.
    #[error("{0}")]
    Internal(String),
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

impl OpError {
    pub fn refused(code: &str, message: impl Into<String>) -> OpError {
        OpError::Refused {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> ApiError {
        match e {
            OpError::Refused { code, message } => ApiError::Refused { code, message },
            OpError::Conflict { code, message } => ApiError::Conflict { code, message },
            OpError::Busy(message) => ApiError::Unavailable(message),
            OpError::Fault(answer) => answer,
            OpError::Internal(message) => ApiError::Internal(anyhow::anyhow!(message)),
            OpError::Database(e) => ApiError::from(e),
        }
    }
}
