//! Pushes that survive a reconnect: every push to a user is kept in the user's stream first,
//! at the next position `(epoch, offset)`, and only then fanned out, so anything a gateway
//! delivers live can already be read back. A socket that reconnects says where it was; the
//! gateway reads what it missed here (`read`), with the session's credentials, and merges it
//! with the live pushes it buffered meanwhile. Modelled on Centrifugo's history and recovery
//! (offset and epoch per stream; `recovered: false` never comes with a partial list).
use std::{sync::Arc, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use weapp_common::config::{duration, positive};

use crate::{
    error::SessionError,
    metrics::SessionMetrics,
    record::now_millis,
    store::{Stream, StreamStore, Window, streams::Entry},
};

/// How often an append reads and tries again when another replica appended first.
const MAX_TRIES: usize = 32;
/// Longest idempotency key.
pub const MAX_KEY_LEN: usize = 128;

/// How much of each user's stream is kept, and how much one resume may send.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct StreamSettings {
    /// Pushes kept per user for reconnecting sockets (older ones: `recovered:false`).
    #[arg(id = "stream_window_count", value_name = "COUNT", long = "stream-window-count", env = "WEAPP_STREAM_WINDOW_COUNT", default_value = "100", value_parser = positive)]
    pub count: usize,
    /// How long a push is kept for reconnecting sockets.
    #[arg(id = "stream_window_age", value_name = "AGE", long = "stream-window-age", env = "WEAPP_STREAM_WINDOW_AGE", default_value = "1h", value_parser = duration)]
    pub age: Duration,
    /// Bytes of push text kept per user (the newest push is kept whatever its size).
    #[arg(id = "stream_window_bytes", value_name = "BYTES", long = "stream-window-bytes", env = "WEAPP_STREAM_WINDOW_BYTES", default_value = "65536", value_parser = positive)]
    pub bytes: usize,
    /// Most pushes one resume sends; a socket that missed more gets `recovered:false`
    /// ("burst") and reloads from its backend.
    #[arg(id = "stream_max_recover", value_name = "COUNT", long = "stream-max-recover", env = "WEAPP_STREAM_MAX_RECOVER", default_value = "100", value_parser = positive)]
    pub max_recover: usize,
}

impl StreamSettings {
    fn window(&self) -> Window {
        Window {
            count: self.count,
            age: self.age,
            bytes: self.bytes,
        }
    }
}

/// A place in a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// What a reconnecting socket gets: where the stream is, and what it missed.
#[derive(Debug, PartialEq, Eq)]
pub struct Resume {
    pub epoch: String,
    pub top: u64,
    /// `None`: recovered (every push after `since` is in `entries`); else why not, and
    /// `entries` is empty.
    pub failure: Option<&'static str>,
    pub entries: Vec<Entry>,
}

pub struct Streams {
    store: Arc<dyn StreamStore>,
    settings: StreamSettings,
    metrics: Arc<SessionMetrics>,
}

fn new_epoch() -> Result<String, SessionError> {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes)
        .map_err(|e| SessionError::Internal(format!("OS random source: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

impl Streams {
    pub fn new(
        store: Arc<dyn StreamStore>,
        settings: StreamSettings,
        metrics: Arc<SessionMetrics>,
    ) -> Self {
        Self {
            store,
            settings,
            metrics,
        }
    }

    /// Keeps each of `pushes` (text, idempotency key) at the user's next positions, in order,
    /// in one write (a push whose key was already appended gets that position and is not
    /// appended again: `false`). Two replicas appending at once: one writes, the other reads
    /// again and takes the next offsets.
    pub async fn append(
        &self,
        open_id: &str,
        app_id: Option<&str>,
        pushes: &[(&str, Option<&str>)],
    ) -> Result<Vec<(Position, bool)>, SessionError> {
        let window = self.settings.window();
        for _ in 0..MAX_TRIES {
            let stored = self.store.load_stream(open_id).await?;
            let expected = stored.as_ref().map(|s| s.top);
            let mut stream = match stored {
                Some(stream) => stream,
                None => Stream::new(new_epoch()?, app_id.map(str::to_owned)),
            };
            let now = now_millis();
            let mut positions = Vec::with_capacity(pushes.len());
            for (text, key) in pushes {
                let kept = key.and_then(|k| stream.keyed(k));
                let (offset, appended) = match kept {
                    Some(offset) => (offset, false),
                    None => (stream.append(text, *key, now, &window), true),
                };
                positions.push((
                    Position {
                        epoch: stream.epoch.clone(),
                        offset,
                    },
                    appended,
                ));
            }
            if positions.iter().all(|(_, appended)| !appended) {
                return Ok(positions);
            }
            if self.store.save_stream(open_id, &stream, expected).await? {
                self.metrics.stream_append(true);
                return Ok(positions);
            }
            self.metrics.stream_append(false);
        }
        Err(SessionError::Unavailable(
            "this user's stream is being written by too many publishers at once; retry".into(),
        ))
    }

    /// Where the user's stream is (created, so that a first socket has an epoch to keep),
    /// and with `since`, what came after it: all of it, or nothing and why.
    pub async fn read(
        &self,
        open_id: &str,
        app_id: Option<&str>,
        since: Option<(&str, u64)>,
    ) -> Result<Resume, SessionError> {
        let now = now_millis();
        let mut stream = match self.store.load_stream(open_id).await? {
            Some(stream) => stream,
            None => {
                let fresh = Stream::new(new_epoch()?, app_id.map(str::to_owned));
                match self.store.save_stream(open_id, &fresh, None).await? {
                    true => fresh,
                    // Another writer created it first: that one.
                    false => self.store.load_stream(open_id).await?.ok_or_else(|| {
                        SessionError::Unavailable("the user's stream vanished".into())
                    })?,
                }
            }
        };
        stream.trim(now, &self.settings.window());
        let Some((epoch, offset)) = since else {
            return Ok(Resume {
                epoch: stream.epoch,
                top: stream.top,
                failure: None,
                entries: Vec::new(),
            });
        };
        let failure = if epoch != stream.epoch {
            Some("epoch")
        } else if offset > stream.top {
            Some("future")
        } else if offset < stream.top && offset + 1 < stream.first_kept() {
            Some("window")
        } else if stream.top - offset > self.settings.max_recover as u64 {
            Some("burst")
        } else {
            None
        };
        let entries = match failure {
            Some(_) => Vec::new(),
            None => stream
                .entries
                .into_iter()
                .filter(|e| e.offset > offset)
                .collect(),
        };
        self.metrics
            .resume(failure.unwrap_or("recovered"), entries.len());
        Ok(Resume {
            epoch: stream.epoch,
            top: stream.top,
            failure,
            entries,
        })
    }

    /// The top of a user's stream, without creating it.
    pub async fn top(&self, open_id: &str) -> Result<Option<Position>, SessionError> {
        Ok(self.store.load_stream(open_id).await?.map(|s| Position {
            epoch: s.epoch,
            offset: s.top,
        }))
    }
}
