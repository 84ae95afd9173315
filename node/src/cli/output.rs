//! How `pk` prints: [`Output`] in the format the user chose, and times.

use std::time::Duration;

use serde_json::Value;

use super::args::Format;
use super::error::CliError;

/// Prints a result in the chosen format.
pub(crate) struct Output(Format);

impl Output {
    /// Prints in `format`.
    pub(crate) fn new(format: Format) -> Self {
        Output(format)
    }

    /// The chosen format.
    pub(crate) fn format(&self) -> Format {
        self.0
    }

    /// Writes bytes as they are (secret contents, decrypted data).
    pub(crate) fn raw(&self, bytes: &[u8]) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        std::io::Write::write_all(&mut stdout, bytes)
            .and_then(|()| std::io::Write::flush(&mut stdout))
            .map_err(|e| CliError::io("writing to stdout", e))
    }

    /// Writes the result; a reader that went away (`pk ... | head`) is reported by the
    /// return value, never a panic.
    pub(crate) fn emit(&self, json: Value, human: impl FnOnce() -> String) -> std::io::Result<()> {
        let text = match self.0 {
            Format::Json => format!("{json}\n"),
            Format::Human => human(),
        };
        let mut stdout = std::io::stdout().lock();
        std::io::Write::write_all(&mut stdout, text.as_bytes())?;
        std::io::Write::flush(&mut stdout)
    }
}

/// Unix seconds as an RFC 3339 time (times before 1970 as 1970).
pub(crate) fn time(seconds: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64),
    )
    .to_string()
}
