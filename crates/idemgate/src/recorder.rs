//! The metrics recorder: the Prometheus exporter's for counters and gauges, histograms of our own.
//!
//! The exporter keeps every histogram sample (a lock-free list that two serving threads append
//! to, an atomic generation bumped beside each) until upkeep folds them into buckets: at 60k
//! requests a second that is three contended samples per request and megabytes of samples
//! between upkeeps. Here a histogram is its fixed buckets, counted in shards of their own cache
//! line, one per thread (threads beyond [`SHARDS`] share): a sample is two uncontended atomic
//! adds, memory is constant, and a scrape sums the shards. `/metrics` renders the exporter's
//! output followed by these histograms through the exporter's own formatting helpers, so the
//! text is what the exporter gives (`_bucket{…,le="…"}` cumulative, `_sum`, `_count`). A scrape
//! that races samples may see a sum a sample ahead of its buckets; `_count` is always the `+Inf`
//! bucket.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::formatting::{
    key_to_parts, sanitize_description, write_help_line, write_metric_line, write_type_line,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Shards per histogram: one per serving thread on most hosts.
const SHARDS: usize = 16;
/// Upper bounds (seconds) of every histogram's buckets; `+Inf` follows.
pub const BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One thread's counts: a cache line pair of its own, so two threads never write one line.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    /// Samples per bucket (not cumulative); the last is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// The sum of the samples, as `f64` bits.
    sum: AtomicU64,
}

/// A histogram with [`BUCKETS`].
#[derive(Default)]
pub struct Buckets {
    shards: [Shard; SHARDS],
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        let shard = &self.shards[shard_index()];
        let bucket = BUCKETS.partition_point(|&le| le < value);
        shard.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // Uncontended unless threads share a shard; the loop is for those.
        let _ = shard.sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
    }
}

impl Buckets {
    /// Cumulative counts per bucket (the last is `+Inf`, the total) and the sum.
    fn snapshot(&self) -> ([u64; BUCKETS.len() + 1], f64) {
        let mut counts = [0u64; BUCKETS.len() + 1];
        let mut sum = 0.0;
        for shard in &self.shards {
            for (total, c) in counts.iter_mut().zip(&shard.counts) {
                *total += c.load(Ordering::Relaxed);
            }
            sum += f64::from_bits(shard.sum.load(Ordering::Relaxed));
        }
        let mut running = 0;
        for c in &mut counts {
            running += *c;
            *c = running;
        }
        (counts, sum)
    }
}

#[derive(Default)]
struct Histograms {
    /// In registration order; a key registered again gets the same histogram.
    by_key: Vec<(Key, Arc<Buckets>)>,
    descriptions: Vec<(KeyName, SharedString)>,
}

/// The installed recorder.
pub struct GatewayRecorder {
    inner: PrometheusRecorder,
    histograms: Arc<Mutex<Histograms>>,
}

/// Renders what the recorder holds.
#[derive(Clone)]
pub struct MetricsHandle {
    inner: PrometheusHandle,
    histograms: Arc<Mutex<Histograms>>,
}

impl GatewayRecorder {
    pub fn new() -> (Self, MetricsHandle) {
        let inner = PrometheusBuilder::new().build_recorder();
        let histograms = Arc::default();
        let handle = MetricsHandle {
            inner: inner.handle(),
            histograms: Arc::clone(&histograms),
        };
        (Self { inner, histograms }, handle)
    }

    fn histograms(&self) -> std::sync::MutexGuard<'_, Histograms> {
        self.histograms.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Recorder for GatewayRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        let mut h = self.histograms();
        match h.descriptions.iter_mut().find(|(k, _)| *k == key) {
            Some((_, d)) => *d = description,
            None => h.descriptions.push((key, description)),
        }
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.inner.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        let mut h = self.histograms();
        if let Some((_, b)) = h.by_key.iter().find(|(k, _)| k == key) {
            return Histogram::from_arc(Arc::clone(b));
        }
        let b = Arc::new(Buckets::default());
        h.by_key.push((key.clone(), Arc::clone(&b)));
        Histogram::from_arc(b)
    }
}

impl MetricsHandle {
    /// The Prometheus text: the exporter's metrics, then the histograms (grouped by name).
    pub fn render(&self) -> String {
        let mut out = self.inner.render();
        let h = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&str> = Vec::new();
        for (key, _) in &h.by_key {
            if !names.contains(&key.name()) {
                names.push(key.name());
            }
        }
        for name in names {
            let mut typed = false;
            for (key, buckets) in h.by_key.iter().filter(|(k, _)| k.name() == name) {
                let (metric, labels) = key_to_parts(key, None);
                if !typed {
                    if let Some((_, d)) = h.descriptions.iter().find(|(k, _)| k.as_str() == name) {
                        write_help_line(&mut out, &metric, &sanitize_description(d));
                    }
                    write_type_line(&mut out, &metric, "histogram");
                    typed = true;
                }
                let (counts, sum) = buckets.snapshot();
                for (le, count) in BUCKETS.iter().zip(counts) {
                    write_metric_line(
                        &mut out,
                        &metric,
                        Some("bucket"),
                        &labels,
                        Some(("le", le)),
                        count,
                        None,
                    );
                }
                let total = counts[BUCKETS.len()];
                write_metric_line(
                    &mut out,
                    &metric,
                    Some("bucket"),
                    &labels,
                    Some(("le", "+Inf")),
                    total,
                    None,
                );
                write_metric_line::<&str, f64>(&mut out, &metric, Some("sum"), &labels, None, sum, None);
                write_metric_line::<&str, u64>(&mut out, &metric, Some("count"), &labels, None, total, None);
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_recorder(f: impl FnOnce()) -> String {
        let (recorder, handle) = GatewayRecorder::new();
        metrics::with_local_recorder(&recorder, f);
        handle.render()
    }

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count_per_label_set() {
        let text = with_recorder(|| {
            let claim = metrics::histogram!("store_seconds", "op" => "claim");
            claim.record(0.0001); // on a bound: counted in that bucket (le is "less or equal")
            claim.record(0.003);
            claim.record(100.0); // above every bound: +Inf only
            metrics::histogram!("store_seconds", "op" => "complete").record(0.02);
            metrics::counter!("requests_total", "outcome" => "executed").increment(2);
        });
        for line in [
            "requests_total{outcome=\"executed\"} 2",
            "# TYPE store_seconds histogram",
            "store_seconds_bucket{op=\"claim\",le=\"0.0001\"} 1",
            "store_seconds_bucket{op=\"claim\",le=\"0.001\"} 1",
            "store_seconds_bucket{op=\"claim\",le=\"0.005\"} 2",
            "store_seconds_bucket{op=\"claim\",le=\"30\"} 2",
            "store_seconds_bucket{op=\"claim\",le=\"+Inf\"} 3",
            "store_seconds_sum{op=\"claim\"} 100.0031",
            "store_seconds_count{op=\"claim\"} 3",
            "store_seconds_bucket{op=\"complete\",le=\"0.01\"} 0",
            "store_seconds_bucket{op=\"complete\",le=\"0.025\"} 1",
            "store_seconds_count{op=\"complete\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.matches("# TYPE store_seconds histogram").count(), 1, "{text}");
    }

    #[test]
    fn a_key_registered_twice_is_one_histogram_and_threads_add_up() {
        let text = with_recorder(|| {
            let a = metrics::histogram!("upstream_seconds");
            let b = metrics::histogram!("upstream_seconds");
            std::thread::scope(|s| {
                for h in [&a, &b, &a, &b] {
                    s.spawn(move || (0..1000).for_each(|_| h.record(0.5)));
                }
            });
            metrics::describe_histogram!("upstream_seconds", "time \"upstream\"");
        });
        assert!(text.contains("upstream_seconds_count 4000\n"), "{text}");
        assert!(text.contains("upstream_seconds_bucket{le=\"0.25\"} 0\n"), "{text}");
        assert!(text.contains("upstream_seconds_bucket{le=\"0.5\"} 4000\n"), "{text}");
        assert!(text.contains("upstream_seconds_sum 2000\n"), "{text}");
        assert!(text.contains("# HELP upstream_seconds time \"upstream\"\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped_and_nan_is_not_counted() {
        let text = with_recorder(|| {
            let h = metrics::histogram!("h", "path" => "a\"b\\c\nd");
            h.record(f64::NAN);
            h.record(1.0);
        });
        assert!(text.contains("h_count{path=\"a\\\"b\\\\c\\nd\"} 1\n"), "{text}");
    }
}
