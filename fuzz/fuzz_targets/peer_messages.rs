//! The peer protocol (`node::peer`): postcard decoding of what another node sends, a
//! call (`PeerCall`, `PeerRequest`) or an answer (`PeerResponse`, `PeerReply`), and a
//! round trip of whatever decodes. Claims inside (a node-link claim to countersign, a
//! sigchain) are checked as the serving and calling nodes check them.
//!
//! Input: `[which, message...]`; `which` picks the type.
//!
//! Checks: no panic; a decoded message encodes, and its encoding decodes to the same
//! encoding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use node::peer::{PeerCall, PeerReply, PeerRequest, PeerResponse};
use node::sigchain::{ClaimToken, verify_chain};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn decode<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let value: T = postcard::from_bytes(bytes).ok()?;
    pk_fuzz::postcard_round_trip(&value);
    Some(value)
}

fn claim(token: &ClaimToken) {
    let _ = token.verify_signatures();
    let _ = token.digest();
}

fn request(request: &PeerRequest) {
    match request {
        PeerRequest::ClaimNode(token) | PeerRequest::ClaimNodeFinish(token) => claim(token),
        PeerRequest::FindNode(node) => {
            let _ = node.to_string();
        }
        PeerRequest::Notify(body) => {
            let _ = body.check();
        }
        _ => {}
    }
}

fn reply(reply: &PeerReply) {
    match reply {
        PeerReply::Claims(chain) => {
            let _ = verify_chain(&pk_fuzz::fixed_node(1), chain);
            if let Some(Ok(first)) = chain.first().map(ClaimToken::claim)
                && let Ok(owner) = first.iss.parse()
            {
                let _ = verify_chain(&owner, chain);
            }
        }
        PeerReply::ClaimPair {
            countersigned,
            theirs,
        } => {
            claim(countersigned);
            claim(theirs);
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let [which, message @ ..] = data else {
        return;
    };
    match which % 4 {
        0 => {
            if let Some(call) = decode::<PeerCall>(message) {
                request(&call.request);
            }
        }
        1 => {
            if let Some(r) = decode::<PeerRequest>(message) {
                request(&r);
            }
        }
        2 => {
            if let Some(PeerResponse::Ok(r)) = decode::<PeerResponse>(message) {
                reply(&r);
            }
        }
        _ => {
            if let Some(r) = decode::<PeerReply>(message) {
                reply(&r);
            }
        }
    }
});
