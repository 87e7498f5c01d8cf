//! What the embedded store keeps per user, under the user's openId in one multimap table: the
//! ids of their sessions (to revoke them all) and their latest session_key (sealed).
//!
//! One table, not two, because a login writes both: in one table they share a B-tree leaf, so
//! a login dirties one page at a random key instead of two (the page copies, checksums, writes
//! and the fsync of those pages were ~11% of session-svc's CPU per login; bench/README.md, "A
//! login's CPU"). Stores from before this layout are moved over when opened ([`migrate`]).
use redb::{
    MultimapTable, MultimapTableDefinition, MultimapTableHandle as _, ReadableMultimapTable,
    ReadableTable as _, TableDefinition, TableHandle as _, WriteTransaction,
};

use super::unavailable;
use crate::store::{StoreError, secrets::StoredSessionKey};

/// openId → the user's entries ([`Entry`]).
pub(super) const USERS: MultimapTableDefinition<&str, &[u8]> =
    MultimapTableDefinition::new("users");

/// The layout before [`USERS`]: openId → session ids, and openId → session_key as JSON.
const OLD_SESSIONS_BY_OPEN_ID: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("sessions_by_open_id");
const OLD_SESSION_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("session_keys");

/// Tags of an entry's bytes. The key's sorts first, so reading it stops at the first entry.
const KEY: u8 = b'K';
const SESSION: u8 = b'S';

/// One value under a user's openId.
#[derive(Debug, PartialEq)]
pub(super) enum Entry<'a> {
    /// The user's latest session_key, as JSON (at most one per user).
    Key(&'a [u8]),
    /// The id of one of the user's sessions.
    Session(&'a str),
}

impl<'a> Entry<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, StoreError> {
        match bytes.split_first() {
            Some((&KEY, json)) => Ok(Self::Key(json)),
            Some((&SESSION, id)) => std::str::from_utf8(id).map(Self::Session).map_err(|_| {
                StoreError::Corrupt("a session id in the users table is not UTF-8".into())
            }),
            _ => Err(StoreError::Corrupt(
                "an entry of the users table has an unknown tag".into(),
            )),
        }
    }
}

fn session_entry(id: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + id.len());
    bytes.push(SESSION);
    bytes.extend_from_slice(id.as_bytes());
    bytes
}

fn key_entry(json: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + json.len());
    bytes.push(KEY);
    bytes.extend_from_slice(json);
    bytes
}

pub(super) fn add_session(
    users: &mut MultimapTable<&str, &[u8]>,
    open_id: &str,
    id: &str,
) -> Result<(), StoreError> {
    users
        .insert(open_id, session_entry(id).as_slice())
        .map_err(unavailable)?;
    Ok(())
}

pub(super) fn remove_session(
    users: &mut MultimapTable<&str, &[u8]>,
    open_id: &str,
    id: &str,
) -> Result<(), StoreError> {
    users
        .remove(open_id, session_entry(id).as_slice())
        .map_err(unavailable)?;
    Ok(())
}

/// The ids of a user's sessions.
pub(super) fn session_ids(
    users: &impl ReadableMultimapTable<&'static str, &'static [u8]>,
    open_id: &str,
) -> Result<Vec<String>, StoreError> {
    let mut ids = Vec::new();
    for value in users.get(open_id).map_err(unavailable)? {
        if let Entry::Session(id) = Entry::parse(value.map_err(unavailable)?.value())? {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}

/// The user's session_key as JSON, if one is kept.
pub(super) fn key(
    users: &impl ReadableMultimapTable<&'static str, &'static [u8]>,
    open_id: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    // The key's entry sorts before every session's: the first entry or none.
    let Some(first) = users.get(open_id).map_err(unavailable)?.next() else {
        return Ok(None);
    };
    match Entry::parse(first.map_err(unavailable)?.value())? {
        Entry::Key(json) => Ok(Some(json.to_vec())),
        Entry::Session(_) => Ok(None),
    }
}

/// Removes the user's session_key; whether there was one.
pub(super) fn remove_key(
    users: &mut MultimapTable<&str, &[u8]>,
    open_id: &str,
) -> Result<bool, StoreError> {
    let Some(json) = key(&*users, open_id)? else {
        return Ok(false);
    };
    users
        .remove(open_id, key_entry(&json).as_slice())
        .map_err(unavailable)
}

/// Replaces the user's session_key.
pub(super) fn put_key(
    users: &mut MultimapTable<&str, &[u8]>,
    key: &StoredSessionKey,
    json: &[u8],
) -> Result<(), StoreError> {
    remove_key(users, &key.open_id)?;
    users
        .insert(key.open_id.as_str(), key_entry(json).as_slice())
        .map_err(unavailable)?;
    Ok(())
}

/// Creates [`USERS`], moving a store's entries over from the layout before it (and dropping
/// those tables) when it is new.
pub(super) fn migrate(txn: &WriteTransaction) -> Result<(), StoreError> {
    let multimaps: Vec<String> = txn
        .list_multimap_tables()
        .map_err(unavailable)?
        .map(|t| t.name().to_owned())
        .collect();
    let mut users = txn.open_multimap_table(USERS).map_err(unavailable)?;
    if multimaps.iter().any(|name| name == USERS.name()) {
        return Ok(());
    }
    if multimaps
        .iter()
        .any(|name| name == OLD_SESSIONS_BY_OPEN_ID.name())
    {
        let old = txn
            .open_multimap_table(OLD_SESSIONS_BY_OPEN_ID)
            .map_err(unavailable)?;
        for entry in old.iter().map_err(unavailable)? {
            let (open_id, ids) = entry.map_err(unavailable)?;
            for id in ids {
                add_session(
                    &mut users,
                    open_id.value(),
                    id.map_err(unavailable)?.value(),
                )?;
            }
        }
        drop(old);
        txn.delete_multimap_table(OLD_SESSIONS_BY_OPEN_ID)
            .map_err(unavailable)?;
    }
    let tables = txn.list_tables().map_err(unavailable)?;
    if tables
        .into_iter()
        .any(|t| t.name() == OLD_SESSION_KEYS.name())
    {
        let old = txn.open_table(OLD_SESSION_KEYS).map_err(unavailable)?;
        for entry in old.iter().map_err(unavailable)? {
            let (open_id, json) = entry.map_err(unavailable)?;
            users
                .insert(open_id.value(), key_entry(json.value()).as_slice())
                .map_err(unavailable)?;
        }
        drop(old);
        txn.delete_table(OLD_SESSION_KEYS).map_err(unavailable)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_and_refuse_what_they_are_not() {
        assert_eq!(
            Entry::parse(&session_entry("ab12")).unwrap(),
            Entry::Session("ab12")
        );
        assert_eq!(
            Entry::parse(&key_entry(b"{\"a\":1}")).unwrap(),
            Entry::Key(b"{\"a\":1}")
        );
        for bad in [&b""[..], b"X123", b"S\xff\xfe"] {
            assert!(matches!(Entry::parse(bad), Err(StoreError::Corrupt(_))));
        }
        assert!(
            key_entry(b"~") < session_entry("0"),
            "the key sorts before every session"
        );
    }
}
