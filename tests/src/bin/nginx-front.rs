//! Real nginx in front of a running gateway, for runs outside the Rust tests (the client SDK
//! run in `scripts/test.sh`): the shipped site or the tutorial's `ssl.conf`, configured by the
//! same harness as the Rust tests. Writes the certificate to `--cert-out` (for
//! `NODE_EXTRA_CA_CERTS`), prints the HTTPS base URL on stdout, and serves until SIGTERM or
//! Ctrl-C, then stops nginx.
use std::{io::Write as _, net::SocketAddr, path::PathBuf};

use clap::Parser;
use weapp_tests::nginx::{Nginx, Site};

#[derive(Parser)]
struct Args {
    /// `shipped` (deploy/nginx/) or `tutorial` (tests/nginx/tutorial-ssl.conf).
    #[arg(long)]
    site: String,
    /// The gateway nginx proxies to.
    #[arg(long)]
    gateway: SocketAddr,
    /// Where to write the self-signed certificate (PEM) clients must trust.
    #[arg(long)]
    cert_out: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let site = match args.site.as_str() {
        "shipped" => Site::Shipped,
        "tutorial" => Site::Tutorial,
        other => panic!("--site must be shipped or tutorial, not {other:?}"),
    };
    let nginx = Nginx::with_site(site, &[args.gateway]);
    std::fs::write(&args.cert_out, &nginx.certificate_pem).expect("write the certificate");
    println!("https://localhost:{}", nginx.https_port);
    std::io::stdout().flush().expect("stdout");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("watch SIGTERM");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(nginx);
}
