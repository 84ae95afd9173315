//! [`KeyslotsRequest`]: keyslot changes `pk keyslots` made, for the audit log.

use std::sync::Arc;

use serde_json::json;

use super::done;
use crate::agent::{Shared, record_or_remember};
use crate::api::keyslots::{Changed, KeyslotEvent, KeyslotsRequest};
use crate::api::{ApiError, SecretBytes};

pub(super) async fn handle(
    shared: &Arc<Shared>,
    request: KeyslotsRequest,
) -> Result<SecretBytes, ApiError> {
    match request {
        KeyslotsRequest::Changed(Changed { event, slot, kind }) => {
            let fields = json!({ "slot": slot, "kind": kind });
            let event = match event {
                KeyslotEvent::Enrolled => "keyslot.enrolled",
                KeyslotEvent::Removed => "keyslot.removed",
            };
            done::<Changed>(record_or_remember(shared, event, fields).await)
        }
    }
}
