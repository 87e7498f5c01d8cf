//! The configuration in force: the apps served and the API keys. Read on every call (a
//! pointer load); replaced whole by a reload (`reload.rs`).
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::{access::ApiKeys, apps::Apps};

/// The apps and keys in force. Read on every call (a pointer load); replaced whole.
pub struct LiveConfig {
    apps: ArcSwap<Apps>,
    keys: ArcSwapOption<ApiKeys>,
}

impl LiveConfig {
    pub fn new(apps: Apps, keys: Option<ApiKeys>) -> Arc<Self> {
        Arc::new(Self {
            apps: ArcSwap::from_pointee(apps),
            keys: ArcSwapOption::from_pointee(keys),
        })
    }

    pub fn apps(&self) -> Arc<Apps> {
        self.apps.load_full()
    }

    pub fn keys(&self) -> Option<Arc<ApiKeys>> {
        self.keys.load_full()
    }

    /// Both files read again; `Err` names what is wrong (and changes nothing).
    pub(crate) fn read(&self) -> Result<(Apps, Option<ApiKeys>), String> {
        let apps = self
            .apps()
            .reread()
            .map_err(|e| match self.apps().source() {
                Some(path) => format!("apps file {}: {e}", path.display()),
                None => e,
            })?;
        let keys = match self.keys() {
            None => None,
            Some(keys) => Some(
                keys.reread()
                    .map_err(|e| format!("API keys file {}: {e}", keys.source().display()))?,
            ),
        };
        Ok((apps, keys))
    }

    pub(crate) fn unchanged(&self, apps: &Apps, keys: Option<&ApiKeys>) -> bool {
        let keys_same = match (self.keys(), keys) {
            (Some(old), Some(new)) => old.same_as(new),
            (None, None) => true,
            _ => false,
        };
        self.apps().same_as(apps) && keys_same
    }

    /// Puts a reload's apps (and keys, when there is a keys file) in force.
    pub(crate) fn put(&self, apps: Apps, keys: Option<ApiKeys>) {
        self.apps.store(Arc::new(apps));
        if let Some(keys) = keys {
            self.keys.store(Some(Arc::new(keys)));
        }
    }
}
