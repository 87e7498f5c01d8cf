//! MongoDB store, for session-svc running on the database host (the tutorial's second
//! server). One document per session in `<database>.sessions`, shaped for reading in mongosh:
//!
//! ```text
//! { _id: "<session id>", appId?, skeyHash: "<hex sha256 of the skey>", openId, unionId?,
//!   userInfo: { openId, nickName, gender, ... }, createdAt: ISODate, lastSeenAt: ISODate,
//!   expiresAt: ISODate, maxExpiresAt: ISODate }
//! ```
//!
//! `expiresAt` carries a TTL index (MongoDB deletes a document once it has passed), `openId` an
//! ordinary one (revoke every session of a user), `unionId` a sparse one (a person across
//! apps). The TTL monitor runs once a minute, so reads
//! check expiry themselves (in `SessionManager`). WeChat's session_keys and the access_token
//! live in collections of their own (`mongo/secrets.rs`), sealed.
mod events;
mod logins;
mod secrets;
mod streams;

use std::time::Duration;

use async_trait::async_trait;
use mongodb::{
    Client, Collection, Database, IndexModel,
    bson::{DateTime, doc},
    options::{ClientOptions, IndexOptions},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use weapp_common::config::{duration, secret, secret_file};

use super::{SessionStore, StoreError};
use crate::record::{PhoneNumber, SessionRecord, UnixMillis, UserInfo};

const COLLECTION: &str = "sessions";
const TTL_INDEX: &str = "expiresAt_ttl";
const OPEN_ID_INDEX: &str = "openId_1";
const UNION_ID_INDEX: &str = "unionId_1";

/// How to reach MongoDB, when sessions go there. The URI is a secret: it usually holds the
/// password.
#[derive(clap::Args, Clone, Debug)]
pub struct MongoSettings {
    /// MongoDB URI (mongodb:// or mongodb+srv://): sessions go to MongoDB when set.
    /// Environment only (a flag would show in `ps`); or WEAPP_MONGODB_URI_FILE.
    #[arg(long, env = "WEAPP_MONGODB_URI", hide = true, value_parser = secret, conflicts_with = "mongodb_uri_file")]
    pub mongodb_uri: Option<SecretString>,

    /// File holding the MongoDB URI (or WEAPP_MONGODB_URI in the environment).
    #[arg(long, env = "WEAPP_MONGODB_URI_FILE", value_parser = secret_file)]
    pub mongodb_uri_file: Option<SecretString>,

    /// File holding the password of the URI's user (keeps it out of the URI).
    #[arg(id = "mongodb_password_file", value_name = "MONGODB_PASSWORD_FILE", long = "mongodb-password-file", env = "WEAPP_MONGODB_PASSWORD_FILE", value_parser = secret_file)]
    pub password: Option<SecretString>,

    /// Database of the `sessions` collection (default: the URI's, else "weapp").
    #[arg(
        id = "mongodb_database",
        long = "mongodb-database",
        env = "WEAPP_MONGODB_DATABASE"
    )]
    pub database: Option<String>,

    /// How replicas on this MongoDB hear each other's revocations: `auto` (change streams, or
    /// polling on a standalone server, which has none), `change-streams`, `poll`.
    #[arg(
        id = "replica_feed",
        value_name = "REPLICA_FEED",
        long = "replica-feed",
        env = "WEAPP_REPLICA_FEED",
        default_value = "auto",
        value_enum
    )]
    pub replica_feed: crate::cluster::FeedMode,

    /// Server-selection timeout: a MongoDB outage becomes UNAVAILABLE this fast.
    #[arg(id = "mongodb_timeout", value_name = "MONGODB_TIMEOUT", long = "mongodb-timeout", env = "WEAPP_MONGODB_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub timeout: Duration,
}

impl MongoSettings {
    /// The URI from whichever of its two sources was set; none means the embedded store.
    pub fn uri(&self) -> Option<&SecretString> {
        self.mongodb_uri.as_ref().or(self.mongodb_uri_file.as_ref())
    }

    /// What clap cannot check alone.
    pub fn check(&self) -> Result<(), String> {
        match self.uri().map(|u| u.expose_secret()) {
            None if self.password.is_some() => {
                Err("WEAPP_MONGODB_PASSWORD_FILE is set but no MongoDB URI".into())
            }
            Some(uri) if !uri.starts_with("mongodb://") && !uri.starts_with("mongodb+srv://") => {
                Err("the MongoDB URI must start with mongodb:// or mongodb+srv://".into())
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionDoc {
    #[serde(rename = "_id")]
    id: String,
    skey_hash: String,
    open_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    union_id: Option<String>,
    user_info: UserInfo,
    created_at: DateTime,
    last_seen_at: DateTime,
    expires_at: DateTime,
    max_expires_at: DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phone: Option<PhoneNumber>,
    /// Absent on records from before apps files: the default app's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app_id: Option<String>,
}

impl From<&SessionRecord> for SessionDoc {
    fn from(r: &SessionRecord) -> Self {
        Self {
            id: r.id.clone(),
            skey_hash: r.skey_hash.clone(),
            open_id: r.user.open_id().to_owned(),
            union_id: r.user.union_id().map(str::to_owned),
            user_info: r.user.clone(),
            created_at: DateTime::from_millis(r.created_at),
            last_seen_at: DateTime::from_millis(r.last_seen_at),
            expires_at: DateTime::from_millis(r.expires_at),
            max_expires_at: DateTime::from_millis(r.max_expires_at),
            phone: r.phone.clone(),
            app_id: r.app_id.clone(),
        }
    }
}

impl From<SessionDoc> for SessionRecord {
    fn from(d: SessionDoc) -> Self {
        // The top-level openId and unionId are copies of the user's, for the index.
        Self {
            id: d.id,
            skey_hash: d.skey_hash,
            user: d.user_info,
            created_at: d.created_at.timestamp_millis(),
            last_seen_at: d.last_seen_at.timestamp_millis(),
            expires_at: d.expires_at.timestamp_millis(),
            max_expires_at: d.max_expires_at.timestamp_millis(),
            phone: d.phone,
            app_id: d.app_id,
        }
    }
}

#[derive(Clone)]
pub struct MongoStore {
    sessions: Collection<SessionDoc>,
    secrets: secrets::Collections,
    database: String,
    hosts: String,
    db: Database,
    /// Users' streams of pushes (`mongo/streams.rs`).
    streams: Collection<streams::StreamDoc>,
    /// WeChat's pushed events and the nonces they came with (`mongo/events.rs`).
    events: events::Collections,
    /// New sessions and their keys, written in groups (`mongo/logins.rs`).
    logins: logins::LoginWrites,
}

/// Driver errors become "unavailable": the only thing a caller can do is try again later.
/// Their text names servers, never credentials.
fn unavailable(e: mongodb::error::Error) -> StoreError {
    StoreError::Unavailable(format!("MongoDB: {e}"))
}

/// Hides the credentials of `uri` wherever they appear in `text`.
fn redact(uri: &str, text: &str) -> String {
    let userinfo = uri
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(userinfo, _)| userinfo)
        .filter(|u| !u.is_empty());
    match userinfo {
        Some(userinfo) => text.replace(userinfo, "***"),
        None => text.to_owned(),
    }
}

impl MongoStore {
    /// Prepares a client. Nothing is contacted yet: the driver connects on first use and
    /// reconnects by itself, so session-svc starts (and recovers) without MongoDB being up.
    pub async fn connect(settings: &MongoSettings) -> Result<Self, StoreError> {
        let uri = settings
            .uri()
            .ok_or_else(|| StoreError::Misconfigured("no MongoDB URI".into()))?
            .expose_secret();
        let mut options = ClientOptions::parse(uri).await.map_err(|e| {
            StoreError::Misconfigured(format!(
                "invalid MongoDB URI: {}",
                redact(uri, &e.to_string())
            ))
        })?;
        if let Some(password) = &settings.password {
            let credential = options.credential.get_or_insert_with(Default::default);
            if credential.username.is_none() {
                return Err(StoreError::Misconfigured(
                    "a MongoDB password file needs a user name in the URI (mongodb://user@host/db)"
                        .into(),
                ));
            }
            credential.password = Some(password.expose_secret().to_owned());
        }
        options.server_selection_timeout = Some(settings.timeout);
        options.connect_timeout = Some(settings.timeout);
        options.app_name = Some("weapp-session-svc".into());
        let database = settings
            .database
            .clone()
            .or_else(|| options.default_database.clone())
            .unwrap_or_else(|| "weapp".into());
        let hosts = options
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let client = Client::with_options(options).map_err(unavailable)?;
        let db = client.database(&database);
        let sessions: Collection<SessionDoc> = db.collection(COLLECTION);
        Ok(Self {
            logins: logins::LoginWrites::new(
                &db,
                sessions.clone(),
                secrets::SESSION_KEYS_COLLECTION,
            ),
            sessions,
            secrets: secrets::Collections::new(&db),
            streams: streams::collection(&db),
            events: events::Collections::new(&db),
            database,
            hosts,
            db,
        })
    }

    /// The database, for what replicas share beside the sessions (`cluster/`).
    /// Every session matching `filter`.
    async fn find_all(
        &self,
        filter: mongodb::bson::Document,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        use futures::TryStreamExt as _;
        let docs: Vec<SessionDoc> = self
            .sessions
            .find(filter)
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        Ok(docs.into_iter().map(SessionRecord::from).collect())
    }

    /// The sessions' collection (the shared login limit counts a user's recent ones there).
    pub const SESSIONS: &str = COLLECTION;

    pub fn database(&self) -> &Database {
        &self.db
    }
}

#[async_trait]
impl SessionStore for MongoStore {
    fn describe(&self) -> String {
        format!("MongoDB {}/{}", self.hosts, self.database)
    }

    /// Creates the TTL index on `expiresAt` and the index on `openId`. Idempotent: creating an
    /// index that exists with the same options is a no-op in MongoDB.
    async fn prepare(&self) -> Result<(), StoreError> {
        let ttl = IndexModel::builder()
            .keys(doc! { "expiresAt": 1 })
            .options(
                IndexOptions::builder()
                    .name(TTL_INDEX.to_owned())
                    .expire_after(Duration::ZERO)
                    .build(),
            )
            .build();
        let by_user = IndexModel::builder()
            .keys(doc! { "openId": 1 })
            .options(
                IndexOptions::builder()
                    .name(OPEN_ID_INDEX.to_owned())
                    .build(),
            )
            .build();
        let by_person = IndexModel::builder()
            .keys(doc! { "unionId": 1 })
            .options(
                IndexOptions::builder()
                    .name(UNION_ID_INDEX.to_owned())
                    .sparse(true)
                    .build(),
            )
            .build();
        self.sessions
            .create_indexes([ttl, by_user, by_person])
            .await
            .map_err(unavailable)?;
        self.secrets.prepare().await?;
        self.events.prepare().await
    }

    async fn insert(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.logins
            .insert(SessionDoc::from(record))
            .await
            .map_err(StoreError::Unavailable)
    }

    async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let doc = self
            .sessions
            .find_one(doc! { "_id": id })
            .await
            .map_err(|e| {
                if matches!(*e.kind, mongodb::error::ErrorKind::BsonDeserialization(_)) {
                    StoreError::Corrupt(e.to_string())
                } else {
                    unavailable(e)
                }
            })?;
        Ok(doc.map(SessionRecord::from))
    }

    async fn renew(&self, renewed: &SessionRecord) -> Result<bool, StoreError> {
        // A whole-document replace rather than `$set`: every field but the two timestamps and
        // the phone number is immutable, it is one round trip either way, and it keeps BSON
        // dates as dates on MongoDB-wire servers whose `$set` does not (nx-27017 turns them
        // into strings). The phone number is the one field that changes behind a renewal's
        // back (`set_phone`): the replace only applies over the phone it read, else it is
        // read again and applied over the new one.
        let mut renewed = renewed.clone();
        for _ in 0..2 {
            let mut filter = doc! { "_id": &renewed.id };
            match &renewed.phone {
                Some(phone) => filter.insert("phone.verifiedAt", phone.verified_at),
                None => filter.insert("phone", mongodb::bson::Bson::Null),
            };
            let result = self
                .sessions
                .replace_one(filter, SessionDoc::from(&renewed))
                .await
                .map_err(unavailable)?;
            if result.matched_count > 0 {
                return Ok(true);
            }
            match self.get(&renewed.id).await? {
                Some(stored) => renewed.phone = stored.phone,
                None => return Ok(false),
            }
        }
        // The phone number changed twice within two round trips: the renewal can wait for
        // the next request; the session is live.
        Ok(true)
    }

    async fn set_phone(&self, open_id: &str, phone: &PhoneNumber) -> Result<u64, StoreError> {
        let phone =
            mongodb::bson::to_bson(phone).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let result = self
            .sessions
            .update_many(
                doc! { "openId": open_id },
                doc! { "$set": { "phone": phone } },
            )
            .await
            .map_err(unavailable)?;
        Ok(result.matched_count)
    }

    async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let result = self
            .sessions
            .delete_one(doc! { "_id": id })
            .await
            .map_err(unavailable)?;
        Ok(result.deleted_count > 0)
    }

    async fn remove_by_open_id(&self, open_id: &str) -> Result<u64, StoreError> {
        let result = self
            .sessions
            .delete_many(doc! { "openId": open_id })
            .await
            .map_err(unavailable)?;
        Ok(result.deleted_count)
    }

    async fn sessions_of_user(&self, open_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        self.find_all(doc! { "openId": open_id }).await
    }

    async fn sessions_of_union(&self, union_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        self.find_all(doc! { "unionId": union_id }).await
    }

    async fn purge_expired(&self, now: UnixMillis) -> Result<u64, StoreError> {
        // Normally the TTL monitor's job; this keeps servers without one (or a lagging one)
        // from growing.
        let result = self
            .sessions
            .delete_many(doc! { "expiresAt": { "$lte": DateTime::from_millis(now) } })
            .await
            .map_err(unavailable)?;
        Ok(result.deleted_count)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.sessions
            .count_documents(doc! {})
            .await
            .map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.sessions
            .client()
            .database(&self.database)
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_from_messages() {
        let uri = "mongodb://weapp:s3cr3t@db:27017/weapp";
        assert_eq!(
            redact(uri, "bad uri mongodb://weapp:s3cr3t@db"),
            "bad uri mongodb://***@db"
        );
        assert_eq!(redact("mongodb://db:27017", "plain"), "plain");
    }

    #[test]
    fn documents_round_trip_records() {
        let record = SessionRecord {
            id: "a".repeat(32),
            skey_hash: "b".repeat(64),
            user: serde_json::from_value(serde_json::json!({"openId": "o1", "unionId": "u1",
                "nickName": "N", "gender": 1, "watermark": {"appid": "wx1", "timestamp": 2}}))
            .unwrap(),
            created_at: 1_700_000_000_000,
            last_seen_at: 1_700_000_000_500,
            expires_at: 1_700_000_100_000,
            max_expires_at: 1_700_000_900_000,
            phone: None,
            app_id: Some("wx1".into()),
        };
        let doc = mongodb::bson::to_document(&SessionDoc::from(&record)).unwrap();
        assert_eq!(doc.get_str("openId").unwrap(), "o1");
        assert!(
            doc.get_datetime("expiresAt").is_ok(),
            "dates are BSON dates for the TTL index"
        );
        assert!(doc.get("skey").is_none() && doc.get("sessionKey").is_none());
        let back: SessionDoc = mongodb::bson::from_document(doc).unwrap();
        assert_eq!(SessionRecord::from(back), record);
    }
}
