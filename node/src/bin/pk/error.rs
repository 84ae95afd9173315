//! The CLI's error: a message for the user and a sysexits-style exit code.

use hsm::UnwrapError;
use node::keyslots::KeyslotError;
use node::tokens::ProtectorError;

/// Command line usage error.
pub(crate) const USAGE: u8 = 64;
const DATAERR: u8 = 65;
const NOINPUT: u8 = 66;
const UNAVAILABLE: u8 = 69;
const CANTCREAT: u8 = 73;
const NOPERM: u8 = 77;
const FAILURE: u8 = 1;

/// What went wrong, already phrased for the user. Never contains a secret.
#[derive(Debug)]
pub(crate) struct CliError {
    message: String,
    code: u8,
}

impl CliError {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: USAGE,
        }
    }

    pub(crate) fn io(what: impl std::fmt::Display, e: std::io::Error) -> Self {
        CliError {
            message: format!("{what}: {e}"),
            code: if e.kind() == std::io::ErrorKind::NotFound {
                NOINPUT
            } else {
                FAILURE
            },
        }
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

fn unwrap_code(e: &UnwrapError) -> u8 {
    match e {
        UnwrapError::TokenAbsent { .. } => UNAVAILABLE,
        UnwrapError::PinRequired => USAGE,
        UnwrapError::Corrupt(_) => DATAERR,
        UnwrapError::WrongPin { .. }
        | UnwrapError::PinBlocked
        | UnwrapError::PolicyMismatch
        | UnwrapError::KeyNotOnToken(_)
        | UnwrapError::WrongPassphrase
        | UnwrapError::WrongRecoveryCode => NOPERM,
        _ => FAILURE,
    }
}

impl From<KeyslotError> for CliError {
    fn from(e: KeyslotError) -> Self {
        let code = match &e {
            KeyslotError::NotInitialised(_) => NOINPUT,
            KeyslotError::AlreadyInitialised(_) => CANTCREAT,
            KeyslotError::Truncated(_)
            | KeyslotError::Corrupt { .. }
            | KeyslotError::UnsupportedVersion { .. }
            | KeyslotError::ForeignKey(_) => DATAERR,
            KeyslotError::NoSuchSlot(_)
            | KeyslotError::NoSlotOfKind(_)
            | KeyslotError::RecoveryEnrol => USAGE,
            KeyslotError::Unwrap { source, .. } => unwrap_code(source),
            KeyslotError::Wrap(hsm::WrapError::TokenAbsent { .. }) => UNAVAILABLE,
            KeyslotError::Wrap(hsm::WrapError::WrongPin { .. } | hsm::WrapError::PinBlocked) => {
                NOPERM
            }
            KeyslotError::Wrap(hsm::WrapError::Invalid(_)) => USAGE,
            _ => FAILURE,
        };
        CliError {
            message: e.to_string(),
            code,
        }
    }
}

impl From<node::tokens::UnlockError> for CliError {
    fn from(e: node::tokens::UnlockError) -> Self {
        match e {
            node::tokens::UnlockError::Keyslot(e) => e.into(),
            node::tokens::UnlockError::Protector(e) => e.into(),
            other => CliError {
                message: other.to_string(),
                code: FAILURE,
            },
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
        CliError {
            message: e.to_string(),
            code,
        }
    }
}
