//! The send schedule and the latency summary.

use std::time::Duration;

/// When request `n` (0, 1, 2, … over all connections) is due, counted from
/// the start: one request every 1/rate s, whatever the answers' pace.
pub fn scheduled_offset(n: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(n as f64 / rate)
}

/// The request numbers connection `index` of `connections` sends: every
/// `connections`-th, starting at its index, so the connections interleave
/// evenly and together keep the overall rate.
pub fn connection_slots(index: u64, connections: u64) -> impl Iterator<Item = u64> {
    (index..).step_by(connections.max(1) as usize)
}

/// Nearest-rank percentile (`quantile` in 0..=1) of ascending `sorted`.
pub fn percentile(sorted: &[u64], quantile: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The figures reported for one set of durations (in ns), in µs.
#[derive(Debug, PartialEq)]
pub struct Summary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// `None` for no samples; sorts `samples_ns`.
pub fn summarise(samples_ns: &mut [u64]) -> Option<Summary> {
    samples_ns.sort_unstable();
    let us = |quantile| percentile(samples_ns, quantile).map(|ns| ns as f64 / 1000.0);
    let sum: u128 = samples_ns.iter().map(|&ns| u128::from(ns)).sum();
    Some(Summary {
        p50: us(0.5)?,
        p90: us(0.9)?,
        p99: us(0.99)?,
        p999: us(0.999)?,
        max: us(1.0)?,
        mean: sum as f64 / samples_ns.len() as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced() {
        assert_eq!(scheduled_offset(0, 1000.0), Duration::ZERO);
        assert_eq!(scheduled_offset(1, 1000.0), Duration::from_millis(1));
        assert_eq!(scheduled_offset(2500, 1000.0), Duration::from_millis(2500));
        assert_eq!(scheduled_offset(3, 4.0), Duration::from_millis(750));
    }

    #[test]
    fn connections_share_the_slots() {
        let first: Vec<u64> = connection_slots(1, 4).take(3).collect();
        assert_eq!(first, [1, 5, 9]);
        let mut all: Vec<u64> = (0..4)
            .flat_map(|index| connection_slots(index, 4).take(5))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&values, 0.5), Some(500));
        assert_eq!(percentile(&values, 0.9), Some(900));
        assert_eq!(percentile(&values, 0.99), Some(990));
        assert_eq!(percentile(&values, 0.999), Some(999));
        assert_eq!(percentile(&values, 1.0), Some(1000));
        assert_eq!(percentile(&values, 0.0), Some(1));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn summary_in_microseconds() {
        let mut samples = vec![3_000, 1_000, 2_000, 4_000];
        let summary = summarise(&mut samples).unwrap();
        assert_eq!(summary.p50, 2.0);
        assert_eq!(summary.p99, 4.0);
        assert_eq!(summary.max, 4.0);
        assert_eq!(summary.mean, 2.5);
        assert!(summarise(&mut []).is_none());
    }
}
