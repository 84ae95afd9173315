//! The admin console's request bodies (`appliance::console`), decoded by the same axum
//! extractors the routes use, with axum's default body limit (2 MiB; the console sets no
//! other): HTML forms (`Form`, serde_urlencoded), JSON API bodies (`Json`, serde_json)
//! and the peers page's query string (`Query`).
//!
//! The form types are public and decoded into directly. Some JSON bodies are not (the API's
//! own bodies in `console/api.rs`, the password and reset forms in `console/account.rs`):
//! for those the generic path, `Json<serde_json::Value>` and a form as name/value pairs,
//! stands in; their derived `Deserialize` impls are not fuzzed here.
//!
//! Input: `[which, body...]`: bits 0-4 pick the type, bits 5-6 the content type sent.
//!
//! A JSON enrolment's PCR list is then parsed as the keyslot action parses it.
//!
//! Checks: no panic.

#![no_main]

use appliance::console::{
    BackupForm, CsrfForm, EnrolForm, Enrolment, LoginForm, NameForm, PeerForm, PeersQuery,
    RevealForm, SecretForm, SetupForm, ShareForm, SlotForm, UnlockForm,
};
use axum::body::Body;
use axum::extract::{FromRequest, Query};
use axum::http::{Request, Uri, header};
use axum::{Form, Json};
use hsm::tpm::{PcrBank, PcrPolicy};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

fn request(content_type: Option<&str>, body: &[u8]) -> Request<Body> {
    let mut builder = Request::builder().method("POST").uri("/");
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder
        .body(Body::from(body.to_vec()))
        .expect("a request with a fixed URI")
}

fn form<T: DeserializeOwned + Send + 'static>(content_type: Option<&str>, body: &[u8]) {
    let request = request(content_type, body);
    let _ = pk_fuzz::block_on(Form::<T>::from_request(request, &()));
}

fn json<T: DeserializeOwned + Send + 'static>(
    content_type: Option<&str>,
    body: &[u8],
) -> Option<T> {
    let request = request(content_type, body);
    pk_fuzz::block_on(Json::<T>::from_request(request, &()))
        .ok()
        .map(|Json(value)| value)
}

/// An enrolment's PCR list is parsed next, as the keyslot action does.
fn enrolment(content_type: Option<&str>, body: &[u8]) {
    if let Some(e) = json::<Enrolment>(content_type, body) {
        let _ = PcrPolicy::parse_list(PcrBank::Sha256, &e.pcrs);
    }
}

fn query(body: &[u8]) {
    let Ok(uri) = format!("/peers?{}", String::from_utf8_lossy(body)).parse::<Uri>() else {
        return;
    };
    let _ = Query::<PeersQuery>::try_from_uri(&uri);
}

fuzz_target!(|data: &[u8]| {
    let [which, body @ ..] = data else {
        return;
    };
    let form_type = [
        Some("application/x-www-form-urlencoded"),
        Some("application/x-www-form-urlencoded; charset=utf-8"),
        Some("text/plain"),
        None,
    ][usize::from((which >> 5) & 3)];
    let json_type = [
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("application/vnd.api+json"),
        None,
    ][usize::from((which >> 5) & 3)];
    match which & 0x1F {
        0 => form::<SetupForm>(form_type, body),
        1 => form::<LoginForm>(form_type, body),
        2 => form::<CsrfForm>(form_type, body),
        3 => form::<UnlockForm>(form_type, body),
        4 => form::<NameForm>(form_type, body),
        5 => form::<SecretForm>(form_type, body),
        6 => form::<RevealForm>(form_type, body),
        7 => form::<ShareForm>(form_type, body),
        8 => form::<PeerForm>(form_type, body),
        9 => form::<BackupForm>(form_type, body),
        10 => form::<EnrolForm>(form_type, body),
        11 => form::<SlotForm>(form_type, body),
        12 => form::<Vec<(String, String)>>(form_type, body),
        13 => query(body),
        14 => drop(json::<SetupForm>(json_type, body)),
        15 => drop(json::<LoginForm>(json_type, body)),
        16 => enrolment(json_type, body),
        _ => drop(json::<serde_json::Value>(json_type, body)),
    }
});
