//! [`IdentitiesRequest`]: gestalts, trust, discovery, and identity providers.

use std::sync::Arc;

use super::done;
use crate::agent::peers::commands;
use crate::agent::trust::{discovery, gestalts, provider};
use crate::agent::{Open, node_id, on_store};
use crate::api::identities::{
    AuthFinish, AuthStart, Authenticated, Claim, Discover, Get, IdentitiesRequest, Invite, List,
    Permissions, Permit, Queue, Search, Trust,
};
use crate::api::nodes::Claimed;
use crate::api::{ApiError, SecretBytes};
use crate::gestalt::Gestalts;
use crate::notifications::Body;

pub(super) async fn handle(
    open: &Arc<Open>,
    request: IdentitiesRequest,
) -> Result<SecretBytes, ApiError> {
    use IdentitiesRequest as R;
    match request {
        R::List(_) => done::<List>(on_store(open, gestalts::list).await),
        R::Get(Get { gestalt }) => done::<Get>(gestalts::gestalt(open, &gestalt).await),
        R::Permissions(Permissions { gestalt }) => {
            done::<Permissions>(gestalts::gestalt(open, &gestalt).await)
        }
        R::Trust(Trust { gestalt, trust }) => {
            let v = gestalts::vertex(&gestalt)?;
            done::<Trust>(
                on_store(open, move |open| {
                    gestalts::set_trust(open, &gestalts::current(open, v)?, trust)
                })
                .await,
            )
        }
        R::Permit(Permit {
            gestalt,
            permissions,
            allow,
        }) => {
            let v = gestalts::vertex(&gestalt)?;
            done::<Permit>(
                on_store(open, move |open| {
                    gestalts::permit(open, &gestalts::current(open, v)?, &permissions, allow)
                })
                .await,
            )
        }
        R::Invite(Invite { node }) => {
            let node = node_id(&node)?;
            let sent = commands::send_notification(open, node, Body::GestaltInvite).await;
            done::<Invite>(sent.map(|_| Claimed {
                node: node.to_string(),
                invited: true,
                seq: None,
            }))
        }
        R::Discover(Discover { gestalt }) => {
            done::<Discover>(discovery::discover_now(open, &gestalt).await)
        }
        R::Queue(_) => done::<Queue>(
            on_store(open, |open| {
                let tx = open.store.read()?;
                Ok(Gestalts::new(&open.store).queue(&tx)?)
            })
            .await,
        ),
        R::AuthStart(AuthStart { provider }) => {
            done::<AuthStart>(provider::auth_start(open, &provider).await)
        }
        R::AuthFinish(AuthFinish { provider, handle }) => {
            provider::github_only(&provider)?;
            done::<AuthFinish>(provider::auth_finish(open, handle).await)
        }
        R::Authenticated(_) => done::<Authenticated>(
            on_store(open, |open| {
                let tx = open.store.read()?;
                let tokens = Gestalts::new(&open.store).provider_tokens(&tx)?;
                Ok(tokens
                    .iter()
                    .map(|t| format!("{}:{}", t.provider, t.identity))
                    .collect())
            })
            .await,
        ),
        R::Claim(Claim { identity }) => {
            let v = gestalts::vertex(&identity)?;
            done::<Claim>(on_store(open, move |open| provider::claim_identity(open, &v)).await)
        }
        R::Search(Search { provider, term }) => {
            done::<Search>(provider::search(open, &provider, term).await)
        }
    }
}
