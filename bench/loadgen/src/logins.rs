//! Logins per second: every login is a new code and new encrypted user data, minted before
//! the clock starts so that minting is not what is measured.
use std::time::{Duration, Instant};

use futures::{StreamExt as _, stream};

use crate::{stats::percentiles, wafer};

pub async fn run(
    base: &str,
    sandbox: &str,
    count: usize,
    concurrency: usize,
) -> Result<serde_json::Value, String> {
    let http = wafer::client()?;
    let minted = wafer::mint_many(&http, sandbox, count, 32).await?;
    // One warm-up login, so connection set-up is not in the figures.
    if let Some(first) = minted.first() {
        wafer::login(&http, base, first).await?;
    }
    let started = Instant::now();
    let outcomes: Vec<Result<Duration, String>> = stream::iter(minted.iter().skip(1))
        .map(|m| {
            let http = http.clone();
            async move {
                let t = Instant::now();
                wafer::login(&http, base, m).await.map(|_| t.elapsed())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
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
            count - 1
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
    }))
}
