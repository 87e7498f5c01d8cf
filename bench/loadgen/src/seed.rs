//! `weapp-bench seed`: fills a session store with sessions nobody will use, written through
//! session-svc's own store code (as a login writes them), so that what a request costs can be
//! measured against the data already stored — a million of them in a minute, not the hours a
//! million logins would take. The embedded store must not be open in a session-svc meanwhile.
use std::{path::PathBuf, sync::Arc, time::Instant};

use futures::StreamExt as _;
use secrecy::SecretString;
use session_svc::{
    cluster::FeedMode,
    record::{SessionRecord, UserInfo, now_millis},
    store::{EmbeddedStore, MongoSettings, MongoStore, SessionStore},
};

#[derive(clap::Args)]
pub struct Plan {
    /// Sessions to add.
    #[arg(long)]
    count: u64,
    /// The embedded store's directory (session-svc's WEAPP_DATA_DIR)…
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// …or a MongoDB URI (with the database in it).
    #[arg(long)]
    mongodb_uri: Option<String>,
    /// Inserts in flight (the embedded store commits those waiting together).
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
}

/// A cheap, well-spread 64-bit mix (splitmix64): ids as random-looking as real ones, without a
/// random source per session.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn record(n: u64, salt: u64, now: i64) -> SessionRecord {
    let (a, b) = (mix(n ^ salt), mix(n.wrapping_add(salt) ^ 0x5eed));
    SessionRecord {
        id: format!("{a:016x}{b:016x}{:011x}", n & 0xfff_ffff_ffff),
        skey_hash: format!("{:064x}", u128::from(a) << 64 | u128::from(b)),
        user: UserInfo::code_only(&format!("oSeed{a:022x}"), None),
        created_at: now,
        last_seen_at: now,
        expires_at: now + 2 * 3600 * 1000,
        max_expires_at: now + 7 * 24 * 3600 * 1000,
        phone: None,
        app_id: None,
    }
}

pub async fn run(plan: Plan) -> serde_json::Value {
    let store: Arc<dyn SessionStore> = match (&plan.data_dir, &plan.mongodb_uri) {
        (Some(dir), None) => Arc::new(EmbeddedStore::open(dir).expect("the embedded store opens")),
        (None, Some(uri)) => {
            let store = MongoStore::connect(&MongoSettings {
                mongodb_uri: Some(SecretString::from(uri.clone())),
                mongodb_uri_file: None,
                password: None,
                database: None,
                replica_feed: FeedMode::Auto,
                timeout: std::time::Duration::from_secs(5),
            })
            .await
            .expect("MongoDB answers");
            store.prepare().await.expect("the indexes are made");
            Arc::new(store)
        }
        _ => panic!("give --data-dir or --mongodb-uri"),
    };
    let started = Instant::now();
    let (now, salt) = (now_millis(), now_millis() as u64);
    futures::stream::iter(0..plan.count)
        .map(|n| {
            let store = store.clone();
            async move { store.insert(&record(n, salt, now)).await }
        })
        .buffer_unordered(plan.concurrency)
        .for_each(|inserted| async move {
            inserted.expect("a seeded session is stored");
        })
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let stored = store.count().await.expect("the store counts");
    serde_json::json!({
        "seeded": plan.count,
        "stored": stored,
        "seconds": seconds,
        "per_second": plan.count as f64 / seconds.max(1e-9),
    })
}
