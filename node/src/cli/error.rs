//! The CLI's error: a message for the user and a sysexits-style exit code.

use crate::api::{ApiError, ErrorCode};
use crate::keyslots::KeyslotError;
use crate::tokens::ProtectorError;

/// Command line usage error.
pub(crate) const USAGE: u8 = 64;
const DATAERR: u8 = 65;
const NOINPUT: u8 = 66;
/// A token or the agent is not available.
pub(crate) const UNAVAILABLE: u8 = 69;
const SOFTWARE: u8 = 70;
const CANTCREAT: u8 = 73;
const TEMPFAIL: u8 = 75;
const NOPERM: u8 = 77;
const FAILURE: u8 = 1;

/// What went wrong, already phrased for the user. Never contains a secret.
#[derive(Debug)]
pub(crate) struct CliError {
    message: String,
    code: u8,
    api: Option<ErrorCode>,
}

impl CliError {
    fn new(code: u8, message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code,
            api: None,
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(SOFTWARE, message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(UNAVAILABLE, message)
    }

    pub(crate) fn denied(message: impl Into<String>) -> Self {
        Self::new(NOPERM, message)
    }

    /// Data that cannot be used as it is (exit 65).
    pub(crate) fn data(message: impl Into<String>) -> Self {
        Self::new(DATAERR, message)
    }

    pub(crate) fn exists(message: impl Into<String>) -> Self {
        Self::new(CANTCREAT, message)
    }

    /// The same error, its message prefixed with what it meant for the command.
    pub(crate) fn context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// An error reported by the agent, with the exit code for its kind.
    pub(crate) fn api(e: ApiError) -> Self {
        CliError {
            code: exit_code(e.code),
            message: e.message,
            api: Some(e.code),
        }
    }

    /// The agent's error kind, when the agent reported this error.
    pub(crate) fn api_code(&self) -> Option<ErrorCode> {
        self.api
    }

    pub(crate) fn io(what: impl std::fmt::Display, e: std::io::Error) -> Self {
        Self::new(
            if e.kind() == std::io::ErrorKind::NotFound {
                NOINPUT
            } else {
                FAILURE
            },
            format!("{what}: {e}"),
        )
    }

    pub(crate) fn exit_code(&self) -> u8 {
        self.code
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The exit code for a kind of failure, wherever it was found.
fn exit_code(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::BadInput => USAGE,
        ErrorCode::Locked => TEMPFAIL,
        ErrorCode::NotFound => NOINPUT,
        ErrorCode::Exists => CANTCREAT,
        ErrorCode::Denied => NOPERM,
        ErrorCode::Unavailable => UNAVAILABLE,
        ErrorCode::Corrupt => DATAERR,
        _ => SOFTWARE,
    }
}

impl From<KeyslotError> for CliError {
    fn from(e: KeyslotError) -> Self {
        let code = e.code().map_or(FAILURE, exit_code);
        Self::new(code, e.to_string())
    }
}

impl From<crate::agent::AgentError> for CliError {
    fn from(e: crate::agent::AgentError) -> Self {
        match e {
            crate::agent::AgentError::Keyslots(k) => k.into(),
            crate::agent::AgentError::AlreadyRunning(_) => Self::new(CANTCREAT, e.to_string()),
            other => Self::new(FAILURE, other.to_string()),
        }
    }
}

impl From<crate::tokens::UnlockError> for CliError {
    fn from(e: crate::tokens::UnlockError) -> Self {
        match e {
            crate::tokens::UnlockError::Keyslot(e) => e.into(),
            crate::tokens::UnlockError::Protector(e) => e.into(),
        }
    }
}

impl From<ProtectorError> for CliError {
    fn from(e: ProtectorError) -> Self {
        let code = match e {
            ProtectorError::SecretNeeded(_) => USAGE,
            ProtectorError::RecoveryCode(_) => USAGE,
            _ => FAILURE,
        };
        Self::new(code, e.to_string())
    }
}
