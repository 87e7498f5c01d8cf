//! The gateway's side of session-svc's revocation feed (`revocations.rs` there): follows
//! `WatchRevocations` of one live replica for as long as the gateway runs, moving to another
//! (after a short backoff) when its stream breaks.
//! Each revocation evicts the session from the cache and closes its open WebSockets; a broken
//! or silent stream empties the cache, and once a new stream has spoken, the sessions of open
//! WebSockets are checked again (revocations may have been missed meanwhile). Pushes come on
//! the same stream: handed to the open sockets at once, then reported back.
use std::{sync::Arc, time::Duration};

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use weapp_proto::session::v1::{Push, push_message, revocation::Event};

use crate::{
    sessions::cache::{REVOCATION_BOUND, SessionCache},
    sessions::client::{Followed, SessionClient},
    sessions::replicas::Replica,
    sockets::open::{OpenSockets, Outgoing, Target},
    sockets::outbox::Position,
};

/// Most ids sent in one CheckSessions call (session-svc takes up to 10,000).
const CHECK_BATCH: usize = 5_000;

pub async fn follow(
    cache: Arc<SessionCache>,
    sockets: Arc<OpenSockets>,
    client: SessionClient,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            stream = client.watch_revocations() => stream,
        };
        let mut recheck = true;
        match stream {
            Ok(Followed {
                mut stream,
                replica,
            }) => loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = tokio::time::timeout(REVOCATION_BOUND, stream.message()) => next,
                };
                match next {
                    Ok(Ok(Some(revocation))) => {
                        match revocation.event {
                            Some(Event::SessionId(id)) => {
                                cache.revoke_session(&id);
                                sockets.revoke_session(&id);
                            }
                            Some(Event::OpenId(open_id)) => {
                                cache.revoke_user(&open_id);
                                sockets.revoke_user(&open_id);
                            }
                            // Not revoked: only the cached answers are stale.
                            Some(Event::UserChanged(open_id)) => cache.revoke_user(&open_id),
                            // Rare (an operator removed an app): every cached answer goes, the
                            // app's sockets close; its sessions are refused from now on.
                            Some(Event::AppRemoved(app_id)) => {
                                tracing::warn!(app = %app_id, "app no longer served: its sessions refused, its sockets closed");
                                cache.reset();
                                sockets.revoke_app(&app_id);
                            }
                            Some(Event::Push(push)) => deliver(&sockets, &client, &replica, push),
                            Some(Event::Heartbeat(_)) | None => {}
                        }
                        // After applying the event: "heard" means "up to date".
                        cache.heard();
                        backoff = Duration::from_millis(50);
                        if std::mem::take(&mut recheck) {
                            tokio::spawn(recheck_open_sockets(
                                sockets.clone(),
                                client.clone(),
                                shutdown.clone(),
                            ));
                        }
                    }
                    Ok(Ok(None)) => {
                        tracing::info!("revocation stream ended; session cache emptied");
                        break;
                    }
                    Ok(Err(status)) => {
                        tracing::warn!(code = ?status.code(), message = status.message(), "revocation stream failed; session cache emptied");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!("revocation stream silent; session cache emptied");
                        break;
                    }
                }
            },
            Err(status) => {
                tracing::debug!(code = ?status.code(), "cannot open the revocation stream yet");
            }
        }
        cache.reset();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Hands a push's messages to the open sockets, in order, and reports the counts without
/// holding up the stream.
fn deliver(sockets: &OpenSockets, client: &SessionClient, replica: &Arc<Replica>, push: Push) {
    let counts: Vec<u64> = push
        .messages
        .into_iter()
        .map(|message| {
            let text = Utf8Bytes::from(message.text);
            let within = &message.within_apps;
            let push = Outgoing {
                text: &text,
                position: message.position.map(|p| Position {
                    epoch: Arc::from(p.epoch),
                    offset: p.offset,
                }),
                probe: message.probe,
            };
            match &message.target {
                Some(push_message::Target::OpenId(id)) => {
                    sockets.deliver(Target::User(id), within, &push)
                }
                Some(push_message::Target::SessionId(id)) => {
                    sockets.deliver(Target::Session(id), within, &push)
                }
                Some(push_message::Target::UnionId(id)) => {
                    sockets.deliver(Target::Person(id), within, &push)
                }
                None => 0,
            }
        })
        .collect();
    client
        .metrics()
        .pushes_delivered
        .increment(counts.iter().sum());
    let (client, replica) = (client.clone(), replica.clone());
    tokio::spawn(async move {
        if let Err(status) = client
            .report_delivery(&replica, push.id, push.follower, counts)
            .await
        {
            tracing::debug!(code = ?status.code(), "push delivery not reported");
        }
    });
}

/// Closes the open sockets of sessions that ended while the revocation stream was down. Run
/// after the stream is back, so later revocations arrive through it; retried a few times if
/// session-svc cannot answer, and again at the next reconnection in any case.
async fn recheck_open_sockets(
    sockets: Arc<OpenSockets>,
    client: SessionClient,
    shutdown: CancellationToken,
) {
    let ids = sockets.session_ids();
    if ids.is_empty() {
        return;
    }
    let mut closed = 0usize;
    for batch in ids.chunks(CHECK_BATCH) {
        let mut attempt = 0;
        let ended = loop {
            match client.ended_sessions(batch.to_vec()).await {
                Ok(ended) => break ended,
                Err(status) if attempt < 3 => {
                    attempt += 1;
                    tracing::debug!(code = ?status.code(), "cannot recheck open sockets yet");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), "open sockets not rechecked after a revocation stream outage");
                    return;
                }
            }
        };
        closed += ended.len();
        for id in ended {
            sockets.revoke_session(&id);
        }
    }
    if closed > 0 {
        tracing::info!(
            closed,
            "closed sockets of sessions revoked while the revocation stream was down"
        );
    }
}
