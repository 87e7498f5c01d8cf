//! Configuration: command-line flags with matching `WEAPP_*` environment variables, resolved
//! into [`Settings`]. Secrets come from the environment or from files, never from flags that
//! would show in `ps`, and never from the repository.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use secrecy::SecretString;
use url::Url;

use crate::{
    login::LoginPolicy, session::SessionPolicy, store::MongoSettings, wechat::WeChatSettings,
};

/// Everything session-svc needs to run, already validated.
#[derive(Clone, Debug)]
pub struct Settings {
    /// gRPC listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    pub wechat: WeChatSettings,
    pub store: StoreSettings,
    pub sessions: SessionPolicy,
    pub login: LoginPolicy,
    /// How often expired sessions are swept from the store.
    pub purge_interval: Duration,
}

#[derive(Clone, Debug)]
pub enum StoreSettings {
    /// Embedded persistent store: one file under this directory (the default).
    Embedded { data_dir: PathBuf },
    /// MongoDB, when a `mongodb://` or `mongodb+srv://` URI is configured.
    Mongo(MongoSettings),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the AppSecret is missing: set WEAPP_APP_SECRET or WEAPP_APP_SECRET_FILE")]
    MissingSecret,
    #[error("set only one of WEAPP_APP_SECRET and WEAPP_APP_SECRET_FILE")]
    TwoSecrets,
    #[error("cannot read the secret file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the secret file {0} is empty")]
    EmptySecretFile(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

/// Reads a secret from the environment/flag or from a file, at most one of them.
fn one_secret(
    value: Option<String>,
    file: Option<PathBuf>,
    names: (&'static str, &'static str),
) -> Result<Option<SecretString>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
            "set only one of {} and {}",
            names.0, names.1
        ))),
        (Some(v), None) if v.trim().is_empty() => {
            Err(ConfigError::Invalid(format!("{} is empty", names.0)))
        }
        (Some(v), None) => Ok(Some(SecretString::from(v.trim().to_owned()))),
        (None, Some(path)) => read_secret_file(path).map(Some),
        (None, None) => Ok(None),
    }
}

/// weapp session-svc: WeChat login and sessions over gRPC.
#[derive(Parser, Debug)]
#[command(version, about, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// gRPC listen address. Use 0.0.0.0:50051 when gateways run on other hosts.
    #[arg(long, env = "WEAPP_SESSION_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// The mini-program's AppId.
    #[arg(long, env = "WEAPP_APP_ID", required = true)]
    pub app_id: Option<String>,

    /// The mini-program's AppSecret (prefer WEAPP_APP_SECRET_FILE).
    #[arg(long, env = "WEAPP_APP_SECRET", hide_env_values = true)]
    pub app_secret: Option<String>,

    /// File holding the AppSecret.
    #[arg(long, env = "WEAPP_APP_SECRET_FILE")]
    pub app_secret_file: Option<PathBuf>,

    /// Base URL of WeChat's API (the sandbox's URL for local runs).
    #[arg(
        long,
        env = "WEAPP_WECHAT_BASE_URL",
        default_value = "https://api.weixin.qq.com"
    )]
    pub wechat_base_url: Url,

    /// Time allowed for one jscode2session call, e.g. "5s".
    #[arg(long, env = "WEAPP_WECHAT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub wechat_timeout: Duration,

    /// Most jscode2session calls in flight at once; further logins wait within the timeout.
    #[arg(long, env = "WEAPP_WECHAT_MAX_CONCURRENT", default_value_t = 64)]
    pub wechat_max_concurrent: usize,

    /// Directory of the embedded session store (used when no MongoDB URI is set).
    #[arg(long, env = "WEAPP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// MongoDB URI (mongodb:// or mongodb+srv://); sessions go to MongoDB when set.
    #[arg(long, env = "WEAPP_MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,

    /// File holding the MongoDB URI.
    #[arg(long, env = "WEAPP_MONGODB_URI_FILE")]
    pub mongodb_uri_file: Option<PathBuf>,

    /// File holding the MongoDB password of the URI's user (keeps it out of the URI).
    #[arg(long, env = "WEAPP_MONGODB_PASSWORD_FILE")]
    pub mongodb_password_file: Option<PathBuf>,

    /// MongoDB database (default: the URI's, else "weapp").
    #[arg(long, env = "WEAPP_MONGODB_DATABASE")]
    pub mongodb_database: Option<String>,

    /// How long a store operation waits for a reachable MongoDB before failing UNAVAILABLE.
    #[arg(long, env = "WEAPP_MONGODB_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub mongodb_timeout: Duration,

    /// A session unused this long expires (renewed by use), e.g. "2h".
    #[arg(long, env = "WEAPP_SESSION_IDLE_TTL", default_value = "2h", value_parser = humantime::parse_duration)]
    pub session_idle_ttl: Duration,

    /// No session lives longer than this, used or not, e.g. "7d".
    #[arg(long, env = "WEAPP_SESSION_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub session_max_age: Duration,

    /// A session's idle timeout is renewed at most this often (saves store writes).
    #[arg(long, env = "WEAPP_SESSION_RENEW_AFTER", default_value = "1m", value_parser = humantime::parse_duration)]
    pub session_renew_after: Duration,

    /// Encrypted user data whose watermark is further than this from now is refused.
    #[arg(long, env = "WEAPP_LOGIN_MAX_DATA_AGE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub login_max_data_age: Duration,

    /// Sessions one user (openId) may create a minute; more logins get RESOURCE_EXHAUSTED
    /// (0: no limit).
    #[arg(long, env = "WEAPP_LOGIN_RATE_PER_USER", default_value_t = 20)]
    pub login_rate_per_user: u32,

    /// How often expired sessions are swept from the store.
    #[arg(long, env = "WEAPP_PURGE_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub purge_interval: Duration,
}

#[derive(clap::Subcommand, Debug, Clone, Copy)]
pub enum Command {
    /// Exits 0 when the session-svc listening on --listen reports SERVING (for container
    /// health checks: no curl or grpcurl needed in the image).
    Healthcheck,
}

impl Cli {
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        let app_secret = match (self.app_secret, self.app_secret_file) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoSecrets),
            (None, None) => return Err(ConfigError::MissingSecret),
            (Some(s), None) if s.trim().is_empty() => return Err(ConfigError::MissingSecret),
            (Some(s), None) => SecretString::from(s.trim().to_owned()),
            (None, Some(path)) => read_secret_file(path)?,
        };
        let mongodb_uri = one_secret(
            self.mongodb_uri,
            self.mongodb_uri_file,
            ("WEAPP_MONGODB_URI", "WEAPP_MONGODB_URI_FILE"),
        )?;
        let store = match mongodb_uri {
            None => {
                if self.mongodb_password_file.is_some() {
                    return Err(ConfigError::Invalid(
                        "WEAPP_MONGODB_PASSWORD_FILE is set but no WEAPP_MONGODB_URI".into(),
                    ));
                }
                StoreSettings::Embedded {
                    data_dir: self.data_dir,
                }
            }
            Some(uri) => {
                use secrecy::ExposeSecret as _;
                let scheme_ok = ["mongodb://", "mongodb+srv://"]
                    .iter()
                    .any(|scheme| uri.expose_secret().starts_with(scheme));
                if !scheme_ok {
                    return Err(ConfigError::Invalid(
                        "the MongoDB URI must start with mongodb:// or mongodb+srv://".into(),
                    ));
                }
                StoreSettings::Mongo(MongoSettings {
                    uri,
                    password: self
                        .mongodb_password_file
                        .map(read_secret_file)
                        .transpose()?,
                    database: self.mongodb_database.filter(|d| !d.is_empty()),
                    timeout: self.mongodb_timeout,
                })
            }
        };
        let app_id = self.app_id.unwrap_or_default().trim().to_owned();
        if app_id.is_empty() {
            return Err(ConfigError::Invalid("WEAPP_APP_ID is empty".into()));
        }
        let sessions = SessionPolicy {
            idle_ttl: self.session_idle_ttl,
            max_age: self.session_max_age,
            renew_after: self.session_renew_after,
        };
        sessions.check().map_err(ConfigError::Invalid)?;
        if self.wechat_max_concurrent == 0 {
            return Err(ConfigError::Invalid(
                "WEAPP_WECHAT_MAX_CONCURRENT must be at least 1".into(),
            ));
        }
        Ok(Settings {
            listen: self.listen,
            wechat: WeChatSettings {
                base_url: self.wechat_base_url,
                app_id,
                app_secret,
                timeout: self.wechat_timeout,
                max_concurrent: self.wechat_max_concurrent,
            },
            store,
            sessions,
            login: LoginPolicy {
                max_data_age: self.login_max_data_age,
                max_per_user_per_minute: self.login_rate_per_user,
            },
            purge_interval: self.purge_interval,
        })
    }
}

fn read_secret_file(path: PathBuf) -> Result<SecretString, ConfigError> {
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().is_empty() => Err(ConfigError::EmptySecretFile(path)),
        Ok(s) => Ok(SecretString::from(s.trim().to_owned())),
        Err(source) => Err(ConfigError::SecretFile { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut all = vec!["session-svc", "--app-id", "wx123"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?
            .into_settings()
    }

    #[test]
    fn secret_is_required_once() {
        assert!(matches!(cli(&[]), Err(ConfigError::MissingSecret)));
        assert!(matches!(
            cli(&["--app-secret", "s", "--app-secret-file", "/nonexistent"]),
            Err(ConfigError::TwoSecrets)
        ));
        assert!(cli(&["--app-secret", "s"]).is_ok());
    }

    #[test]
    fn secret_file_is_read_and_trimmed_and_errors_do_not_echo_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "top-secret-value\n").unwrap();
        let settings = cli(&["--app-secret-file", path.to_str().unwrap()]).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(
            settings.wechat.app_secret.expose_secret(),
            "top-secret-value"
        );
        assert!(!format!("{settings:?}").contains("top-secret-value"));

        let missing = dir.path().join("missing");
        let err = cli(&["--app-secret-file", missing.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_mongodb_uri_selects_mongodb_and_stays_secret() {
        let s = cli(&["--app-secret", "s"]).unwrap();
        assert!(matches!(s.store, StoreSettings::Embedded { .. }));
        let s = cli(&[
            "--app-secret",
            "s",
            "--mongodb-uri",
            "mongodb://weapp:pa55@db:27017/weapp",
        ])
        .unwrap();
        assert!(matches!(s.store, StoreSettings::Mongo(_)));
        assert!(!format!("{s:?}").contains("pa55"));
        let err = cli(&["--app-secret", "s", "--mongodb-uri", "postgres://db"]).unwrap_err();
        assert!(!err.to_string().contains("postgres://db"), "{err}");
        assert!(cli(&["--app-secret", "s", "--mongodb-password-file", "/x"]).is_err());
    }

    #[test]
    fn durations_parse_humanly_and_are_checked() {
        let s = cli(&[
            "--app-secret",
            "s",
            "--session-idle-ttl",
            "90s",
            "--session-max-age",
            "1h",
        ])
        .unwrap();
        assert_eq!(s.sessions.idle_ttl, Duration::from_secs(90));
        let err = cli(&[
            "--app-secret",
            "s",
            "--session-idle-ttl",
            "2h",
            "--session-max-age",
            "1h",
        ]);
        assert!(matches!(err, Err(ConfigError::Invalid(_))));
    }
}
