//! The WeChat API paths a caller may have called through the open-API proxy (an API key's
//! `openapi` list, an app's in the apps file, the trusted networks'): exact, normalized paths,
//! never a token endpoint.
use std::sync::Arc;

/// WeChat API paths a caller of the open-API proxy may call: exact, normalized paths. Each
/// lives as long as the process, so that it can label metrics (`&'static str`) — the list
/// is the operator's, read once, so this is bounded.
#[derive(Clone, Default)]
pub struct AllowList(Arc<[&'static str]>);

/// WeChat's token endpoints: never proxied (they take the AppSecret, and the token they
/// hand out is session-svc's to keep; a backend asks GetAccessToken for it).
pub const TOKEN_PATHS: [&str; 2] = ["/cgi-bin/token", "/cgi-bin/stable_token"];

/// A path an allow-list may name: like `/wxa/msg_sec_check`, normalized, no query, not a
/// token endpoint (a clap value parser too).
pub fn allow_listed_path(path: &str) -> Result<String, String> {
    let path = path.trim();
    let normal = matches!(
        weapp_wire::path::normalize(path),
        Ok(std::borrow::Cow::Borrowed(_))
    );
    if !path.starts_with('/') || path.len() < 2 || !normal || path.contains(['?', '#']) {
        return Err(format!(
            "{path:?} is not a WeChat API path like \"/wxa/msg_sec_check\" (no host, query, \
             %, . or .. segments)"
        ));
    }
    if TOKEN_PATHS.iter().any(|t| t.eq_ignore_ascii_case(path)) {
        return Err(format!(
            "{path:?} is never proxied: session-svc keeps the access_token; a backend that \
             needs it asks GetAccessToken (scope \"wechat.token\")"
        ));
    }
    Ok(path.to_owned())
}

/// The one `&'static` copy of an allow-listed path: files are read again on every reload
/// (and a watch), so each distinct path is kept once, not once per reading.
fn intern(path: String) -> &'static str {
    static PATHS: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut paths = PATHS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = paths.get(path.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(path.into_boxed_str());
    paths.insert(leaked);
    leaked
}

impl AllowList {
    /// Keeps `paths`, each checked by [`allow_listed_path`].
    pub fn new(paths: Vec<String>) -> Result<Self, String> {
        let mut list: Vec<&'static str> = Vec::with_capacity(paths.len());
        for path in paths {
            let path = intern(allow_listed_path(&path)?);
            if !list.contains(&path) {
                list.push(path);
            }
        }
        Ok(Self(list.into()))
    }

    /// The listed path equal to `path`, as the label to count it by.
    pub fn find(&self, path: &str) -> Option<&'static str> {
        self.0.iter().copied().find(|listed| *listed == path)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for AllowList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}
