//! What the fuzz targets in `fuzz_targets/` share: cutting an input into the pieces a
//! stream delivers, a runtime for the extractors that are `async`, fixed NodeIds, and the
//! seed corpora ([`seeds`]), made by encoding real messages with the real code.

use std::future::Future;
use std::sync::OnceLock;

use node::identity::NodeId;
use node::peer::{FetchFailed, FetchStream, PeerResponse};
use node::vault::{FetchOutcome, VaultError, Vaults};

pub mod seeds;

/// The passphrase of the passphrase keyslots in the seed corpus, which the `keyslots`
/// target unlocks with.
pub const PASSPHRASE: &[u8] = b"fuzz passphrase";

/// Cuts `data` into the pieces a byte stream might deliver it in, as `seed` says: `0` is
/// the whole at once, `1` one byte at a time, anything else a varying pattern of piece
/// sizes from 1 to 97 bytes. The same `seed` and `data` always give the same pieces.
pub fn pieces(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    match seed {
        0 => vec![data],
        1 => data.chunks(1).collect(),
        _ => {
            let mut out = Vec::new();
            let mut rest = data;
            let mut i = 0usize;
            while !rest.is_empty() {
                let size = 1 + (usize::from(seed).wrapping_mul(i + 7) * 31) % 97;
                let (piece, tail) = rest.split_at(size.min(rest.len()));
                out.push(piece);
                rest = tail;
                i += 1;
            }
            out
        }
    }
}

/// Reads a little-endian `u32` length and that many bytes (the rest when fewer are
/// left): how the multi-part inputs below are laid out.
pub fn take_part(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_at_checked(4) else {
        return (data, &[]);
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    rest.split_at(len.min(rest.len()))
}

/// Writes a part as [`take_part`] reads it.
pub fn put_part(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(part);
}

/// The replies the `api_messages` target decodes, by `kind`: what the agent answers
/// status, the vault calls, the audit log, the node graph and the mailboxes with.
pub const REPLY_KINDS: u8 = 10;

/// Decodes `bytes` as the reply of the call `kind` picks (modulo [`REPLY_KINDS`]), as
/// `pk` does, and makes a round trip of what decodes.
pub fn decode_reply(kind: u8, bytes: &[u8]) {
    use node::api::{SecretBytes, agent, decode_reply, identities, nodes, notifications};
    use node::api::{secrets, vaults};
    fn one<C: node::api::Call>(bytes: &[u8]) {
        if let Ok(value) = decode_reply::<C>(&SecretBytes(bytes.to_vec())) {
            postcard_round_trip(&value);
        }
    }
    match kind % REPLY_KINDS {
        0 => one::<agent::Status>(bytes),
        1 => one::<vaults::List>(bytes),
        2 => one::<vaults::Log>(bytes),
        3 => one::<secrets::Ls>(bytes),
        4 => one::<secrets::Stat>(bytes),
        5 => one::<vaults::Clone>(bytes),
        6 => one::<agent::Audit>(bytes),
        7 => one::<nodes::GetAll>(bytes),
        8 => one::<notifications::List>(bytes),
        _ => one::<identities::Get>(bytes),
    }
}

/// Runs a future to completion on one current-thread runtime kept for the process.
pub fn block_on<F: Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime starts")
        })
        .block_on(future)
}

/// A fixed, valid NodeId for `n` (the key made from the secret bytes `[n; 32]`), so a
/// run does not depend on random keys: the peer a transfer comes from, merge authors.
pub fn fixed_node(n: u8) -> NodeId {
    let key = ed25519_dalek::SigningKey::from_bytes(&[n; 32]);
    NodeId::from_bytes(key.verifying_key().to_bytes()).expect("a valid Ed25519 public key")
}

/// `postcard` round trip: a value that decoded must encode, and its encoding must decode
/// to a value with the same encoding.
pub fn postcard_round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) {
    let once = postcard::to_stdvec(value).expect("a decoded value encodes");
    let again: T = postcard::from_bytes(&once).expect("an encoded value decodes");
    let twice = postcard::to_stdvec(&again).expect("a decoded value encodes");
    assert_eq!(once, twice, "encoding is not stable across a round trip");
}

/// The receiving side of a fetch from `from`, through the code the agent's fetch worker
/// runs ([`FetchStream`]): `reads` are the stream's bytes as they arrived, decoded as
/// `PeerResponse` frames with the real limit; `Begin` first (which the agent reads before
/// it starts the worker), then objects with their chunks, then `Ok`. What arrived before
/// an interruption is kept, as the agent keeps it.
pub fn fetch(
    vaults: &Vaults<'_>,
    from: NodeId,
    reads: &[&[u8]],
    clone: Option<&str>,
) -> Result<FetchOutcome, VaultError> {
    let mut reads = reads.iter();
    let mut stream = FetchStream::new(|| reads.next().map(|bytes| bytes.to_vec()));
    let Some(PeerResponse::Begin(begin)) = stream.frame()? else {
        return Err(VaultError::Refused(
            "a fetch that does not begin with Begin".into(),
        ));
    };
    let receiver = vaults.receiver(from, &begin, clone)?;
    stream
        .receive(receiver, &begin.tip)
        .map_err(|failed| match failed {
            FetchFailed::Vault(e) => e,
            _ => VaultError::Interrupted,
        })
}
