//! Reading PINs, passphrases and recovery codes: from a file, the environment, or a
//! prompt on the terminal, in that order. Values are never echoed or logged.

use std::io::IsTerminal as _;
use std::os::unix::ffi::OsStringExt as _;
use std::path::Path;

use hsm_core::Pin;

use super::error::CliError;

/// Where a secret may come from.
pub(crate) struct SecretSource<'a> {
    /// `--...-file` flag value.
    pub(crate) file: Option<&'a Path>,
    /// Environment variable holding the value itself.
    pub(crate) env: &'static str,
    /// The flag name, for error messages.
    pub(crate) flag: &'static str,
}

impl SecretSource<'_> {
    /// The secret, or `None` when no file, no variable and no terminal supplies one.
    pub(crate) fn read(&self, what: &str, confirm: bool) -> Result<Option<Pin>, CliError> {
        if let Some(file) = self.file {
            let bytes = std::fs::read(file).map_err(|e| {
                CliError::io(format!("cannot read {what} from {}", file.display()), e)
            })?;
            return Ok(Some(Pin::new(bytes)));
        }
        if let Some(value) = std::env::var_os(self.env) {
            return Ok(Some(Pin::new(value.into_vec())));
        }
        if !std::io::stdin().is_terminal() {
            return Ok(None);
        }
        let first = prompt(&format!("{what}: "))?;
        if confirm {
            let again = prompt(&format!("{what} (again): "))?;
            if first.expose() != again.expose() {
                return Err(CliError::usage(format!("the two {what}s differ")));
            }
        }
        Ok(Some(first))
    }

    /// The secret, or a usage error saying how to supply it.
    pub(crate) fn require(&self, what: &str, confirm: bool) -> Result<Pin, CliError> {
        self.read(what, confirm)?.ok_or_else(|| {
            CliError::usage(format!(
                "a {what} is needed: pass {} <file>, set {}, or run on a terminal",
                self.flag, self.env
            ))
        })
    }
}

fn prompt(text: &str) -> Result<Pin, CliError> {
    let value = rpassword::prompt_password(text)
        .map_err(|e| CliError::io("cannot read from the terminal", e))?;
    Ok(Pin::new(zeroize::Zeroizing::new(value).as_bytes().to_vec()))
}
