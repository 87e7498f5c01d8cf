//! Logins per second: every login is a new code and new encrypted user data, minted before
//! the clock starts so that minting is not what is measured. `mint` and `logins-minted` do
//! the two apart, so that the harness can read the machine's CPU over the logins alone.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use futures::{StreamExt as _, stream};
use wechat_sandbox::MintedLogin;

use crate::{
    stats::{self, percentiles},
    wafer,
};

pub async fn mint_and_run(
    base: &str,
    sandbox: &str,
    count: usize,
    concurrency: usize,
) -> Result<serde_json::Value, String> {
    let http = wafer::client()?;
    let minted = wafer::mint_many(&http, sandbox, count, 32).await?;
    run(&http, base, &minted, concurrency).await
}

pub async fn mint_to_file(
    sandbox: &str,
    count: usize,
    out: &Path,
) -> Result<serde_json::Value, String> {
    let http = wafer::client()?;
    let minted = wafer::mint_many(&http, sandbox, count, 32).await?;
    let mut lines = String::new();
    for m in &minted {
        let line = serde_json::to_string(m).map_err(|e| format!("minted login: {e}"))?;
        lines.push_str(&line);
        lines.push('\n');
    }
    std::fs::write(out, lines).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(serde_json::json!({ "minted": minted.len() }))
}

pub async fn run_minted(
    base: &str,
    minted: &Path,
    concurrency: usize,
) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(minted)
        .map_err(|e| format!("cannot read {}: {e}", minted.display()))?;
    let minted = text
        .lines()
        .map(serde_json::from_str::<MintedLogin>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not what `mint` writes: {e}", minted.display()))?;
    run(&wafer::client()?, base, &minted, concurrency).await
}

/// Logs every minted login in once, `concurrency` at a time; the first is not timed, so that
/// connection set-up is not in the figures.
async fn run(
    http: &reqwest::Client,
    base: &str,
    minted: &[MintedLogin],
    concurrency: usize,
) -> Result<serde_json::Value, String> {
    let Some(first) = minted.first() else {
        return Err("no logins to make".into());
    };
    wafer::login(http, base, first).await?;
    let cpu_before = stats::own_cpu_seconds()?;
    let started = Instant::now();
    let outcomes: Vec<Result<Duration, String>> = stream::iter(&minted[1..])
        .map(|m| async move {
            let t = Instant::now();
            wafer::login(http, base, m).await.map(|_| t.elapsed())
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    let cpu = stats::own_cpu_seconds()? - cpu_before;
    let mut latencies = Vec::with_capacity(outcomes.len());
    let mut errors = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(latency) => latencies.push(latency),
            Err(e) => errors.push(e),
        }
    }
    if let Some(first) = errors.first() {
        return Err(format!(
            "{} of {} logins failed, e.g. {first}",
            errors.len(),
            minted.len() - 1
        ));
    }
    let (p50, p99) = percentiles(&mut latencies);
    Ok(serde_json::json!({
        "logins": latencies.len(),
        "concurrency": concurrency,
        "seconds": elapsed.as_secs_f64(),
        "per_second": latencies.len() as f64 / elapsed.as_secs_f64(),
        "p50_ms": p50,
        "p99_ms": p99,
        // This process's CPU over the timed logins alone (not reading or minting them).
        "cpu_seconds": cpu,
    }))
}
