//! Users' streams of pushes, as the stores keep them: one record per user (openId) holding the
//! epoch, the top offset and the window of recent entries. A stream is replaced whole, and
//! only if the stored one is still the one it was computed from (compare-and-swap on `top`):
//! two replicas appending at once never hand out one offset twice, and an offset acknowledged
//! once is never reused (MongoDB writes it with majority write concern).
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::record::UnixMillis;

/// One kept push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(rename = "o")]
    pub offset: u64,
    #[serde(rename = "t")]
    pub text: String,
    /// When it was appended (the window's age).
    pub at: UnixMillis,
    /// The publisher's idempotency key, if it gave one.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A user's stream: `epoch` and `top` outlive the entries the window lets go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    pub epoch: String,
    /// The last offset handed out (0: none yet).
    pub top: u64,
    /// The user's app, when known (records name their app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The kept entries, oldest first, contiguous, the last one `top`.
    pub entries: Vec<Entry>,
}

/// How much of a stream is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub count: usize,
    pub age: Duration,
    pub bytes: usize,
}

impl Stream {
    pub fn new(epoch: String, app_id: Option<String>) -> Self {
        Self {
            epoch,
            top: 0,
            app_id,
            entries: Vec::new(),
        }
    }

    /// The offset of the entry a publisher's `key` already appended, if it is still kept.
    pub fn keyed(&self, key: &str) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.key.as_deref() == Some(key))
            .map(|e| e.offset)
    }

    /// Appends `text` at the next offset and lets go of what the window no longer keeps.
    pub fn append(
        &mut self,
        text: &str,
        key: Option<&str>,
        now: UnixMillis,
        window: &Window,
    ) -> u64 {
        self.top += 1;
        self.entries.push(Entry {
            offset: self.top,
            text: text.to_owned(),
            at: now,
            key: key.map(str::to_owned),
        });
        self.trim(now, window);
        self.top
    }

    /// Drops the oldest entries past the window's count, bytes (the newest stays, however
    /// big) or age.
    pub fn trim(&mut self, now: UnixMillis, window: &Window) {
        let oldest = now.saturating_sub(i64::try_from(window.age.as_millis()).unwrap_or(i64::MAX));
        let mut bytes: usize = self.entries.iter().map(|e| e.text.len()).sum();
        let mut drop = 0;
        while let Some(entry) = self.entries.get(drop) {
            let left = self.entries.len() - drop;
            let aged = entry.at < oldest;
            let too_many = left > window.count;
            let too_big = bytes > window.bytes && left > 1;
            if !(aged || too_many || too_big) {
                break;
            }
            bytes -= entry.text.len();
            drop += 1;
        }
        self.entries.drain(..drop);
    }

    /// The first offset still kept (`top + 1` when none is).
    pub fn first_kept(&self) -> u64 {
        self.entries.first().map_or(self.top + 1, |e| e.offset)
    }
}

#[async_trait]
pub trait StreamStore: Send + Sync + 'static {
    /// A user's stream, if anything was ever published to them.
    async fn load_stream(&self, open_id: &str) -> Result<Option<Stream>, StoreError>;
    /// Stores `stream` for the user if the stored one's top is still `expected` (`None`: no
    /// stream stored yet). False when another writer came first: read again and retry.
    async fn save_stream(
        &self,
        open_id: &str,
        stream: &Stream,
        expected: Option<u64>,
    ) -> Result<bool, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Window = Window {
        count: 3,
        age: Duration::from_secs(60),
        bytes: 10,
    };

    #[test]
    fn offsets_have_no_holes_and_the_window_keeps_the_newest() {
        let mut stream = Stream::new("e".into(), None);
        assert_eq!(stream.first_kept(), 1);
        for (i, text) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert_eq!(stream.append(text, None, 1_000, &WINDOW), i as u64 + 1);
        }
        let kept: Vec<u64> = stream.entries.iter().map(|e| e.offset).collect();
        assert_eq!(kept, [2, 3, 4], "by count");
        assert_eq!(stream.first_kept(), 2);
        stream.append("0123456789", Some("k"), 1_000, &WINDOW);
        assert_eq!(stream.entries.len(), 1, "by bytes, the newest stays");
        assert_eq!(stream.keyed("k"), Some(5));
        stream.trim(1_000 + 61_000, &WINDOW);
        assert!(stream.entries.is_empty(), "by age");
        assert_eq!(
            (stream.top, stream.first_kept()),
            (5, 6),
            "the top outlives them"
        );
    }
}
