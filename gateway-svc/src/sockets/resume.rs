//! A `/ws` socket that said where it was (`since=EPOCH:OFFSET`, or `since=` for "from now"):
//! after the greeting, a resume frame, what it missed in order, then live pushes — each as a
//! positioned frame, exactly once, with no gap at the switch.
//!
//! The switch: the socket is registered before the upgrade (so live pushes queue in its
//! outbox from then on), the stream is read after it, and the queued pushes are merged by
//! offset: what the read already sent is dropped, the next one is sent, one from further on
//! waits. Replicas publish one user's pushes concurrently, so a push can overtake the one
//! before it: it waits [`REORDER_WAIT`], then the gap is filled from the stream (every push is
//! kept before it is fanned out, so the missing one is there). If it cannot be, the socket is
//! closed with [`RESUME`], which asks the client to reconnect with where it got to.
//!
//! A socket without `since` never comes here: it is the tutorial's, byte for byte.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::extract::ws::close_code;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::{sync::mpsc, time::Instant};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use weapp_proto::session::v1::ReadStreamResponse;
use weapp_wire::since::Since;

use crate::{
    error::ApiError,
    sockets::closing::{
        BROKEN, CLIENT_CLOSED, TRY_AGAIN_LATER, close, close_slow, ended, refuse, send_queued,
    },
    sockets::outbox::{Outbox, Queued, SLOW_CLIENT},
    sockets::upgrade::{self, Socket},
    state::AppState,
};

/// Close code: "reconnect with `since` where you got to" (a gap that could not be filled, or
/// a stream that was lost while the socket was open).
pub const RESUME: u16 = 4009;
/// How long a push that overtook the one before it waits for it.
pub const REORDER_WAIT: Duration = Duration::from_millis(250);

/// What a resuming socket keeps from its upgrade request.
pub struct Resuming {
    /// The session's credentials: the stream is read with them (a revoked session reads
    /// nothing, a user reads only their own stream).
    pub credentials: (String, String),
    pub since: Since,
}

/// The socket's place in its user's stream.
struct Place {
    epoch: Arc<str>,
    /// The last offset sent.
    last: u64,
    /// Pushes that came before their turn, by offset.
    waiting: BTreeMap<u64, Utf8Bytes>,
    /// When the oldest of them stops waiting.
    fill_at: Option<Instant>,
    /// Pushes sent since the last count.
    sent: u64,
}

fn push_frame(epoch: &str, offset: u64, text: &str) -> Utf8Bytes {
    json!({ "t": "push", "epoch": epoch, "offset": offset, "text": text })
        .to_string()
        .into()
}

/// The resume frame for what the stream read said.
fn resume_frame(since: &Since, read: &ReadStreamResponse) -> Utf8Bytes {
    let frame = match (since, read.recovered) {
        (Since::Now, _) => json!({
            "t": "resume", "recovering": false, "epoch": read.epoch, "top": read.top,
        }),
        (Since::At { offset, .. }, true) => json!({
            "t": "resume", "recovering": true, "recovered": true, "epoch": read.epoch,
            "since": offset, "top": read.top, "missed": read.entries.len(),
        }),
        _ => json!({
            "t": "resume", "recovering": true, "recovered": false, "reason": read.reason,
            "epoch": read.epoch, "top": read.top,
        }),
    };
    frame.to_string().into()
}

/// Reads the stream after `since` (None: where it is now).
async fn read(
    state: &AppState,
    resuming: &Resuming,
    since: Option<(String, u64)>,
) -> Result<ReadStreamResponse, ApiError> {
    state
        .sessions
        .read_stream(resuming.credentials.clone(), since)
        .await
        .map_err(|status| ApiError::validate(&status))
}

/// What woke a resuming socket.
enum Woke {
    Outbox,
    Ping,
    Reply(Utf8Bytes),
    Close(u16, &'static str),
    /// A push has waited long enough for the one before it.
    Fill,
}

/// Serves a socket that resumes, until it ends; the close code it ended with. The same
/// socket as `ws::serve` (greeting, echo or relay, keep-alive), with the stream merged in.
pub async fn serve(
    socket: &mut Socket,
    state: &AppState,
    (outbox, relay): (&Arc<Outbox>, Option<&mpsc::Sender<Utf8Bytes>>),
    (resuming, greeting): (&Resuming, Option<Utf8Bytes>),
) -> u16 {
    let (metrics, settings, keepalive) = (&state.metrics, &state.settings.ws, &state.keepalive);
    if let Some(greeting) = greeting {
        if socket.send(Message::Text(greeting)).await.is_err() {
            return BROKEN;
        }
        metrics.ws_messages_out.increment(1);
    }
    let since = match &resuming.since {
        Since::Now => None,
        Since::At { epoch, offset } => Some((epoch.clone(), *offset)),
        // Read as a position of a lost stream: recovered:false, "epoch".
        Since::Malformed => Some((String::new(), 0)),
    };
    let answer = match read(state, resuming, since).await {
        Ok(answer) => answer,
        Err(e @ ApiError::InvalidSession(_)) => {
            refuse(socket, &e, close_code::POLICY).await;
            return close_code::POLICY;
        }
        Err(e) => {
            refuse(socket, &e, TRY_AGAIN_LATER).await;
            return TRY_AGAIN_LATER;
        }
    };
    if socket
        .send(Message::Text(resume_frame(&resuming.since, &answer)))
        .await
        .is_err()
    {
        return BROKEN;
    }
    let mut place = Place {
        epoch: Arc::from(answer.epoch.as_str()),
        last: 0,
        waiting: BTreeMap::new(),
        fill_at: None,
        sent: 0,
    };
    for entry in &answer.entries {
        if let Err(code) = send_push(socket, &mut place, entry.offset, &entry.text).await {
            return code;
        }
    }
    // Live pushes follow from the top, whether or not the missed ones could be sent.
    place.last = answer.top;
    keepalive.schedule(outbox, Instant::now() + settings.ping_interval);
    let mut ping_sent: Option<Instant> = None;
    loop {
        let fill_at = place.fill_at;
        let woke = tokio::select! {
            _ = outbox.ready() => match (outbox.take_keepalive(), ping_sent) {
                (false, _) => Woke::Outbox,
                (true, Some(_)) => Woke::Close(close_code::AWAY, "keep-alive timeout"),
                (true, None) => {
                    let now = Instant::now();
                    ping_sent = Some(now);
                    keepalive.schedule(outbox, now + settings.pong_timeout);
                    Woke::Ping
                }
            },
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    metrics.ws_messages_in.increment(1);
                    match relay {
                        None => Woke::Reply(format!("Server: Received({})", text.as_str()).into()),
                        Some(relay) => match relay.try_send(text) {
                            Ok(()) => continue,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                Woke::Close(close_code::POLICY, "too many messages waiting for an answer")
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return BROKEN,
                        },
                    }
                }
                Some(Ok(Message::Binary(_) | Message::Frame(_))) => {
                    Woke::Close(close_code::UNSUPPORTED, "text messages only")
                }
                Some(Ok(Message::Pong(_) | Message::Ping(_))) => {
                    if let Some(sent) = ping_sent.take() {
                        keepalive.schedule(outbox, sent + settings.ping_interval);
                    }
                    continue;
                }
                Some(Ok(Message::Close(_))) => return CLIENT_CLOSED,
                None => return BROKEN,
                Some(Err(e)) => match upgrade::close_for(&e) {
                    Some((code, why)) => Woke::Close(code, why),
                    None => return BROKEN,
                },
            },
            () = async {
                match fill_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => Woke::Fill,
        };
        let done = match woke {
            Woke::Outbox => from_outbox(socket, state, outbox, &mut place).await,
            Woke::Fill => fill_gap(socket, state, resuming, &mut place).await.err(),
            Woke::Ping => socket
                .send(Message::Ping(Default::default()))
                .await
                .err()
                .map(|_| BROKEN),
            Woke::Reply(reply) => match socket.send(Message::Text(reply)).await {
                Ok(()) => {
                    metrics.ws_messages_out.increment(1);
                    None
                }
                Err(_) => Some(BROKEN),
            },
            Woke::Close(code, reason) => {
                let _ = socket.send(close(code, reason)).await;
                Some(code)
            }
        };
        metrics
            .ws_messages_out
            .increment(std::mem::take(&mut place.sent));
        if let Some(code) = done {
            return code;
        }
    }
}

/// The socket's end, or what was queued for it, merged into its place. Some(code): done.
async fn from_outbox(
    socket: &mut Socket,
    state: &AppState,
    outbox: &Outbox,
    place: &mut Place,
) -> Option<u16> {
    if let Some(code) = ended(socket, outbox).await {
        return Some(code);
    }
    while let Some(queued) = outbox.next() {
        if let Err(code) = take(socket, outbox, place, queued, state).await {
            return Some(code);
        }
    }
    if outbox.overflowed() {
        close_slow(socket).await;
        return Some(SLOW_CLIENT);
    }
    None
}

/// One queued message: a plain one (a relay's answer) goes out as it is; a push goes out in
/// offset order, once.
async fn take(
    socket: &mut Socket,
    outbox: &Outbox,
    place: &mut Place,
    queued: Queued,
    state: &AppState,
) -> Result<(), u16> {
    let Some(position) = queued.position else {
        return send_queued(socket, queued.text, outbox)
            .await
            .map_err(|()| BROKEN);
    };
    if *position.epoch != *place.epoch {
        // The stream was lost and started again: what this socket holds means nothing now.
        let _ = socket.send(close(RESUME, "stream restarted: resume")).await;
        return Err(RESUME);
    }
    if position.offset <= place.last {
        return Ok(());
    }
    if position.offset > place.last + 1 {
        state.metrics.stream_reorders.increment(1);
        place.waiting.insert(position.offset, queued.text);
        place.fill_at.get_or_insert(Instant::now() + REORDER_WAIT);
        return Ok(());
    }
    send_push(socket, place, position.offset, &queued.text).await?;
    send_waiting(socket, place).await
}

async fn send_push(
    socket: &mut Socket,
    place: &mut Place,
    offset: u64,
    text: &str,
) -> Result<(), u16> {
    let frame = push_frame(&place.epoch, offset, text);
    if socket.send(Message::Text(frame)).await.is_err() {
        return Err(BROKEN);
    }
    place.last = offset;
    place.sent += 1;
    Ok(())
}

/// Sends the waiting pushes that are next in turn.
async fn send_waiting(socket: &mut Socket, place: &mut Place) -> Result<(), u16> {
    while let Some(entry) = place.waiting.first_entry() {
        let offset = *entry.key();
        if offset <= place.last {
            entry.remove();
            continue;
        }
        if offset != place.last + 1 {
            break;
        }
        let text = entry.remove();
        send_push(socket, place, offset, &text).await?;
    }
    if place.waiting.is_empty() {
        place.fill_at = None;
    }
    Ok(())
}

/// The push before the waiting ones never came live: read from the stream what the socket
/// has not sent, send it, then what waited. A stream that cannot say: close, asking the
/// client to resume.
async fn fill_gap(
    socket: &mut Socket,
    state: &AppState,
    resuming: &Resuming,
    place: &mut Place,
) -> Result<(), u16> {
    place.fill_at = None;
    let since = Some((place.epoch.to_string(), place.last));
    let read = match read(state, resuming, since).await {
        Ok(read) if read.recovered => read,
        Ok(_) | Err(_) => {
            let _ = socket.send(close(RESUME, "missed pushes: resume")).await;
            return Err(RESUME);
        }
    };
    state.metrics.stream_gaps_filled.increment(1);
    // Everything after the last sent, up to the stream's top: contiguous, as the read says;
    // what waited and is now behind goes, what is further on still waits its turn.
    for entry in &read.entries {
        if entry.offset == place.last + 1 {
            send_push(socket, place, entry.offset, &entry.text).await?;
        }
    }
    send_waiting(socket, place).await?;
    if !place.waiting.is_empty() {
        place.fill_at = Some(Instant::now() + REORDER_WAIT);
    }
    Ok(())
}
