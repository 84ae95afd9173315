//! The agent's API (`node::api`): postcard decoding of what `pk` sends the agent and what
//! the agent answers, and a round trip of whatever decodes.
//!
//! Input: `[which, message...]`; `which` picks the type: `Hello`, `Request`, `Upload`,
//! `Response`, or a call's reply (`[4, kind, reply...]`, `kind` as
//! [`pk_fuzz::decode_reply`] reads it). A `keys::Decrypt` request is then decrypted, as
//! the agent would, with a fixed node identity.
//!
//! Checks: no panic; a decoded message encodes, and its encoding decodes to the same
//! encoding.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use node::api::keys::{Decrypt, KeysRequest};
use node::api::{Hello, Request, Response, Upload};
use node::identity::Identity;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn decode<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let value: T = postcard::from_bytes(bytes).ok()?;
    pk_fuzz::postcard_round_trip(&value);
    Some(value)
}

/// What the agent does with the bytes of a request before any store is touched.
fn handle(request: &Request) {
    static IDENTITY: OnceLock<Identity> = OnceLock::new();
    if let Request::Keys(KeysRequest::Decrypt(Decrypt(message))) = request {
        let _ = IDENTITY.get_or_init(Identity::generate).decrypt(&message.0);
    }
}

fuzz_target!(|data: &[u8]| {
    let [which, message @ ..] = data else {
        return;
    };
    match which % 5 {
        0 => {
            if let Some(call) = decode::<Hello>(message) {
                handle(&call.request);
            }
        }
        1 => {
            if let Some(request) = decode::<Request>(message) {
                handle(&request);
            }
        }
        2 => {
            decode::<Upload>(message);
        }
        3 => {
            decode::<Response>(message);
        }
        _ => {
            if let [kind, reply @ ..] = message {
                pk_fuzz::decode_reply(*kind, reply);
            }
        }
    }
});
