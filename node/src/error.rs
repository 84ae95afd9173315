//! [`ApiError`]: how a call fails, for the agent's callers and for peers alike.
//!
//! A leaf module: the agent's API ([`crate::api`], which re-exports both types) and the
//! peer protocol ([`crate::peer`]) answer with the same error without naming each other.

use serde::{Deserialize, Serialize};

/// Kinds of failure, each with its own exit code in `pk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or a name or path is invalid.
    BadInput,
    /// The agent is locked.
    Locked,
    /// No such vault, secret or commit.
    NotFound,
    /// It exists already.
    Exists,
    /// A credential or policy was refused.
    Denied,
    /// A token is not available.
    Unavailable,
    /// Stored data is damaged.
    Corrupt,
    /// Anything else.
    Internal,
}

/// A failed call: a code and a message for the user (never a secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
}

impl ApiError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}
