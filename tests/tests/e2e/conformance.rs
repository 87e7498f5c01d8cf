//! One conformance suite for every session store: each case below runs against the embedded
//! store and against MongoDB (a real nx-27017 server), through the `SessionStore` trait and
//! the `SessionManager` that session-svc puts on top of it.
use std::{collections::HashSet, sync::Arc, time::Duration};

use secrecy::SecretString;
use session_svc::{
    error::SessionError,
    record::{PhoneNumber, SessionRecord, UserInfo, now_millis},
    session::{SessionManager, SessionPolicy},
    store::{
        EmbeddedStore, Event, EventState, EventStore, MongoSettings, MongoStore, NonceSeen,
        Requeue, SecretStore, SessionStore, StoredSessionKey, StoredToken, Stream, StreamStore,
        Window,
    },
    vault::Sealed,
};
use weapp_tests::mongo::MongoServer;

/// A store under test, and what it takes to open it again (as a restarted session-svc would).
enum Harness {
    Embedded(tempfile::TempDir),
    Mongo(MongoServer, String),
}

impl Harness {
    fn embedded() -> Self {
        Self::Embedded(tempfile::tempdir().unwrap())
    }

    fn mongo() -> Self {
        Self::Mongo(MongoServer::start(), "conformance".into())
    }

    async fn open(&self) -> Arc<dyn SessionStore> {
        self.open_both().await.0
    }

    /// The session store and the secret store of one opened instance.
    async fn open_both(&self) -> (Arc<dyn SessionStore>, Arc<dyn SecretStore>) {
        let (store, secrets, _) = self.open_all().await;
        (store, secrets)
    }

    /// The store of WeChat's pushed events of one opened instance.
    async fn open_events(&self) -> Arc<dyn EventStore> {
        match self {
            Self::Embedded(dir) => Arc::new(EmbeddedStore::open(dir.path()).unwrap()),
            Self::Mongo(..) => Arc::new(self.mongo_store().await),
        }
    }

    async fn mongo_store(&self) -> MongoStore {
        let Self::Mongo(server, database) = self else {
            panic!("not MongoDB");
        };
        let store = MongoStore::connect(&MongoSettings {
            mongodb_uri: Some(SecretString::from(server.uri())),
            mongodb_uri_file: None,
            password: None,
            database: Some(database.clone()),
            replica_feed: session_svc::cluster::FeedMode::Auto,
            timeout: Duration::from_secs(2),
        })
        .await
        .unwrap();
        store.prepare().await.unwrap();
        store
    }

    /// The three faces of one opened instance.
    async fn open_all(
        &self,
    ) -> (
        Arc<dyn SessionStore>,
        Arc<dyn SecretStore>,
        Arc<dyn StreamStore>,
    ) {
        match self {
            Self::Embedded(dir) => {
                let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
                (store.clone(), store.clone(), store)
            }
            Self::Mongo(..) => {
                let store = Arc::new(self.mongo_store().await);
                (store.clone(), store.clone(), store)
            }
        }
    }
}

fn user(open_id: &str) -> UserInfo {
    serde_json::from_value(serde_json::json!({
        "openId": open_id,
        "unionId": format!("union-{open_id}"),
        "nickName": "测试",
        "gender": 2,
        "watermark": {"appid": "wx0123456789abcdef", "timestamp": 1_700_000_000},
    }))
    .expect("a user object")
}

/// The app sessions are created for, unless a case says otherwise.
const APP: &str = "wx0123456789abcdef";

fn record(id: &str, open_id: &str, expires_in_ms: i64) -> SessionRecord {
    let now = now_millis();
    SessionRecord {
        id: id.into(),
        skey_hash: "ab".repeat(32),
        user: user(open_id),
        created_at: now,
        last_seen_at: now,
        expires_at: now + expires_in_ms,
        max_expires_at: now + expires_in_ms.max(0) + 60_000,
        phone: None,
        app_id: None,
    }
}

fn manager(store: Arc<dyn SessionStore>, policy: SessionPolicy) -> SessionManager {
    SessionManager::new(store, policy)
}

async fn create_and_get(h: Harness) {
    let store = h.open().await;
    let r = record(&"1".repeat(32), "o1", 60_000);
    store.insert(&r).await.unwrap();
    assert_eq!(store.get(&r.id).await.unwrap(), Some(r.clone()));
    assert_eq!(store.get(&"2".repeat(32)).await.unwrap(), None);
    assert_eq!(store.count().await.unwrap(), 1);
    store.ping().await.unwrap();
}

async fn renew_updates_times_and_never_resurrects(h: Harness) {
    let store = h.open().await;
    let mut r = record(&"1".repeat(32), "o1", 60_000);
    store.insert(&r).await.unwrap();
    r.last_seen_at += 5_000;
    r.expires_at += 5_000;
    assert!(store.renew(&r).await.unwrap());
    assert_eq!(store.get(&r.id).await.unwrap(), Some(r.clone()));
    assert!(store.remove(&r.id).await.unwrap());
    assert!(
        !store.renew(&r).await.unwrap(),
        "a revoked session stays revoked"
    );
    assert_eq!(store.get(&r.id).await.unwrap(), None);
}

async fn expired_sessions_are_purged_and_live_ones_kept(h: Harness) {
    let store = h.open().await;
    let dead = record(&"d".repeat(32), "o1", -1_000);
    let live = record(&"a".repeat(32), "o1", 60_000);
    store.insert(&dead).await.unwrap();
    store.insert(&live).await.unwrap();
    assert_eq!(store.purge_expired(now_millis()).await.unwrap(), 1);
    assert_eq!(store.get(&dead.id).await.unwrap(), None);
    assert!(store.get(&live.id).await.unwrap().is_some());
}

async fn revoke_and_revoke_by_open_id(h: Harness) {
    let store = h.open().await;
    for (i, open_id) in ["alice", "alice", "alice", "bob"].iter().enumerate() {
        store
            .insert(&record(&format!("{i:032}"), open_id, 60_000))
            .await
            .unwrap();
    }
    assert!(store.remove(&format!("{:032}", 0)).await.unwrap());
    assert!(
        !store.remove(&format!("{:032}", 0)).await.unwrap(),
        "revoking twice is harmless"
    );
    assert_eq!(store.remove_by_open_id("alice").await.unwrap(), 2);
    assert_eq!(store.remove_by_open_id("alice").await.unwrap(), 0);
    assert_eq!(
        store.count().await.unwrap(),
        1,
        "bob's session is untouched"
    );
}

/// A person (unionId) has sessions in several apps, each naming its app; records from before
/// apps files name none. All are found by the unionId, and go with their sessions.
async fn a_person_is_found_across_apps(h: Harness) {
    let store = h.open().await;
    let person = |id: &str, open_id: &str, app: Option<&str>| {
        let mut r = record(id, open_id, 60_000);
        r.user = UserInfo::code_only(open_id, Some("u-person"));
        r.app_id = app.map(str::to_owned);
        r
    };
    let shop = person(&"a".repeat(32), "o-shop", Some("wxshop"));
    let club = person(&"b".repeat(32), "o-club", Some("wxclub"));
    let old = person(&"c".repeat(32), "o-old", None);
    for r in [&shop, &club, &old] {
        store.insert(r).await.unwrap();
    }
    store
        .insert(&record(&"d".repeat(32), "o-stranger", 60_000))
        .await
        .unwrap();
    assert_eq!(
        store.get(&club.id).await.unwrap(),
        Some(club.clone()),
        "the app round-trips"
    );
    assert_eq!(store.get(&old.id).await.unwrap().unwrap().app_id, None);
    let mut found: Vec<(String, Option<String>)> = store
        .sessions_of_union("u-person")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.user.open_id().to_owned(), r.app_id))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("o-club".to_owned(), Some("wxclub".to_owned())),
            ("o-old".to_owned(), None),
            ("o-shop".to_owned(), Some("wxshop".to_owned())),
        ]
    );
    assert!(
        store
            .sessions_of_union("u-nobody")
            .await
            .unwrap()
            .is_empty()
    );
    let of_user = store.sessions_of_user("o-club").await.unwrap();
    assert_eq!(of_user.len(), 1);
    assert_eq!(of_user[0].app_id.as_deref(), Some("wxclub"));
    assert_eq!(store.remove_by_open_id("o-club").await.unwrap(), 1);
    assert!(store.sessions_of_user("o-club").await.unwrap().is_empty());
    assert!(store.remove(&shop.id).await.unwrap());
    let left = store.sessions_of_union("u-person").await.unwrap();
    assert_eq!(left.len(), 1, "removed sessions leave the person's index");
    assert_eq!(left[0].id, old.id);
}

/// A user's stream is written by compare-and-swap on its top: of two writers that read the
/// same top, one wins and the other is told to read again; what was acknowledged survives a
/// restart.
async fn streams_are_written_by_compare_and_swap(h: Harness) {
    let (_, _, streams) = h.open_all().await;
    let window = Window {
        count: 10,
        age: Duration::from_secs(60),
        bytes: 1 << 16,
    };
    assert_eq!(streams.load_stream("o1").await.unwrap(), None);
    let mut first = Stream::new("e1".into(), Some(APP.into()));
    first.append("a", Some("k-a"), now_millis(), &window);
    assert!(streams.save_stream("o1", &first, None).await.unwrap());
    let mut rival = Stream::new("e2".into(), None);
    rival.append("x", None, now_millis(), &window);
    assert!(
        !streams.save_stream("o1", &rival, None).await.unwrap(),
        "a second first write loses"
    );
    let mut next = streams.load_stream("o1").await.unwrap().unwrap();
    assert_eq!(next, first);
    next.append("b", None, now_millis(), &window);
    let mut stale = first.clone();
    stale.append("c", None, now_millis(), &window);
    assert!(streams.save_stream("o1", &next, Some(1)).await.unwrap());
    assert!(
        !streams.save_stream("o1", &stale, Some(1)).await.unwrap(),
        "a writer that read top 1 loses to the one that wrote top 2"
    );
    drop(streams);
    let (_, _, streams) = h.open_all().await;
    let kept = streams.load_stream("o1").await.unwrap().unwrap();
    assert_eq!((kept.epoch.as_str(), kept.top), ("e1", 2));
    let texts: Vec<&str> = kept.entries.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(texts, ["a", "b"]);
    assert_eq!(kept.keyed("k-a"), Some(1));
    assert_eq!(kept.app_id.as_deref(), Some(APP));
    assert_eq!(streams.load_stream("o2").await.unwrap(), None, "per user");
}

fn pushed(app: &str, event_id: &str, at: i64) -> Event {
    Event {
        app_id: app.into(),
        event_id: event_id.into(),
        open_id: "o-user".into(),
        body: format!(r#"{{"MsgId":{event_id}}}"#),
        received_at: at,
        state: EventState::Pending,
        attempts: 0,
        next_at: at,
        lease_until: 0,
        owner: String::new(),
        last_error: None,
        settled_at: None,
    }
}

/// WeChat's pushed events: keeping one is its deduplication (per app), a `(timestamp,
/// nonce)` seen again is told apart by its body, and both survive a restart.
async fn pushed_events_are_kept_once_and_replays_told_apart(h: Harness) {
    let events = h.open_events().await;
    let now = now_millis();
    let until = now + 60_000;
    let seen = |body: &'static str| {
        let events = events.clone();
        async move {
            events
                .note_nonce(APP, (1_700_000_000, "n1"), body, until)
                .await
                .unwrap()
        }
    };
    assert_eq!(seen("sha-a").await, NonceSeen::First);
    assert_eq!(seen("sha-a").await, NonceSeen::SameBody, "WeChat's retry");
    assert_eq!(seen("sha-b").await, NonceSeen::OtherBody, "a replay");
    assert_eq!(
        events
            .note_nonce("wxother", (1_700_000_000, "n1"), "sha-b", until)
            .await
            .unwrap(),
        NonceSeen::First,
        "per app"
    );
    let event = pushed(APP, "6054768590064713728", now);
    assert!(events.keep_event(&event).await.unwrap());
    assert!(!events.keep_event(&event).await.unwrap(), "a duplicate");
    assert!(
        events
            .keep_event(&pushed("wxother", "6054768590064713728", now))
            .await
            .unwrap(),
        "event ids are per app"
    );
    drop(events);
    let events = h.open_events().await;
    assert!(
        !events.keep_event(&event).await.unwrap(),
        "kept across a restart"
    );
    assert_eq!(
        events
            .note_nonce(APP, (1_700_000_000, "n1"), "sha-c", until)
            .await
            .unwrap(),
        NonceSeen::OtherBody
    );
    let stats = events.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (2, 0));
    assert_eq!(stats.oldest_pending, Some(now));
    // Nonces past their time are forgotten; pending events never are.
    events.purge_events(now + 1, until + 1).await.unwrap();
    assert_eq!(
        events
            .note_nonce(APP, (1_700_000_000, "n1"), "sha-c", until)
            .await
            .unwrap(),
        NonceSeen::First
    );
    assert!(!events.keep_event(&event).await.unwrap());
}

/// The outbox: a due event is claimed by one replica at a time, settled only by its holder,
/// claimed again when a lease runs out; dead letters are listed and requeued; delivered
/// events are forgotten after their time.
async fn one_replica_delivers_each_event(h: Harness) {
    let events = h.open_events().await;
    let now = now_millis();
    for (n, id) in ["1", "2", "3"].into_iter().enumerate() {
        assert!(
            events
                .keep_event(&pushed(APP, id, now - 10 + n as i64))
                .await
                .unwrap()
        );
    }
    let mut later = pushed(APP, "4", now);
    later.next_at = now + 60_000;
    assert!(events.keep_event(&later).await.unwrap());
    let lease = now + 30_000;
    let first = events.claim_events("r1", now, lease, 2).await.unwrap();
    let second = events.claim_events("r2", now, lease, 10).await.unwrap();
    let ids =
        |claimed: &[Event]| -> Vec<String> { claimed.iter().map(|e| e.event_id.clone()).collect() };
    assert_eq!(ids(&first), ["1", "2"], "oldest due first");
    assert_eq!(
        ids(&second),
        ["3"],
        "never one claimed twice, never one not due"
    );
    assert!(
        events
            .claim_events("r3", now, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let mut delivered = first[0].clone();
    delivered.state = EventState::Delivered;
    delivered.settled_at = Some(now);
    delivered.lease_until = 0;
    assert!(
        !events.settle_event(&delivered, "r2").await.unwrap(),
        "not r2's"
    );
    assert!(events.settle_event(&delivered, "r1").await.unwrap());
    let mut dead = second[0].clone();
    dead.state = EventState::Dead;
    dead.attempts = 7;
    dead.last_error = Some("the upstream answered 503".into());
    dead.settled_at = Some(now);
    assert!(events.settle_event(&dead, "r2").await.unwrap());

    // r1 died holding event 2: once its lease is over, another replica gets it.
    let reclaimed = events
        .claim_events("r3", lease + 1, lease + 30_000, 10)
        .await
        .unwrap();
    assert_eq!(ids(&reclaimed), ["2"]);
    let mut stale = first[1].clone();
    stale.state = EventState::Delivered;
    assert!(
        !events.settle_event(&stale, "r1").await.unwrap(),
        "a holder whose lease was taken over settles nothing"
    );

    let stats = events.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (2, 1));
    let listed = events.dead_letters(None, 10).await.unwrap();
    assert_eq!(ids(&listed), ["3"]);
    assert_eq!(listed[0].attempts, 7);
    assert!(
        events
            .dead_letters(Some("wxother"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        events
            .requeue_dead(Some(APP), Requeue::Ids(&["3".into()]), now)
            .await
            .unwrap(),
        1
    );
    assert!(events.dead_letters(None, 10).await.unwrap().is_empty());
    let again = events
        .claim_events("r4", now + 1, now + 30_000, 10)
        .await
        .unwrap();
    assert_eq!(ids(&again), ["3"]);
    assert_eq!(again[0].attempts, 0, "a requeued event starts over");
    let mut dead = again[0].clone();
    dead.state = EventState::Dead;
    assert!(events.settle_event(&dead, "r4").await.unwrap());
    assert_eq!(
        events.requeue_dead(None, Requeue::All, now).await.unwrap(),
        1
    );

    // Delivered long enough ago: forgotten (its id no longer deduplicates).
    events.purge_events(now + 1, now).await.unwrap();
    assert!(events.keep_event(&pushed(APP, "1", now)).await.unwrap());
    assert!(
        !events.keep_event(&pushed(APP, "2", now)).await.unwrap(),
        "pending: kept"
    );
}

async fn manager_life_cycle(h: Harness) {
    let sessions = manager(h.open().await, SessionPolicy::shipped().unwrap());
    let (creds, created) = sessions.create(user("o1"), APP).await.unwrap();
    let valid = sessions.validate(&creds.id, &creds.skey).await.unwrap();
    assert_eq!(valid.user, created.user);
    assert!(matches!(
        sessions.validate(&creds.id, &"x".repeat(43)).await,
        Err(SessionError::Unauthenticated)
    ));
    sessions.logout(&creds.id, &creds.skey).await.unwrap();
    assert!(matches!(
        sessions.validate(&creds.id, &creds.skey).await,
        Err(SessionError::Unauthenticated)
    ));
}

async fn expired_sessions_are_refused_on_read(h: Harness) {
    let store = h.open().await;
    let sessions = manager(
        store.clone(),
        SessionPolicy {
            idle_ttl: Duration::from_millis(300),
            max_age: Duration::from_secs(60),
            renew_after: Duration::from_millis(100),
        },
    );
    let (creds, _) = sessions.create(user("o1"), APP).await.unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    // No sweep has run (and MongoDB's TTL monitor runs once a minute): the read refuses it.
    assert!(matches!(
        sessions.validate(&creds.id, &creds.skey).await,
        Err(SessionError::Unauthenticated)
    ));
    assert_eq!(store.get(&creds.id).await.unwrap(), None, "and removes it");
}

async fn renewal_is_throttled(h: Harness) {
    let store = h.open().await;
    let sessions = manager(
        store.clone(),
        SessionPolicy {
            idle_ttl: Duration::from_secs(60),
            max_age: Duration::from_secs(600),
            renew_after: Duration::from_millis(400),
        },
    );
    let (creds, created) = sessions.create(user("o1"), APP).await.unwrap();
    for _ in 0..10 {
        sessions.validate(&creds.id, &creds.skey).await.unwrap();
    }
    let stored = store.get(&creds.id).await.unwrap().unwrap();
    assert_eq!(
        stored.last_seen_at, created.last_seen_at,
        "no write within the renewal interval"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let renewed = sessions.validate(&creds.id, &creds.skey).await.unwrap();
    let stored = store.get(&creds.id).await.unwrap().unwrap();
    assert!(stored.last_seen_at > created.last_seen_at);
    assert_eq!(stored.expires_at, renewed.expires_at);
    assert!(stored.expires_at <= stored.max_expires_at);
}

async fn concurrent_logins_of_one_user(h: Harness) {
    let store = h.open().await;
    let sessions = Arc::new(manager(store.clone(), SessionPolicy::shipped().unwrap()));
    let logins = (0..20).map(|_| {
        let sessions = sessions.clone();
        tokio::spawn(async move { sessions.create(user("busy-user"), APP).await.unwrap().0 })
    });
    let creds = futures::future::join_all(logins).await;
    let ids: HashSet<_> = creds
        .iter()
        .map(|c| c.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(ids.len(), 20, "every login its own session");
    for c in &creds {
        let c = c.as_ref().unwrap();
        assert_eq!(
            sessions
                .validate(&c.id, &c.skey)
                .await
                .unwrap()
                .user
                .open_id(),
            "busy-user"
        );
    }
    assert_eq!(store.remove_by_open_id("busy-user").await.unwrap(), 20);
}

async fn sessions_survive_reopening(h: Harness) {
    let policy = SessionPolicy::shipped().unwrap();
    let (creds, created) = {
        let store = h.open().await;
        manager(store, policy)
            .create(user("o1"), APP)
            .await
            .unwrap()
    };
    // A new store instance over the same data: what a restarted session-svc sees.
    let sessions = manager(h.open().await, policy);
    let valid = sessions.validate(&creds.id, &creds.skey).await.unwrap();
    assert_eq!(valid.user, created.user);
}

/// Many logins at once (the embedded store commits them in groups): every one is stored,
/// with its indexes, and survives reopening.
async fn concurrent_inserts_are_all_kept(h: Harness) {
    let store = h.open().await;
    let records: Vec<_> = (0..64)
        .map(|i| record(&format!("{i:032x}"), &format!("user{}", i % 8), 60_000))
        .collect();
    let inserts = records.iter().map(|r| {
        let store = store.clone();
        let r = r.clone();
        tokio::spawn(async move { store.insert(&r).await })
    });
    for insert in futures::future::join_all(inserts).await {
        insert.unwrap().unwrap();
    }
    drop(store);
    let store = h.open().await;
    assert_eq!(store.count().await.unwrap(), 64);
    for r in &records {
        assert_eq!(store.get(&r.id).await.unwrap().as_ref(), Some(r));
    }
    assert_eq!(store.remove_by_open_id("user3").await.unwrap(), 8);
}

fn sealed(tag: &str) -> Sealed {
    Sealed {
        key_id: "k1".into(),
        nonce: format!("nonce-{tag}"),
        ciphertext: format!("ciphertext-{tag}"),
    }
}

async fn tokens_are_kept_per_app_and_survive_reopening(h: Harness) {
    let token = StoredToken {
        sealed: sealed("t1"),
        expires_at: now_millis() + 7_200_000,
        fetched_at: now_millis(),
        forced_at: vec![1, 2],
    };
    {
        let (_, secrets) = h.open_both().await;
        assert_eq!(secrets.load_token("wxapp").await.unwrap(), None);
        secrets.save_token("wxapp", &token).await.unwrap();
        let other = StoredToken {
            sealed: sealed("t2"),
            ..token.clone()
        };
        secrets.save_token("wxother", &other).await.unwrap();
        let newer = StoredToken {
            sealed: sealed("t3"),
            ..token.clone()
        };
        secrets.save_token("wxapp", &newer).await.unwrap();
    }
    let (_, secrets) = h.open_both().await;
    let loaded = secrets.load_token("wxapp").await.unwrap().unwrap();
    assert_eq!(loaded.sealed, sealed("t3"));
    assert_eq!(loaded.forced_at, vec![1, 2]);
    assert_eq!(
        secrets.load_token("wxother").await.unwrap().unwrap().sealed,
        sealed("t2")
    );
}

/// The refresh lease: one holder at a time, renewable by its holder, free once released or
/// lapsed, and of many takers at once exactly one wins.
async fn the_lease_has_one_holder(h: Harness) {
    let (_, secrets) = h.open_both().await;
    let now = now_millis();
    assert!(
        secrets
            .try_lease("l", "a", now, now + 30_000)
            .await
            .unwrap()
    );
    assert!(
        !secrets
            .try_lease("l", "b", now, now + 30_000)
            .await
            .unwrap()
    );
    assert!(
        secrets
            .try_lease("l", "a", now, now + 30_000)
            .await
            .unwrap()
    );
    secrets.release_lease("l", "b").await.unwrap();
    assert!(
        !secrets
            .try_lease("l", "b", now, now + 30_000)
            .await
            .unwrap()
    );
    secrets.release_lease("l", "a").await.unwrap();
    assert!(
        secrets
            .try_lease("l", "b", now, now + 30_000)
            .await
            .unwrap()
    );
    // Lapsed: b's lease ends at now + 30 s; at now + 31 s c may take it.
    assert!(
        secrets
            .try_lease("l", "c", now + 31_000, now + 61_000)
            .await
            .unwrap()
    );
    assert!(
        !secrets
            .try_lease("l", "b", now + 32_000, now + 62_000)
            .await
            .unwrap()
    );

    let takers = (0..16).map(|i| {
        let secrets = secrets.clone();
        tokio::spawn(async move {
            secrets
                .try_lease("contended", &format!("replica-{i}"), now, now + 30_000)
                .await
                .unwrap()
        })
    });
    let won = futures::future::join_all(takers)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(won, 1);
}

async fn session_keys_are_replaced_and_expire(h: Harness) {
    let (store, secrets) = h.open_both().await;
    let now = now_millis();
    let key = |tag: &str, expires_at| StoredSessionKey {
        open_id: "o1".into(),
        app_id: Some(APP.into()),
        sealed: sealed(tag),
        updated_at: now,
        expires_at,
    };
    let kept = || async { secrets.get_session_key("o1").await.unwrap().unwrap() };
    // A login's key (not synced) is durable with the session stored right after it.
    secrets
        .put_session_key(&key("login", now + 60_000), false)
        .await
        .unwrap();
    store
        .insert(&record(&"a".repeat(32), "o1", 60_000))
        .await
        .unwrap();
    assert_eq!(kept().await.sealed, sealed("login"));
    assert_eq!(
        kept().await.app_id.as_deref(),
        Some(APP),
        "the key names its app"
    );
    secrets
        .put_session_key(&key("reset", now + 120_000), true)
        .await
        .unwrap();
    assert_eq!(kept().await.sealed, sealed("reset"));
    assert_eq!(kept().await.expires_at, now + 120_000);
    // An older key still waiting for a session never lands after a newer one.
    secrets
        .put_session_key(&key("stale", now + 60_000), false)
        .await
        .unwrap();
    secrets
        .put_session_key(&key("newest", now + 180_000), true)
        .await
        .unwrap();
    store
        .insert(&record(&"b".repeat(32), "o1", 60_000))
        .await
        .unwrap();
    assert_eq!(kept().await.sealed, sealed("newest"));
    assert_eq!(secrets.get_session_key("o2").await.unwrap(), None);

    let gone = StoredSessionKey {
        open_id: "o2".into(),
        ..key("old", now - 1)
    };
    secrets.put_session_key(&gone, true).await.unwrap();
    assert_eq!(secrets.purge_session_keys(now).await.unwrap(), 1);
    assert_eq!(secrets.get_session_key("o2").await.unwrap(), None);
    assert!(secrets.get_session_key("o1").await.unwrap().is_some());
    // The expiries of o1's earlier keys have passed, not that of its current one: kept.
    assert_eq!(secrets.purge_session_keys(now + 150_000).await.unwrap(), 0);
    assert_eq!(kept().await.sealed, sealed("newest"));
    assert_eq!(secrets.purge_session_keys(now + 180_000).await.unwrap(), 1);
    assert_eq!(secrets.get_session_key("o1").await.unwrap(), None);
}

async fn a_phone_number_lands_on_every_session_of_its_user(h: Harness) {
    let store = h.open().await;
    for (id, user) in [("1", "o1"), ("2", "o1"), ("3", "o2")] {
        store
            .insert(&record(&id.repeat(32), user, 60_000))
            .await
            .unwrap();
    }
    let phone = PhoneNumber {
        phone_number: "+86 13800138000".into(),
        pure_phone_number: "13800138000".into(),
        country_code: "86".into(),
        verified_at: now_millis(),
    };
    // A renewal that read the session before the number arrived (the race a busy session
    // runs into) does not take the number away.
    let read_before = store.get(&"2".repeat(32)).await.unwrap().unwrap();
    assert_eq!(store.set_phone("o1", &phone).await.unwrap(), 2);
    let mut stale = read_before.clone();
    stale.expires_at += 5000;
    assert!(store.renew(&stale).await.unwrap());
    let renewed = store.get(&"2".repeat(32)).await.unwrap().unwrap();
    assert_eq!(renewed.expires_at, read_before.expires_at + 5000);
    assert_eq!(renewed.phone.as_ref(), Some(&phone));
    for id in ["1", "2"] {
        let r = store.get(&id.repeat(32)).await.unwrap().unwrap();
        assert_eq!(r.phone.as_ref(), Some(&phone));
    }
    assert_eq!(
        store.get(&"3".repeat(32)).await.unwrap().unwrap().phone,
        None
    );
    // A renewal keeps it.
    let mut renewed = store.get(&"1".repeat(32)).await.unwrap().unwrap();
    renewed.expires_at += 1000;
    assert!(store.renew(&renewed).await.unwrap());
    assert_eq!(
        store.get(&"1".repeat(32)).await.unwrap().unwrap().phone,
        Some(phone)
    );
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $( #[tokio::test] async fn $case() { super::$case(super::Harness::embedded()).await } )*
        }
        mod mongodb {
            $( #[tokio::test] async fn $case() { super::$case(super::Harness::mongo()).await } )*
        }
    };
}

conformance!(
    create_and_get,
    renew_updates_times_and_never_resurrects,
    expired_sessions_are_purged_and_live_ones_kept,
    revoke_and_revoke_by_open_id,
    a_person_is_found_across_apps,
    streams_are_written_by_compare_and_swap,
    manager_life_cycle,
    expired_sessions_are_refused_on_read,
    renewal_is_throttled,
    concurrent_logins_of_one_user,
    sessions_survive_reopening,
    concurrent_inserts_are_all_kept,
    tokens_are_kept_per_app_and_survive_reopening,
    the_lease_has_one_holder,
    session_keys_are_replaced_and_expire,
    a_phone_number_lands_on_every_session_of_its_user,
    pushed_events_are_kept_once_and_replays_told_apart,
    one_replica_delivers_each_event,
);
