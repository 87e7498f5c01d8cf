use clap::Parser as _;
use session_svc::{
    Application,
    config::{Cli, Command},
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    weapp_common::init_tracing();
    let cli = Cli::parse();
    if let Some(Command::Healthcheck) = cli.command {
        return weapp_common::probe_exit(session_svc::probe::check(cli.listen).await);
    }
    weapp_common::serve(
        "session-svc",
        cli.into_settings(),
        |settings, shutdown| async move { Application::build(settings).await?.run(shutdown).await },
    )
    .await
}
