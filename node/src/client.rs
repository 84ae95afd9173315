//! The client side of the agent socket, used by `pk`.

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::NodePath;
use crate::api::{
    ApiError, Call, Hello, PROTOCOL, Request, Response, SecretBytes, Upload, decode_reply,
};
use crate::rpc::{CHUNK, FrameError, MAX_FRAME, expect_frame, write_frame};

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No agent listens for this node.
    #[error("no agent is running for {0}: start one with `pk agent start`")]
    NotRunning(PathBuf),
    /// The socket is there but cannot be used (permissions, another user's agent).
    #[error("cannot reach the agent at {}: {source}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent refused the call.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The conversation broke.
    #[error("talking to the agent: {0}")]
    Frame(#[from] FrameError),
    /// Reading local input or writing output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A connection factory for one node's agent.
#[derive(Clone, Debug)]
pub struct Client {
    node: PathBuf,
    socket: PathBuf,
}

impl Client {
    /// The client for the agent of `node`.
    pub fn new(node: &NodePath) -> Client {
        Client {
            node: node.dir().to_owned(),
            socket: node.agent_socket(),
        }
    }

    async fn connect(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning(self.node.clone())
                }
                _ => ClientError::Connect {
                    socket: self.socket.clone(),
                    source: e,
                },
            })
    }

    /// A plain call: one request, its reply.
    pub async fn call<C: Call>(&self, call: C) -> Result<C::Reply, ClientError> {
        let mut stream = self.connect().await?;
        write_frame(&mut stream, &hello(call)).await?;
        let reply = finish(&mut stream, None::<&mut tokio::io::Sink>).await?;
        Ok(decode_reply::<C>(&reply)?)
    }

    /// A call that sends `data` after the request (a secret's content).
    pub async fn upload<C: Call>(
        &self,
        call: C,
        mut data: impl AsyncRead + Unpin,
    ) -> Result<C::Reply, ClientError> {
        let mut stream = self.connect().await?;
        let sent = send_upload(&mut stream, hello(call), &mut data).await;
        // The agent may refuse the request (a bad path, locked) before reading the content
        // and close its side; its answer is still waiting to be read.
        let answer = finish(&mut stream, None::<&mut tokio::io::Sink>).await;
        match (sent, answer) {
            (Err(sent), Err(ClientError::Frame(_))) => Err(sent),
            // The agent's refusal says more than the broken pipe it caused.
            (_, Err(answer)) => Err(answer),
            (Err(sent), Ok(_)) => Err(sent),
            (Ok(()), Ok(reply)) => Ok(decode_reply::<C>(&reply)?),
        }
    }

    /// A call whose reply streams content into `out` before the final reply.
    pub async fn download<C: Call>(
        &self,
        call: C,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<C::Reply, ClientError> {
        let mut stream = self.connect().await?;
        write_frame(&mut stream, &hello(call)).await?;
        let reply = finish(&mut stream, Some(out)).await?;
        Ok(decode_reply::<C>(&reply)?)
    }
}

async fn send_upload(
    stream: &mut UnixStream,
    hello: Hello,
    data: &mut (impl AsyncRead + Unpin),
) -> Result<(), ClientError> {
    write_frame(stream, &hello).await?;
    let mut buf = zeroize::Zeroizing::new(vec![0u8; CHUNK]);
    loop {
        let n = read_full(data, &mut buf).await?;
        if n == 0 {
            break;
        }
        write_frame(stream, &Upload::Chunk(SecretBytes(buf[..n].to_vec()))).await?;
        if n < buf.len() {
            break;
        }
    }
    write_frame(stream, &Upload::End).await?;
    Ok(())
}

/// The call, with this client's protocol version.
fn hello(call: impl Into<Request>) -> Hello {
    Hello {
        protocol: PROTOCOL,
        request: call.into(),
    }
}

/// Reads until `buf` is full or the input ends; the number of bytes read.
async fn read_full(data: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = data.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Reads the answer: content into `out` (for a download), then the encoded reply.
async fn finish(
    stream: &mut UnixStream,
    mut out: Option<&mut (impl AsyncWrite + Unpin)>,
) -> Result<SecretBytes, ClientError> {
    loop {
        match expect_frame::<_, Response>(stream, MAX_FRAME + CHUNK).await? {
            Response::Chunk(bytes) => match out.as_mut() {
                Some(out) => out.write_all(&bytes.0).await?,
                None => return Err(FrameError::Malformed.into()),
            },
            Response::Ok(reply) => {
                if let Some(out) = out.as_mut() {
                    out.flush().await?;
                }
                return Ok(reply);
            }
            Response::Err(e) => return Err(e.into()),
        }
    }
}
