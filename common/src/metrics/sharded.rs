//! Counters and histograms that threads record into without sharing a cache line, summed when
//! scraped.
//!
//! A request served on one IO thread and the next on another both count in
//! `weapp_http_requests_total`: with one atomic per series, every request moves that cache line
//! between cores, and the exporter's histograms push every sample onto a shared list that the
//! scrape then bins. Here each thread records into its own shard (a 128-byte line per series):
//! an uncontended add, and a histogram bucket found among fixed bounds. A scrape sums the shards,
//! so what it reads is exact: every increment made before it is counted once (the Prometheus Go
//! client's and `prometheus-client`'s histograms are fixed-bucket for the same reason).
use std::{
    cell::Cell,
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

use metrics::{CounterFn, HistogramFn};
use metrics_exporter_prometheus::formatting::{
    sanitize_label_value, write_help_line, write_type_line,
};

/// Shards per series: more than the threads that record on these machines (IO threads, the
/// runtime's workers); threads past that share a shard, still correctly (it is an atomic).
const SHARDS: usize = 16;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, given on its first record (`usize::MAX` until then).
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn shard() -> usize {
    SHARD.with(|shard| {
        let mut index = shard.get();
        if index == usize::MAX {
            index = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
            shard.set(index);
        }
        index
    })
}

/// One thread's line of a series.
#[repr(align(128))]
#[derive(Default)]
struct Line<T>(T);

#[derive(Default)]
pub struct Counter {
    shards: [Line<AtomicU64>; SHARDS],
}

impl Counter {
    fn get(&self) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |sum, line| sum.wrapping_add(line.0.load(Relaxed)))
    }
}

impl CounterFn for Counter {
    fn increment(&self, value: u64) {
        self.shards[shard()].0.fetch_add(value, Relaxed);
    }

    /// Not used by weapp (its counters only count up); kept exact when nothing else records.
    fn absolute(&self, value: u64) {
        let others = self.get().wrapping_sub(self.shards[0].0.load(Relaxed));
        self.shards[0].0.store(value.wrapping_sub(others), Relaxed);
    }
}

/// Upper bounds (seconds) of the buckets below +Inf.
pub const BUCKETS: usize = super::LATENCY_BUCKETS.len();

/// One thread's counts: a count per bucket (the last is +Inf), then the sum's bits. Exactly
/// one 128-byte line.
#[derive(Default)]
struct HistogramLine {
    counts: [AtomicU64; BUCKETS + 1],
    sum: AtomicU64,
}

#[derive(Default)]
pub struct Histogram {
    shards: [Line<HistogramLine>; SHARDS],
}

impl HistogramFn for Histogram {
    fn record(&self, value: f64) {
        let line = &self.shards[shard()].0;
        let bucket = super::LATENCY_BUCKETS.partition_point(|&bound| bound < value);
        line.counts[bucket].fetch_add(1, Relaxed);
        // Only this thread (or one sharing its shard) writes this sum: the exchange succeeds
        // at once but for that rare sharing.
        let _ = line.sum.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
    }
}

impl Histogram {
    /// Non-cumulative counts per bucket (the last is +Inf) and the sum.
    fn get(&self) -> ([u64; BUCKETS + 1], f64) {
        let mut counts = [0u64; BUCKETS + 1];
        let mut sum = 0.0;
        for line in &self.shards {
            for (total, count) in counts.iter_mut().zip(&line.0.counts) {
                *total = total.wrapping_add(count.load(Relaxed));
            }
            sum += f64::from_bits(line.0.sum.load(Relaxed));
        }
        (counts, sum)
    }
}

enum Kind {
    Counter(Arc<Counter>),
    Histogram(Arc<Histogram>),
}

struct Series {
    name: &'static str,
    /// `key="value"` pairs, escaped, in the order given.
    labels: Vec<String>,
    kind: Kind,
}

/// The sharded series of one registry, in the order they were first asked for.
#[derive(Default)]
pub struct Families {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    series: Vec<Series>,
    /// (name, labels) → index in `series`: asking again for a series gives the same one (a
    /// reload that keeps a route keeps its counts).
    index: HashMap<(&'static str, Vec<String>), usize>,
    help: HashMap<&'static str, &'static str>,
}

fn labels(pairs: &[(&'static str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .map(|(key, value)| format!("{key}=\"{}\"", sanitize_label_value(value)))
        .collect()
}

impl Families {
    pub fn describe(&self, name: &'static str, help: &'static str) {
        self.lock().help.insert(name, help);
    }

    pub fn counter(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> Arc<Counter> {
        let found = self.series(name, pairs, || Kind::Counter(Arc::default()));
        match found {
            Kind::Counter(counter) => counter,
            // One name is one type: a counter asked for under a histogram's name counts
            // nowhere rather than corrupting the exposition.
            Kind::Histogram(_) => Arc::default(),
        }
    }

    pub fn histogram(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> Arc<Histogram> {
        match self.series(name, pairs, || Kind::Histogram(Arc::default())) {
            Kind::Histogram(histogram) => histogram,
            Kind::Counter(_) => Arc::default(),
        }
    }

    fn series(
        &self,
        name: &'static str,
        pairs: &[(&'static str, &str)],
        new: impl FnOnce() -> Kind,
    ) -> Kind {
        let labels = labels(pairs);
        let mut inner = self.lock();
        let at = match inner.index.get(&(name, labels.clone())) {
            Some(&at) => at,
            None => {
                let at = inner.series.len();
                inner.series.push(Series {
                    name,
                    labels: labels.clone(),
                    kind: new(),
                });
                inner.index.insert((name, labels), at);
                at
            }
        };
        match &inner.series[at].kind {
            Kind::Counter(counter) => Kind::Counter(counter.clone()),
            Kind::Histogram(histogram) => Kind::Histogram(histogram.clone()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every series in Prometheus' text format, a family's series together under its `# HELP`
    /// and `# TYPE`, as the exporter writes its own.
    pub fn render(&self, out: &mut String) {
        let inner = self.lock();
        let mut names: Vec<&'static str> = Vec::new();
        for series in &inner.series {
            if !names.contains(&series.name) {
                names.push(series.name);
            }
        }
        for name in names {
            let mut members = inner.series.iter().filter(|s| s.name == name).peekable();
            let Some(first) = members.peek() else {
                continue;
            };
            if let Some(help) = inner.help.get(name) {
                write_help_line(out, name, help);
            }
            let kind = match first.kind {
                Kind::Counter(_) => "counter",
                Kind::Histogram(_) => "histogram",
            };
            write_type_line(out, name, kind);
            for series in members {
                match &series.kind {
                    Kind::Counter(counter) => {
                        line(out, name, "", &series.labels, None, counter.get())
                    }
                    Kind::Histogram(histogram) => {
                        let (counts, sum) = histogram.get();
                        let mut cumulative = 0u64;
                        for (bound, count) in super::LATENCY_BUCKETS.iter().zip(counts) {
                            cumulative += count;
                            let le = bound.to_string();
                            line(out, name, "_bucket", &series.labels, Some(&le), cumulative);
                        }
                        cumulative += counts[BUCKETS];
                        line(
                            out,
                            name,
                            "_bucket",
                            &series.labels,
                            Some("+Inf"),
                            cumulative,
                        );
                        line(out, name, "_sum", &series.labels, None, sum);
                        line(out, name, "_count", &series.labels, None, cumulative);
                    }
                }
            }
            out.push('\n');
        }
    }
}

fn line(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[String],
    le: Option<&str>,
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    out.push_str(suffix);
    let mut pairs = labels.iter().map(String::as_str).collect::<Vec<_>>();
    let le = le.map(|le| format!("le=\"{le}\""));
    pairs.extend(le.as_deref());
    if !pairs.is_empty() {
        out.push('{');
        out.push_str(&pairs.join(","));
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_s_increments_are_counted_once() {
        let families = Families::default();
        let counter = families.counter("weapp_test_total", &[("route", "/me")]);
        let histogram = families.histogram("weapp_test_seconds", &[]);
        std::thread::scope(|scope| {
            for _ in 0..(SHARDS + 4) {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        counter.increment(1);
                        histogram.record(0.003);
                    }
                });
            }
        });
        let mut text = String::new();
        families.render(&mut text);
        let n = (SHARDS + 4) * 1000;
        assert!(
            text.contains(&format!("weapp_test_total{{route=\"/me\"}} {n}\n")),
            "{text}"
        );
        assert!(
            text.contains("weapp_test_seconds_bucket{le=\"0.0025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("weapp_test_seconds_bucket{{le=\"0.005\"}} {n}\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("weapp_test_seconds_bucket{{le=\"+Inf\"}} {n}\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("weapp_test_seconds_count {n}\n")),
            "{text}"
        );
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("weapp_test_seconds_sum "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        assert!((sum - 0.003 * n as f64).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn a_bound_counts_in_its_own_bucket_and_past_the_last_in_inf() {
        let families = Families::default();
        let histogram = families.histogram("weapp_test_seconds", &[("a", "b")]);
        histogram.record(0.0001);
        histogram.record(60.0);
        let mut text = String::new();
        families.render(&mut text);
        assert!(
            text.contains("weapp_test_seconds_bucket{a=\"b\",le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("weapp_test_seconds_bucket{a=\"b\",le=\"5\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("weapp_test_seconds_bucket{a=\"b\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn asking_again_gives_the_same_series() {
        let families = Families::default();
        families
            .counter("weapp_test_total", &[("k", "v")])
            .increment(2);
        families
            .counter("weapp_test_total", &[("k", "v")])
            .increment(3);
        families
            .counter("weapp_test_total", &[("k", "w\"")])
            .increment(1);
        families.describe("weapp_test_total", "Tests.");
        let mut text = String::new();
        families.render(&mut text);
        assert_eq!(
            text,
            "# HELP weapp_test_total Tests.\n# TYPE weapp_test_total counter\n\
             weapp_test_total{k=\"v\"} 5\nweapp_test_total{k=\"w\\\"\"} 1\n\n"
        );
    }
}
