//! Which replicas are about: each says so in `replicas` every second, and counts the others
//! seen within the presence window. A replica alone keeps its followers through a feed
//! interruption; a publish waits for the others' counts (`push.rs`).
use std::sync::{Arc, atomic::Ordering};

use futures::TryStreamExt as _;
use mongodb::bson::{DateTime, doc};
use tokio_util::sync::CancellationToken;

use super::{ClusterFeed, PRESENCE_EVERY, PRESENCE_WINDOW, Presence, millis};
use crate::record::now_millis;

impl ClusterFeed {
    /// Says this replica is about, and counts the others, every second until `shutdown`;
    /// then says it is gone. Each word is a new document (replacing one in place is where
    /// MongoDB-wire servers differ most), and a replica clears its own old ones.
    pub async fn be_present(self: Arc<Self>, shutdown: CancellationToken) {
        let mut n = 0u64;
        loop {
            n += 1;
            let now = now_millis();
            let said = self
                .replicas
                .insert_one(Presence {
                    id: format!("{}:{n}", self.origin),
                    origin: self.origin.clone(),
                    at: DateTime::from_millis(now),
                })
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
                    let _ = self
                        .replicas
                        .delete_many(doc! { "origin": &self.origin, "at": { "$lt": since } })
                        .await;
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
