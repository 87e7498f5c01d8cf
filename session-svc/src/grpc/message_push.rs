//! The RPCs of WeChat's message push: a gateway's relay of one request, and the operator's
//! view of the dead letters (`session-svc admin dead-letters`, `requeue`).
use tonic::Request;
use weapp_proto::session::v1::{self as pb};

use super::{SessionGrpc, timestamp};
use crate::{
    access::{AppScope, caller_apps},
    error::SessionError,
    record::now_millis,
    store::Requeue,
};

/// Dead letters listed when the caller names no limit, and the most ever.
const DEFAULT_LIST: usize = 100;
const MAX_LIST: usize = 1000;

impl SessionGrpc {
    pub(super) async fn relay_wechat_push(
        &self,
        request: &pb::WeChatPushRequest,
    ) -> pb::WeChatPushResponse {
        self.message_push.intake.handle(request).await
    }

    /// The app a dead-letter call is about: the one named (the key must act for it), else
    /// every app for a key that may act for all, else the key's first app.
    fn dead_letters_app<T>(
        &self,
        request: &Request<T>,
        app_id: &str,
    ) -> Result<Option<String>, SessionError> {
        if app_id.is_empty() && caller_apps(request) == AppScope::All {
            return Ok(None);
        }
        let apps = self.live.apps();
        let named = match app_id {
            "" => caller_apps(request)
                .first(&apps.default_app().id)
                .to_owned(),
            named => named.to_owned(),
        };
        Ok(Some(self.acting_for(request, &named)?.to_string()))
    }

    pub(super) async fn list_dead(
        &self,
        request: &Request<pb::ListDeadLettersRequest>,
    ) -> Result<pb::ListDeadLettersResponse, SessionError> {
        let r = request.get_ref();
        let app = self.dead_letters_app(request, &r.app_id)?;
        let limit = match r.limit as usize {
            0 => DEFAULT_LIST,
            n => n.min(MAX_LIST),
        };
        let dead = self
            .message_push
            .store
            .dead_letters(app.as_deref(), limit)
            .await?;
        Ok(pb::ListDeadLettersResponse {
            dead_letters: dead
                .into_iter()
                .map(|e| pb::DeadLetter {
                    event_id: e.event_id,
                    app_id: e.app_id,
                    open_id: e.open_id,
                    received_at: Some(timestamp(e.received_at)),
                    attempts: e.attempts,
                    last_error: e.last_error.unwrap_or_default(),
                    body: e.body,
                })
                .collect(),
        })
    }

    pub(super) async fn requeue_dead(
        &self,
        request: &Request<pb::RequeueDeadLettersRequest>,
    ) -> Result<pb::RequeueDeadLettersResponse, SessionError> {
        let r = request.get_ref();
        let which = match (r.all, r.event_ids.is_empty()) {
            (true, true) => Requeue::All,
            (false, false) => Requeue::Ids(&r.event_ids),
            _ => {
                return Err(SessionError::InvalidArgument(
                    "name the event ids, or ask for all of them (not both)".into(),
                ));
            }
        };
        let app = self.dead_letters_app(request, &r.app_id)?;
        let requeued = self
            .message_push
            .store
            .requeue_dead(app.as_deref(), which, now_millis())
            .await?;
        if requeued > 0 {
            self.message_push.wake.notify_one();
        }
        tracing::info!(
            requeued,
            app = app.as_deref().unwrap_or("*"),
            "dead letters requeued"
        );
        Ok(pb::RequeueDeadLettersResponse { requeued })
    }
}
