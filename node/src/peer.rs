//! The peer protocol: typed calls between nodes over the QUIC endpoint of [`crate::net`].
//!
//! Each call is one bidirectional QUIC stream: the caller writes one [`PeerCall`] frame
//! (the framed postcard encoding of [`crate::rpc`]); the callee answers with
//! [`PeerResponse`] frames: for a fetch, a `Begin`, the objects (large ones as chunks),
//! then one final `Ok` or `Err`; for everything else just the final frame. Every frame has
//! a hard size limit, so no message-size cap reaches users: large secrets stream as
//! chunks. Every read has a deadline (the whole call for unary calls; the gap between
//! frames for streams). Dropping a call, or [`CallStream::cancel`], resets the stream, and
//! the callee stops work on it.
//!
//! The callee checks the caller's permissions on every call, from the NodeId the TLS
//! handshake proved: `notify` for notifications, `scan` for listing shared vaults,
//! `clone`/`pull` per vault for fetches. `Ping` is open to any node that can complete
//! the handshake.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};
use crate::identity::NodeId;
use crate::ids::VaultId;
use crate::net::Connection;
use crate::notifications::Body;
use crate::permissions::VaultPermission;
use crate::rpc::{CHUNK, FrameBuffer, FrameError, MAX_FRAME, read_frame, write_frame};
use crate::secret_bytes::SecretBytes;
use crate::sigchain::ClaimToken;
use crate::vault::{FetchOutcome, Fetched, Receiver, VaultError, WireObject};

/// The limits on what a fetch request names (they bound the receiver's side, so they
/// live with [`crate::vault`]'s sync).
pub use crate::vault::{MAX_HAVES, MAX_RECEIVED};

/// The version of the calls below; a peer of another version is refused with a clear
/// error. (The ALPN id carries the transport's version.)
pub const PEER_PROTOCOL: u32 = 2;
/// The deadline of a unary call.
pub const CALL_DEADLINE: Duration = Duration::from_secs(15);
/// The longest silence inside a streamed call.
pub const IDLE_DEADLINE: Duration = Duration::from_secs(30);
/// The largest frame a callee accepts.
const MAX_REQUEST: usize = MAX_FRAME;
/// The largest frame a caller accepts (a chunk with its envelope).
pub const MAX_RESPONSE: usize = MAX_FRAME + CHUNK;

/// What a caller sends first on a stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerCall {
    /// [`PEER_PROTOCOL`] of the caller.
    pub protocol: u32,
    /// The call.
    pub request: PeerRequest,
}

/// A fetch: a clone or a pull.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The vault by id, when the caller knows it.
    pub vault: Option<VaultId>,
    /// Else by name on the callee.
    pub name: String,
    /// A first copy (needs `clone`) rather than an update (needs `pull`).
    pub clone: bool,
    /// Commits the caller has.
    pub haves: Vec<[u8; 20]>,
    /// Objects an interrupted transfer already brought.
    pub received: Vec<[u8; 20]>,
}

/// Calls between nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Are you there?
    Ping,
    /// Where can this node be reached, as far as you know?
    FindNode(NodeId),
    /// Which vaults are shared with me?
    Scan,
    /// Take this notification.
    Notify(Body),
    /// Send me a vault's objects.
    Fetch(FetchRequest),
    /// Send me your sigchain.
    Sigchain,
    /// Countersign this node-link claim (you invited me to your gestalt).
    ClaimNode(ClaimToken),
    /// Your own claim of the same link, now signed by me too: append it to your chain.
    ClaimNodeFinish(ClaimToken),
}

/// A vault shared with the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedVault {
    /// Its id.
    pub id: VaultId,
    /// Its name on the sharing node.
    pub name: String,
    /// What the caller may do.
    pub permissions: Vec<VaultPermission>,
}

/// A successful answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerReply {
    /// To `Ping`.
    Pong,
    /// To `FindNode`.
    Addresses(Vec<String>),
    /// To `Scan`.
    Vaults(Vec<SharedVault>),
    /// Done (a notification taken, a fetch complete).
    Done,
    /// To `Sigchain`: the chain, oldest first.
    Claims(Vec<ClaimToken>),
    /// To `ClaimNode`: the caller's claim with the callee's signature added, and the
    /// callee's own claim of the same link for the caller to sign.
    ClaimPair {
        /// The caller's claim, countersigned.
        countersigned: ClaimToken,
        /// The callee's claim, signed by the callee.
        theirs: ClaimToken,
    },
}

/// What a callee sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// A fetch's vault and newest commit.
    Begin(Fetched),
    /// An object.
    Object(WireObject),
    /// A piece of a large object.
    Chunk(SecretBytes),
    /// The call succeeded.
    Ok(PeerReply),
    /// The call failed.
    Err(ApiError),
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The connection failed or broke.
    #[error("connection to {node} lost: {reason}")]
    Connection {
        /// The peer.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("{node} did not answer within {seconds} s")]
    Timeout {
        /// The peer.
        node: NodeId,
        /// The deadline.
        seconds: u64,
    },
    /// The peer sent something malformed or unexpected.
    #[error("{node} sent an invalid message: {reason}")]
    Protocol {
        /// The peer.
        node: NodeId,
        /// What was wrong.
        reason: String,
    },
    /// The peer refused the call.
    #[error("{node} refused: {error}")]
    Refused {
        /// The peer.
        node: NodeId,
        /// Its answer.
        error: ApiError,
    },
}

impl PeerError {
    /// The error as the agent reports it to `pk`.
    pub fn to_api(&self) -> ApiError {
        let code = match self {
            PeerError::Refused { error, .. } => match error.code {
                ErrorCode::Denied | ErrorCode::NotFound => ErrorCode::Denied,
                other => other,
            },
            PeerError::Protocol { .. } => ErrorCode::Corrupt,
            _ => ErrorCode::Unavailable,
        };
        ApiError::new(code, self.to_string())
    }
}

/// One call in progress, seen from the caller.
pub struct CallStream {
    node: NodeId,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// Whether a write failed because the other side stopped reading the stream.
fn stopped(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<quinn::WriteError>())
        .is_some_and(|w| matches!(w, quinn::WriteError::Stopped(_)))
}

impl CallStream {
    /// Opens a stream on `conn` and sends `request`.
    pub async fn open(conn: &Connection, request: PeerRequest) -> Result<CallStream, PeerError> {
        let node = conn.peer();
        let lost = |reason: String| PeerError::Connection { node, reason };
        let (mut send, recv) = tokio::time::timeout(CALL_DEADLINE, conn.open())
            .await
            .map_err(|_| PeerError::Timeout {
                node,
                seconds: CALL_DEADLINE.as_secs(),
            })?
            .map_err(|e| lost(e.to_string()))?;
        let call = PeerCall {
            protocol: PEER_PROTOCOL,
            request,
        };
        match write_frame(&mut send, &call).await {
            Ok(()) => {
                let _ = send.finish();
            }
            // The callee stopped reading the call (it refused it, say for its size): its
            // answer follows on the stream, and says why.
            Err(FrameError::Io(e)) if stopped(&e) => {}
            Err(e) => return Err(lost(e.to_string())),
        }
        Ok(CallStream { node, send, recv })
    }

    /// The next frame, waiting at most `deadline`.
    pub async fn next(&mut self, deadline: Duration) -> Result<PeerResponse, PeerError> {
        let node = self.node;
        match tokio::time::timeout(deadline, read_frame(&mut self.recv, MAX_RESPONSE)).await {
            Err(_) => Err(PeerError::Timeout {
                node,
                seconds: deadline.as_secs(),
            }),
            Ok(Ok(Some(response))) => Ok(response),
            Ok(Ok(None)) | Ok(Err(FrameError::Closed)) => Err(PeerError::Connection {
                node,
                reason: "the peer closed the call without answering".into(),
            }),
            Ok(Err(FrameError::Io(e))) => Err(PeerError::Connection {
                node,
                reason: e.to_string(),
            }),
            Ok(Err(e)) => Err(PeerError::Protocol {
                node,
                reason: e.to_string(),
            }),
        }
    }

    /// The next bytes of the answer as they arrive (for a fetch, decoded with a
    /// [`crate::rpc::FrameBuffer`] by the caller), waiting at most `deadline`; `None` at
    /// the end of the stream.
    pub async fn read_raw(&mut self, deadline: Duration) -> Result<Option<Vec<u8>>, PeerError> {
        let node = self.node;
        match tokio::time::timeout(deadline, self.recv.read_chunk(256 * 1024, true)).await {
            Err(_) => Err(PeerError::Timeout {
                node,
                seconds: deadline.as_secs(),
            }),
            Ok(Ok(chunk)) => Ok(chunk.map(|c| c.bytes.to_vec())),
            Ok(Err(e)) => Err(PeerError::Connection {
                node,
                reason: e.to_string(),
            }),
        }
    }

    /// Abandons the call: the peer sees its stream reset and stops.
    pub fn cancel(mut self) {
        let _ = self.send.reset(0u32.into());
        let _ = self.recv.stop(0u32.into());
    }
}

/// A call with one answer, within [`CALL_DEADLINE`].
pub async fn unary(conn: &Connection, request: PeerRequest) -> Result<PeerReply, PeerError> {
    let node = conn.peer();
    let mut call = CallStream::open(conn, request).await?;
    match call.next(CALL_DEADLINE).await? {
        PeerResponse::Ok(reply) => Ok(reply),
        PeerResponse::Err(error) => Err(PeerError::Refused { node, error }),
        _ => Err(PeerError::Protocol {
            node,
            reason: "an unexpected answer".into(),
        }),
    }
}

/// The callee's side of one stream: reads the call (within [`CALL_DEADLINE`]).
pub async fn read_call(recv: &mut quinn::RecvStream) -> Result<PeerRequest, ApiError> {
    read_call_within(recv, MAX_REQUEST).await
}

/// [`read_call`] with a lower size limit (for callers outside the node graph).
pub async fn read_call_within(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<PeerRequest, ApiError> {
    let bad = |reason: String| ApiError::new(ErrorCode::BadInput, reason);
    let call: PeerCall =
        match tokio::time::timeout(CALL_DEADLINE, read_frame(recv, max.min(MAX_REQUEST))).await {
            Err(_) => return Err(bad("no call arrived in time".into())),
            Ok(Ok(Some(call))) => call,
            Ok(Ok(None)) => return Err(bad("the stream ended before a call".into())),
            Ok(Err(e)) => return Err(bad(e.to_string())),
        };
    if call.protocol != PEER_PROTOCOL {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "this node speaks peer protocol {PEER_PROTOCOL}, the caller {}: update one of them",
                call.protocol
            ),
        ));
    }
    Ok(call.request)
}

/// Writes one response frame.
pub async fn respond(
    send: &mut quinn::SendStream,
    response: &PeerResponse,
) -> Result<(), FrameError> {
    write_frame(send, response).await
}

/// How a fetch that did not finish ended.
#[derive(Debug)]
pub enum FetchFailed {
    /// Our checks refused what arrived; nothing of it was kept.
    Vault(VaultError),
    /// The peer answered with an error; what arrived was kept.
    Peer(ApiError),
    /// The stream ended early; what arrived was kept, for a resumed fetch.
    Interrupted,
}

impl From<VaultError> for FetchFailed {
    fn from(e: VaultError) -> Self {
        FetchFailed::Vault(e)
    }
}

/// The receiving side of a fetch's response stream, without I/O: `read` hands over the
/// bytes as they arrive (`None` at the end), which are decoded as [`PeerResponse`] frames
/// under [`MAX_RESPONSE`]. The agent feeds it from its QUIC stream; the fuzzer from
/// its input.
pub struct FetchStream<R> {
    frames: FrameBuffer,
    read: R,
}

impl<R: FnMut() -> Option<Vec<u8>>> FetchStream<R> {
    /// A stream over what `read` hands over.
    pub fn new(read: R) -> Self {
        FetchStream {
            frames: FrameBuffer::default(),
            read,
        }
    }

    /// The next frame; `None` once the bytes end.
    pub fn frame(&mut self) -> Result<Option<PeerResponse>, VaultError> {
        loop {
            if let Some(frame) = self
                .frames
                .next(MAX_RESPONSE)
                .map_err(|e| VaultError::Refused(e.to_string()))?
            {
                return Ok(Some(frame));
            }
            match (self.read)() {
                Some(bytes) => self.frames.push(&bytes),
                None => return Ok(None),
            }
        }
    }

    /// Everything after the `Begin` (whose `tip` the fetch must end at), stored through
    /// `receiver`: objects with their chunks, then `Ok`. An interrupted stream or the
    /// peer's error keeps what arrived (a later fetch resumes from it); a refused one
    /// keeps nothing.
    pub fn receive(
        mut self,
        mut receiver: Receiver<'_, '_>,
        tip: &str,
    ) -> Result<FetchOutcome, FetchFailed> {
        loop {
            match self.frame()? {
                Some(PeerResponse::Object(object)) => {
                    let mut chunks = std::iter::from_fn(|| match self.frame() {
                        Ok(Some(PeerResponse::Chunk(bytes))) => Some(Ok(bytes.take())),
                        Ok(_) => Some(Err(VaultError::Interrupted)),
                        Err(e) => Some(Err(e)),
                    });
                    match receiver.object(object, &mut chunks) {
                        Ok(()) => {}
                        Err(VaultError::Interrupted) => {
                            receiver.save()?;
                            return Err(FetchFailed::Interrupted);
                        }
                        Err(e @ VaultError::Refused(_)) => {
                            let _ = receiver.abandon();
                            return Err(e.into());
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(PeerResponse::Ok(_)) => return Ok(receiver.finish(tip)?),
                Some(PeerResponse::Err(error)) => {
                    receiver.save()?;
                    return Err(FetchFailed::Peer(error));
                }
                Some(_) => {
                    let _ = receiver.abandon();
                    return Err(
                        VaultError::Refused("an unexpected message in a fetch".into()).into(),
                    );
                }
                None => {
                    receiver.save()?;
                    return Err(FetchFailed::Interrupted);
                }
            }
        }
    }
}
