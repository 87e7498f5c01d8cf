use session_svc::{
    Application,
    config::{Cli, SessionCommand},
};
use weapp_common::config::ServiceCli as _;

/// jemalloc rather than the system's, as in the gateway: a login allocates and frees hundreds
/// of small buffers across threads (the gRPC frames, the store's pages), where glibc's malloc
/// spent a seventh of session-svc's CPU.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    weapp_common::init_tracing();
    let cli = Cli::parse_env();
    match cli.command {
        Some(SessionCommand::Healthcheck) => {
            let tls = cli.settings.tls.cert.is_some();
            return weapp_common::probe_exit(
                session_svc::probe::check(cli.settings.listen, tls).await,
            );
        }
        Some(SessionCommand::Admin(command)) => {
            use std::io::Write as _;
            // The command's answer is its output, not a log line.
            return match command.run().await {
                Ok(answer) => match writeln!(std::io::stdout().lock(), "{answer}") {
                    Ok(()) => std::process::ExitCode::SUCCESS,
                    Err(_) => std::process::ExitCode::FAILURE,
                },
                Err(why) => {
                    let _ = writeln!(std::io::stderr().lock(), "session-svc admin: {why}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    weapp_common::serve("session-svc", |shutdown| async move {
        Application::build(cli.settings).await?.run(shutdown).await
    })
    .await
}
