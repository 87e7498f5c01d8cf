//! Each user's latest WeChat session_key, kept for the features that need it after login:
//! decrypting what the mini-program gets encrypted (WeRun steps, share and group info, the
//! legacy phone number), and WeChat's `checksession` / `resetusersessionkey`.
//!
//! Only the latest login's session_key of a user is valid at WeChat, so there is one per user,
//! replaced at every login. It is sealed at rest (`vault.rs`, bound to the openId), kept as
//! long as a session of that login can live, never logged and never sent anywhere but WeChat.
use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};

use crate::{
    access_token::AccessTokens,
    apps::AppUser,
    error::SessionError,
    record::now_millis,
    store::{SecretStore, StoredSessionKey},
    user_data::{self, UserDataError},
    vault::Vault,
    wechat::{WeChatClient, WeChatError, errcode},
};

/// Largest encryptedData accepted (WeRun's 30 days of steps are ~2 KB).
const MAX_ENCRYPTED_LEN: usize = 64 * 1024;

pub struct SessionKeys {
    store: Arc<dyn SecretStore>,
    vault: Arc<Vault>,
    wechat: Arc<WeChatClient>,
    tokens: Arc<AccessTokens>,
    /// How long a login's session_key is kept: as long as its sessions can live.
    keep_for: Duration,
}

fn context(open_id: &str) -> String {
    format!("session_key:{open_id}")
}

impl SessionKeys {
    pub fn new(
        store: Arc<dyn SecretStore>,
        vault: Arc<Vault>,
        wechat: Arc<WeChatClient>,
        tokens: Arc<AccessTokens>,
        keep_for: Duration,
    ) -> Self {
        Self {
            store,
            vault,
            wechat,
            tokens,
            keep_for,
        }
    }

    /// Keeps `session_key` as the user's latest, sealed with the newest data key. A login
    /// passes `sync` false: the session it stores next makes both durable at once.
    pub async fn remember(
        &self,
        user: &AppUser,
        session_key: &SecretString,
        sync: bool,
    ) -> Result<(), SessionError> {
        let open_id = user.open_id.as_str();
        let now = now_millis();
        let sealed = self
            .vault
            .seal(session_key.expose_secret().as_bytes(), &context(open_id))?;
        let keep_for = i64::try_from(self.keep_for.as_millis()).unwrap_or(i64::MAX);
        self.store
            .put_session_key(
                &StoredSessionKey {
                    open_id: open_id.to_owned(),
                    app_id: Some(user.app_id.to_string()),
                    sealed,
                    updated_at: now,
                    expires_at: now.saturating_add(keep_for),
                },
                sync,
            )
            .await?;
        Ok(())
    }

    /// The user's latest session_key.
    async fn latest(&self, open_id: &str) -> Result<SecretString, SessionError> {
        let stored = self
            .store
            .get_session_key(open_id)
            .await?
            .filter(|k| k.expires_at > now_millis())
            .ok_or_else(|| {
                SessionError::FailedPrecondition(
                    "no session_key is kept for this user (none since they last logged in, or \
                     it expired with their sessions): the user must log in again"
                        .into(),
                )
            })?;
        let key = self.vault.open(&stored.sealed, &context(open_id))?;
        if self.vault.is_stale(&stored.sealed) {
            // Sealed by a key being rotated out: seal it again with the newest while here.
            if let Ok(sealed) = self
                .vault
                .seal(key.expose_secret().as_bytes(), &context(open_id))
            {
                let resealed = StoredSessionKey { sealed, ..stored };
                if let Err(e) = self.store.put_session_key(&resealed, true).await {
                    tracing::debug!(error = %e, "could not reseal a session_key");
                }
            }
        }
        Ok(key)
    }

    /// Decrypts data the mini-program got from WeChat (`wx.getWeRunData`, share info, …)
    /// with the user's latest session_key, checking that its watermark names this app. The
    /// decrypted object, as JSON text.
    pub async fn decrypt_user_data(
        &self,
        user: &AppUser,
        encrypted_data: &str,
        iv: &str,
    ) -> Result<String, SessionError> {
        if encrypted_data.len() > MAX_ENCRYPTED_LEN {
            return Err(SessionError::InvalidArgument(format!(
                "encrypted_data is longer than {MAX_ENCRYPTED_LEN} characters"
            )));
        }
        let (ciphertext, iv) = user_data::precheck_encrypted(encrypted_data, iv)?;
        let key = self.latest(&user.open_id).await?;
        let plaintext =
            user_data::decrypt(key.expose_secret(), &ciphertext, &iv).map_err(|e| match e {
                UserDataError::Decrypt => SessionError::InvalidArgument(
                    "the data does not decrypt with the user's latest session_key (it was \
                     encrypted for another login, or altered)"
                        .into(),
                ),
                other => other.into(),
            })?;
        let value: serde_json::Value = serde_json::from_slice(&plaintext)
            .map_err(|_| SessionError::InvalidArgument("the decrypted data is not JSON".into()))?;
        let appid = value
            .pointer("/watermark/appid")
            .and_then(serde_json::Value::as_str);
        if appid != Some(&*user.app_id) {
            return Err(SessionError::InvalidArgument(
                "the decrypted data's watermark does not name this mini-program".into(),
            ));
        }
        Ok(value.to_string())
    }

    /// Asks WeChat whether the kept session_key is still the user's valid one.
    pub async fn check(&self, user: &AppUser) -> Result<bool, SessionError> {
        let open_id = user.open_id.as_str();
        let key = self.latest(open_id).await?;
        let outcome = self
            .tokens
            .of(&user.app_id)?
            .call(|token| {
                let (wechat, key) = (self.wechat.clone(), key.clone());
                async move { wechat.check_session(&token, open_id, &key).await }
            })
            .await;
        match outcome {
            Ok(()) => Ok(true),
            Err(SessionError::WeChat(WeChatError::Refused { errcode, .. }))
                if errcode == errcode::INVALID_SIGNATURE =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Has WeChat issue the user a new session_key (the old one stops working) and keeps it.
    pub async fn reset(&self, user: &AppUser) -> Result<(), SessionError> {
        let open_id = user.open_id.as_str();
        let key = self.latest(open_id).await?;
        let fresh = self
            .tokens
            .of(&user.app_id)?
            .call(|token| {
                let (wechat, key) = (self.wechat.clone(), key.clone());
                async move { wechat.reset_session_key(&token, open_id, &key).await }
            })
            .await?;
        self.remember(user, &fresh, true).await
    }
}
