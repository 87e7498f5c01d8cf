//! The back door to session-svc's store, for checks that must not go through the service
//! under test ("no session was created") and for changing it behind session-svc's back.
use std::sync::Arc;

use session_svc::store::SessionStore;

#[derive(Clone)]
pub struct StoreDoor(Arc<dyn SessionStore>);

impl StoreDoor {
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Self(store)
    }

    pub fn store(&self) -> Arc<dyn SessionStore> {
        self.0.clone()
    }

    /// Sessions in the store right now, expired ones not yet swept included.
    pub async fn count(&self) -> u64 {
        self.0.count().await.expect("store answers")
    }
}
