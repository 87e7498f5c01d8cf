//! What a call may touch, decided from the caller's key and the session it presents: the app
//! a call acts for (never a client's word alone), the apps a push may reach, and a publish's
//! pushes kept in their users' streams before any gateway sees them.
use std::sync::Arc;

use tonic::Request;
use weapp_proto::session::v1::{self as pb, subject};

use super::{STREAM_WRITERS, SessionGrpc};
use crate::{
    access::{AppScope, caller_apps},
    apps::AppUser,
    error::SessionError,
    record::SessionRecord,
};

impl SessionGrpc {
    /// A live session and its app; a session of an app no longer served is refused like a
    /// revoked one (it stays in the store: adding the app back restores it).
    pub(super) async fn session(
        &self,
        id: &str,
        skey: &str,
    ) -> Result<(SessionRecord, Arc<str>), SessionError> {
        let record = self.sessions.validate(id, skey).await?;
        let app = self
            .live
            .apps()
            .of_record(record.app_id.as_deref())
            .map(|app| app.id.clone())
            .ok_or(SessionError::Unauthenticated)?;
        Ok((record, app))
    }

    /// The user a request is about: a session's (the session must be live; it acts for its
    /// own app), or an openId of an app given by a trusted backend whose key may act for it.
    pub(super) async fn user_of<T>(
        &self,
        request: &Request<T>,
        subject: Option<pb::Subject>,
    ) -> Result<AppUser, SessionError> {
        let Some(pb::Subject { subject, app_id }) = subject else {
            return Err(SessionError::InvalidArgument(
                "subject is required: a session (id and skey) or an open_id".into(),
            ));
        };
        match subject {
            Some(subject::Subject::Session(c)) => {
                let (record, app_id) = self.session(&c.id, &c.skey).await?;
                Ok(AppUser {
                    app_id,
                    open_id: record.user.open_id().to_owned(),
                })
            }
            Some(subject::Subject::OpenId(id)) if !id.is_empty() && id.len() <= 128 => {
                Ok(AppUser {
                    app_id: self.acting_for(request, &app_id)?,
                    open_id: id,
                })
            }
            Some(subject::Subject::OpenId(_)) => Err(SessionError::InvalidArgument(
                "open_id must be 1 to 128 characters".into(),
            )),
            None => Err(SessionError::InvalidArgument(
                "subject is required: a session (id and skey) or an open_id".into(),
            )),
        }
    }

    /// The app a call names (empty: the default app), if it is served and the caller's key
    /// may act for it.
    pub(super) fn acting_for<T>(
        &self,
        request: &Request<T>,
        app_id: &str,
    ) -> Result<Arc<str>, SessionError> {
        let apps = self.live.apps();
        let app = apps.resolve(app_id)?;
        if !caller_apps(request).allows(&app.id, &apps.default_app().id) {
            return Err(SessionError::PermissionDenied(format!(
                "this API key may not act for app {:?}",
                app.id
            )));
        }
        Ok(app.id.clone())
    }

    /// Whether the caller's key may act for a stored record's app.
    pub(super) fn may_act_for_record<T>(
        &self,
        request: &Request<T>,
    ) -> impl Fn(Option<&str>) -> bool {
        let apps = self.live.apps();
        let scope = caller_apps(request);
        move |stored: Option<&str>| {
            apps.of_record(stored)
                .is_some_and(|app| scope.allows(&app.id, &apps.default_app().id))
        }
    }

    /// Narrows each message to the apps the caller may act for (and the one it names):
    /// gateways deliver a message only to sockets of those apps.
    pub(super) fn scope_messages<T>(
        &self,
        request: &Request<T>,
        messages: &mut [pb::PushMessage],
    ) -> Result<(), SessionError> {
        let apps = self.live.apps();
        let default = apps.default_app().id.clone();
        let scope = caller_apps(request);
        for message in messages {
            // What only session-svc sets.
            message.position = None;
            message.probe = false;
            message.within_apps = if !message.app_id.is_empty() {
                vec![self.acting_for(request, &message.app_id)?.to_string()]
            } else {
                match &scope {
                    AppScope::All => Vec::new(),
                    AppScope::DefaultOnly => vec![default.to_string()],
                    AppScope::Listed(listed) => listed.iter().map(|a| a.to_string()).collect(),
                }
            };
        }
        Ok(())
    }

    /// Keeps each push to a user in the user's stream, in request order for each user, before
    /// any gateway sees it (a live push can always be read back). Users' streams are written
    /// side by side. A retry of a push already kept (its idempotency key) appends nothing and
    /// delivers nothing again: it only counts sockets.
    pub(super) async fn keep(&self, messages: &mut [pb::PushMessage]) -> Result<(), SessionError> {
        use futures::{StreamExt as _, TryStreamExt as _};
        let mut by_user: std::collections::HashMap<String, Vec<usize>> = Default::default();
        for (index, message) in messages.iter().enumerate() {
            if let Some(pb::push_message::Target::OpenId(open_id)) = &message.target
                && !message.skip_history
            {
                by_user.entry(open_id.clone()).or_default().push(index);
            }
        }
        let messages_ref = &*messages;
        let kept: Vec<Vec<(usize, crate::streams::Position, bool)>> =
            futures::stream::iter(by_user)
                .map(|(open_id, indices)| async move {
                    let first = &messages_ref[indices[0]];
                    let app = first
                        .within_apps
                        .first()
                        .filter(|_| first.within_apps.len() == 1);
                    let pushes: Vec<(&str, Option<&str>)> = indices
                        .iter()
                        .map(|&index| {
                            let message = &messages_ref[index];
                            let key = (!message.idempotency_key.is_empty())
                                .then_some(message.idempotency_key.as_str());
                            (message.text.as_str(), key)
                        })
                        .collect();
                    let positions = self
                        .streams
                        .append(&open_id, app.map(String::as_str), &pushes)
                        .await?;
                    Ok::<_, SessionError>(
                        indices
                            .into_iter()
                            .zip(positions)
                            .map(|(index, (position, appended))| (index, position, appended))
                            .collect(),
                    )
                })
                .buffer_unordered(STREAM_WRITERS)
                .try_collect()
                .await?;
        for (index, position, appended) in kept.into_iter().flatten() {
            let message = &mut messages[index];
            message.position = Some(pb::StreamPosition {
                epoch: position.epoch,
                offset: position.offset,
            });
            message.probe = !appended;
        }
        Ok(())
    }
}
