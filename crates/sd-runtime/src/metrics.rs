//! What the node measures of its own work for `/metrics`: liveness round trips and VM boot
//! times, as histograms with power-of-two buckets (cheap: one relaxed add per observation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets: bucket `i` counts observations of at most `2^i` ms; the last one counts what is
/// longer than all the others (Prometheus' `+Inf` alone).
const BUCKETS: usize = 20;

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

/// A histogram read at one moment, as Prometheus wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `(upper bound in µs, observations at most that long)`, cumulative, ascending; what is
    /// longer than the last bound is only in `count`.
    pub buckets: Vec<(u64, u64)>,
    /// Every observation.
    pub count: u64,
    /// Their sum, in microseconds.
    pub sum_us: u64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, took: Duration) {
        // Rounded up: an observation is never put below its duration.
        let ms = u64::try_from(took.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
        // The smallest i with ms <= 2^i.
        let bucket = if ms <= 1 {
            0
        } else {
            ((ms - 1).ilog2() as usize + 1).min(BUCKETS - 1)
        };
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = self.buckets[..BUCKETS - 1]
            .iter()
            .enumerate()
            .map(|(i, count)| {
                cumulative += count.load(Ordering::Relaxed);
                ((1u64 << i) * 1000, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: cumulative + self.buckets[BUCKETS - 1].load(Ordering::Relaxed),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// The node's measurements.
#[derive(Debug, Default)]
pub struct Metrics {
    /// How long a parent's liveness check of a child took to be answered.
    pub liveness_round_trip: Histogram,
    /// How long a VM took from its VMM's start to its guest being ready.
    pub vm_boot: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_fall_in_power_of_two_buckets_and_add_up() {
        let histogram = Histogram::default();
        for us in [0, 1000, 1900, 3000, 900_000, 1_000_000_000_000] {
            histogram.observe(Duration::from_micros(us));
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 6);
        assert_eq!(snapshot.buckets[0], (1000, 2)); // 0 and 1 ms
        assert_eq!(snapshot.buckets[1], (2000, 3)); // 1.9 ms, rounded up
        assert_eq!(snapshot.buckets[2], (4000, 4)); // 3 ms
        assert_eq!(snapshot.buckets[10], (1_024_000, 5)); // 900 ms
        // The overflow is in the count alone.
        assert_eq!(snapshot.buckets.len(), BUCKETS - 1);
        assert_eq!(snapshot.buckets.last().unwrap().1, 5);
        assert_eq!(
            snapshot.sum_us,
            1000 + 1900 + 3000 + 900_000 + 1_000_000_000_000
        );
    }
}
