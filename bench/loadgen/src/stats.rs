//! Latency percentiles.
use std::time::Duration;

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
}
