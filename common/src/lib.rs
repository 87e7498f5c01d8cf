//! Process plumbing shared by the weapp binaries (configuration, logging, listening,
//! shutdown, exit statuses), the one concurrency helper both services use, and how their gRPC
//! link writes.
pub mod config;
pub mod metrics;
pub mod one_write;
pub mod otlp;
pub mod singleflight;
pub mod trace;

use std::{io::IsTerminal as _, net::SocketAddr};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Command;

/// A listen address that could not be taken.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds `addr` (port 0 picks a free port) and says where it listens.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BindError> {
    let error = |source| BindError { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let local = listener.local_addr().map_err(error)?;
    Ok((listener, local))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); `WEAPP_LOG_FORMAT=json` for
/// machine-readable lines.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("WEAPP_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A token cancelled on the first SIGTERM or Ctrl-C: the one shutdown signal every server and
/// background task of a process watches.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the process");
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown signal received; draining");
        trigger.cancel();
    });
    token
}

/// Where a `healthcheck` subcommand finds the service listening on `listen`: an unspecified
/// address (0.0.0.0, ::) means this host.
pub fn probe_target(listen: SocketAddr) -> SocketAddr {
    let mut target = listen;
    if target.ip().is_unspecified() {
        target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    target
}

/// Exit status of a `healthcheck` subcommand.
pub fn probe_exit(outcome: Result<(), String>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a service until SIGTERM/Ctrl-C: exit status 1 when it failed, 0 after a clean
/// shutdown. (Configuration errors never get here: clap reports them and exits with 2.)
pub async fn serve<E, F, Fut>(name: &str, run: F) -> std::process::ExitCode
where
    E: std::fmt::Display,
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    match run(shutdown_on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{name} failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
