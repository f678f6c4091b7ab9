//! `GET /metrics`: the node's figures in Prometheus' text format (version 0.0.4).

use std::fmt::Write;

use sd_runtime::NodeMetrics;
use sd_runtime::metrics::HistogramSnapshot;

/// The whole exposition.
pub(crate) fn render(node: &str, metrics: &NodeMetrics) -> String {
    let mut out = Exposition::default();
    let by_state =
        |out: &mut Exposition, name, help, counts: &std::collections::BTreeMap<String, u64>| {
            out.family(name, "gauge", help);
            for (state, count) in counts {
                out.sample(name, &[("state", state)], *count as f64);
            }
        };
    out.family("sd_node_info", "gauge", "The node answering, always 1.");
    out.sample("sd_node_info", &[("node", node)], 1.0);
    by_state(
        &mut out,
        "sd_deployments",
        "Deployments whose root is this node, by state.",
        &metrics.deployments,
    );
    by_state(
        &mut out,
        "sd_components",
        "Components this node runs, by state.",
        &metrics.components,
    );
    out.family(
        "sd_lifecycle_events_total",
        "counter",
        "Lifecycle events recorded on this node since its agent started, by what changed and its new state.",
    );
    for ((of, state), count) in &metrics.events {
        out.sample(
            "sd_lifecycle_events_total",
            &[("of", of), ("state", state)],
            *count as f64,
        );
    }
    let restarts = metrics
        .events
        .iter()
        .filter(|((of, state), _)| *of == "component" && state == "restarting")
        .map(|(_, count)| *count)
        .sum::<u64>();
    out.family(
        "sd_restarts_total",
        "counter",
        "Restarts of components by their supervisors on this node.",
    );
    out.sample("sd_restarts_total", &[], restarts as f64);
    out.histogram(
        "sd_liveness_round_trip_seconds",
        "How long a liveness check of a child took to be answered.",
        &metrics.liveness_round_trip,
    );
    out.histogram(
        "sd_vm_boot_seconds",
        "How long a VM took from its VMM's start to its guest being ready.",
        &metrics.vm_boot,
    );
    if let Some(cluster) = &metrics.cluster {
        let counters = [
            (
                "sd_gossip_sent_packets_total",
                "Gossip packets sent.",
                cluster.gossip_sent_packets,
            ),
            (
                "sd_gossip_sent_bytes_total",
                "Gossip bytes sent.",
                cluster.gossip_sent_bytes,
            ),
            (
                "sd_gossip_received_packets_total",
                "Gossip packets received.",
                cluster.gossip_received_packets,
            ),
            (
                "sd_gossip_received_bytes_total",
                "Gossip bytes received.",
                cluster.gossip_received_bytes,
            ),
            (
                "sd_rpc_sent_total",
                "Peer requests made that were answered.",
                cluster.rpc_sent,
            ),
            (
                "sd_rpc_failed_total",
                "Peer requests made that failed.",
                cluster.rpc_failed,
            ),
            (
                "sd_rpc_served_total",
                "Peer requests served.",
                cluster.rpc_served,
            ),
            (
                "sd_rpc_sent_bytes_total",
                "Peer transport bytes sent.",
                cluster.rpc_bytes_sent,
            ),
            (
                "sd_rpc_received_bytes_total",
                "Peer transport bytes received.",
                cluster.rpc_bytes_received,
            ),
        ];
        for (name, help, value) in counters {
            out.family(name, "counter", help);
            out.sample(name, &[], value as f64);
        }
        out.family(
            "sd_gossip_dropped_packets_total",
            "counter",
            "Gossip packets refused, by why.",
        );
        for (reason, count) in [
            ("bad_auth", cluster.gossip_dropped_bad_auth),
            ("replay", cluster.gossip_dropped_replay),
            ("malformed", cluster.gossip_dropped_malformed),
        ] {
            out.sample(
                "sd_gossip_dropped_packets_total",
                &[("reason", reason)],
                count as f64,
            );
        }
        out.family(
            "sd_rpc_open_connections",
            "gauge",
            "Peer connections open now.",
        );
        out.sample(
            "sd_rpc_open_connections",
            &[],
            cluster.rpc_open_connections as f64,
        );
        out.histogram(
            "sd_rpc_latency_seconds",
            "Round trips of the peer requests this node made that were answered.",
            &rpc_histogram(&cluster.rpc_latency_buckets),
        );
    }
    out.text
}

/// The transport's histogram (bucket `i`: `[2^i, 2^(i+1))` µs, the last one open-ended) as
/// cumulative buckets; the sum is estimated from the buckets' midpoints.
fn rpc_histogram(buckets: &[u64]) -> HistogramSnapshot {
    let mut cumulative = 0;
    let mut sum_us = 0u64;
    let mut out = Vec::new();
    for (i, count) in buckets.iter().enumerate() {
        cumulative += count;
        let upper_us = 1u64 << (i + 1).min(63);
        sum_us = sum_us.saturating_add(count.saturating_mul(upper_us * 3 / 4));
        // The last bucket has no upper bound: it is in `+Inf` alone.
        if i + 1 < buckets.len() {
            out.push((upper_us, cumulative));
        }
    }
    HistogramSnapshot {
        buckets: out,
        count: cumulative,
        sum_us,
    }
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A histogram, its bounds (µs) written in seconds.
    fn histogram(&mut self, name: &str, help: &str, histogram: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (bound, count) in &histogram.buckets {
            let le = format!("{}", *bound as f64 / 1e6);
            self.sample(&bucket, &[("le", &le)], *count as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], histogram.count as f64);
        self.sample(&format!("{name}_sum"), &[], histogram.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), &[], histogram.count as f64);
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn transport_buckets_become_cumulative_seconds() {
        let snapshot = rpc_histogram(&[0, 2, 1, 0]);
        assert_eq!(snapshot.buckets, [(2, 0), (4, 2), (8, 3)]);
        let mut out = Exposition::default();
        out.histogram("sd_rpc_latency_seconds", "h", &snapshot);
        assert!(
            out.text
                .contains("sd_rpc_latency_seconds_bucket{le=\"0.000004\"} 2\n"),
            "{}",
            out.text
        );
        assert!(
            out.text
                .contains("sd_rpc_latency_seconds_bucket{le=\"+Inf\"} 3\n")
        );
        assert!(out.text.contains("sd_rpc_latency_seconds_count 3\n"));
    }
}
