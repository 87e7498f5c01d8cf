use gateway_svc::{Application, config::Cli};
use weapp_common::{Command, config::ServiceCli as _};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    weapp_common::init_tracing();
    let cli = Cli::parse_env();
    if let Some(Command::Healthcheck) = cli.command {
        return weapp_common::probe_exit(gateway_svc::probe::check(cli.settings.listen).await);
    }
    weapp_common::serve("gateway-svc", |shutdown| async move {
        Application::build(cli.settings).await?.run(shutdown).await
    })
    .await
}
