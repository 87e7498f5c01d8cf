//! Which replicas are about: each says so in `replicas` every few seconds, and counts the
//! others seen within the presence window. A replica alone keeps its followers through a feed
//! interruption; a publish waits for the others' counts (`push.rs`).
use std::sync::{Arc, atomic::Ordering};

use futures::TryStreamExt as _;
use mongodb::bson::{DateTime, doc};
use tokio_util::sync::CancellationToken;

use super::{ClusterFeed, PRESENCE_EVERY, PRESENCE_WINDOW, Presence, millis};
use crate::record::now_millis;

impl ClusterFeed {
    /// Says this replica is about, and counts the others, every [`PRESENCE_EVERY`] until
    /// `shutdown`; then says it is gone. Two commands a beat: this replica's one document
    /// replaced (upserted) with the time, and everyone's read. A replica that dies without a
    /// word is left out once its time is older than the window (the TTL index removes its
    /// document later).
    pub async fn be_present(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let now = now_millis();
            let said = self
                .replicas
                .replace_one(
                    doc! { "_id": &self.origin },
                    Presence {
                        id: self.origin.clone(),
                        origin: self.origin.clone(),
                        at: DateTime::from_millis(now),
                    },
                )
                .upsert(true)
                .await;
            let since = DateTime::from_millis(now - millis(PRESENCE_WINDOW));
            let found = match self.replicas.find(doc! { "at": { "$gte": since } }).await {
                Ok(cursor) => cursor.try_collect::<Vec<Presence>>().await,
                Err(e) => Err(e),
            };
            match (said, found) {
                (Ok(_), Ok(found)) => {
                    let mut others: Vec<&str> = found
                        .iter()
                        .map(|p| p.origin.as_str())
                        .filter(|o| *o != self.origin)
                        .collect();
                    others.sort_unstable();
                    others.dedup();
                    let others = others.len() as u64;
                    if self.others.swap(others, Ordering::Relaxed) != others {
                        tracing::info!(
                            others,
                            "session-svc replicas on this MongoDB besides this one"
                        );
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(error = %e, "replica presence not updated");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(PRESENCE_EVERY) => {}
            }
        }
        let _ = self
            .replicas
            .delete_many(doc! { "origin": &self.origin })
            .await;
    }
}
