//! Latency percentiles, and this process's own CPU.
use std::time::Duration;

/// CPU time this process's threads have spent so far, in seconds: the sum of each thread's
/// time on a CPU (`/proc/self/task/*/schedstat`, in nanoseconds, user and system alike).
pub fn own_cpu_seconds() -> Result<f64, String> {
    let tasks = std::fs::read_dir("/proc/self/task")
        .map_err(|e| format!("cannot list this process's threads: {e}"))?;
    let mut nanos: u64 = 0;
    for task in tasks.flatten() {
        // A thread that ended meanwhile has nothing left to read; its time is gone with it.
        let Ok(line) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        nanos += line
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| format!("unexpected schedstat {line:?}"))?;
    }
    Ok(nanos as f64 / 1e9)
}

/// p50 and p99 in milliseconds (nearest-rank), 0 for no samples.
pub fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_unstable();
    let rank = |p: f64| {
        let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1000.0
    };
    (rank(0.50), rank(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        samples.reverse();
        assert_eq!(percentiles(&mut samples), (50.0, 99.0));
        assert_eq!(percentiles(&mut []), (0.0, 0.0));
    }

    #[test]
    fn own_cpu_grows_with_work() {
        let before = own_cpu_seconds().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(own_cpu_seconds().unwrap() > before, "{x}");
    }
}
