//! The per-user login limit (`WEAPP_LOGIN_RATE_PER_USER`): sessions one openId may create a
//! minute. One session-svc counts in memory; replicas on MongoDB count together, so that
//! spreading a login loop over replicas does not multiply what it may create.
//!
//! Together costs no store command in the common case. Each replica keeps its own exact
//! count of a user's recent logins; while it stays within its share of the limit (the limit
//! divided by the replicas about, `cluster/presence.rs`), the replicas together cannot pass
//! the limit, so nobody is asked. Past its share, a replica counts the user's sessions created
//! in the last minute in the store (one command, on the `openId` index) and admits only if the
//! total stays within the limit. A login is then the session's insert and its session_key's
//! update, as on one replica. Two replicas at the very edge at the same instant may both let
//! one more through; a user who logs out between logins spread over replicas is counted by
//! each replica alone (never more than the limit each).
use std::{
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
};
use mongodb::{
    Collection, Database,
    bson::{DateTime, Document, doc},
};

use crate::{
    cluster::ClusterFeed,
    error::SessionError,
    record::now_millis,
    store::{MongoStore, StoreError},
};

/// Users a table holds before it first forgets the idle ones.
const SWEEP_FLOOR: usize = 100_000;
const WINDOW: Duration = Duration::from_secs(60);

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
        /// This replica's admitted logins of each user within the window (Unix ms).
        recent: DashMap<String, Vec<i64>>,
        sweep_above: AtomicUsize,
        /// The sessions, counted by user and creation time past this replica's share.
        sessions: Collection<Document>,
        per_minute: u32,
        /// Who else is about: this replica's share is the limit divided among them.
        replicas: Arc<ClusterFeed>,
    },
}

fn refused(wait: Duration) -> SessionError {
    SessionError::UserRateLimited(wait.max(Duration::from_secs(1)))
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

    /// Shared by every replica on `db`, which `replicas` sees.
    pub fn shared(per_minute: u32, db: &Database, replicas: Arc<ClusterFeed>) -> Self {
        if per_minute == 0 {
            return Self::Off;
        }
        Self::Shared {
            recent: DashMap::new(),
            sweep_above: AtomicUsize::new(SWEEP_FLOOR),
            sessions: db.collection(MongoStore::SESSIONS),
            per_minute,
            replicas,
        }
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
                recent,
                sweep_above,
                sessions,
                per_minute,
                replicas,
            } => {
                let now = now_millis();
                let since = now - millis(WINDOW);
                sweep(recent, sweep_above, since);
                let mine = {
                    let mut times = recent.entry(open_id.to_owned()).or_default();
                    times.retain(|at| *at >= since);
                    times.clone()
                };
                let limit = u64::from(*per_minute);
                let share = limit / (replicas.others() + 1);
                let local = mine.len() as u64;
                // This replica's own count is exact: past the limit alone, refused.
                let until_oldest_leaves = |times: &[i64]| {
                    Duration::from_millis(
                        u64::try_from(times.first().map_or(0, |at| at + millis(WINDOW) - now))
                            .unwrap_or(0),
                    )
                };
                if local >= limit {
                    return Err(refused(until_oldest_leaves(&mine)));
                }
                if local + 1 > share {
                    let counted = sessions
                        .count_documents(doc! {
                            "openId": open_id,
                            "createdAt": { "$gte": DateTime::from_millis(since) },
                        })
                        .await
                        .map_err(|e| {
                            SessionError::from(StoreError::Unavailable(format!("MongoDB: {e}")))
                        })?;
                    if counted.max(local) + 1 > limit {
                        return Err(refused(until_oldest_leaves(&mine)));
                    }
                }
                recent.entry(open_id.to_owned()).or_default().push(now);
                Ok(())
            }
        }
    }
}

/// Forgets users with no login in the window, now and then (the table stays the size of the
/// users of the last minute, at O(1) per login).
fn sweep(recent: &DashMap<String, Vec<i64>>, sweep_above: &AtomicUsize, since: i64) {
    if recent.len() > sweep_above.load(Ordering::Relaxed) {
        recent.retain(|_, times| times.last().is_some_and(|at| *at >= since));
        sweep_above.store((recent.len() * 2).max(SWEEP_FLOOR), Ordering::Relaxed);
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
