//! Process plumbing shared by the weapp binaries, and the one concurrency helper both
//! services use.
pub mod singleflight;

use std::io::IsTerminal as _;

use tokio_util::sync::CancellationToken;

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

/// Runs a service until SIGTERM/Ctrl-C: exit status 2 for a configuration error (nothing
/// started), 1 when the service failed, 0 after a clean shutdown.
pub async fn serve<S, C, E, F, Fut>(
    name: &str,
    settings: Result<S, C>,
    run: F,
) -> std::process::ExitCode
where
    C: std::fmt::Display,
    E: std::fmt::Display,
    F: FnOnce(S, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{name} configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(settings, shutdown_on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{name} failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
