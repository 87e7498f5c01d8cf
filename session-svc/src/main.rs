use clap::Parser as _;
use session_svc::{Application, config::Cli};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    weapp_common::init_tracing();
    let settings = match Cli::parse().into_settings() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = weapp_common::shutdown_on_signal();
    let outcome = match Application::build(settings).await {
        Ok(app) => app.run(shutdown).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("session-svc failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
