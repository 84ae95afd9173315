//! `pk keys renew` and `pk keys reset`: a new node key, certified by the old one (a
//! renewal) or not (a reset), and the peer endpoint told to present it.
//!
//! May depend on the peer pool (the endpoint's key) and the agent's root.

use std::sync::Arc;

use serde_json::json;

use crate::agent::{Open, blocking, store_error};
use crate::api::keys::KeyChanged;
use crate::api::{ApiError, ErrorCode};
use crate::audit;
use crate::gestalt::{Gestalts, Vertex};
use crate::sigchain::{self, ClaimToken, ClaimType};

/// `pk keys renew` (`reset` false) and `pk keys reset`: a new node key. A renewal is
/// certified by the old key (a certificate peers follow, and a claim signed by both keys
/// in the sigchain), so the node's links and everything shared with it carry over. A
/// reset starts a fresh identity: a new, empty sigchain and no links.
pub(in crate::agent) async fn rotate(
    open: &Arc<Open>,
    reset: bool,
) -> Result<KeyChanged, ApiError> {
    let old = open.identity();
    let new = Arc::new(crate::identity::Identity::generate());
    let renewals = {
        let (open, old, new) = (open.clone(), old.clone(), new.clone());
        blocking(move || {
            let internal = |e: rcgen::Error| ApiError::new(ErrorCode::Internal, e.to_string());
            let mut tx = open.store.write().map_err(store_error)?;
            new.store_as_node_key(&mut tx).map_err(store_error)?;
            let (from, to) = (Vertex::Node(old.node_id()), Vertex::Node(new.node_id()));
            let gestalts = Gestalts::new(&open.store);
            if reset {
                crate::identity::record_renewal(&mut tx, None).map_err(store_error)?;
                sigchain::clear(&mut tx).map_err(store_error)?;
                gestalts.unlink(&mut tx, &from).map_err(store_error)?;
            } else {
                let cert = old.certify(&new).map_err(internal)?;
                crate::identity::record_renewal(&mut tx, Some(&cert)).map_err(store_error)?;
                let claim = sigchain::next_claim(
                    &tx,
                    &old.node_id(),
                    ClaimType::ClaimKeyRenew,
                    &new.node_id().to_string(),
                )
                .map_err(store_error)?;
                let mut token = ClaimToken::sign(&claim, &old);
                token.add_signature(&new);
                sigchain::append(&mut tx, &token).map_err(store_error)?;
                gestalts
                    .rename_vertex(&mut tx, &from, &to)
                    .map_err(store_error)?;
            }
            audit::append(
                &mut tx,
                if reset { "keys.reset" } else { "keys.renewed" },
                json!({ "was": old.node_id(), "now": new.node_id() }),
            )
            .map_err(store_error)?;
            tx.commit().map_err(store_error)?;
            let tx = open.store.read().map_err(store_error)?;
            crate::identity::renewals(&tx).map_err(store_error)
        })
        .await?
    };
    *open.identity.lock().unwrap_or_else(|p| p.into_inner()) = new.clone();
    if let Some(net) = open.net.get() {
        net.set_identity(&new, renewals)?;
    }
    Ok(KeyChanged {
        was: old.node_id().to_string(),
        now: new.node_id().to_string(),
        certified: !reset,
    })
}
