//! Who may call the open-API proxy, and which WeChat APIs: a backend with an API key whose
//! entry has the `wechat.openapi` scope and an `openapi` allow-list (`access.rs`), or — for
//! containers written for WeChat Cloud Run, which send no credential — a caller from
//! `WEAPP_OPENAPI_TRUSTED_NETWORKS`, with `WEAPP_OPENAPI_TRUSTED_PATHS`. A key, when sent,
//! must be right: a wrong key never falls back to the network's allow-list.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use weapp_common::config::{ip_net, within};

use crate::{
    access::{AllowList, AppScope, KeyRefusal, allow_listed_path},
    error::OpenApiError,
    live::LiveConfig,
};

/// The open-API proxy's settings.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct OpenApiSettings {
    /// Where the open-API proxy listens (off when unset): backends call any WeChat server
    /// API through it without an access_token (README, "Call WeChat's APIs without a token").
    #[arg(
        id = "openapi_listen",
        value_name = "OPENAPI_LISTEN",
        long = "openapi-listen",
        env = "WEAPP_OPENAPI_LISTEN"
    )]
    pub listen: Option<SocketAddr>,

    /// Networks whose callers need no API key (comma-separated addresses or networks), for
    /// containers written for WeChat Cloud Run. They may call WEAPP_OPENAPI_TRUSTED_PATHS.
    #[arg(id = "openapi_trusted_networks", value_name = "NETWORKS", long = "openapi-trusted-networks", env = "WEAPP_OPENAPI_TRUSTED_NETWORKS", value_delimiter = ',', value_parser = ip_net)]
    pub trusted_networks: Vec<IpNet>,

    /// The WeChat API paths callers from the trusted networks may call (comma-separated, e.g.
    /// /wxa/msg_sec_check,/cgi-bin/message/subscribe/send).
    #[arg(id = "openapi_trusted_paths", value_name = "PATHS", long = "openapi-trusted-paths", env = "WEAPP_OPENAPI_TRUSTED_PATHS", value_delimiter = ',', value_parser = allow_listed_path)]
    pub trusted_paths: Vec<String>,

    /// The largest request body the proxy passes on (WeChat's media uploads are the big ones).
    #[arg(id = "openapi_max_body_bytes", value_name = "BYTES", long = "openapi-max-body-bytes", env = "WEAPP_OPENAPI_MAX_BODY_BYTES", default_value = "10485760", value_parser = weapp_common::config::positive)]
    pub max_body_bytes: usize,
}

impl OpenApiSettings {
    pub fn check(&self) -> Result<(), String> {
        let networks = !self.trusted_networks.is_empty();
        let paths = !self.trusted_paths.is_empty();
        if networks != paths {
            return Err(
                "WEAPP_OPENAPI_TRUSTED_NETWORKS and WEAPP_OPENAPI_TRUSTED_PATHS go \
                        together: callers without a key need both where they may call from \
                        and what they may call"
                    .into(),
            );
        }
        if self.listen.is_none() && networks {
            return Err(
                "WEAPP_OPENAPI_TRUSTED_NETWORKS is set but the open-API proxy is off: set \
                 WEAPP_OPENAPI_LISTEN"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Who may call what.
pub struct Callers {
    live: Arc<LiveConfig>,
    networks: Vec<IpNet>,
    trusted: AllowList,
}

impl Callers {
    pub fn new(settings: &OpenApiSettings, live: Arc<LiveConfig>) -> Result<Self, String> {
        Ok(Self {
            live,
            networks: settings.trusted_networks.clone(),
            trusted: AllowList::new(settings.trusted_paths.clone())?,
        })
    }

    /// The caller's name (for logs), what it may call, and for which apps. Callers from the
    /// trusted networks (Cloud Run containers) may name any app with `from_appid`, as on
    /// Cloud Run.
    pub fn allowed(
        &self,
        authorization: Option<&[u8]>,
        peer: IpAddr,
    ) -> Result<(String, AllowList, AppScope), OpenApiError> {
        if authorization.is_some() {
            let keys = self.live.keys().ok_or(OpenApiError::UnknownKey)?;
            return match keys.openapi(authorization) {
                Ok((caller, paths)) => Ok((format!("key {:?}", &*caller.name), paths, caller.apps)),
                Err(KeyRefusal::Missing) => Err(OpenApiError::NoCredential),
                Err(KeyRefusal::Unknown) => Err(OpenApiError::UnknownKey),
            };
        }
        if within(&self.networks, peer) {
            return Ok((
                format!("trusted network caller {peer}"),
                self.trusted.clone(),
                AppScope::All,
            ));
        }
        Err(OpenApiError::NoCredential)
    }
}
