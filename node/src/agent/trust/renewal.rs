//! `pk keys renew` and `pk keys reset`: a new node key, certified by the old one (a
//! renewal) or not (a reset), and the peer endpoint told to present it.
//!
//! May depend on the peer pool (the endpoint's key) and the agent's root.

use std::sync::Arc;

use serde_json::json;

use rustls::pki_types::CertificateDer;

use crate::agent::{Open, on_store};
use crate::api::keys::KeyChanged;
use crate::api::{ApiError, ErrorCode};
use crate::gestalt::{Gestalts, Vertex};
use crate::identity::Identity;
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
    let new = Arc::new(Identity::generate());
    let renewals = {
        let (old, new) = (old.clone(), new.clone());
        on_store(open, move |open| store_key(open, &old, &new, reset)).await?
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

/// Stores `new` as the node key, renewed from `old` or reset, in one audited transaction
/// (`keys.renewed` or `keys.reset`); the renewal certificates to present with it.
fn store_key(
    open: &Open,
    old: &Identity,
    new: &Identity,
    reset: bool,
) -> Result<Vec<CertificateDer<'static>>, ApiError> {
    let event = if reset { "keys.reset" } else { "keys.renewed" };
    let fields = json!({ "was": old.node_id(), "now": new.node_id() });
    open.audited(event, fields, |tx| {
        new.store_as_node_key(tx)?;
        let (from, to) = (Vertex::Node(old.node_id()), Vertex::Node(new.node_id()));
        let gestalts = Gestalts::new(&open.store);
        if reset {
            crate::identity::record_renewal(tx, None)?;
            sigchain::clear(tx)?;
            gestalts.unlink(tx, &from)?;
        } else {
            let cert = old
                .certify(new)
                .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
            crate::identity::record_renewal(tx, Some(&cert))?;
            let claim = sigchain::next_claim(
                tx,
                &old.node_id(),
                ClaimType::ClaimKeyRenew,
                &new.node_id().to_string(),
            )?;
            let mut token = ClaimToken::sign(&claim, old);
            token.add_signature(new);
            sigchain::append(tx, &token)?;
            gestalts.rename_vertex(tx, &from, &to)?;
        }
        Ok(())
    })?;
    let tx = open.store.read()?;
    Ok(crate::identity::renewals(&tx)?)
}
