//! The installer's client, for the console's daemon and `pk-appliance update`: one
//! connection to `/run/pk-update.sock` per call, the lines of
//! [`protocol`](crate::protocol). Blocking; an async caller runs it on a blocking thread.
//!
//! ```no_run
//! # fn main() -> Result<(), pk_update::client::ClientError> {
//! let client = pk_update::client::Client::new(pk_update::SOCKET_PATH);
//! let bundle = std::fs::File::open("pk-appliance-amd64-0.2.0.pkupdate").expect("a bundle");
//! let installed = client.install(bundle, false, &mut |p| eprintln!("{p:?}"))?;
//! println!("slot {} now holds {}", installed.slot, installed.version);
//! client.reboot()?;
//! # Ok(()) }
//! ```

use std::io::{self, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde::de::DeserializeOwned;

use crate::install::{Installed, Progress, Status};
use crate::protocol::{Command, ErrorKind, MAX_REPLY_LINE, Reply, read_line};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The installer's socket could not be reached.
    #[error("cannot reach the installer at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The bundle could not be read on this side.
    #[error("reading the bundle: {0}")]
    ReadBundle(io::Error),
    /// The connection failed.
    #[error("talking to the installer: {0}")]
    Io(#[from] io::Error),
    /// The installer answered something this client does not understand, or nothing.
    #[error("the installer's answer is not understood: {0}")]
    Protocol(String),
    /// The installer refused or failed: `kind` says what to do about it.
    #[error("{message}")]
    Refused {
        /// What kind of failure.
        kind: ErrorKind,
        /// The installer's message.
        message: String,
    },
}

/// A client of the installer's socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the socket at `socket` ([`SOCKET_PATH`](crate::SOCKET_PATH) on the
    /// appliance).
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    fn connect(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
            path: self.socket.clone(),
            source,
        })
    }

    /// Sends the bundle read from `bundle` to be installed, hands each progress line to
    /// `progress`, and returns what was installed. `allow_downgrade` is the admin's
    /// approval of a lower version (the caller checked the recovery code).
    pub fn install(
        &self,
        bundle: impl Read + Send,
        allow_downgrade: bool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Installed, ClientError> {
        install_on(self.connect()?, bundle, allow_downgrade, progress)
    }

    /// Both slots' state.
    pub fn status(&self) -> Result<Status, ClientError> {
        call_on(self.connect()?, Command::Status)
    }

    /// Reboots the machine (into the new slot, after an install).
    pub fn reboot(&self) -> Result<(), ClientError> {
        call_on(self.connect()?, Command::Reboot)
    }
}

/// [`Client::install`] over a connected stream.
pub fn install_on(
    stream: UnixStream,
    mut bundle: impl Read + Send,
    allow_downgrade: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<Installed, ClientError> {
    let mut writer = stream.try_clone()?;
    writer.write_all(Command::Install { allow_downgrade }.line().as_bytes())?;
    std::thread::scope(|s| {
        // The bundle is sent while the replies are read: the installer answers as it
        // goes, and stops reading when it refuses the header.
        let sender = s.spawn(move || {
            let sent = send(&mut bundle, &mut writer);
            let _ = writer.shutdown(Shutdown::Write);
            sent
        });
        let answer = read_answer(&mut BufReader::new(&stream), progress);
        // Unblocks the sender if the installer stopped reading.
        let _ = stream.shutdown(Shutdown::Both);
        match sender.join() {
            Ok(Err(read_error)) => Err(ClientError::ReadBundle(read_error)),
            Ok(Ok(())) => answer,
            Err(_) => Err(ClientError::Protocol("the sending thread panicked".into())),
        }
    })
}

/// Copies the bundle to the socket. A read error is returned; a write error ends the
/// copy quietly (the installer stopped reading, and its answer says why).
fn send(bundle: &mut impl Read, socket: &mut UnixStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match bundle.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if socket.write_all(&buf[..n]).is_err() {
            return Ok(());
        }
    }
}

/// [`Client::status`] or [`Client::reboot`] over a connected stream.
pub fn call_on<T: DeserializeOwned>(
    mut stream: UnixStream,
    command: Command,
) -> Result<T, ClientError> {
    stream.write_all(command.line().as_bytes())?;
    stream.shutdown(Shutdown::Write)?;
    read_answer(&mut BufReader::new(&stream), &mut |_| {})
}

/// Reads reply lines up to the final one.
fn read_answer<T: DeserializeOwned>(
    replies: &mut impl io::BufRead,
    progress: &mut dyn FnMut(Progress),
) -> Result<T, ClientError> {
    loop {
        let Some(line) = read_line(replies, MAX_REPLY_LINE)? else {
            return Err(ClientError::Protocol(
                "the connection closed without an answer".into(),
            ));
        };
        let reply: Reply<T> = serde_json::from_str(&line)
            .map_err(|e| ClientError::Protocol(format!("{e}: {}", truncated(&line))))?;
        match reply {
            Reply::Progress(p) => progress(p),
            Reply::Ok(ok) => return Ok(ok.ok),
            Reply::Error(e) => {
                return Err(ClientError::Refused {
                    kind: e.error.kind,
                    message: e.error.message,
                });
            }
        }
    }
}

fn truncated(line: &str) -> String {
    line.chars().take(200).collect()
}
