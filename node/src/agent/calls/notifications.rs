//! [`NotificationsRequest`]: sending notifications, and the inbox and outbox.

use std::sync::Arc;

use super::done;
use crate::agent::peers::commands;
use crate::agent::{Open, node_id, on_store};
use crate::api::notifications::{List, NotificationsRequest, Read, Remove, Send};
use crate::api::{ApiError, ErrorCode, SecretBytes};
use crate::notifications::{Body, Notifications};

pub(super) async fn handle(
    open: &Arc<Open>,
    request: NotificationsRequest,
) -> Result<SecretBytes, ApiError> {
    match request {
        NotificationsRequest::Send(Send { node, text }) => {
            let node = node_id(&node)?;
            let body = Body::Message { text };
            body.check()
                .map_err(|e| ApiError::new(ErrorCode::BadInput, e))?;
            done::<Send>(commands::send_notification(open, node, body).await)
        }
        NotificationsRequest::List(List { mailbox, unread }) => done::<List>(
            on_store(open, move |open| {
                let mut list = Notifications::new(&open.store).list(mailbox)?;
                if unread {
                    list.retain(|n| !n.read);
                }
                Ok(list)
            })
            .await,
        ),
        NotificationsRequest::Read(Read { id }) => done::<Read>(
            on_store(open, move |open| {
                Ok(Notifications::new(&open.store).mark_read(id)? as u64)
            })
            .await,
        ),
        NotificationsRequest::Remove(Remove { mailbox, id }) => done::<Remove>(
            on_store(open, move |open| {
                let n = Notifications::new(&open.store).remove(mailbox, id)?;
                if n == 0 && id.is_some() {
                    return Err(ApiError::new(ErrorCode::NotFound, "no such notification"));
                }
                Ok(n as u64)
            })
            .await,
        ),
    }
}
