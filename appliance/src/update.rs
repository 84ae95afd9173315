//! `pk-appliance update`: the box's own command line for updates, run as root (or as a
//! member of group `pk-update`) on the appliance. It sends a bundle to the installer
//! (`pk-update`, over `update_socket`) and prints each stage's progress, or prints both
//! root slots' state. The console's updates page does the same over HTTPS.
//!
//! ```text
//! pk-appliance update FILE|- [--allow-downgrade] [--socket PATH] [--config PATH]
//! pk-appliance update --status [--json] [--socket PATH] [--config PATH]
//! ```
//!
//! Exit codes: 0 done, 1 refused or failed (the installer's message on standard error),
//! 64 a usage error, 78 a configuration that cannot be read (only read without
//! `--socket`, for its `update_socket`).

use crate::console::size;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pk_update::client::{Client, ClientError};
use pk_update::install::{OtherState, Progress, Stage, Status};
use pk_update::protocol::ErrorKind;

use crate::config::{Config, DEFAULT_PATH};

/// sysexits: a usage error.
const EX_USAGE: u8 = 64;
/// sysexits: a configuration error.
const EX_CONFIG: u8 = 78;

/// The command's help.
pub const HELP: &str = "\
pk-appliance update FILE|- [--allow-downgrade] [--socket PATH] [--config PATH]
  install the update bundle FILE (or standard input) into the root slot that is not
  running, printing each stage's progress; it starts at the next reboot
  --allow-downgrade  install a version lower than the running one
pk-appliance update --status [--json] [--socket PATH] [--config PATH]
  print the running slot and version, and what the other slot holds
  --socket PATH      the installer's socket (default: update_socket in the configuration,
                     /run/pk-update.sock)
Exit status: 0 done, 1 refused or failed, 64 usage error, 78 bad configuration.";

/// What the command line asks.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Install {
        file: PathBuf,
        allow_downgrade: bool,
    },
    Status {
        json: bool,
    },
    Help,
}

/// A parsed command line.
#[derive(Debug)]
struct Args {
    request: Request,
    socket: Option<PathBuf>,
    config: Option<PathBuf>,
}

/// Reads the arguments after `update`; a usage error in words.
fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = args.peekable();
    let (mut file, mut status, mut json, mut allow_downgrade) = (None, false, false, false);
    let (mut socket, mut config) = (None, None);
    while let Some(arg) = args.next() {
        let mut path = |name: &str| {
            args.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{name} needs a path"))
        };
        match arg.as_str() {
            "--help" | "-h" => {
                return Ok(Args {
                    request: Request::Help,
                    socket,
                    config,
                });
            }
            "--status" => status = true,
            "--json" => json = true,
            "--allow-downgrade" => allow_downgrade = true,
            "--socket" => socket = Some(path("--socket")?),
            "--config" => config = Some(path("--config")?),
            other if other.starts_with('-') && other != "-" => {
                return Err(format!("unknown option {other:?}"));
            }
            other if file.is_none() => file = Some(PathBuf::from(other)),
            other => return Err(format!("one bundle at a time ({other:?} is a second)")),
        }
    }
    let request = match (status, file) {
        (true, Some(_)) => return Err("--status takes no bundle".into()),
        (true, None) if allow_downgrade => return Err("--allow-downgrade is for an install".into()),
        (true, None) => Request::Status { json },
        (false, None) => return Err("which bundle? (or --status)".into()),
        (false, Some(_)) if json => return Err("--json is for --status".into()),
        (false, Some(file)) => Request::Install {
            file,
            allow_downgrade,
        },
    };
    Ok(Args {
        request,
        socket,
        config,
    })
}

/// Runs `pk-appliance update` with the arguments after `update`.
pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let args = match parse(args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("pk-appliance update: {e} (try --help)");
            return ExitCode::from(EX_USAGE);
        }
    };
    let socket = match (&args.socket, &args.request) {
        (_, Request::Help) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        (Some(socket), _) => socket.clone(),
        (None, _) => {
            let path = args.config.as_deref().unwrap_or(Path::new(DEFAULT_PATH));
            match Config::load(path) {
                Ok(config) => config.update_socket,
                Err(e) => {
                    eprintln!("pk-appliance update: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
            }
        }
    };
    let client = Client::new(socket);
    let done = match args.request {
        Request::Install {
            file,
            allow_downgrade,
        } => install(&client, &file, allow_downgrade),
        Request::Status { json } => status(&client, json),
        Request::Help => Ok(()),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pk-appliance update: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Sends the bundle in `file` (standard input for `-`), printing the progress.
fn install(client: &Client, file: &Path, allow_downgrade: bool) -> Result<(), String> {
    let mut printer = Printer::new(std::io::stderr().is_terminal());
    let installed = if file == Path::new("-") {
        client.install(std::io::stdin(), allow_downgrade, &mut |p| {
            printer.progress(p)
        })
    } else {
        let bundle = std::fs::File::open(file)
            .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        client.install(bundle, allow_downgrade, &mut |p| printer.progress(p))
    };
    printer.finish();
    match installed {
        Ok(installed) => {
            println!(
                "installed {} in slot {} ({}); reboot to start it",
                installed.version, installed.slot, installed.uki
            );
            Ok(())
        }
        Err(e) => Err(failure(&e)),
    }
}

/// A failure in words, with what to do about it where there is something.
fn failure(e: &ClientError) -> String {
    match e {
        ClientError::Connect { path, source } => match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
                "updates are not available here: no installer at {}",
                path.display()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "may not use the installer at {}: run as root or as a member of group pk-update",
                path.display()
            ),
            _ => e.to_string(),
        },
        ClientError::Refused {
            kind: ErrorKind::Downgrade,
            message,
        } => format!("refused: {message} (--allow-downgrade installs it anyway)"),
        ClientError::Refused { kind, message } => {
            let kind = serde_json::to_value(kind).unwrap_or_default();
            format!("refused ({}): {message}", kind.as_str().unwrap_or("other"))
        }
        other => other.to_string(),
    }
}

/// Prints both slots.
fn status(client: &Client, json: bool) -> Result<(), String> {
    let status = client.status().map_err(|e| failure(&e))?;
    if json {
        let text = serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", describe(&status));
    }
    Ok(())
}

/// Both slots in words, a line each.
fn describe(status: &Status) -> String {
    let version = |v: &Option<pk_update::bundle::Version>| {
        v.as_ref()
            .map_or("an unknown version".to_owned(), |v| format!("version {v}"))
    };
    let other = match &status.other_state {
        OtherState::Empty => "empty".to_owned(),
        OtherState::Installed {
            version: v,
            tries: Some(t),
        } => format!(
            "{}, installed: it starts at the next reboot ({} tries left)",
            version(v),
            t.left
        ),
        OtherState::Installed { version: v, .. } => format!("{}, to fall back to", version(v)),
        OtherState::Failed { version: v } => format!(
            "{}, failed: it did not come up healthy; the box is running {} again",
            version(v),
            status.running_version
        ),
        OtherState::Incomplete => "incomplete: an install was cut off; it does not boot".into(),
    };
    format!(
        "running: version {} in slot {}\nslot {}: {other}\n",
        status.running_version, status.running, status.other
    )
}

/// Prints an install's progress on standard error: on a terminal, one line per stage
/// that is rewritten as it goes (a carriage return, no escape codes); otherwise one line
/// per stage once it ends.
struct Printer {
    terminal: bool,
    /// The stage under way and its last progress.
    current: Option<Progress>,
}

impl Printer {
    fn new(terminal: bool) -> Printer {
        Printer {
            terminal,
            current: None,
        }
    }

    fn progress(&mut self, p: Progress) {
        if self.current.is_some_and(|c| c.stage != p.stage) {
            self.finish();
        }
        self.current = Some(p);
        if self.terminal {
            eprint!("\r{:<60}", line(p));
            let _ = std::io::stderr().flush();
        }
    }

    /// Ends the stage under way: its line is complete.
    fn finish(&mut self) {
        match self.current.take() {
            Some(_) if self.terminal => eprintln!(),
            Some(p) => eprintln!("{}", line(p)),
            None => {}
        }
    }
}

/// `write: 42 % (84.0 MiB of 200.0 MiB)`.
fn line(p: Progress) -> String {
    let stage = match p.stage {
        Stage::Verify => "verify",
        Stage::Write => "write",
        Stage::Readback => "readback",
        Stage::Uki => "uki",
    };
    format!(
        "{stage}: {} % ({} of {})",
        p.done.saturating_mul(100) / p.total.max(1),
        size(p.done),
        size(p.total)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a panic is a test failure
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, String> {
        parse(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn the_command_line_is_read_and_mistakes_are_named() {
        let a = args("b.pkupdate --allow-downgrade --socket /tmp/s").unwrap();
        assert_eq!(
            a.request,
            Request::Install {
                file: "b.pkupdate".into(),
                allow_downgrade: true
            }
        );
        assert_eq!(a.socket.as_deref(), Some(Path::new("/tmp/s")));
        assert_eq!(
            args("--status --json").unwrap().request,
            Request::Status { json: true }
        );
        assert_eq!(
            args("-").unwrap().request,
            Request::Install {
                file: "-".into(),
                allow_downgrade: false
            }
        );
        assert_eq!(args("x --help").unwrap().request, Request::Help);
        for bad in [
            "",
            "a b",
            "--status a",
            "--status --allow-downgrade",
            "a --json",
            "--socket",
            "a --verbose",
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn progress_lines_are_plain_text() {
        let p = Progress {
            stage: Stage::Write,
            done: 42 * 1024 * 1024,
            total: 100 * 1024 * 1024,
        };
        assert_eq!(line(p), "write: 42 % (42.0 MiB of 100.0 MiB)");
        let header = Progress {
            stage: Stage::Verify,
            done: 1130,
            total: 1130,
        };
        assert_eq!(line(header), "verify: 100 % (1.1 KiB of 1.1 KiB)");
    }
}
