//! One index of what expires in the embedded store, read by both sweepers: sessions (by their
//! idle expiry) and users' session_keys (by the end of their login's sessions).
//!
//! One table, not one per kind, because a login adds an entry of each: in one table both land
//! at its right edge, in the same leaf, and a commit writes one table's pages fewer. A sweeper
//! reads what is due and passes over the other kind's entries.
use redb::{ReadableTable as _, TableDefinition, TableHandle as _, WriteTransaction};

use super::unavailable;
use crate::{record::UnixMillis, store::StoreError};

/// (expires_at, what) → (). `what` is a session's id (hex), or [`KEY`] then a user's openId.
/// The name is the one it had when it held sessions alone: stores keep their table.
pub(super) const BY_EXPIRY: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("sessions_by_expiry");

/// The session_keys' index before they shared [`BY_EXPIRY`]: (expires_at, openId).
const OLD_SESSION_KEYS_BY_EXPIRY: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("session_keys_by_expiry");

/// Leads the entry of a session_key; never in a session id (hex digits only).
const KEY: &str = "key:";

/// What an entry of [`BY_EXPIRY`] is the expiry of.
#[derive(Debug, PartialEq)]
pub(super) enum Expiring<'a> {
    Session(&'a str),
    /// The session_key of the user with this openId.
    Key(&'a str),
}

impl<'a> Expiring<'a> {
    pub(super) fn of(what: &'a str) -> Self {
        match what.strip_prefix(KEY) {
            Some(open_id) => Self::Key(open_id),
            None => Self::Session(what),
        }
    }
}

/// The entry's second part for a user's session_key.
pub(super) fn key_entry(open_id: &str) -> String {
    format!("{KEY}{open_id}")
}

/// The entries due at `now` (expiring at or before it) of one kind, as (expires_at, what).
pub(super) fn due(
    txn: &WriteTransaction,
    now: UnixMillis,
    kind: fn(&Expiring<'_>) -> bool,
) -> Result<Vec<(i64, String)>, StoreError> {
    let index = txn.open_table(BY_EXPIRY).map_err(unavailable)?;
    let mut due = Vec::new();
    for entry in index
        .range(..(now.saturating_add(1), ""))
        .map_err(unavailable)?
    {
        let (key, _) = entry.map_err(unavailable)?;
        let (expires_at, what) = key.value();
        if kind(&Expiring::of(what)) {
            due.push((expires_at, what.to_owned()));
        }
    }
    Ok(due)
}

/// Creates [`BY_EXPIRY`], moving the session_keys' entries over from the table they had
/// before (and dropping it).
pub(super) fn migrate(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut index = txn.open_table(BY_EXPIRY).map_err(unavailable)?;
    let old = txn
        .list_tables()
        .map_err(unavailable)?
        .any(|t| t.name() == OLD_SESSION_KEYS_BY_EXPIRY.name());
    if !old {
        return Ok(());
    }
    let keys = txn
        .open_table(OLD_SESSION_KEYS_BY_EXPIRY)
        .map_err(unavailable)?;
    for entry in keys.iter().map_err(unavailable)? {
        let (key, _) = entry.map_err(unavailable)?;
        let (expires_at, open_id) = key.value();
        index
            .insert((expires_at, key_entry(open_id).as_str()), ())
            .map_err(unavailable)?;
    }
    drop(keys);
    txn.delete_table(OLD_SESSION_KEYS_BY_EXPIRY)
        .map_err(unavailable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_say_what_expires() {
        assert_eq!(Expiring::of(&key_entry("oABC")), Expiring::Key("oABC"));
        assert_eq!(
            Expiring::of("0190a1b2c3d4ffee"),
            Expiring::Session("0190a1b2c3d4ffee")
        );
        // An openId is WeChat's: whatever it holds, its entry reads back as a key's.
        assert_eq!(Expiring::of(&key_entry("key:x")), Expiring::Key("key:x"));
    }
}
