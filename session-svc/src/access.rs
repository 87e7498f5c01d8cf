//! Who may call session-svc, and what for. Its gRPC API revokes sessions and (later) hands out
//! WeChat's access_token, so it does not trust the network: callers present an API key
//! (`authorization: Bearer <key>`), each key carries scopes, and every RPC needs one scope.
//! Health and reflection stay open, so probes and `grpcurl list` work without a key.
//!
//! The keys file (TOML, `WEAPP_API_KEYS_FILE`) names each key, its scopes and the file that
//! holds it (relative paths are read beside the keys file), so the secrets stay in files of
//! their own:
//!
//! ```toml
//! [[key]]
//! name = "gateway"
//! file = "gateway.key"
//! scopes = ["validate", "login", "follow"]
//!
//! [[key]]
//! name = "club-backend"
//! file = "club.key"
//! scopes = ["push", "wechat.token"]
//! apps = ["wx2222222222222222"]   # which apps it may act for; ["*"]: all
//! ```
//!
//! A key without `apps` acts for the default app only, so a keys file from before apps files
//! keeps its meaning. A call whose subject is a session credential (Validate, Logout, a
//! session's phone number) acts for that session's app: a gateway key serves every app.
//!
//! Only SHA-256 digests of the keys are kept; a presented key is hashed and compared with every
//! digest in constant time.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;

pub use crate::allow_list::{AllowList, TOKEN_PATHS, allow_listed_path};

/// What a key may do. Every RPC of `weapp.session.v1.SessionService` needs exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Validate and CheckSessions: resolve sessions.
    Validate,
    /// Login and Logout: create and end sessions on a client's behalf.
    Login,
    /// WatchRevocations and ReportDelivery: follow revocations and pushes as a gateway does.
    Follow,
    /// RevokeUser, ForceRefreshAccessToken, and any RPC this table does not know yet.
    Admin,
    /// Publish and PublishBatch: messages to users' WebSockets.
    Push,
    /// GetAccessToken and ReportInvalidAccessToken: WeChat's access_token.
    WechatToken,
    /// GetPhoneNumber: users' phone numbers.
    WechatPhone,
    /// DecryptUserData, CheckSessionKey and ResetSessionKey: a user's session_key.
    WechatUserData,
    /// The open-API proxy (`openapi/`), for the paths the key's `openapi` list names.
    WechatOpenapi,
    /// HandleWeChatPush: relay WeChat's message push, as a gateway does.
    WechatPush,
}

const SCOPES: [(Scope, &str); 10] = [
    (Scope::Validate, "validate"),
    (Scope::Login, "login"),
    (Scope::Follow, "follow"),
    (Scope::Admin, "admin"),
    (Scope::Push, "push"),
    (Scope::WechatToken, "wechat.token"),
    (Scope::WechatPhone, "wechat.phone"),
    (Scope::WechatUserData, "wechat.user_data"),
    (Scope::WechatOpenapi, "wechat.openapi"),
    (Scope::WechatPush, "wechat.push"),
];

impl Scope {
    pub fn name(self) -> &'static str {
        SCOPES
            .iter()
            .find(|(scope, _)| *scope == self)
            .map(|(_, name)| *name)
            .unwrap_or("admin")
    }

    fn parse(name: &str) -> Option<Self> {
        SCOPES.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

const SERVICE_PREFIX: &str = "/weapp.session.v1.SessionService/";

/// The scope an RPC needs; `None` for what is not the session service (health, reflection).
pub fn required_scope(path: &str) -> Option<Scope> {
    let method = path.strip_prefix(SERVICE_PREFIX)?;
    Some(match method {
        // Public keys: open, like health and reflection.
        "GetIdentityKeys" => return None,
        "Validate" | "CheckSessions" | "ReadStream" => Scope::Validate,
        "Login" | "Logout" => Scope::Login,
        "WatchRevocations" | "ReportDelivery" => Scope::Follow,
        "Publish" | "PublishBatch" | "Presence" => Scope::Push,
        "GetAccessToken" | "ReportInvalidAccessToken" => Scope::WechatToken,
        "GetPhoneNumber" => Scope::WechatPhone,
        "DecryptUserData" | "CheckSessionKey" | "ResetSessionKey" => Scope::WechatUserData,
        "HandleWeChatPush" => Scope::WechatPush,
        // RevokeUser, ForceRefreshAccessToken, and whatever is added before this table
        // learns it: the narrowest door.
        _ => Scope::Admin,
    })
}

/// The key a call was made with (its name, for logs, and the apps it may act for), in the
/// request's extensions. A call with none came through without keys configured (loopback,
/// or `WEAPP_GRPC_INSECURE`): it may act for every app.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: Arc<str>,
    pub apps: AppScope,
}

/// The apps a key may act for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppScope {
    /// No `apps` in its entry: the default app, whichever that is.
    DefaultOnly,
    Listed(Arc<[Arc<str>]>),
    /// `apps = ["*"]`.
    All,
}

impl AppScope {
    /// Whether the key may act for `app` when `default` is the default app.
    pub fn allows(&self, app: &str, default: &str) -> bool {
        match self {
            Self::DefaultOnly => app == default,
            Self::Listed(apps) => apps.iter().any(|a| &**a == app),
            Self::All => true,
        }
    }

    /// The app a call that names none acts for: the key's first, else the default.
    pub fn first<'a>(&'a self, default: &'a str) -> &'a str {
        match self {
            Self::Listed(apps) => apps.first().map_or(default, |a| a),
            _ => default,
        }
    }
}

/// What a call without a key may do: everything (the operator configured no keys).
pub fn caller_apps<T>(request: &tonic::Request<T>) -> AppScope {
    request
        .extensions()
        .get::<Caller>()
        .map_or(AppScope::All, |c| c.apps.clone())
}

struct Key {
    name: Arc<str>,
    digest: [u8; 32],
    scopes: u16,
    /// The WeChat API paths this key may call through the open-API proxy.
    openapi: AllowList,
    apps: AppScope,
}

/// Why a presented credential is not a known key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// No `authorization: Bearer …` at all.
    Missing,
    /// A bearer credential that is no key in the file.
    Unknown,
}

impl KeyRefusal {
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "an API key is required: send `authorization: Bearer <key>`",
            Self::Unknown => "unknown API key",
        }
    }
}

/// The API keys session-svc accepts, and the file they were read from (a reload reads it
/// again).
#[derive(Clone)]
pub struct ApiKeys {
    keys: Arc<Vec<Key>>,
    source: Arc<Path>,
    /// Over every byte read to build it: a watch of the files reloads only on a change.
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &*k.name))
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    key: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    file: PathBuf,
    scopes: Vec<String>,
    /// With the `wechat.openapi` scope: the WeChat API paths the key may call.
    #[serde(default)]
    openapi: Vec<String>,
    /// The apps it may act for (`["*"]`: all); absent: the default app only.
    apps: Option<Vec<String>>,
}

/// Shortest key accepted: 32 characters (`openssl rand -hex 32` makes 64).
const MIN_KEY_LEN: usize = 32;

impl ApiKeys {
    /// Reads the keys file at `path` and every key file it names (a clap value parser: errors
    /// name the file and the entry, never a key).
    pub fn load(path: &str) -> Result<Self, String> {
        Self::load_path(Path::new(path))
    }

    /// Reads the same file again (a reload).
    pub fn reread(&self) -> Result<Self, String> {
        Self::load_path(&self.source)
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Whether `other` was built from exactly the same bytes.
    pub fn same_as(&self, other: &Self) -> bool {
        self.digest == other.digest
    }

    fn load_path(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        let mut whole = Sha256::new();
        whole.update(text.as_bytes());
        let file: KeysFile = toml::from_str(&text).map_err(|e| e.message().to_owned())?;
        if file.key.is_empty() {
            return Err("it lists no [[key]]".into());
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut keys: Vec<Key> = Vec::with_capacity(file.key.len());
        for entry in file.key {
            let name = entry.name;
            let problem = |what: String| format!("key {name:?}: {what}");
            if name.is_empty() || keys.iter().any(|k| *k.name == *name) {
                return Err(problem("names must be present and unique".into()));
            }
            let mut scopes = 0u16;
            for scope in &entry.scopes {
                let known = Scope::parse(scope).ok_or_else(|| {
                    let names: Vec<&str> = SCOPES.iter().map(|(_, n)| *n).collect();
                    problem(format!(
                        "unknown scope {scope:?} (known: {})",
                        names.join(", ")
                    ))
                })?;
                scopes |= known.bit();
            }
            if scopes == 0 {
                return Err(problem("no scopes".into()));
            }
            let openapi = match (scopes & Scope::WechatOpenapi.bit() != 0, entry.openapi) {
                (false, paths) if paths.is_empty() => AllowList::default(),
                (false, _) => {
                    return Err(problem(
                        "an `openapi` list needs the \"wechat.openapi\" scope too".into(),
                    ));
                }
                (true, paths) if paths.is_empty() => {
                    return Err(problem(
                        "the \"wechat.openapi\" scope needs an `openapi` list of the WeChat \
                         API paths the key may call, e.g. openapi = [\"/wxa/msg_sec_check\"]"
                            .into(),
                    ));
                }
                (true, paths) => AllowList::new(paths).map_err(problem)?,
            };
            let key_path = dir.join(&entry.file);
            let key = std::fs::read_to_string(&key_path)
                .map_err(|e| problem(format!("cannot read {}: {e}", key_path.display())))?;
            let key = key.trim();
            if key.len() < MIN_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(problem(format!(
                    "{} must hold at least {MIN_KEY_LEN} visible ASCII characters, e.g. from \
                     `openssl rand -hex 32`",
                    key_path.display()
                )));
            }
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            if keys.iter().any(|k| bool::from(k.digest.ct_eq(&digest))) {
                return Err(problem("the same key is listed twice".into()));
            }
            whole.update(digest);
            let apps = match entry.apps {
                None => AppScope::DefaultOnly,
                Some(apps) if apps.iter().any(|a| a == "*") => match apps.len() {
                    1 => AppScope::All,
                    _ => return Err(problem("`apps = [\"*\"]` stands alone".into())),
                },
                Some(apps) if apps.is_empty() => {
                    return Err(problem(
                        "`apps` is empty: list AppIds, or [\"*\"] for all".into(),
                    ));
                }
                Some(apps) => {
                    if let Some(bad) = apps
                        .iter()
                        .find(|a| !crate::apps::well_formed_app_id(a.trim()))
                    {
                        return Err(problem(format!("{bad:?} in `apps` is not an AppId")));
                    }
                    AppScope::Listed(apps.iter().map(|a| Arc::from(a.trim())).collect())
                }
            };
            keys.push(Key {
                name: name.into(),
                digest,
                scopes,
                openapi,
                apps,
            });
        }
        Ok(Self {
            keys: Arc::new(keys),
            source: path.into(),
            digest: whole.finalize().into(),
        })
    }

    /// The key behind an `authorization` header.
    fn identify(&self, authorization: Option<&[u8]>) -> Result<&Key, KeyRefusal> {
        // The scheme is case-insensitive (RFC 7235); the key is not.
        let presented = authorization
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .map(|v| &v[7..])
            .ok_or(KeyRefusal::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Every key is compared, matched or not: the time taken says nothing about which.
        let mut found: Option<&Key> = None;
        for key in self.keys.iter() {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found.ok_or(KeyRefusal::Unknown)
    }

    /// The caller behind an `authorization` header, if its key may do `scope`.
    pub fn authorize(&self, authorization: Option<&[u8]>, scope: Scope) -> Result<Caller, Status> {
        let key = self
            .identify(authorization)
            .map_err(|refusal| Status::unauthenticated(refusal.message()))?;
        if key.scopes & scope.bit() == 0 {
            return Err(Status::permission_denied(format!(
                "API key {:?} lacks the {:?} scope",
                &*key.name,
                scope.name()
            )));
        }
        Ok(Caller {
            name: key.name.clone(),
            apps: key.apps.clone(),
        })
    }

    /// The caller behind an `authorization` header and the WeChat API paths it may call
    /// through the open-API proxy (empty for a key without the `wechat.openapi` scope).
    pub fn openapi(&self, authorization: Option<&[u8]>) -> Result<(Caller, AllowList), KeyRefusal> {
        let key = self.identify(authorization)?;
        Ok((
            Caller {
                name: key.name.clone(),
                apps: key.apps.clone(),
            },
            key.openapi.clone(),
        ))
    }
}

/// Who may call: the API keys, and the operator's explicit consent to run without them.
#[derive(clap::Args, Clone, Debug)]
pub struct AccessSettings {
    /// TOML file listing the API keys callers must present, with their scopes (see README,
    /// "Who may call session-svc"). Without it every caller may do everything, which is only
    /// allowed on a loopback address, or with WEAPP_GRPC_INSECURE.
    #[arg(id = "api_keys_file", value_name = "API_KEYS_FILE", long = "api-keys-file", env = "WEAPP_API_KEYS_FILE", value_parser = ApiKeys::load)]
    pub api_keys: Option<ApiKeys>,

    /// Listen beyond loopback with no API keys: anyone who reaches the port may revoke
    /// sessions. For networks where something else (a service mesh) authenticates callers.
    #[arg(long = "grpc-insecure", env = "WEAPP_GRPC_INSECURE")]
    pub insecure: bool,
}

impl AccessSettings {
    /// Refuses an unauthenticated API on an address others can reach, unless told to. Client
    /// certificates (mutual TLS) authenticate callers too.
    pub fn check(&self, listen: std::net::SocketAddr, mutual_tls: bool) -> Result<(), String> {
        let authenticated = self.api_keys.is_some() || mutual_tls;
        if !authenticated && !self.insecure && !listen.ip().is_loopback() {
            return Err(format!(
                "session-svc would listen on {listen} with no authentication, so anyone who \
                 reaches it could revoke sessions: set WEAPP_API_KEYS_FILE (README, \"Who may \
                 call session-svc\") or a client CA for mutual TLS, listen on 127.0.0.1, or \
                 set WEAPP_GRPC_INSECURE=true"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY_KEY: &str = "0123456789abcdef0123456789abcdef-gateway";
    const ADMIN_KEY: &str = "0123456789abcdef0123456789abcdef-admin";

    fn keys_file(dir: &tempfile::TempDir, toml: &str) -> Result<ApiKeys, String> {
        std::fs::write(dir.path().join("gateway.key"), format!("{GATEWAY_KEY}\n")).unwrap();
        std::fs::write(dir.path().join("admin.key"), ADMIN_KEY).unwrap();
        std::fs::write(dir.path().join("short.key"), "too-short").unwrap();
        let path = dir.path().join("api-keys.toml");
        std::fs::write(&path, toml).unwrap();
        ApiKeys::load(path.to_str().unwrap())
    }

    const GOOD: &str = r#"
        [[key]]
        name = "gateway"
        file = "gateway.key"
        scopes = ["validate", "login", "follow"]

        [[key]]
        name = "ops"
        file = "admin.key"
        scopes = ["admin"]
    "#;

    #[test]
    fn keys_carry_their_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_file(&dir, GOOD).unwrap();
        let bearer = |key: &str| format!("Bearer {key}").into_bytes();
        let gateway = bearer(GATEWAY_KEY);
        let caller = keys.authorize(Some(&gateway), Scope::Validate).unwrap();
        assert_eq!(&*caller.name, "gateway");
        assert_eq!(
            caller.apps,
            AppScope::DefaultOnly,
            "no `apps`: the default app only"
        );
        let denied = keys.authorize(Some(&gateway), Scope::Admin).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("admin"));
        assert!(
            keys.authorize(Some(&bearer(ADMIN_KEY)), Scope::Admin)
                .is_ok()
        );
        let lowercase = format!("bearer {ADMIN_KEY}").into_bytes();
        assert!(keys.authorize(Some(&lowercase), Scope::Admin).is_ok());
        for wrong in [
            None,
            Some(&b"Bearer nope"[..]),
            Some(GATEWAY_KEY.as_bytes()),
        ] {
            let status = keys.authorize(wrong, Scope::Validate).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(!status.message().contains(GATEWAY_KEY));
        }
    }

    #[test]
    fn a_key_names_the_wechat_apis_it_may_call_through_the_open_api_proxy() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_file(
            &dir,
            &format!(
                "{GOOD}\n[[key]]\nname = \"backend\"\nfile = \"open.key\"\nscopes = [\"wechat.openapi\"]\n\
                 openapi = [\"/wxa/msg_sec_check\", \"/wxa/getwxacodeunlimit\"]"
            ),
        );
        // The keys file names open.key, written after the fact: the helper writes only two.
        assert!(keys.is_err());
        std::fs::write(dir.path().join("open.key"), format!("{GATEWAY_KEY}-open")).unwrap();
        let keys = ApiKeys::load(dir.path().join("api-keys.toml").to_str().unwrap()).unwrap();
        let bearer = format!("Bearer {GATEWAY_KEY}-open").into_bytes();
        let (caller, allowed) = keys.openapi(Some(&bearer)).unwrap();
        assert_eq!(&*caller.name, "backend");
        assert_eq!(
            allowed.find("/wxa/msg_sec_check"),
            Some("/wxa/msg_sec_check")
        );
        assert_eq!(allowed.find("/wxa/generate_urllink"), None);
        let gateway = format!("Bearer {GATEWAY_KEY}").into_bytes();
        assert!(keys.openapi(Some(&gateway)).unwrap().1.is_empty());
        assert_eq!(keys.openapi(None).err(), Some(KeyRefusal::Missing));
        assert_eq!(
            keys.openapi(Some(b"Bearer nope")).err(),
            Some(KeyRefusal::Unknown)
        );
    }

    #[test]
    fn every_rpc_needs_a_scope_and_unknown_ones_need_admin() {
        let rpc = |m: &str| required_scope(&format!("{SERVICE_PREFIX}{m}"));
        assert_eq!(rpc("Validate"), Some(Scope::Validate));
        assert_eq!(rpc("CheckSessions"), Some(Scope::Validate));
        assert_eq!(rpc("Login"), Some(Scope::Login));
        assert_eq!(rpc("Logout"), Some(Scope::Login));
        assert_eq!(rpc("WatchRevocations"), Some(Scope::Follow));
        assert_eq!(rpc("ReportDelivery"), Some(Scope::Follow));
        assert_eq!(rpc("Publish"), Some(Scope::Push));
        assert_eq!(rpc("PublishBatch"), Some(Scope::Push));
        assert_eq!(rpc("RevokeUser"), Some(Scope::Admin));
        assert_eq!(rpc("GetAccessToken"), Some(Scope::WechatToken));
        assert_eq!(rpc("ReportInvalidAccessToken"), Some(Scope::WechatToken));
        assert_eq!(rpc("ForceRefreshAccessToken"), Some(Scope::Admin));
        assert_eq!(rpc("GetPhoneNumber"), Some(Scope::WechatPhone));
        assert_eq!(rpc("DecryptUserData"), Some(Scope::WechatUserData));
        assert_eq!(rpc("CheckSessionKey"), Some(Scope::WechatUserData));
        assert_eq!(rpc("ResetSessionKey"), Some(Scope::WechatUserData));
        assert_eq!(rpc("SomethingNew"), Some(Scope::Admin));
        assert_eq!(rpc("GetIdentityKeys"), None);
        assert_eq!(required_scope("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_scope("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
    }

    #[test]
    fn a_bad_keys_file_names_the_entry_and_never_a_key() {
        let dir = tempfile::tempdir().unwrap();
        for (toml, expected) in [
            (
                "[[key]]\nname = \"a\"\nfile = \"gateway.key\"\nscopes = [\"root\"]",
                "unknown scope",
            ),
            (
                "[[key]]\nname = \"a\"\nfile = \"short.key\"\nscopes = [\"admin\"]",
                "at least 32",
            ),
            (
                "[[key]]\nname = \"a\"\nfile = \"none.key\"\nscopes = [\"admin\"]",
                "cannot read",
            ),
            (
                "[[key]]\nname = \"a\"\nfile = \"gateway.key\"\nscopes = [\"admin\"]\nextra = 1",
                "unknown field",
            ),
            (
                "[[key]]\nname = \"a\"\nfile = \"gateway.key\"\nscopes = []",
                "no scopes",
            ),
            ("key = []", "no [[key]]"),
            (
                "[[key]]\nname = \"a\"\nfile = \"gateway.key\"\nscopes = [\"admin\"]\nopenapi = [\"/wxa/msg_sec_check\"]",
                "needs the \"wechat.openapi\" scope",
            ),
            (
                "[[key]]\nname = \"a\"\nfile = \"gateway.key\"\nscopes = [\"wechat.openapi\"]",
                "needs an `openapi` list",
            ),
            (
                "[[key]]\nname = \"a\"\nfile = \"gateway.key\"\nscopes = [\"wechat.openapi\"]\nopenapi = [\"/cgi-bin/stable_token\"]",
                "never proxied",
            ),
            (
                "[[key]]\nname = \"a\"\nfile = \"gateway.key\"\nscopes = [\"wechat.openapi\"]\nopenapi = [\"/wxa/../cgi-bin/token\"]",
                "not a WeChat API path",
            ),
            (
                "[[key]]\nname = \"a\"\nfile = \"gateway.key\"\nscopes = [\"admin\"]\n\
                 [[key]]\nname = \"b\"\nfile = \"gateway.key\"\nscopes = [\"admin\"]",
                "twice",
            ),
        ] {
            let err = keys_file(&dir, toml).unwrap_err();
            assert!(err.contains(expected), "{err}");
            assert!(
                !err.contains(GATEWAY_KEY) && !err.contains("too-short"),
                "{err}"
            );
        }
    }
}
