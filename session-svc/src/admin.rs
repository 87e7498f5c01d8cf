//! `session-svc admin …`: the few things an operator asks a running session-svc, over its gRPC
//! API with an API key like any backend, without grpcurl (which Debian does not carry):
//!
//! ```text
//! session-svc admin revoke-user <openId>          RevokeUser: end every session of a user
//! session-svc admin revoke-user --union-id <u>    … of a person, in every app the key may
//! session-svc admin sessions <id>...              CheckSessions: which of these have ended
//! session-svc admin token [--app <appid>]         GetAccessToken: an app's access_token
//! session-svc admin force-refresh --reason "…"    ForceRefreshAccessToken [--app <appid>]
//! session-svc admin publish --open-id <o> <text>  Publish to a user's (or --union-id,
//!                                                 --session-id) sockets [--app <appid>]
//! session-svc admin dead-letters [--app <appid>]  ListDeadLetters: WeChat's pushed events
//!                                                 whose delivery gave up
//! session-svc admin requeue --all | <eventId>...  RequeueDeadLetters: deliver them again
//!                                                 [--app <appid>]
//! ```
//!
//! Each prints one line of JSON and exits 0, or prints the refusal and exits 1. The key comes
//! from a file (`--key-file` or `WEAPP_ADMIN_KEY_FILE`), never from the command line, where
//! `ps` would show it.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use weapp_proto::session::v1::{
    CheckSessionsRequest, ForceRefreshAccessTokenRequest, GetAccessTokenRequest,
    ListDeadLettersRequest, PublishRequest, PushMessage, RequeueDeadLettersRequest,
    RevokeUserRequest, push_message::Target, session_service_client::SessionServiceClient,
};

/// Where session-svc is and how to be let in.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// session-svc's gRPC URL (https:// with --ca-file when it speaks TLS).
    #[arg(
        long,
        env = "WEAPP_ADMIN_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub url: String,
    /// File holding an API key whose scopes allow the command (admin for revoke-user and
    /// force-refresh, validate for sessions, wechat.token for token, push for publish).
    #[arg(long, env = "WEAPP_ADMIN_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// PEM CA that signed session-svc's certificate, for an https:// URL.
    #[arg(long, env = "WEAPP_ADMIN_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Ends every session of a user at once, on every gateway (RevokeUser); prints how many.
    RevokeUser {
        #[arg(required_unless_present = "union_id", conflicts_with = "union_id")]
        open_id: Option<String>,
        /// Every session of this person (unionId), in the apps the key may act for.
        #[arg(long)]
        union_id: Option<String>,
        /// Only the sessions of this app (AppId).
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Which of these session ids no longer name a live session (CheckSessions).
    Sessions {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// The app's current access_token and how long it has left (GetAccessToken).
    Token {
        /// Whose token (AppId; default: the default app).
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Makes WeChat issue a new access_token now, invalidating the current one within five
    /// minutes (ForceRefreshAccessToken; at most 20 a day, 30 s apart).
    ForceRefresh {
        /// Why, for session-svc's log (1 to 200 characters).
        #[arg(long)]
        reason: String,
        /// Whose token (AppId; default: the default app).
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Sends a text message to the open WebSockets of a user or of one session, on every
    /// gateway (Publish); prints how many sockets took it.
    Publish {
        #[arg(
            long,
            required_unless_present_any = ["session_id", "union_id"],
            conflicts_with_all = ["session_id", "union_id"]
        )]
        open_id: Option<String>,
        #[arg(long, conflicts_with = "union_id")]
        session_id: Option<String>,
        /// Every socket of this person (unionId), in the apps the key may act for.
        #[arg(long)]
        union_id: Option<String>,
        /// Only sockets of this app (AppId).
        #[arg(long)]
        app: Option<String>,
        text: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// WeChat's pushed events whose delivery to the upstream gave up, oldest first, with why
    /// (ListDeadLetters).
    DeadLetters {
        /// Only this app's (AppId; default: every app the key may act for).
        #[arg(long)]
        app: Option<String>,
        /// At most this many.
        #[arg(long, default_value = "100")]
        limit: u32,
        #[command(flatten)]
        connection: Connection,
    },
    /// Puts dead letters back in the outbox, delivered again at once (RequeueDeadLetters);
    /// prints how many.
    Requeue {
        /// These event ids (as dead-letters lists them).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        event_ids: Vec<String>,
        /// Every dead letter (of --app, or of every app the key may act for).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl AdminCommand {
    fn connection(&self) -> &Connection {
        match self {
            Self::RevokeUser { connection, .. }
            | Self::Sessions { connection, .. }
            | Self::Token { connection, .. }
            | Self::ForceRefresh { connection, .. }
            | Self::Publish { connection, .. }
            | Self::DeadLetters { connection, .. }
            | Self::Requeue { connection, .. } => connection,
        }
    }

    /// Runs the command: its one line of output, or why not.
    pub async fn run(self) -> Result<String, String> {
        let connection = self.connection().clone();
        let key = match &connection.key_file {
            Some(path) => Some(read_key(path)?),
            None => None,
        };
        let mut client = connect(&connection).await?;
        let key = key.as_ref();
        let answer = match self {
            Self::RevokeUser {
                open_id,
                union_id,
                app,
                ..
            } => client
                .revoke_user(authorized(
                    RevokeUserRequest {
                        open_id: open_id.unwrap_or_default(),
                        union_id: union_id.unwrap_or_default(),
                        app_id: app.unwrap_or_default(),
                    },
                    key,
                )?)
                .await
                .map(|a| json!({ "revoked": a.into_inner().revoked })),
            Self::Sessions { ids, .. } => client
                .check_sessions(authorized(CheckSessionsRequest { session_ids: ids }, key)?)
                .await
                .map(|a| json!({ "ended": a.into_inner().ended })),
            Self::Token { app, .. } => client
                .get_access_token(authorized(
                    GetAccessTokenRequest {
                        app_id: app.unwrap_or_default(),
                    },
                    key,
                )?)
                .await
                .map(|a| {
                    let token = a.into_inner();
                    json!({
                        "access_token": token.access_token,
                        "expires_in_seconds": token.expires_in.map_or(0, |d| d.seconds),
                    })
                }),
            Self::ForceRefresh { reason, app, .. } => client
                .force_refresh_access_token(authorized(
                    ForceRefreshAccessTokenRequest {
                        reason,
                        app_id: app.unwrap_or_default(),
                    },
                    key,
                )?)
                .await
                .map(|a| {
                    json!({ "refreshed": true, "expires_in_seconds": a.into_inner().expires_in.map_or(0, |d| d.seconds) })
                }),
            Self::Publish {
                open_id,
                session_id,
                union_id,
                app,
                text,
                ..
            } => {
                let target = match (open_id, session_id, union_id) {
                    (Some(open_id), _, _) => Target::OpenId(open_id),
                    (None, Some(session_id), _) => Target::SessionId(session_id),
                    (None, None, Some(union_id)) => Target::UnionId(union_id),
                    (None, None, None) => {
                        return Err(
                            "say whom it is for: --open-id, --union-id or --session-id".into(),
                        );
                    }
                };
                client
                    .publish(authorized(PublishRequest {
                        message: Some(PushMessage {
                            target: Some(target),
                            text,
                            app_id: app.unwrap_or_default(),
                            ..Default::default()
                        }),
                    }, key)?)
                    .await
                    .map(|a| {
                        let a = a.into_inner();
                        let mut answer = json!({ "sockets": a.sockets, "gateways": a.gateways, "gateways_answered": a.gateways_answered });
                        if let Some(position) = a.position {
                            answer["epoch"] = json!(position.epoch);
                            answer["offset"] = json!(position.offset);
                        }
                        answer
                    })
            }
            Self::DeadLetters { app, limit, .. } => client
                .list_dead_letters(authorized(
                    ListDeadLettersRequest {
                        app_id: app.unwrap_or_default(),
                        limit,
                    },
                    key,
                )?)
                .await
                .map(|a| {
                    let dead: Vec<_> = a
                        .into_inner()
                        .dead_letters
                        .into_iter()
                        .map(|d| {
                            json!({
                                "event_id": d.event_id,
                                "app_id": d.app_id,
                                "open_id": d.open_id,
                                "received_at": d.received_at.map_or(0, |t| t.seconds),
                                "attempts": d.attempts,
                                "last_error": d.last_error,
                                "body": d.body,
                            })
                        })
                        .collect();
                    json!({ "dead_letters": dead })
                }),
            Self::Requeue {
                event_ids,
                all,
                app,
                ..
            } => client
                .requeue_dead_letters(authorized(
                    RequeueDeadLettersRequest {
                        app_id: app.unwrap_or_default(),
                        event_ids,
                        all,
                    },
                    key,
                )?)
                .await
                .map(|a| json!({ "requeued": a.into_inner().requeued })),
        };
        answer
            .map(|value| value.to_string())
            .map_err(|status| refusal(&status))
    }
}

fn read_key(path: &PathBuf) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(format!("the key file {} is empty", path.display()));
    }
    Ok(SecretString::from(key.to_owned()))
}

async fn connect(connection: &Connection) -> Result<SessionServiceClient<Channel>, String> {
    let url = &connection.url;
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT);
    if url.starts_with("https://") {
        let ca = connection.ca_file.as_ref().ok_or_else(|| {
            "an https:// URL needs --ca-file, the CA that signed session-svc's certificate"
                .to_owned()
        })?;
        let pem = std::fs::read_to_string(ca)
            .map_err(|e| format!("cannot read the CA file {}: {e}", ca.display()))?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS to {url}: {e}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach session-svc at {url}: {e}"))?;
    Ok(SessionServiceClient::new(channel))
}

fn authorized<T>(message: T, key: Option<&SecretString>) -> Result<Request<T>, String> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        let mut value = MetadataValue::try_from(format!("Bearer {}", key.expose_secret()))
            .map_err(|_| "the key must be visible ASCII characters".to_owned())?;
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
    }
    request.set_timeout(TIMEOUT);
    Ok(request)
}

/// What session-svc said, in words an operator can act on.
fn refusal(status: &Status) -> String {
    let hint = match status.code() {
        tonic::Code::Unauthenticated => {
            " (no key, or one session-svc does not know: --key-file or WEAPP_ADMIN_KEY_FILE)"
        }
        tonic::Code::PermissionDenied => " (the key lacks this command's scope)",
        _ => "",
    };
    format!("{:?}: {}{hint}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: AdminCommand,
    }

    #[test]
    fn commands_parse_as_the_docs_show() {
        let cli = Cli::try_parse_from(["admin", "revoke-user", "o-1", "--key-file", "k"]).unwrap();
        assert!(
            matches!(cli.command, AdminCommand::RevokeUser { ref open_id, .. } if open_id.as_deref() == Some("o-1"))
        );
        let cli = Cli::try_parse_from(["admin", "publish", "--open-id", "o", "hi"]).unwrap();
        assert!(matches!(cli.command, AdminCommand::Publish { ref text, .. } if text == "hi"));
        for bad in [
            vec!["admin", "publish", "hi"],
            vec![
                "admin",
                "publish",
                "--open-id",
                "o",
                "--session-id",
                "s",
                "hi",
            ],
            vec!["admin", "sessions"],
            vec!["admin", "force-refresh"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }
}
