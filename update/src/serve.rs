//! `pk-update serve`: one connection of the socket-activated installer
//! (`pk-update.socket` has `Accept=yes`, so standard input and output are the
//! connection). The lines are [`protocol`](crate::protocol)'s.

use std::io::{self, BufReader, Read, Write};

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::install::{self, InstallOptions, Layout};
use crate::protocol::{
    Command, ErrorBody, ErrorKind, ErrorReply, MAX_COMMAND_LINE, OkReply, Reply, read_line,
};

/// What a connection may use.
pub struct Server<'a> {
    /// The machine.
    pub layout: Layout,
    /// The update key bundles must be signed with.
    pub key: VerifyingKey,
    /// Reboots the machine (`systemctl reboot`); returns once the reboot is queued.
    pub reboot: &'a (dyn Fn() -> io::Result<()> + Sync),
}

/// How a connection's command ended, for the log.
#[derive(Debug)]
pub enum Outcome {
    /// It succeeded: a summary.
    Done(String),
    /// It was refused or failed: the message the client was sent.
    Refused(String),
}

/// Serves one connection: reads the command from `input`, carries it out, and writes the
/// replies to `output`. An error is a failure to write the final reply.
pub fn serve(server: &Server<'_>, input: impl Read, mut output: impl Write) -> io::Result<Outcome> {
    let mut input = BufReader::new(input);
    let command = match read_line(&mut input, MAX_COMMAND_LINE) {
        Ok(Some(line)) => Command::parse(&line).map_err(|e| e.0),
        Ok(None) => Err("the connection closed before a command".to_string()),
        Err(e) => Err(format!("reading the command: {e}")),
    };
    match command {
        Ok(Command::Install { allow_downgrade }) => {
            install(server, input, allow_downgrade, &mut output)
        }
        Ok(Command::Status) => match install::status(&server.layout) {
            Ok(status) => reply_ok(&mut output, &status, "status".into()),
            Err(e) => reply_error(&mut output, ErrorKind::System, e.to_string()),
        },
        Ok(Command::Reboot) => match (server.reboot)() {
            Ok(()) => reply_ok(&mut output, &(), "reboot queued".into()),
            Err(e) => reply_error(&mut output, ErrorKind::System, format!("reboot: {e}")),
        },
        Err(message) => reply_error(&mut output, ErrorKind::Protocol, message),
    }
}

fn install(
    server: &Server<'_>,
    bundle: impl Read,
    allow_downgrade: bool,
    output: &mut impl Write,
) -> io::Result<Outcome> {
    let mut last = None;
    let mut progress = |p: install::Progress| {
        // One line per stage and per percent: a client needs no more.
        let step = (p.stage, p.done.saturating_mul(100) / p.total.max(1));
        if last != Some(step) {
            last = Some(step);
            // A client that stopped listening does not stop the install; a client that
            // stopped sending does, through the bundle's stream.
            let _ = write_line(output, &Reply::<()>::Progress(p));
        }
    };
    let options = InstallOptions { allow_downgrade };
    match install::install(&server.layout, &server.key, bundle, options, &mut progress) {
        Ok(installed) => {
            let summary = format!(
                "installed {} in slot {} ({})",
                installed.version, installed.slot, installed.uki
            );
            reply_ok(output, &installed, summary)
        }
        Err(e) => reply_error(output, ErrorKind::of(&e), e.describe()),
    }
}

fn reply_ok<T: Serialize>(out: &mut impl Write, ok: &T, summary: String) -> io::Result<Outcome> {
    write_line(out, &Reply::Ok(OkReply { ok }))?;
    Ok(Outcome::Done(summary))
}

fn reply_error(out: &mut impl Write, kind: ErrorKind, message: String) -> io::Result<Outcome> {
    let reply = Reply::<()>::Error(ErrorReply {
        error: ErrorBody {
            kind,
            message: message.clone(),
        },
    });
    write_line(out, &reply)?;
    Ok(Outcome::Refused(message))
}

fn write_line<T: Serialize>(out: &mut impl Write, reply: &Reply<T>) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}
