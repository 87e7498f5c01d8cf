//! Secrets at rest: WeChat's session_keys and the app's access_token are stored sealed with
//! AES-256-GCM, so that a copy of the store (a backup, a MongoDB dump, a stolen disk) reveals
//! nothing without a data key.
//!
//! Keys come from files (`WEAPP_DATA_KEY_FILES`, 32 random bytes in base64 each, as
//! `openssl rand -base64 32` writes them), newest first: the first seals, every listed key
//! opens. Each sealed value names its key (`keyId`), so keys rotate without a migration: list
//! the new key first and keep the old one until what it sealed has been sealed again (a user's
//! session_key at their next login, the access_token at its next refresh, two hours).
//!
//! With no key file, the key is derived from the AppSecret (HMAC-SHA256 over a fixed label):
//! every replica of the app derives the same key with nothing to configure, and a copy of the
//! store alone still opens nothing. It is always listed last for opening, so moving to key
//! files later loses nothing. Resetting the AppSecret then makes what it sealed unreadable,
//! which costs a token refresh and one login per user, no more.
//!
//! Each value is bound to what it is (`context`, e.g. the user's openId) as associated data:
//! a ciphertext copied onto another user's record does not open.
use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Label of the key derived from the AppSecret (changing it would orphan what it sealed).
const DERIVED_KEY_LABEL: &[u8] = b"weapp data key v1";

/// One data key and the id stored beside what it seals.
#[derive(Clone)]
pub struct DataKey {
    id: String,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey").field("id", &self.id).finish()
    }
}

impl DataKey {
    fn from_bytes(key: &[u8; 32]) -> Self {
        // The id is a digest of the key, so two files can never claim one id, and it reveals
        // nothing of the key.
        let digest = Sha256::new_with_prefix(b"weapp data key id\0")
            .chain_update(key)
            .finalize();
        Self {
            id: hex::encode(&digest[..6]),
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// Reads a key file: 32 bytes in base64. A clap value parser, whose errors name the file,
    /// never its content.
    pub fn load(path: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| "not base64 (make one with `openssl rand -base64 32`)".to_owned())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            "a data key is 32 bytes in base64 (make one with `openssl rand -base64 32`)".to_owned()
        })?;
        Ok(Self::from_bytes(&key))
    }

    /// The key every replica derives from the AppSecret when no key file is configured.
    fn derived(app_secret: &SecretString) -> Self {
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            app_secret.expose_secret().as_bytes(),
        );
        let tag = ring::hmac::sign(&key, DERIVED_KEY_LABEL);
        // An HMAC-SHA256 tag is 32 bytes: it fills the key exactly.
        let mut bytes = [0u8; 32];
        for (byte, from) in bytes.iter_mut().zip(tag.as_ref()) {
            *byte = *from;
        }
        Self::from_bytes(&bytes)
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct VaultSettings {
    /// Files holding the keys that seal session_keys and the access_token at rest (32 bytes in
    /// base64 each, comma-separated): the first seals, all open. Without any, a key derived
    /// from the AppSecret seals.
    #[arg(id = "data_key_files", value_name = "DATA_KEY_FILES", long = "data-key-files", env = "WEAPP_DATA_KEY_FILES", value_delimiter = ',', value_parser = DataKey::load)]
    pub keys: Vec<DataKey>,
}

/// A value sealed at rest, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sealed {
    /// Which data key sealed it.
    pub key_id: String,
    /// The 96-bit GCM nonce, base64.
    pub nonce: String,
    /// Ciphertext and tag, base64.
    pub ciphertext: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("sealed with data key {0}, which is not configured (WEAPP_DATA_KEY_FILES)")]
    UnknownKey(String),
    #[error("a sealed value does not open: it was altered or belongs to something else")]
    Tampered,
    #[error("the OS random source failed: {0}")]
    Random(String),
}

/// Seals and opens secrets at rest.
#[derive(Clone, Debug)]
pub struct Vault {
    /// Newest first; the first seals.
    keys: Vec<DataKey>,
}

impl Vault {
    pub fn new(settings: &VaultSettings, app_secret: &SecretString) -> Self {
        let mut keys = settings.keys.clone();
        let derived = DataKey::derived(app_secret);
        if !keys.iter().any(|k| k.id == derived.id) {
            keys.push(derived);
        }
        Self { keys }
    }

    /// The id of the key that seals.
    pub fn sealing_key_id(&self) -> &str {
        self.keys.first().map_or("", |k| k.id.as_str())
    }

    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<Sealed, VaultError> {
        let key = self
            .keys
            .first()
            .ok_or_else(|| VaultError::UnknownKey(String::new()))?;
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| VaultError::Random(e.to_string()))?;
        let ciphertext = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Tampered)?;
        Ok(Sealed {
            key_id: key.id.clone(),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(ciphertext),
        })
    }

    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<SecretString, VaultError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| VaultError::UnknownKey(sealed.key_id.clone()))?;
        let nonce: [u8; 12] = STANDARD
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(VaultError::Tampered)?;
        let ciphertext = STANDARD
            .decode(&sealed.ciphertext)
            .map_err(|_| VaultError::Tampered)?;
        let plaintext = key
            .cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Tampered)?;
        String::from_utf8(plaintext)
            .map(SecretString::from)
            .map_err(|_| VaultError::Tampered)
    }

    /// Whether `sealed` was sealed by an older key (and should be sealed again when next
    /// written).
    pub fn is_stale(&self, sealed: &Sealed) -> bool {
        sealed.key_id != self.sealing_key_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &tempfile::TempDir, name: &str, byte: u8) -> DataKey {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{}\n", STANDARD.encode([byte; 32]))).unwrap();
        DataKey::load(path.to_str().unwrap()).unwrap()
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn seals_and_opens_bound_to_its_context() {
        let vault = Vault::new(&VaultSettings::default(), &secret("app-secret"));
        let sealed = vault.seal(b"tiihtNczf5v6AKRyjwEUhQ==", "o-user-1").unwrap();
        assert!(!sealed.ciphertext.contains("tiihtNczf5v6AKRyjwEUhQ"));
        let opened = vault.open(&sealed, "o-user-1").unwrap();
        assert_eq!(opened.expose_secret(), "tiihtNczf5v6AKRyjwEUhQ==");
        assert!(matches!(
            vault.open(&sealed, "o-user-2"),
            Err(VaultError::Tampered)
        ));
        let mut altered = sealed.clone();
        altered.ciphertext = STANDARD.encode([0u8; 40]);
        assert!(matches!(
            vault.open(&altered, "o-user-1"),
            Err(VaultError::Tampered)
        ));
        // Two seals of one value differ (fresh nonces).
        assert_ne!(
            vault.seal(b"x", "c").unwrap(),
            vault.seal(b"x", "c").unwrap()
        );
    }

    #[test]
    fn the_derived_key_is_the_same_for_every_replica_of_the_app() {
        let a = Vault::new(&VaultSettings::default(), &secret("s1"));
        let b = Vault::new(&VaultSettings::default(), &secret("s1"));
        let other = Vault::new(&VaultSettings::default(), &secret("s2"));
        let sealed = a.seal(b"token", "access_token").unwrap();
        assert_eq!(
            b.open(&sealed, "access_token").unwrap().expose_secret(),
            "token"
        );
        assert!(matches!(
            other.open(&sealed, "access_token"),
            Err(VaultError::UnknownKey(_))
        ));
    }

    #[test]
    fn rotation_newest_seals_every_listed_key_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (key_file(&dir, "old", 1), key_file(&dir, "new", 2));
        let app = secret("s");
        let before = Vault::new(
            &VaultSettings {
                keys: vec![old.clone()],
            },
            &app,
        );
        let sealed_old = before.seal(b"k", "c").unwrap();
        assert_eq!(sealed_old.key_id, old.id());

        let after = Vault::new(
            &VaultSettings {
                keys: vec![new.clone(), old.clone()],
            },
            &app,
        );
        assert_eq!(after.open(&sealed_old, "c").unwrap().expose_secret(), "k");
        assert!(after.is_stale(&sealed_old));
        let resealed = after.seal(b"k", "c").unwrap();
        assert_eq!(resealed.key_id, new.id());
        assert!(!after.is_stale(&resealed));

        // The old key removed: what only it sealed no longer opens, and says why.
        let only_new = Vault::new(&VaultSettings { keys: vec![new] }, &app);
        let err = only_new.open(&sealed_old, "c").unwrap_err();
        assert!(err.to_string().contains(old.id()), "{err}");

        // Values sealed with the AppSecret's key still open once key files are configured.
        let derived = Vault::new(&VaultSettings::default(), &app)
            .seal(b"d", "c")
            .unwrap();
        assert_eq!(after.open(&derived, "c").unwrap().expose_secret(), "d");
    }

    #[test]
    fn bad_key_files_are_named_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, STANDARD.encode([7u8; 16])).unwrap();
        let err = DataKey::load(path.to_str().unwrap()).unwrap_err();
        assert!(err.contains("32 bytes"), "{err}");
        std::fs::write(&path, "not base64 at all!").unwrap();
        let err = DataKey::load(path.to_str().unwrap()).unwrap_err();
        assert!(!err.contains("at all"), "{err}");
    }
}
