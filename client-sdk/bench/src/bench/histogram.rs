//! Latency histograms for the HTTP scenarios: microseconds in an HdrHistogram, so
//! memory stays fixed however many requests are timed, and per-sender histograms
//! merge into one.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency recorded as itself; longer ones count as this (an hour).
const MAX_US: u64 = 3_600_000_000;

/// Percentiles printed for request latencies.
pub(crate) const REQUEST_QUANTILES: &[(&str, f64)] = &[("p50", 0.5), ("p99", 0.99), ("max", 1.0)];

/// Percentiles printed for end-to-end latencies.
pub(crate) const DELIVERY_QUANTILES: &[(&str, f64)] =
    &[("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)];

/// Latencies in microseconds, three significant figures.
#[derive(Debug, Clone)]
pub(crate) struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub(crate) fn new() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"))
    }

    /// Counts one latency (under 1 µs counts as 1 µs, over an hour as an hour).
    pub(crate) fn record(&mut self, latency: Duration) {
        self.record_us(u64::try_from(latency.as_micros()).unwrap_or(MAX_US));
    }

    /// Counts one latency given in microseconds.
    pub(crate) fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_US));
    }

    /// Adds every latency of `other`.
    pub(crate) fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Latencies counted.
    pub(crate) fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile (0..=1) in milliseconds; `None` when empty.
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        let us = if q >= 1.0 {
            self.0.max()
        } else {
            self.0.value_at_quantile(q)
        };
        Some(us as f64 / 1e3)
    }

    /// `{prefix}_{name}_ms=...` for each quantile; nothing when empty.
    pub(crate) fn lines(&self, prefix: &str, quantiles: &[(&str, f64)]) -> Vec<String> {
        quantiles
            .iter()
            .filter_map(|&(name, q)| {
                let ms = self.quantile_ms(q)?;
                Some(format!("{prefix}_{name}_ms={ms:.3}"))
            })
            .collect()
    }

    /// `p50 1.23 ms, p99 4.56 ms` for a human; empty when nothing was counted.
    pub(crate) fn summary(&self, quantiles: &[(&str, f64)]) -> String {
        quantiles
            .iter()
            .filter_map(|&(name, q)| Some(format!("{name} {:.2} ms", self.quantile_ms(q)?)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_to_thousand_ms() -> Latencies {
        let mut l = Latencies::new();
        for ms in 1..=1000 {
            l.record(Duration::from_millis(ms));
        }
        l
    }

    #[test]
    fn quantiles_are_printed_in_milliseconds() {
        let l = one_to_thousand_ms();
        let lines = l.lines("send_latency", REQUEST_QUANTILES);
        assert_eq!(
            lines,
            [
                "send_latency_p50_ms=500.223",
                "send_latency_p99_ms=990.207",
                "send_latency_max_ms=1000.447",
            ]
        );
        assert_eq!(
            l.summary(&[("p50", 0.5), ("max", 1.0)]),
            "p50 500.22 ms, max 1000.45 ms"
        );
    }

    #[test]
    fn an_empty_histogram_prints_nothing() {
        let l = Latencies::new();
        assert!(l.lines("x", DELIVERY_QUANTILES).is_empty());
        assert_eq!(l.summary(DELIVERY_QUANTILES), "");
        assert_eq!(l.quantile_ms(0.5), None);
    }

    #[test]
    fn merged_histograms_count_both_and_clamp_extremes() {
        let mut a = one_to_thousand_ms();
        let mut b = Latencies::new();
        b.record(Duration::ZERO);
        b.record(Duration::from_secs(10_000));
        a.merge(&b);
        assert_eq!(a.count(), 1002);
        assert_eq!(a.quantile_ms(0.0), Some(0.001));
        assert!(a.quantile_ms(1.0).expect("max") >= 3_600_000.0);
    }
}
