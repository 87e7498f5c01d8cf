//! `weapp-bench`: the load generator behind `bench/run.py`. Each subcommand prints one JSON
//! object on stdout, which the harness puts in the report. It speaks only the wafer protocol,
//! so it drives weapp and the Node reference stack alike.
mod hello;
mod logins;
mod push;
mod seed;
mod stats;
mod train;
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
    /// Mints `count` logins (codes and encrypted user data) in the sandbox and writes them to
    /// `out`, one JSON object a line, for `logins-minted`: the harness then reads the CPU of
    /// the logins apart from that of minting.
    Mint {
        /// Base URL of the WeChat sandbox.
        #[arg(long)]
        sandbox: String,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Logins per second at `concurrency` clients: codes and user data are minted first, then
    /// `count` logins are timed.
    Logins {
        #[command(flatten)]
        logins: LoginLoad,
    },
    /// Logins per second at `concurrency` clients with logins minted beforehand by `mint`:
    /// one each, the first not timed (connection set-up).
    LoginsMinted {
        /// Base URL of the stack, e.g. http://127.0.0.1:8765
        #[arg(long)]
        base: String,
        /// What `mint` wrote.
        #[arg(long)]
        minted: PathBuf,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
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
    /// The load profile-guided optimisation trains the shipped binaries on
    /// (`scripts/build-release.sh`): logins, /me, a forwarded route, WebSocket echoes.
    Train(train::Plan),
}

fn main() {
    let cli = Cli::parse();
    // Timed logins run on one thread: the load generator shares the machine's cores with the
    // stack it measures, and one thread makes no wake-ups across threads (measured: no more
    // than the machine's noise apart from two). The other loads need more than one core.
    let runtime = match cli.command {
        Command::LoginsMinted { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(cli.command)),
        Err(e) => Err(format!("cannot start the runtime: {e}")),
    };
    match result {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("weapp-bench: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(command: Command) -> Result<serde_json::Value, String> {
    match command {
        Command::Hello { listen } => hello::serve(&listen).await,
        Command::Sessions { logins: l, out } => {
            wafer::create_sessions(&l.base, &l.sandbox, l.count, l.concurrency, &out).await
        }
        Command::Mint {
            sandbox,
            count,
            out,
        } => logins::mint_to_file(&sandbox, count, &out).await,
        Command::Logins { logins: l } => {
            logins::mint_and_run(&l.base, &l.sandbox, l.count, l.concurrency).await
        }
        Command::LoginsMinted {
            base,
            minted,
            concurrency,
        } => logins::run_minted(&base, &minted, concurrency).await,
        Command::Ws(plan) => ws::run(plan).await,
        Command::Push(plan) => push::run(plan).await,
        Command::Seed(plan) => Ok(seed::run(plan).await),
        Command::Train(plan) => train::run(plan).await,
    }
}
