//! Configuration, defined once: each setting is a clap argument (flag, `WEAPP_*` environment
//! variable, default) on `Settings` and the structs it flattens, next to the code they
//! configure (`WeChatSettings` in `wechat.rs`, `MongoSettings` in `store/mongo.rs`, the session
//! and login policies). Tests parse them exactly as the binary does. Secrets (the AppSecret,
//! the MongoDB URI and password) come from the environment or from files, never from flags
//! that would show in `ps`, and never from the repository.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser};
use weapp_common::config::{ServiceCli, duration};

use crate::{
    access::AccessSettings, access_token::AccessTokenSettings, identity::IdentitySettings,
    login::LoginPolicy, openapi::OpenApiSettings, session::SessionPolicy, store::MongoSettings,
    streams::StreamSettings, tls::TlsSettings, vault::VaultSettings, wechat::WeChatSettings,
};

/// weapp session-svc: WeChat login and sessions over gRPC.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    subcommand_negates_reqs = true,
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<SessionCommand>,
    #[command(flatten)]
    pub settings: Settings,
}

/// What `session-svc` does besides serving.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum SessionCommand {
    /// Exits 0 when the service listening on --listen is ready, for container health checks
    /// (no curl or grpcurl needed in the image).
    Healthcheck,
    /// Operator commands against a running session-svc, over gRPC with an API key
    /// (revoke-user, sessions, token, force-refresh, publish).
    #[command(subcommand)]
    Admin(crate::admin::AdminCommand),
}

/// Everything session-svc needs to run.
#[derive(Args, Clone, Debug)]
pub struct Settings {
    /// gRPC listen address (port 0 picks a free port). Use 0.0.0.0:50051 when gateways run
    /// on other hosts.
    #[arg(long, env = "WEAPP_SESSION_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Where Prometheus scrapes `/metrics` (keep it off the public network; `off`: nowhere).
    #[arg(long, env = "WEAPP_METRICS_LISTEN", default_value = "127.0.0.1:9465", value_parser = weapp_common::metrics::metrics_listen)]
    pub metrics_listen: weapp_common::metrics::MetricsListen,

    #[command(flatten)]
    pub tracing: weapp_common::otlp::TracingSettings,

    #[command(flatten)]
    pub access: AccessSettings,

    #[command(flatten)]
    pub tls: TlsSettings,

    #[command(flatten)]
    pub identity: IdentitySettings,

    #[command(flatten)]
    pub wechat: WeChatSettings,

    #[command(flatten)]
    pub store: StoreSettings,

    #[command(flatten)]
    pub vault: VaultSettings,

    #[command(flatten)]
    pub access_token: AccessTokenSettings,

    #[command(flatten)]
    pub openapi: OpenApiSettings,

    #[command(flatten)]
    pub sessions: SessionPolicy,

    #[command(flatten)]
    pub login: LoginPolicy,

    #[command(flatten)]
    pub streams: StreamSettings,

    #[command(flatten)]
    pub message_push: crate::message_push::MessagePushSettings,

    /// How often expired sessions are swept from the store.
    #[arg(long, env = "WEAPP_PURGE_INTERVAL", default_value = "1m", value_parser = duration)]
    pub purge_interval: Duration,

    /// How often to look for changes in the apps and API keys files (e.g. `5s`, for
    /// Kubernetes Secrets mounted as files); unset: only on SIGHUP.
    #[arg(long, env = "WEAPP_CONFIG_WATCH", value_parser = duration)]
    pub config_watch: Option<Duration>,

    /// On SIGTERM, how long to keep answering while reporting NOT_SERVING, so that gateways
    /// (which probe every 500 ms) move to other replicas before the port closes.
    #[arg(long, env = "WEAPP_SHUTDOWN_DRAIN", default_value = "1s", value_parser = duration)]
    pub shutdown_drain: Duration,
}

/// Where sessions live: MongoDB when a URI is set, else the embedded store.
#[derive(Args, Clone, Debug)]
pub struct StoreSettings {
    /// Directory of the embedded session store (used when no MongoDB URI is set).
    #[arg(long, env = "WEAPP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub mongo: MongoSettings,
}

impl ServiceCli for Cli {
    const NAME: &'static str = "session-svc";
    const ENV_ONLY: &'static [&'static str] = &["app_secret", "mongodb_uri"];
    type Settings = Settings;

    fn into_settings(self) -> Settings {
        self.settings
    }

    fn has_subcommand(&self) -> bool {
        self.command.is_some()
    }

    fn check(&self) -> Result<(), String> {
        self.settings.check()
    }
}

impl Settings {
    /// Parses settings from flags exactly as the binary does; `args` leaves out the
    /// program name.
    pub fn parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::settings_from(args)
    }

    /// What clap cannot check alone: settings that depend on each other.
    pub fn check(&self) -> Result<(), String> {
        self.access
            .check(self.listen, self.tls.requires_client_certificates())?;
        self.wechat.check()?;
        self.store.mongo.check()?;
        self.access_token.check()?;
        self.openapi.check()?;
        self.sessions.check()
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        let mut all = vec!["--app-id", "wx123"];
        all.extend_from_slice(args);
        Settings::parse_from(all)
    }

    fn secret_file(dir: &tempfile::TempDir, content: &str) -> String {
        let path = dir.path().join("secret");
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn the_secret_is_required_and_never_a_flag() {
        let err = parse(&[]).unwrap_err().to_string();
        assert!(err.contains("WEAPP_APP_SECRET_FILE"), "{err}");
        let err = parse(&["--app-secret", "hunter2"]).unwrap_err().to_string();
        assert!(
            err.contains("command line") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn the_secret_file_is_read_and_trimmed_and_errors_do_not_echo_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret_file(&dir, "top-secret-value\n");
        let settings = parse(&["--app-secret-file", &path]).unwrap();
        assert_eq!(
            settings.wechat.app_secret().unwrap().expose_secret(),
            "top-secret-value"
        );
        assert!(!format!("{settings:?}").contains("top-secret-value"));

        let missing = dir.path().join("missing");
        let err = parse(&["--app-secret-file", missing.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_mongodb_uri_file_selects_mongodb_and_stays_secret() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::write(&app, "s").unwrap();
        let app = app.to_str().unwrap();
        let s = parse(&["--app-secret-file", app]).unwrap();
        assert!(s.store.mongo.uri().is_none());
        let uri = secret_file(&dir, "mongodb://weapp:pa55@db:27017/weapp");
        let s = parse(&["--app-secret-file", app, "--mongodb-uri-file", &uri]).unwrap();
        assert!(s.store.mongo.uri().is_some());
        assert!(!format!("{s:?}").contains("pa55"));
        let bad = secret_file(&dir, "postgres://db");
        let err = parse(&["--app-secret-file", app, "--mongodb-uri-file", &bad]).unwrap_err();
        assert!(!err.to_string().contains("postgres://db"), "{err}");
        assert!(parse(&["--app-secret-file", app, "--mongodb-password-file", app]).is_err());
    }

    #[test]
    fn durations_parse_humanly_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let app = secret_file(&dir, "s");
        let s = parse(&[
            "--app-secret-file",
            &app,
            "--session-idle-ttl",
            "90s",
            "--session-max-age",
            "1h",
        ])
        .unwrap();
        assert_eq!(s.sessions.idle_ttl, Duration::from_secs(90));
        let err = parse(&[
            "--app-secret-file",
            &app,
            "--session-idle-ttl",
            "2h",
            "--session-max-age",
            "1h",
        ]);
        assert!(err.is_err());
    }

    #[test]
    fn the_policies_defaults_are_the_arguments_defaults() {
        assert_eq!(
            SessionPolicy::shipped().unwrap().idle_ttl,
            Duration::from_secs(2 * 3600)
        );
        assert_eq!(LoginPolicy::shipped().unwrap().max_per_user_per_minute, 20);
    }

    #[test]
    fn healthcheck_needs_no_app_id() {
        let cli = Cli::parse_checked(["session-svc", "healthcheck"]).unwrap();
        assert_eq!(cli.command, Some(SessionCommand::Healthcheck));
        let cli = Cli::parse_checked(["session-svc", "admin", "token"]).unwrap();
        assert!(matches!(cli.command, Some(SessionCommand::Admin(_))));
    }
}
