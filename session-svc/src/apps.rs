//! The mini-programs this deployment serves. One session-svc fleet, one store and one gateway
//! fleet serve any number of AppIds; nothing holds a "current app": every login, session,
//! token, lease and metric names its app, and the app comes from server-side state (a session
//! record) or the operator's configuration (a routes rule, the apps file), never from a
//! client header alone.
//!
//! The apps file (TOML, `WEAPP_APPS_FILE`) is the only place AppSecrets are named, each in a
//! file of its own (path relative to the apps file, like the API keys file):
//!
//! ```toml
//! default = "wx1111111111111111"
//!
//! [[app]]
//! appid = "wx1111111111111111"
//! name = "shop"
//! secret_file = "shop.secret"
//!
//! [[app]]
//! appid = "wx2222222222222222"
//! name = "club"
//! secret_file = "club.secret"
//! openapi = ["/wxa/msg_sec_check"]   # what its token may serve through the open-API proxy
//! push_token_file = "club.push-token"        # WeChat's message push (README): the Token,
//! push_aes_key_file = "club.push-aeskey"     # and the EncodingAESKey (compatible/safe mode)
//! ```
//!
//! Without the file, `WEAPP_APP_ID` and its secret are a one-app list, and everything behaves
//! as it did before apps files existed (a stored record without an app is the default app's).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::{allow_list::AllowList, message_push::keys::PushKeys};

/// Longest AppId accepted (WeChat's are 18 characters: `wx` and 16 hex digits).
const MAX_APP_ID_LEN: usize = 64;

/// One mini-program: who it is to WeChat.
pub struct App {
    pub id: Arc<str>,
    /// The operator's name for it (logs), or its AppId.
    pub name: Arc<str>,
    secret: SecretString,
    /// The WeChat APIs its token may serve through the open-API proxy; `None`: whatever the
    /// caller's key allows.
    pub openapi: Option<AllowList>,
    /// Its message-push Token and EncodingAESKey; `None`: its push URL answers 404.
    pub push: Option<PushKeys>,
}

impl App {
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("openapi", &self.openapi)
            .field("push", &self.push)
            .finish_non_exhaustive()
    }
}

/// An app a caller named that this deployment does not serve (INVALID_ARGUMENT).
#[derive(Debug, thiserror::Error)]
#[error("app {0:?} is not served here")]
pub struct NotServed(pub String);

/// A user of one app: what the WeChat APIs about a user (phone number, session_key) act on.
#[derive(Clone, Debug)]
pub struct AppUser {
    pub app_id: Arc<str>,
    pub open_id: String,
}

/// The apps served, one of them the default. Immutable: a reload builds a new one.
#[derive(Clone)]
pub struct Apps {
    apps: Arc<BTreeMap<Arc<str>, Arc<App>>>,
    default: Arc<App>,
    /// The apps file it was read from (reloads read it again); `None` for `WEAPP_APP_ID`.
    source: Option<Arc<Path>>,
    /// Over everything read to build it (the file and the secrets): a watch of the files
    /// reloads only when this changes. Never shown.
    digest: [u8; 32],
}

impl std::fmt::Debug for Apps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apps")
            .field("default", &self.default.id)
            .field("apps", &self.apps.keys().collect::<Vec<_>>())
            .field("source", &self.source)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppsFile {
    default: Option<String>,
    #[serde(default)]
    app: Vec<AppEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppEntry {
    appid: String,
    name: Option<String>,
    secret_file: PathBuf,
    openapi: Option<Vec<String>>,
    push_token_file: Option<PathBuf>,
    push_aes_key_file: Option<PathBuf>,
}

/// An AppId as WeChat spells them: short, visible ASCII letters and digits.
pub fn well_formed_app_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_APP_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Apps {
    /// One app: `WEAPP_APP_ID` and its secret (and its message-push files, Token then
    /// EncodingAESKey), as before apps files.
    pub fn single(
        app_id: &str,
        secret: SecretString,
        push: Option<(&Path, Option<&Path>)>,
    ) -> Result<Self, String> {
        if !well_formed_app_id(app_id) {
            return Err(format!("WEAPP_APP_ID {app_id:?} is not an AppId"));
        }
        if secret.expose_secret().is_empty() {
            return Err("the AppSecret is empty".into());
        }
        let mut digest = Sha256::new();
        digest.update(app_id.as_bytes());
        digest.update([0]);
        digest.update(secret.expose_secret().as_bytes());
        let push = match push {
            None => None,
            Some((token, aes_key)) => {
                let (keys, read) = PushKeys::load(token, aes_key)?;
                digest.update([0]);
                digest.update(read);
                Some(keys)
            }
        };
        let app = Arc::new(App {
            id: app_id.into(),
            name: app_id.into(),
            secret,
            openapi: None,
            push,
        });
        Ok(Self {
            apps: Arc::new(BTreeMap::from([(app.id.clone(), app.clone())])),
            default: app,
            source: None,
            digest: digest.finalize().into(),
        })
    }

    /// Reads the apps file at `path` and every secret file it names (a clap value parser
    /// too): errors name the file and the entry, never a secret.
    pub fn load(path: &str) -> Result<Self, String> {
        Self::load_path(Path::new(path))
    }

    pub fn load_path(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
        let mut digest = Sha256::new();
        digest.update(&text);
        let text = std::str::from_utf8(&text).map_err(|_| "it is not UTF-8".to_owned())?;
        let file: AppsFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        if file.app.is_empty() {
            return Err("it lists no [[app]]".into());
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut apps: BTreeMap<Arc<str>, Arc<App>> = BTreeMap::new();
        for entry in file.app {
            let appid = entry.appid.trim().to_owned();
            let problem = |what: String| format!("app {appid:?}: {what}");
            if !well_formed_app_id(&appid) {
                return Err(problem(format!(
                    "`appid` must be 1 to {MAX_APP_ID_LEN} letters, digits or _ (like \
                     \"wx0123456789abcdef\")"
                )));
            }
            if apps.contains_key(appid.as_str()) {
                return Err(problem("listed twice".into()));
            }
            let secret_path = dir.join(&entry.secret_file);
            let secret = std::fs::read_to_string(&secret_path)
                .map_err(|e| problem(format!("cannot read {}: {e}", secret_path.display())))?;
            let secret = secret.trim();
            if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(problem(format!(
                    "{} must hold the AppSecret (visible ASCII, one line)",
                    secret_path.display()
                )));
            }
            digest.update([0]);
            digest.update(secret.as_bytes());
            let openapi = match entry.openapi {
                None => None,
                Some(paths) => Some(AllowList::new(paths).map_err(problem)?),
            };
            let push = match (&entry.push_token_file, &entry.push_aes_key_file) {
                (None, None) => None,
                (None, Some(_)) => {
                    return Err(problem(
                        "`push_aes_key_file` needs `push_token_file` (WeChat signs every push \
                         with the Token)"
                            .into(),
                    ));
                }
                (Some(token), aes_key) => {
                    let aes_key = aes_key.as_ref().map(|k| dir.join(k));
                    let (keys, read) =
                        PushKeys::load(&dir.join(token), aes_key.as_deref()).map_err(problem)?;
                    digest.update([1]);
                    digest.update(read);
                    Some(keys)
                }
            };
            let name = entry
                .name
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| appid.clone());
            let id: Arc<str> = appid.as_str().into();
            apps.insert(
                id.clone(),
                Arc::new(App {
                    id,
                    name: name.into(),
                    secret: SecretString::from(secret.to_owned()),
                    openapi,
                    push,
                }),
            );
        }
        let default = match file.default {
            Some(id) => apps
                .get(id.trim())
                .cloned()
                .ok_or_else(|| format!("`default = {id:?}` is not one of the [[app]] entries"))?,
            None if apps.len() == 1 => apps.values().next().cloned().ok_or("no app")?,
            None => return Err("several apps are listed: say which is the `default`".into()),
        };
        Ok(Self {
            apps: Arc::new(apps),
            default,
            source: Some(path.into()),
            digest: digest.finalize().into(),
        })
    }

    /// Reads the same source again (a reload); a one-app list from the environment stays.
    pub fn reread(&self) -> Result<Self, String> {
        match &self.source {
            Some(path) => Self::load_path(path),
            None => Ok(self.clone()),
        }
    }

    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Whether `other` was built from exactly the same bytes.
    pub fn same_as(&self, other: &Self) -> bool {
        self.digest == other.digest
    }

    pub fn default_app(&self) -> &Arc<App> {
        &self.default
    }

    pub fn get(&self, id: &str) -> Option<&Arc<App>> {
        self.apps.get(id)
    }

    pub fn len(&self) -> usize {
        self.apps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &Arc<str>> {
        self.apps.keys()
    }

    /// The app a caller named (empty: the default app); one not served is the caller's
    /// mistake.
    pub fn resolve(&self, requested: &str) -> Result<Arc<App>, NotServed> {
        let requested = requested.trim();
        if requested.is_empty() {
            return Ok(self.default.clone());
        }
        self.apps
            .get(requested)
            .cloned()
            .ok_or_else(|| NotServed(requested.to_owned()))
    }

    /// The app a stored record belongs to: the one it names, or (a record from before apps
    /// files) the default app. `None` when that app is no longer served.
    pub fn of_record(&self, stored: Option<&str>) -> Option<&Arc<App>> {
        match stored {
            None | Some("") => Some(&self.default),
            Some(id) => self.apps.get(id),
        }
    }

    /// The apps of `self` that `next` no longer serves.
    pub fn removed_in(&self, next: &Self) -> Vec<Arc<str>> {
        self.apps
            .keys()
            .filter(|id| next.get(id).is_none())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const TWO: &str = "default = \"wxshop\"\n[[app]]\nappid = \"wxshop\"\nname = \"shop\"\nsecret_file = \"shop.secret\"\n\n[[app]]\nappid = \"wxclub\"\nsecret_file = \"club.secret\"\nopenapi = [\"/wxa/msg_sec_check\"]\n";

    #[test]
    fn an_apps_file_names_its_apps_and_their_secrets_stay_secret() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir, "shop.secret", "shop-secret-value\n");
        write(&dir, "club.secret", "club-secret-value");
        let path = write(&dir, "apps.toml", TWO);
        let apps = Apps::load_path(&path).unwrap();
        assert_eq!(apps.len(), 2);
        assert_eq!(&*apps.default_app().id, "wxshop");
        assert_eq!(&*apps.default_app().name, "shop");
        let club = apps.get("wxclub").unwrap();
        assert_eq!(&*club.name, "wxclub");
        assert_eq!(club.secret().expose_secret(), "club-secret-value");
        assert!(
            club.openapi
                .as_ref()
                .unwrap()
                .find("/wxa/msg_sec_check")
                .is_some()
        );
        let shown = format!("{apps:?} {club:?}");
        assert!(!shown.contains("secret-value"), "{shown}");
        assert_eq!(&*apps.resolve("").unwrap().id, "wxshop");
        assert_eq!(&*apps.resolve("wxclub").unwrap().id, "wxclub");
        assert!(apps.resolve("wxother").is_err());
        assert_eq!(&*apps.of_record(None).unwrap().id, "wxshop");
        assert!(apps.of_record(Some("wxgone")).is_none());
        assert!(apps.same_as(&apps.reread().unwrap()));
        write(&dir, "club.secret", "rotated");
        let next = apps.reread().unwrap();
        assert!(!apps.same_as(&next), "a changed secret is a change");
        assert!(apps.removed_in(&next).is_empty());
    }

    #[test]
    fn a_bad_apps_file_names_the_entry_at_fault_and_never_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir, "shop.secret", "shop-secret-value");
        write(&dir, "empty.secret", "\n");
        for (text, expected) in [
            (
                "[[app]]\nappid = \"wxshop\"\nsecret_file = \"none.secret\"",
                "cannot read",
            ),
            (
                "[[app]]\nappid = \"wx shop\"\nsecret_file = \"shop.secret\"",
                "appid",
            ),
            (
                "[[app]]\nappid = \"wxshop\"\nsecret_file = \"empty.secret\"",
                "must hold",
            ),
            (
                "[[app]]\nappid = \"wxshop\"\nsecret_file = \"shop.secret\"\nsecret = \"inline\"",
                "unknown field",
            ),
            (
                "default = \"wxother\"\n[[app]]\nappid = \"wxshop\"\nsecret_file = \"shop.secret\"",
                "not one of",
            ),
            (
                "[[app]]\nappid = \"wxshop\"\nsecret_file = \"shop.secret\"\n[[app]]\nappid = \"wxshop\"\nsecret_file = \"shop.secret\"",
                "twice",
            ),
            (
                "[[app]]\nappid = \"wxa\"\nsecret_file = \"shop.secret\"\n[[app]]\nappid = \"wxb\"\nsecret_file = \"shop.secret\"",
                "default",
            ),
            (
                "[[app]]\nappid = \"wxshop\"\nsecret_file = \"shop.secret\"\nopenapi = [\"/cgi-bin/token\"]",
                "never proxied",
            ),
            ("default = \"wxshop\"", "no [[app]]"),
        ] {
            let path = write(&dir, "apps.toml", text);
            let err = Apps::load_path(&path).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains("shop-secret-value"), "{err}");
        }
    }

    #[test]
    fn one_app_from_the_environment_is_a_one_app_list() {
        let apps = Apps::single("wx123", SecretString::from("s".to_owned()), None).unwrap();
        assert_eq!(apps.len(), 1);
        assert_eq!(&*apps.default_app().id, "wx123");
        assert!(apps.source().is_none());
        assert!(apps.same_as(&apps.reread().unwrap()));
        assert!(Apps::single("", SecretString::from("s".to_owned()), None).is_err());
    }
}
