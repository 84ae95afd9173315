//! [`SecretsRequest`]: secrets inside a vault; writes stream in, reads stream out.

use std::sync::Arc;

use serde_json::json;
use tokio::net::UnixStream;
use zeroize::Zeroizing;

use super::done;
use crate::agent::{Open, Shared, drain, forward_upload, on_store, stream_out, vaults};
use crate::api::secrets::{
    Cat, Ls, Mkdir, Rename, Rm, SecretsRequest, Stat, Touch, Write, WriteKind,
};
use crate::api::{ApiError, ErrorCode, SecretBytes};
use crate::vault::{SecretPath, VaultError};

pub(super) async fn handle(
    shared: &Arc<Shared>,
    request: SecretsRequest,
    stream: &mut UnixStream,
) -> Result<SecretBytes, ApiError> {
    // Locked, a write still reads the upload before answering.
    let open = shared.open();
    match request {
        SecretsRequest::Write(w) => done::<Write>(write(open, w, stream).await),
        SecretsRequest::Cat(cat) => done::<Cat>(self::cat(open?, cat, stream).await),
        SecretsRequest::Ls(Ls { vault, path }) => done::<Ls>(
            on_store(&open?, move |open| {
                Ok(vaults(open).list_dir(&vault, &SecretPath::parse(&path, true)?)?)
            })
            .await,
        ),
        SecretsRequest::Mkdir(Mkdir {
            vault,
            path,
            parents,
        }) => done::<Mkdir>(
            on_store(&open?, move |open| {
                let path = SecretPath::parse(&path, false)?;
                Ok(vaults(open).mkdir(&vault, &path, parents)?)
            })
            .await,
        ),
        SecretsRequest::Rm(Rm {
            vault,
            paths,
            recursive,
        }) => done::<Rm>(
            on_store(&open?, move |open| {
                let paths = paths
                    .iter()
                    .map(|p| SecretPath::parse(p, false))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(vaults(open).remove(&vault, &paths, recursive)?)
            })
            .await,
        ),
        SecretsRequest::Rename(Rename { vault, from, to }) => done::<Rename>(
            on_store(&open?, move |open| {
                let (from, to) = (
                    SecretPath::parse(&from, false)?,
                    SecretPath::parse(&to, false)?,
                );
                Ok(vaults(open).rename_path(&vault, &from, &to)?)
            })
            .await,
        ),
        SecretsRequest::Stat(Stat { vault, path }) => done::<Stat>(
            on_store(&open?, move |open| {
                Ok(vaults(open).stat(&vault, &SecretPath::parse(&path, true)?)?)
            })
            .await,
        ),
        SecretsRequest::Touch(Touch { vault, path }) => done::<Touch>(
            on_store(&open?, move |open| {
                Ok(vaults(open).touch(&vault, &SecretPath::parse_file(&path)?)?)
            })
            .await,
        ),
    }
}

/// Streams a secret to the caller, recording the reveal first.
async fn cat(
    open: Arc<Open>,
    Cat { vault, path, via }: Cat,
    stream: &mut UnixStream,
) -> Result<(), ApiError> {
    let path = SecretPath::parse_file(&path)?;
    stream_out(stream, move |out| {
        let v = vaults(&open);
        // Record the reveal before the first byte leaves, so a reader that stops midway
        // is on record too; a path that does not exist reveals nothing.
        v.stat(&vault, &path)?;
        open.record(
            "secret.revealed",
            json!({ "vault": vault, "path": path.to_string(), "via": via.name() }),
        )?;
        Ok(v.read_stream(&vault, &path, &mut |piece| {
            std::io::Write::write_all(out, piece).map_err(|_| VaultError::Interrupted)
        })?)
    })
    .await
}

/// Stores an upload chunk by chunk in one transaction, as it arrives.
async fn write(
    open: Result<Arc<Open>, ApiError>,
    Write {
        vault,
        path,
        kind,
        size,
    }: Write,
    stream: &mut UnixStream,
) -> Result<crate::vault::CommitInfo, ApiError> {
    let checked = open.and_then(|open| Ok((open, SecretPath::parse_file(&path)?)));
    let (open, path) = match checked {
        Ok(ok) => ok,
        Err(e) => {
            // Read the whole upload even when refusing it: closing a Unix socket with
            // unread data resets the connection, and the client would lose our answer.
            drain(stream).await?;
            return Err(e);
        }
    };
    let event = match kind {
        WriteKind::Create => "secret.created",
        WriteKind::Write => "secret.written",
        WriteKind::Edit => "secret.edited",
        WriteKind::Import => "secret.imported",
    };
    // The content flows through a small channel into the blocking writer, which stores
    // it chunk by chunk inside one transaction.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Zeroizing<Vec<u8>>, VaultError>>(4);
    let writer = tokio::task::spawn_blocking(move || {
        let mut pieces = std::iter::from_fn(|| rx.blocking_recv());
        vaults(&open).write_stream(&vault, &path, &mut pieces, size, event)
    });
    let received = forward_upload(stream, &tx).await;
    if received.is_err() {
        // Tell the writer to abandon its transaction.
        let _ = tx.send(Err(VaultError::Interrupted)).await;
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|_| ApiError::new(ErrorCode::Internal, "the write failed inside the agent"))?;
    received?;
    Ok(written?)
}
