//! Framed, typed messages over a byte stream: the RPC machinery shared by the local agent
//! socket and (later) the peer network's QUIC streams.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of a
//! postcard-encoded message. Every read has a hard size limit; a frame over the limit is
//! refused before its body is read. Large payloads (secret contents) travel as a stream of
//! bounded chunks, never as one frame.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The default limit for one frame.
pub const MAX_FRAME: usize = 1 << 20;

/// The first read of a frame's body is at most this large; the buffer then doubles as
/// bytes arrive, up to the frame's length.
const FIRST_READ: usize = 16 * 1024;

/// Bytes of secret content per data frame.
pub const CHUNK: usize = 256 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame over the limit.
    #[error("message of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid message.
    #[error("malformed message")]
    Malformed,
    /// The stream ended inside a conversation.
    #[error("the other side closed the connection early")]
    Closed,
}

/// Writes one message as a frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    message: &T,
) -> Result<(), FrameError> {
    // The frame may carry a secret (a passphrase, a secret's content): wiped after sending.
    let mut frame = zeroize::Zeroizing::new(Vec::new());
    encode_frame(message, &mut frame)?;
    w.write_all(&frame).await?;
    Ok(())
}

/// Appends one message as a frame to `out` (for senders that batch frames into one
/// write).
pub fn encode_frame<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let body =
        zeroize::Zeroizing::new(postcard::to_stdvec(message).map_err(|_| FrameError::Malformed)?);
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Frames out of bytes that arrive in pieces of any size (for receivers that read a stream
/// in large reads and decode elsewhere). The buffer is wiped as it is consumed and dropped.
#[derive(Default)]
pub struct FrameBuffer {
    buf: zeroize::Zeroizing<Vec<u8>>,
    start: usize,
}

impl FrameBuffer {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            // Drop (and wipe) what has been consumed before growing.
            let rest = self.buf[self.start..].to_vec();
            zeroize::Zeroize::zeroize(&mut *self.buf);
            self.buf = zeroize::Zeroizing::new(rest);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame of at most `max` bytes, if one has arrived.
    pub fn next<T: DeserializeOwned>(&mut self, max: usize) -> Result<Option<T>, FrameError> {
        let rest = &self.buf[self.start..];
        let Some(len) = rest.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        let Some(body) = rest.get(4..4 + len) else {
            return Ok(None);
        };
        let message = postcard::from_bytes(body).map_err(|_| FrameError::Malformed)?;
        self.start += 4 + len;
        Ok(Some(message))
    }

    /// Whether bytes of an unfinished frame are waiting.
    pub fn is_partial(&self) -> bool {
        self.start < self.buf.len()
    }
}

/// Reads one frame of at most `max` bytes; `None` on a clean end of stream before it.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // The buffer grows with the bytes that arrive, not with the length announced: a peer
    // that announces 1 MiB and sends nothing costs us nothing.
    let mut body = zeroize::Zeroizing::new(Vec::with_capacity(len.min(FIRST_READ)));
    while body.len() < len {
        if body.len() == body.capacity() {
            let mut bigger =
                zeroize::Zeroizing::new(Vec::with_capacity((body.capacity() * 2).min(len)));
            bigger.extend_from_slice(&body);
            // The old buffer is wiped as it is dropped.
            body = bigger;
        }
        let start = body.len();
        let end = body.capacity().min(len);
        body.resize(end, 0);
        match r.read(&mut body[start..]).await {
            Ok(0) => return Err(FrameError::Closed),
            Ok(n) => body.truncate(start + n),
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    postcard::from_bytes(&body)
        .map(Some)
        .map_err(|_| FrameError::Malformed)
}

/// Reads one frame that must be there.
pub async fn expect_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<T, FrameError> {
    read_frame(r, max).await?.ok_or(FrameError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &("hello".to_string(), 7u32))
            .await
            .unwrap();
        let got: (String, u32) = expect_frame(&mut b, MAX_FRAME).await.unwrap();
        assert_eq!(got, ("hello".into(), 7));

        write_frame(&mut a, &vec![0u8; 100]).await.unwrap();
        assert!(matches!(
            read_frame::<_, Vec<u8>>(&mut b, 10).await,
            Err(FrameError::TooLarge { len: 101, max: 10 })
        ));

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(matches!(
            read_frame::<_, String>(&mut b, MAX_FRAME).await,
            Err(FrameError::Malformed)
        ));
        let mut batch = Vec::new();
        encode_frame(&"one".to_string(), &mut batch).unwrap();
        encode_frame(&"two".to_string(), &mut batch).unwrap();
        let mut frames = FrameBuffer::default();
        for byte in &batch {
            frames.push(std::slice::from_ref(byte));
        }
        assert_eq!(frames.next::<String>(64).unwrap().as_deref(), Some("one"));
        assert_eq!(frames.next::<String>(64).unwrap().as_deref(), Some("two"));
        assert_eq!(frames.next::<String>(64).unwrap(), None);
        assert!(!frames.is_partial());
        frames.push(&[0, 0, 1, 0]);
        assert!(matches!(
            frames.next::<String>(64),
            Err(FrameError::TooLarge { len: 256, max: 64 })
        ));

        a.write_all(&[0, 0, 0, 9, 1]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame::<_, String>(&mut b, MAX_FRAME).await,
            Err(FrameError::Closed)
        ));
    }
}
