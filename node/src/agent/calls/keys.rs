//! [`KeysRequest`]: the node key.

use std::sync::Arc;

use serde_json::json;

use super::done;
use crate::agent::trust::renewal;
use crate::agent::{Open, on_store};
use crate::api::keys::{Cert, Decrypt, Encrypt, KeysRequest, Public, Renew, Reset, Sign};
use crate::api::{ApiError, ErrorCode, SecretBytes};
use crate::identity::{self, NodeId};

pub(super) async fn handle(
    open: &Arc<Open>,
    request: KeysRequest,
) -> Result<SecretBytes, ApiError> {
    match request {
        KeysRequest::Public(_) => done::<Public>(Ok(open.identity().node_id().to_string())),
        KeysRequest::Sign(Sign(data)) => done::<Sign>(
            on_store(open, move |open| {
                open.record("keys.signed", json!({ "bytes": data.0.len() }))?;
                Ok(SecretBytes(open.identity().sign_user(&data.0).to_vec()))
            })
            .await,
        ),
        KeysRequest::Encrypt(Encrypt { to, data }) => done::<Encrypt>(encrypt(&to, &data)),
        KeysRequest::Decrypt(Decrypt(data)) => done::<Decrypt>(
            on_store(open, move |open| {
                open.record("keys.decrypted", json!({ "bytes": data.0.len() }))?;
                let plain = open.identity().decrypt(&data.0).map_err(bad_input)?;
                Ok(SecretBytes(plain.to_vec()))
            })
            .await,
        ),
        KeysRequest::Renew(_) => done::<Renew>(renewal::rotate(open, false).await),
        KeysRequest::Reset(_) => done::<Reset>(renewal::rotate(open, true).await),
        KeysRequest::Cert(Cert { chain }) => {
            done::<Cert>(on_store(open, move |open| certificates(open, chain)).await)
        }
    }
}

fn bad_input(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::BadInput, e.to_string())
}

fn encrypt(to: &str, data: &SecretBytes) -> Result<SecretBytes, ApiError> {
    let to: NodeId = to.parse().map_err(bad_input)?;
    Ok(SecretBytes(
        identity::encrypt_to(&to, &data.0).map_err(bad_input)?,
    ))
}

/// The node's certificate, then with `chain` its renewal certificates, as PEM.
fn certificates(open: &Open, chain: bool) -> Result<Vec<String>, ApiError> {
    let (leaf, _) = open
        .identity()
        .tls_certificate()
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let mut certs = vec![pem(&leaf)];
    if chain {
        let tx = open.store.read()?;
        certs.extend(identity::renewals(&tx)?.iter().map(|c| pem(c)));
    }
    Ok(certs)
}

/// A DER certificate as PEM.
fn pem(cert: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(cert);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
