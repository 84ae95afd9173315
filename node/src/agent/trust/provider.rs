//! The identity provider (GitHub): device-flow authentication ([`auth_start`],
//! [`auth_finish`]), search, and `pk identities claim` ([`claim_identity`]: a claim in
//! this node's sigchain, published on the provider).
//!
//! Depends on the agent's root only.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::agent::{Open, on_store};
use crate::api::identities::{DeviceAuthStarted, IdentityClaimed};
use crate::api::{ApiError, ErrorCode};
use crate::audit;
use crate::gestalt::{Gestalts, Link, Vertex};
use crate::provider::{GitHub, Poll, ProviderError};
use crate::sigchain::{self, ClaimToken, ClaimType};

/// A device authorisation in progress: the provider's polling interval is respected,
/// and each `slow_down` adds 5 seconds to it, as the device flow asks.
pub(in crate::agent) struct DeviceFlow {
    /// Seconds between polls, as the provider asked.
    interval: u64,
    /// The code the agent polls with (a credential until it expires).
    device_code: zeroize::Zeroizing<String>,
}

/// Starts a device authorisation with `provider`: what the user must do, and the handle
/// that [`auth_finish`] waits on.
pub(in crate::agent) async fn auth_start(
    open: &Arc<Open>,
    provider: &str,
) -> Result<DeviceAuthStarted, ApiError> {
    github_only(provider)?;
    on_store(open, |open| {
        let (auth, device_code) = open.github.start_auth().map_err(provider_error)?;
        let handle = {
            use rand_core::RngCore as _;
            rand_core::OsRng.next_u64()
        };
        open.device_auths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                handle,
                DeviceFlow {
                    interval: auth.interval,
                    device_code: zeroize::Zeroizing::new(device_code),
                },
            );
        Ok(DeviceAuthStarted { handle, auth })
    })
    .await
}

/// Polls the device flow under `handle` until the user approves, refuses or the code
/// expires; stores the token.
pub(in crate::agent) async fn auth_finish(
    open: &Arc<Open>,
    handle: u64,
) -> Result<String, ApiError> {
    let DeviceFlow {
        interval,
        device_code,
    } = open
        .device_auths
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&handle)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such authorisation in progress"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15 * 60);
    let mut interval = Duration::from_secs(interval);
    loop {
        tokio::time::sleep(interval).await;
        let code = device_code.clone();
        let polled = on_store(open, move |open| {
            open.github.poll_auth(&code).map_err(provider_error)
        })
        .await?;
        if let Poll::SlowDown = polled {
            interval += Duration::from_secs(5);
        }
        if let Poll::Approved(token) = polled {
            let identity = format!("{}:{}", token.provider, token.identity);
            return on_store(open, move |open| {
                let fields = json!({ "identity": identity });
                open.audited("identity.authenticated", fields, |tx| {
                    Ok(Gestalts::new(&open.store).put_provider_token(tx, &token)?)
                })?;
                Ok(identity)
            })
            .await;
        }
        if std::time::Instant::now() > deadline {
            return Err(ApiError::new(
                ErrorCode::BadInput,
                "the authorisation was not approved in time; start again",
            ));
        }
    }
}

/// Searches `provider` for identities matching `term`.
pub(in crate::agent) async fn search(
    open: &Arc<Open>,
    provider: &str,
    term: String,
) -> Result<Vec<String>, ApiError> {
    github_only(provider)?;
    on_store(open, move |open| {
        Ok(open
            .github
            .search(&term)
            .map_err(provider_error)?
            .into_iter()
            .map(|login| format!("{}:{login}", GitHub::ID))
            .collect())
    })
    .await
}

/// `pk identities claim`: a claim in this node's sigchain, published on the provider.
pub(in crate::agent) fn claim_identity(
    open: &Open,
    identity: &Vertex,
) -> Result<IdentityClaimed, ApiError> {
    let Vertex::Identity { provider, id } = identity else {
        return Err(ApiError::new(
            ErrorCode::BadInput,
            "claim an identity (provider:identity); nodes are linked with `pk nodes claim`",
        ));
    };
    github_only(provider)?;
    let gestalts = Gestalts::new(&open.store);
    let token = {
        let tx = open.store.read()?;
        gestalts
            .provider_token(&tx, GitHub::ID)?
            .filter(|t| t.identity == *id)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Denied,
                    format!(
                        "this node is not authenticated as {identity}: run `pk identities authenticate github.com` first"
                    ),
                )
            })?
    };
    let me = open.identity().node_id();
    let mut tx = open.store.write()?;
    let claim = sigchain::next_claim(
        &tx,
        &me,
        ClaimType::ClaimLinkIdentity,
        &identity.to_string(),
    )?;
    let signed = ClaimToken::sign(&claim, &open.identity());
    // Published first: a claim in the chain that the provider never got would prove
    // nothing; a published claim whose append failed is only an orphan gist.
    let url = open
        .github
        .publish(&token, &signed)
        .map_err(provider_error)?;
    let seq = sigchain::append(&mut tx, &signed)?;
    gestalts.add_link(
        &mut tx,
        &Link {
            a: Vertex::Node(me),
            b: identity.clone(),
            claim: signed,
            url: Some(url.clone()),
        },
    )?;
    audit::append(
        &mut tx,
        "identity.claimed",
        json!({ "identity": identity, "url": url, "seq": seq }),
    )?;
    tx.commit()?;
    Ok(IdentityClaimed {
        identity: identity.to_string(),
        url,
        seq,
    })
}

/// Refuses every provider but GitHub, the only one there is.
pub(in crate::agent) fn github_only(provider: &str) -> Result<(), ApiError> {
    if provider == GitHub::ID || provider == "github" {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::BadInput,
            format!("unknown identity provider {provider:?}: the providers are: github.com"),
        ))
    }
}

/// A provider's error, with the code `pk` acts on.
pub(super) fn provider_error(e: ProviderError) -> ApiError {
    let code = match e {
        ProviderError::Refused { .. } => ErrorCode::Denied,
        ProviderError::Expired(_) => ErrorCode::BadInput,
        _ => ErrorCode::Unavailable,
    };
    ApiError::new(code, e.to_string())
}
