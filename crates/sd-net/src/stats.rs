//! Counters of an endpoint, and a log2 latency histogram of its calls.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Buckets of the latency histogram: bucket `i` holds calls that took `[2^i, 2^(i+1))` µs.
pub const LATENCY_BUCKETS: usize = 32;

/// A snapshot of an endpoint's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls this endpoint made that got an answer.
    pub requests_sent: u64,
    /// Calls this endpoint made that failed (timeout, refusal, lost connection...).
    pub requests_failed: u64,
    /// Requests this endpoint's service answered.
    pub requests_served: u64,
    /// Frame bytes written (requests and replies).
    pub bytes_sent: u64,
    /// Frame bytes read (requests and replies).
    pub bytes_received: u64,
    /// Handshakes refused here: a peer certificate from another CA, not naming the dialled
    /// node, or naming no node.
    pub refused_handshakes: u64,
    /// Requests or replies that could not be decoded (garbage, oversized, other version).
    pub decode_errors: u64,
    /// Outgoing UDP datagrams dropped by fault injection ([`crate::Faults::loss`]), delayed
    /// ones whose late send failed included. A transmit of several GSO segments counts once.
    pub fault_dropped_datagrams: u64,
    /// Outgoing UDP datagrams sent twice by fault injection ([`crate::Faults::duplicate`]).
    pub fault_duplicated_datagrams: u64,
    /// Outgoing UDP datagrams held back by fault injection ([`crate::Faults::delay`]); a
    /// duplicated one counts twice.
    pub fault_delayed_datagrams: u64,
    /// Connections open now, incoming and outgoing.
    pub open_connections: u64,
    /// Latency histogram of successful calls (see [`LATENCY_BUCKETS`]).
    pub latency_buckets: [u64; LATENCY_BUCKETS],
}

impl Stats {
    /// An upper bound of the `quantile` (0.0..=1.0) of successful call latencies, within a
    /// factor of two; `None` before the first call.
    pub fn latency_quantile(&self, quantile: f64) -> Option<Duration> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * quantile.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in self.latency_buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(1 << (bucket + 1)));
            }
        }
        None
    }
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests_sent: AtomicU64,
    pub(crate) requests_failed: AtomicU64,
    pub(crate) requests_served: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) refused_handshakes: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
    pub(crate) fault_dropped_datagrams: AtomicU64,
    pub(crate) fault_duplicated_datagrams: AtomicU64,
    pub(crate) fault_delayed_datagrams: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS],
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    pub(crate) fn record_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let bucket = (micros.ilog2() as usize).min(LATENCY_BUCKETS - 1);
        Self::add(&self.latency_buckets[bucket], 1);
    }

    pub(crate) fn snapshot(&self, open_connections: u64) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            requests_sent: load(&self.requests_sent),
            requests_failed: load(&self.requests_failed),
            requests_served: load(&self.requests_served),
            bytes_sent: load(&self.bytes_sent),
            bytes_received: load(&self.bytes_received),
            refused_handshakes: load(&self.refused_handshakes),
            decode_errors: load(&self.decode_errors),
            fault_dropped_datagrams: load(&self.fault_dropped_datagrams),
            fault_duplicated_datagrams: load(&self.fault_duplicated_datagrams),
            fault_delayed_datagrams: load(&self.fault_delayed_datagrams),
            open_connections,
            latency_buckets: std::array::from_fn(|bucket| load(&self.latency_buckets[bucket])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_bound_the_recorded_latencies() {
        let counters = Counters::default();
        assert_eq!(counters.snapshot(0).latency_quantile(0.5), None);
        for _ in 0..99 {
            counters.record_latency(Duration::from_micros(100));
        }
        counters.record_latency(Duration::from_millis(50));
        let stats = counters.snapshot(0);
        let p50 = stats.latency_quantile(0.5).expect("p50");
        assert!(p50 >= Duration::from_micros(100) && p50 <= Duration::from_micros(200));
        let p100 = stats.latency_quantile(1.0).expect("max");
        assert!(p100 >= Duration::from_millis(50));
    }
}
