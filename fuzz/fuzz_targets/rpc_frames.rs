//! `node::rpc` framing: a byte stream cut into arbitrary pieces, pushed into a
//! `FrameBuffer` and decoded frame by frame, as the agent socket and a fetch's receiver do.
//!
//! Input: `[which, pieces, stream...]`. `which` (low two bits) picks the conversation:
//! 0 an agent call (`Hello`, then `Upload` frames), 1 the agent's answer (`Response`
//! frames), 2 a peer call (`PeerCall`), 3 a peer's answer (`PeerResponse` frames); bit 2
//! picks a 64-byte limit instead of the real one. `pieces` is the cut (see
//! `pk_fuzz::pieces`).
//!
//! Checks: no panic; the frames (and the error that ends them) are the same whatever the
//! cut, and the same as `read_frame` reading the stream; every decoded message survives
//! a postcard round trip; `encode_frame` of a decoded message gives a frame that decodes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use node::api::{Hello, Response, Upload};
use node::peer::{MAX_RESPONSE, PeerCall, PeerResponse};
use node::rpc::{FrameBuffer, FrameError, MAX_FRAME, encode_frame, read_frame};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a stream decoded to: each frame's postcard encoding, then how it ended.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    end: End,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every byte was consumed by whole frames.
    Clean,
    /// The stream ended inside a frame.
    Partial,
    /// A frame over the limit.
    TooLarge(usize),
    /// A frame that is not a message.
    Malformed,
}

fn end_of(e: &FrameError) -> End {
    match e {
        FrameError::TooLarge { len, .. } => End::TooLarge(*len),
        FrameError::Malformed => End::Malformed,
        other => panic!("an in-memory decode failed with {other}"),
    }
}

/// Decodes with a `FrameBuffer` fed `pieces`, stopping at the first error as every caller
/// does. The first frame is decoded as an `A`, the ones after it as `B`s.
fn with_buffer<A, B>(pieces: &[&[u8]], max: usize) -> Outcome
where
    A: Serialize + DeserializeOwned,
    B: Serialize + DeserializeOwned,
{
    let mut buffer = FrameBuffer::default();
    let mut frames = Vec::new();
    for piece in pieces {
        buffer.push(piece);
        loop {
            let next = if frames.is_empty() {
                buffer.next::<A>(max).map(|m| m.map(|m| check(&m)))
            } else {
                buffer.next::<B>(max).map(|m| m.map(|m| check(&m)))
            };
            match next {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        frames,
                        end: end_of(&e),
                    };
                }
            }
        }
    }
    let end = if buffer.is_partial() {
        End::Partial
    } else {
        End::Clean
    };
    Outcome { frames, end }
}

/// Decodes the whole stream with `read_frame`, as the agent and `CallStream` do.
fn with_reader<A, B>(stream: &[u8], max: usize) -> Outcome
where
    A: Serialize + DeserializeOwned,
    B: Serialize + DeserializeOwned,
{
    pk_fuzz::block_on(async {
        let mut reader = stream;
        let mut frames = Vec::new();
        loop {
            let left = reader.len();
            let next = if frames.is_empty() {
                read_frame::<_, A>(&mut reader, max)
                    .await
                    .map(|m| m.map(|m| check(&m)))
            } else {
                read_frame::<_, B>(&mut reader, max)
                    .await
                    .map(|m| m.map(|m| check(&m)))
            };
            let end = match next {
                Ok(Some(frame)) => {
                    frames.push(frame);
                    continue;
                }
                // The stream ended before a length prefix (clean) or inside one.
                Ok(None) if left == 0 => End::Clean,
                Ok(None) | Err(FrameError::Closed) => End::Partial,
                Err(e) => end_of(&e),
            };
            return Outcome { frames, end };
        }
    })
}

/// A decoded message: its encoding, after checking that it round-trips and frames.
fn check<T: Serialize + DeserializeOwned>(message: &T) -> Vec<u8> {
    pk_fuzz::postcard_round_trip(message);
    let mut frame = Vec::new();
    encode_frame(message, &mut frame).expect("a decoded message frames");
    let mut buffer = FrameBuffer::default();
    buffer.push(&frame);
    let back: T = buffer
        .next(usize::MAX)
        .expect("a frame we encoded decodes")
        .expect("a whole frame");
    assert!(!buffer.is_partial());
    postcard::to_stdvec(&back).expect("encodes")
}

fn run<A, B>(cut: u8, stream: &[u8], max: usize)
where
    A: Serialize + DeserializeOwned,
    B: Serialize + DeserializeOwned,
{
    let cut_up = with_buffer::<A, B>(&pk_fuzz::pieces(cut, stream), max);
    let whole = with_buffer::<A, B>(&[stream], max);
    assert_eq!(cut_up, whole, "the frames depend on how the stream was cut");
    let read = with_reader::<A, B>(stream, max);
    assert_eq!(read, whole, "read_frame and FrameBuffer disagree");
}

fuzz_target!(|data: &[u8]| {
    let [which, cut, stream @ ..] = data else {
        return;
    };
    let small = which & 4 != 0;
    let limit = |real: usize| if small { 64 } else { real };
    match which & 3 {
        0 => run::<Hello, Upload>(*cut, stream, limit(MAX_FRAME)),
        1 => run::<Response, Response>(*cut, stream, limit(MAX_FRAME)),
        2 => run::<PeerCall, PeerCall>(*cut, stream, limit(MAX_FRAME)),
        _ => run::<PeerResponse, PeerResponse>(*cut, stream, limit(MAX_RESPONSE)),
    }
});
