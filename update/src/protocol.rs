//! The lines spoken over `/run/pk-update.sock`, by [`serve`](crate::serve) and
//! [`client`](crate::client) alike.
//!
//! The client sends one command line: `install\n` or `install allow-downgrade\n` followed
//! by the bundle's bytes (then shuts down its side), `status\n` or `reboot\n`. The
//! installer answers with JSON lines: during an install, progress lines
//! `{"stage":"write","done":1048576,"total":211513344}`; then one final line,
//! `{"ok":...}` (the [`Installed`] slot, the [`Status`], or `null` for `reboot`) or
//! `{"error":{"kind":"downgrade","message":"..."}}`.

use std::io::{self, BufRead, Read};

use serde::{Deserialize, Serialize};

use crate::bundle::BundleError;
use crate::install::{InstallError, Progress};

#[cfg(doc)]
use crate::install::{Installed, Status};

/// The longest command line, newline included.
pub const MAX_COMMAND_LINE: usize = 64;
/// The longest reply line, newline included.
pub const MAX_REPLY_LINE: usize = 64 * 1024;

/// What a client asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Install the bundle that follows.
    Install {
        /// The admin approved a downgrade (the daemon checked the recovery code).
        allow_downgrade: bool,
    },
    /// Report both slots.
    Status,
    /// Reboot the machine.
    Reboot,
}

impl Command {
    /// Reads a command line (without its newline).
    pub fn parse(line: &str) -> Result<Command, ProtocolError> {
        match line {
            "install" => Ok(Command::Install {
                allow_downgrade: false,
            }),
            "install allow-downgrade" => Ok(Command::Install {
                allow_downgrade: true,
            }),
            "status" => Ok(Command::Status),
            "reboot" => Ok(Command::Reboot),
            _ => Err(ProtocolError(format!(
                "unknown command `{}` (install [allow-downgrade], status, reboot)",
                line.escape_debug().take(40).collect::<String>()
            ))),
        }
    }

    /// The command's line, newline included.
    pub fn line(&self) -> &'static str {
        match self {
            Command::Install {
                allow_downgrade: false,
            } => "install\n",
            Command::Install {
                allow_downgrade: true,
            } => "install allow-downgrade\n",
            Command::Status => "status\n",
            Command::Reboot => "reboot\n",
        }
    }
}

/// A line that breaks the protocol.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

/// One reply line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply<T> {
    /// An install's progress.
    Progress(Progress),
    /// The command failed or was refused.
    Error(ErrorReply),
    /// The command's result.
    Ok(OkReply<T>),
}

/// `{"ok": ...}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OkReply<T> {
    /// The result.
    pub ok: T,
}

/// `{"error": {"kind": ..., "message": ...}}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    /// What went wrong.
    pub error: ErrorBody,
}

/// Why a command failed: a kind a program can act on, and a message for a person.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The kind.
    pub kind: ErrorKind,
    /// The whole message.
    pub message: String,
}

/// What kind of failure, for a client to act on (a `downgrade` can be retried with the
/// admin's approval; `failed` means the other slot was emptied).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The signature does not verify with the update key.
    Signature,
    /// The bundle is malformed, truncated, altered or for another product.
    Bundle,
    /// The bundle is for another architecture.
    Arch,
    /// The bundle's version is lower than the running one.
    Downgrade,
    /// The bundle holds the running root.
    SameRoot,
    /// The bundle does not fit the slot or the ESP.
    TooBig,
    /// Another install is running.
    Busy,
    /// Writing started and then failed: the other slot is empty.
    Failed,
    /// The machine could not be read, or another local failure before writing.
    System,
    /// The client broke the protocol.
    Protocol,
    /// A kind this client does not know.
    #[serde(other)]
    Other,
}

impl ErrorKind {
    /// The kind of an install's error.
    pub fn of(error: &InstallError) -> ErrorKind {
        match error {
            InstallError::Bundle(BundleError::BadSignature) => ErrorKind::Signature,
            InstallError::Bundle(BundleError::WrongArch { .. }) => ErrorKind::Arch,
            InstallError::Bundle(_) => ErrorKind::Bundle,
            InstallError::Downgrade { .. } => ErrorKind::Downgrade,
            InstallError::SameRoot(_) => ErrorKind::SameRoot,
            InstallError::TooBig { .. } | InstallError::EspFull { .. } => ErrorKind::TooBig,
            InstallError::Busy => ErrorKind::Busy,
            // The bundle itself was bad (truncated, or a part's hash differs): the sender's
            // fault, like a refusal, once the slot was emptied again.
            InstallError::Failed {
                source,
                cleanup: None,
                ..
            } if matches!(**source, InstallError::Bundle(_)) => ErrorKind::Bundle,
            InstallError::Failed { .. } => ErrorKind::Failed,
            _ => ErrorKind::System,
        }
    }
}

/// Reads one line of at most `max` bytes, newline included, and returns it without the
/// newline; `None` at the end of the stream. A longer line, or one that is not UTF-8, is
/// an error, read no further than `max` bytes.
pub fn read_line(r: &mut impl BufRead, max: usize) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    r.take(max as u64).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a line longer than {max} bytes, or cut off"),
        ));
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a line that is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::Stage;

    #[test]
    fn commands_round_trip_and_others_are_refused() {
        for c in [
            Command::Install {
                allow_downgrade: false,
            },
            Command::Install {
                allow_downgrade: true,
            },
            Command::Status,
            Command::Reboot,
        ] {
            let line = c.line().strip_suffix('\n').expect("a newline");
            assert_eq!(Command::parse(line).expect("parses"), c);
            assert!(c.line().len() <= MAX_COMMAND_LINE);
        }
        for bad in [
            "",
            "install ",
            "INSTALL",
            "install allow_downgrade",
            "reboot now",
        ] {
            assert!(Command::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reply_lines_are_told_apart() {
        let progress: Reply<()> =
            serde_json::from_str(r#"{"stage":"write","done":1,"total":2}"#).expect("progress");
        assert!(matches!(
            progress,
            Reply::Progress(Progress {
                stage: Stage::Write,
                done: 1,
                total: 2
            })
        ));
        let ok: Reply<()> = serde_json::from_str(r#"{"ok":null}"#).expect("ok");
        assert!(matches!(ok, Reply::Ok(OkReply { ok: () })));
        let err: Reply<()> =
            serde_json::from_str(r#"{"error":{"kind":"something-new","message":"m"}}"#)
                .expect("error");
        assert!(matches!(err, Reply::Error(e) if e.error.kind == ErrorKind::Other));
    }

    #[test]
    fn lines_are_bounded() {
        let mut r = io::Cursor::new(b"status\nxxxxxxxxxxxxxxxxxxxxxxxx\npartial".to_vec());
        assert_eq!(
            read_line(&mut r, 16).expect("a line").as_deref(),
            Some("status")
        );
        assert!(read_line(&mut r, 16).is_err());
        let mut r = io::Cursor::new(b"partial".to_vec());
        assert!(read_line(&mut r, 16).is_err());
        let mut r = io::Cursor::new(Vec::new());
        assert_eq!(read_line(&mut r, 16).expect("the end"), None);
    }
}
