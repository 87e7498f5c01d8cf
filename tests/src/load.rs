//! A steady load of `/me` requests with real sessions, recording every answer: what the fault
//! and replica tests hold while they break something, the users they log in first, and the
//! figures docs/RELIABILITY.md reports.
use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use futures::future::join_all;
use wechat_sandbox::MintRequest;

use crate::{ClientSession, MAGIC_KEY, WeChat, session_from};

/// A client with a timeout well past every deadline the services have.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// `/me` at the gateway at `gateway` (`http://host:port`) in `session`: its status (0 when it
/// did not answer).
pub async fn me_status(gateway: &str, session: &ClientSession) -> u16 {
    http()
        .get(format!("{gateway}/me"))
        .headers(session.headers())
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// The openId of `session`'s user, as `/me` at `gateway` (`http://host:port`) says it.
pub async fn open_id_at(gateway: &str, session: &ClientSession) -> String {
    let user: serde_json::Value = http()
        .get(format!("{gateway}/me"))
        .headers(session.headers())
        .send()
        .await
        .expect("/me answers")
        .json()
        .await
        .expect("/me is JSON");
    user["openId"].as_str().expect("an openId").to_owned()
}

/// Logs `n` new users in through the gateway at `gateway` (`http://host:port`; code-only
/// logins, 32 at a time).
pub async fn log_in(wechat: &WeChat, gateway: &str, n: usize) -> Arc<Vec<ClientSession>> {
    let http = http();
    let mut sessions = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let logins = chunk.iter().map(|_| {
            let code = wechat.mint(MintRequest::default()).code;
            let request = http
                .get(format!("{gateway}/login"))
                .header("X-WX-Code", code);
            async move { session_from(request.send().await.expect("gateway answers")).await }
        });
        sessions.extend(join_all(logins).await);
    }
    Arc::new(sessions)
}

/// A figure for docs/RELIABILITY.md: printed (shown with `--nocapture`) and, when
/// `WEAPP_FAULT_FIGURES` names a file, appended to it (scripts/test.sh prints that file).
pub fn figure(line: String) {
    println!("FIGURE {line}");
    if let Some(path) = std::env::var_os("WEAPP_FAULT_FIGURES") {
        use std::io::Write as _;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| writeln!(file, "{line}"));
        written.expect("the figures file is writable");
    }
}

/// What a client saw for one request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// An HTTP answer; for errors, the wafer `error` code and whether the body told the SDK
    /// to log in again (the magic key).
    Answer {
        status: u16,
        error: Option<String>,
        logged_out: bool,
    },
    /// No HTTP answer: refused, reset, or no answer within the client's timeout (a hang).
    Transport(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Answer {
                status,
                error: Some(error),
                logged_out,
            } => write!(
                f,
                "{status} {error}{}",
                if *logged_out { " +logout" } else { "" }
            ),
            Self::Answer { status, .. } => write!(f, "{status}"),
            Self::Transport(e) => write!(f, "no answer ({e})"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Sample {
    /// When the request was sent, from the load's origin.
    pub at: Duration,
    pub latency: Duration,
    pub outcome: Outcome,
}

/// Requests in flight from `workers` clients, each sending its next request as soon as the
/// previous one is answered, cycling through `sessions`.
pub struct Load {
    origin: Instant,
    stop: CancellationToken,
    workers: JoinSet<()>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Load {
    pub fn start(url: String, sessions: Arc<Vec<ClientSession>>, workers: usize) -> Self {
        assert!(!sessions.is_empty(), "a load needs sessions");
        let origin = Instant::now();
        let stop = CancellationToken::new();
        let samples = Arc::new(Mutex::new(Vec::new()));
        // Well past every deadline the services have: an answer this late is a hang.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let mut set = JoinSet::new();
        for worker in 0..workers {
            let (http, url, sessions) = (http.clone(), url.clone(), sessions.clone());
            let (stop, samples) = (stop.clone(), samples.clone());
            set.spawn(async move {
                let mut next = worker;
                while !stop.is_cancelled() {
                    let session = &sessions[next % sessions.len()];
                    next += workers;
                    let sent = Instant::now();
                    let outcome = request(&http, &url, session).await;
                    let sample = Sample {
                        at: sent - origin,
                        latency: sent.elapsed(),
                        outcome,
                    };
                    if matches!(sample.outcome, Outcome::Transport(_)) {
                        // A refused connection answers at once; do not spin on it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(sample);
                }
            });
        }
        Self {
            origin,
            stop,
            workers: set,
            samples,
        }
    }

    /// Time since the load started: the clock that [`Sample::at`] is measured on.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    pub async fn finish(mut self) -> Samples {
        self.stop.cancel();
        while self.workers.join_next().await.is_some() {}
        let mut samples =
            std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()));
        samples.sort_by_key(|s| s.at);
        Samples(samples)
    }
}

async fn request(http: &reqwest::Client, url: &str, session: &ClientSession) -> Outcome {
    let response = match http.get(url).headers(session.headers()).send().await {
        Ok(response) => response,
        Err(e) => return Outcome::Transport(transport_error(&e)),
    };
    let status = response.status().as_u16();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) => return Outcome::Transport(transport_error(&e)),
    };
    if status == 200 {
        return Outcome::Answer {
            status,
            error: None,
            logged_out: false,
        };
    }
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Outcome::Answer {
        status,
        error: Some(
            json["error"]
                .as_str()
                .map_or_else(|| "(not a wafer body)".to_owned(), str::to_owned),
        ),
        logged_out: json.get(MAGIC_KEY).is_some(),
    }
}

fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "reset".into()
    }
}

/// Every answer a load got, in the order the requests were sent.
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Samples of requests sent in `[from, to)`.
    pub fn between(&self, from: Duration, to: Duration) -> impl Iterator<Item = &Sample> {
        self.0.iter().filter(move |s| s.at >= from && s.at < to)
    }

    pub fn summary(&self, from: Duration, to: Duration) -> Summary {
        let mut by_outcome = BTreeMap::new();
        let mut latencies = Vec::new();
        for sample in self.between(from, to) {
            *by_outcome.entry(sample.outcome.to_string()).or_insert(0u64) += 1;
            latencies.push(sample.latency);
        }
        latencies.sort();
        let percentile = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or_default()
        };
        Summary {
            window: to.saturating_sub(from),
            requests: latencies.len() as u64,
            by_outcome,
            p99: percentile(0.99),
            max: latencies.last().copied().unwrap_or_default(),
        }
    }

    /// When the last request that did not get `200` was sent, if any was after `from`.
    pub fn last_failure_after(&self, from: Duration) -> Option<Duration> {
        self.0
            .iter()
            .filter(|s| s.at >= from && !s.is_ok())
            .map(|s| s.at)
            .max()
    }
}

impl Sample {
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Answer { status: 200, .. })
    }
}

/// Requests, rate, answers and latency of one window of a load.
#[derive(Debug)]
pub struct Summary {
    pub window: Duration,
    pub requests: u64,
    pub by_outcome: BTreeMap<String, u64>,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.window.as_secs_f64().max(f64::EPSILON)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests in {:.1} s ({:.0}/s), p99 {:.1} ms, max {:.1} ms:",
            self.requests,
            self.window.as_secs_f64(),
            self.per_second(),
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3,
        )?;
        for (outcome, count) in &self.by_outcome {
            write!(
                f,
                " {outcome} ×{count} ({:.1}%)",
                *count as f64 * 100.0 / self.requests.max(1) as f64
            )?;
        }
        Ok(())
    }
}
