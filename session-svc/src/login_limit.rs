//! The per-user login limit (`WEAPP_LOGIN_RATE_PER_USER`): sessions one openId may create a
//! minute. One session-svc counts in memory; replicas on MongoDB count together in MongoDB,
//! so that spreading a login loop over replicas does not multiply what it may create.
//!
//! ```text
//! logins  { _id: "<replica>:<n>", user: "<openId>", at: ISODate }   TTL 2 min
//! ```
//!
//! Each login is one document; a login is refused when, counting itself, more than the limit
//! were made in the last minute (then its own document is taken back: refused logins do not
//! count). Two replicas admitting the last slot at the same instant may both refuse: the
//! limit errs on the side of refusing, never of letting more through.
use std::{
    num::NonZeroU32,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use futures::TryStreamExt as _;
use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
};
use mongodb::{
    Collection, Database, IndexModel,
    bson::{DateTime, doc},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

use crate::{error::SessionError, record::now_millis, store::StoreError};

const COLLECTION: &str = "logins";
/// Users the in-memory limit holds before it first forgets the idle ones.
const SWEEP_FLOOR: usize = 100_000;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
/// One admitted login, as stored.
pub struct Login {
    #[serde(rename = "_id")]
    id: String,
    user: String,
    at: DateTime,
}

pub enum LoginLimit {
    Off,
    Local {
        limiter: DefaultKeyedRateLimiter<String>,
        /// The size past which idle users are forgotten: twice what the last sweep left (at
        /// least [`SWEEP_FLOOR`]), so that sweeps cost O(1) per login however many users
        /// logged in within the minute.
        sweep_above: AtomicUsize,
    },
    Shared {
        logins: Collection<Login>,
        per_minute: u32,
        origin: String,
        written: AtomicU64,
    },
}

impl LoginLimit {
    /// In memory, for one session-svc.
    pub fn local(per_minute: u32) -> Self {
        match NonZeroU32::new(per_minute) {
            Some(n) => Self::Local {
                limiter: RateLimiter::keyed(Quota::per_minute(n)),
                sweep_above: AtomicUsize::new(SWEEP_FLOOR),
            },
            None => Self::Off,
        }
    }

    /// In MongoDB, shared by every replica on `db`; `origin` names this one.
    pub fn shared(per_minute: u32, db: &Database, origin: String) -> Self {
        if per_minute == 0 {
            return Self::Off;
        }
        Self::Shared {
            logins: db.collection(COLLECTION),
            per_minute,
            origin,
            written: AtomicU64::new(0),
        }
    }

    /// The indexes of the shared count. Idempotent.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        let Self::Shared { logins, .. } = self else {
            return Ok(());
        };
        let unavailable =
            |e: mongodb::error::Error| StoreError::Unavailable(format!("MongoDB: {e}"));
        let ttl = IndexModel::builder()
            .keys(doc! { "at": 1 })
            .options(
                IndexOptions::builder()
                    .name("at_ttl".to_owned())
                    .expire_after(WINDOW * 2)
                    .build(),
            )
            .build();
        let by_user = IndexModel::builder()
            .keys(doc! { "user": 1, "at": 1 })
            .options(IndexOptions::builder().name("user_at".to_owned()).build())
            .build();
        logins.create_index(ttl).await.map_err(unavailable)?;
        logins.create_index(by_user).await.map_err(unavailable)?;
        Ok(())
    }

    /// Counts a login of `open_id`: Ok, or how long until it would be admitted.
    pub async fn admit(&self, open_id: &str) -> Result<(), SessionError> {
        match self {
            Self::Off => Ok(()),
            Self::Local {
                limiter,
                sweep_above,
            } => {
                // Forget idle users now and then, so the table does not grow without bound.
                if limiter.len() > sweep_above.load(Ordering::Relaxed) {
                    limiter.retain_recent();
                    let left = limiter.len();
                    sweep_above.store((left * 2).max(SWEEP_FLOOR), Ordering::Relaxed);
                }
                limiter.check_key(&open_id.to_owned()).map_err(|not_until| {
                    SessionError::UserRateLimited(
                        not_until.wait_time_from(DefaultClock::default().now()),
                    )
                })
            }
            Self::Shared {
                logins,
                per_minute,
                origin,
                written,
            } => {
                let unavailable = |e: mongodb::error::Error| {
                    SessionError::from(StoreError::Unavailable(format!("MongoDB: {e}")))
                };
                let now = now_millis();
                let id = format!("{origin}:{}", written.fetch_add(1, Ordering::Relaxed));
                logins
                    .insert_one(Login {
                        id: id.clone(),
                        user: open_id.to_owned(),
                        at: DateTime::from_millis(now),
                    })
                    .await
                    .map_err(unavailable)?;
                let since = DateTime::from_millis(now - millis(WINDOW));
                let mut recent: Vec<i64> = logins
                    .find(doc! { "user": open_id, "at": { "$gte": since } })
                    .await
                    .map_err(unavailable)?
                    .try_collect::<Vec<Login>>()
                    .await
                    .map_err(unavailable)?
                    .into_iter()
                    .map(|login| login.at.timestamp_millis())
                    .collect();
                if recent.len() <= *per_minute as usize {
                    return Ok(());
                }
                let _ = logins.delete_one(doc! { "_id": &id }).await;
                // Admitted again once the oldest of the last `per_minute` leaves the window.
                recent.sort_unstable();
                let oldest_kept = recent
                    .len()
                    .checked_sub(*per_minute as usize)
                    .and_then(|i| recent.get(i))
                    .copied()
                    .unwrap_or(now);
                let wait = (oldest_kept + millis(WINDOW) - now).max(1000);
                Err(SessionError::UserRateLimited(Duration::from_millis(
                    u64::try_from(wait).unwrap_or(1000),
                )))
            }
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_in_memory_limit_sweeps_idle_users_rarely_however_many_there_are() {
        let limit = LoginLimit::local(20);
        let LoginLimit::Local { sweep_above, .. } = &limit else {
            panic!("an in-memory limit");
        };
        for user in 0..=SWEEP_FLOOR {
            limit.admit(&format!("o{user}")).await.unwrap();
        }
        assert_eq!(
            sweep_above.load(Ordering::Relaxed),
            SWEEP_FLOOR,
            "no sweep yet"
        );
        // Past the floor, one sweep: every user is recent, so all stay, and the next sweep
        // waits until the table has doubled (not at the very next login, as it once did).
        limit.admit("one-more").await.unwrap();
        assert_eq!(sweep_above.load(Ordering::Relaxed), 2 * (SWEEP_FLOOR + 1));
        limit.admit("and-another").await.unwrap();
        assert_eq!(sweep_above.load(Ordering::Relaxed), 2 * (SWEEP_FLOOR + 1));
        // The limit itself still holds: 20 a minute, the 21st refused.
        for _ in 0..20 {
            limit.admit("busy").await.unwrap();
        }
        assert!(matches!(
            limit.admit("busy").await,
            Err(SessionError::UserRateLimited(_))
        ));
    }
}
