//! `weapp-bench`: the load generator behind `bench/run.py`. Each subcommand prints one JSON
//! object on stdout, which the harness puts in the report. It speaks only the wafer protocol,
//! so it drives weapp and the Node reference stack alike.
mod hello;
mod logins;
mod push;
mod seed;
mod stats;
mod wafer;
mod ws;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Logins against a stack, with codes from the WeChat sandbox.
#[derive(clap::Args)]
struct LoginLoad {
    /// Base URL of the stack, e.g. http://127.0.0.1:8765
    #[arg(long)]
    base: String,
    /// Base URL of the WeChat sandbox (codes are minted there).
    #[arg(long)]
    sandbox: String,
    #[arg(long)]
    count: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

#[derive(Subcommand)]
enum Command {
    /// A bare axum "hello" server: the most any Rust HTTP service can do on this machine.
    Hello {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Logs `count` new users in and writes their sessions ("id skey" lines) to `out`.
    Sessions {
        #[command(flatten)]
        logins: LoginLoad,
        #[arg(long)]
        out: PathBuf,
    },
    /// Logins per second at `concurrency` clients: codes and user data are minted first, then
    /// `count` logins are timed.
    Logins {
        #[command(flatten)]
        logins: LoginLoad,
    },
    /// Holds `connections` authenticated WebSockets, reports the server's RSS growth, then
    /// sends one message on every connection at once, `rounds` times after one uncounted
    /// warm-up round, and times the echoes.
    Ws(ws::Plan),
    /// One WebSocket per user over several gateways, one `Publish` per user: delivery and
    /// publish-to-receive latency.
    Push(push::Plan),
    /// Adds `count` unused sessions straight to a store (embedded or MongoDB), so that a
    /// request's cost can be measured against what is stored.
    Seed(seed::Plan),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Hello { listen } => hello::serve(&listen).await,
        Command::Sessions { logins: l, out } => {
            wafer::create_sessions(&l.base, &l.sandbox, l.count, l.concurrency, &out).await
        }
        Command::Logins { logins: l } => {
            logins::run(&l.base, &l.sandbox, l.count, l.concurrency).await
        }
        Command::Ws(plan) => ws::run(plan).await,
        Command::Push(plan) => push::run(plan).await,
        Command::Seed(plan) => Ok(seed::run(plan).await),
    };
    match result {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("weapp-bench: {e}");
            std::process::exit(1);
        }
    }
}
