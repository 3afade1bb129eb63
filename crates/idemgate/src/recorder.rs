//! The metrics recorder: the Prometheus exporter's gauges, counters and histograms of our own.
//!
//! The exporter keeps every histogram sample (a lock-free list that two serving threads append
//! to, an atomic generation bumped beside each) until upkeep folds them into buckets: at 60k
//! requests a second that is three contended samples per request and megabytes of samples
//! between upkeeps; its counters are one atomic (and a generation) that every thread writes.
//! Here a histogram is its fixed buckets and a counter its count, kept in shards of their own
//! cache lines, one per thread (threads beyond [`SHARDS`] share): a sample is one or two
//! uncontended atomic adds (a histogram's sum is kept in billionths, nanoseconds for the
//! `_seconds` ones, so it is an integer add rather than a compare-and-swap loop on `f64` bits),
//! memory is constant, and a scrape sums the shards. `/metrics` renders
//! the exporter's output (gauges) followed by these through the exporter's own formatting
//! helpers, so the text is what the exporter gives (`_bucket{…,le="…"}` cumulative, `_sum`,
//! `_count`). A scrape that races samples may see a sum a sample ahead of its buckets; `_count`
//! is always the `+Inf` bucket.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
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
    /// The sum of the samples, in billionths (1 ns for seconds; saturating per sample, wrapping
    /// beyond ±292 years of summed seconds).
    sum: AtomicI64,
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
        shard.sum.fetch_add((value * 1e9) as i64, Ordering::Relaxed);
    }
}

/// A counter: a count per shard.
#[derive(Default)]
pub struct Count {
    shards: [CountShard; SHARDS],
}

#[repr(align(128))]
#[derive(Default)]
struct CountShard(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.shards[shard_index()].0.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        // Not used on the request path: the total becomes `value` once no increment races it.
        for (i, s) in self.shards.iter().enumerate() {
            s.0.store(if i == 0 { value } else { 0 }, Ordering::Relaxed);
        }
    }
}

impl Count {
    fn total(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl Buckets {
    /// Cumulative counts per bucket (the last is `+Inf`, the total) and the sum.
    fn snapshot(&self) -> ([u64; BUCKETS.len() + 1], f64) {
        let mut counts = [0u64; BUCKETS.len() + 1];
        let mut sum = 0i64;
        for shard in &self.shards {
            for (total, c) in counts.iter_mut().zip(&shard.counts) {
                *total += c.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(shard.sum.load(Ordering::Relaxed));
        }
        let sum = sum as f64 / 1e9;
        let mut running = 0;
        for c in &mut counts {
            running += *c;
            *c = running;
        }
        (counts, sum)
    }
}

/// The metrics of one kind, in registration order; a key registered again gets the same one.
struct Family<T> {
    by_key: Vec<(Key, Arc<T>)>,
    descriptions: Vec<(KeyName, SharedString)>,
}

impl<T> Default for Family<T> {
    fn default() -> Self {
        Self {
            by_key: Vec::new(),
            descriptions: Vec::new(),
        }
    }
}

impl<T: Default> Family<T> {
    fn register(&mut self, key: &Key) -> Arc<T> {
        if let Some((_, m)) = self.by_key.iter().find(|(k, _)| k == key) {
            return Arc::clone(m);
        }
        let m = Arc::new(T::default());
        self.by_key.push((key.clone(), Arc::clone(&m)));
        m
    }

    fn describe(&mut self, key: KeyName, description: SharedString) {
        match self.descriptions.iter_mut().find(|(k, _)| *k == key) {
            Some((_, d)) => *d = description,
            None => self.descriptions.push((key, description)),
        }
    }

    /// Each name once, with its `# HELP` and `# TYPE` lines, then `line` for each of its keys.
    fn render(&self, out: &mut String, kind: &str, mut line: impl FnMut(&mut String, &str, &[String], &T)) {
        let mut names: Vec<&str> = Vec::new();
        for (key, _) in &self.by_key {
            if !names.contains(&key.name()) {
                names.push(key.name());
            }
        }
        for name in names {
            let mut typed = false;
            for (key, m) in self.by_key.iter().filter(|(k, _)| k.name() == name) {
                let (metric, labels) = key_to_parts(key, None);
                if !typed {
                    if let Some((_, d)) = self.descriptions.iter().find(|(k, _)| k.as_str() == name) {
                        write_help_line(out, &metric, &sanitize_description(d));
                    }
                    write_type_line(out, &metric, kind);
                    typed = true;
                }
                line(out, &metric, &labels, m);
            }
            out.push('\n');
        }
    }
}

#[derive(Default)]
struct Families {
    counters: Family<Count>,
    histograms: Family<Buckets>,
}

/// The installed recorder.
pub struct GatewayRecorder {
    inner: PrometheusRecorder,
    families: Arc<Mutex<Families>>,
}

/// Renders what the recorder holds.
#[derive(Clone)]
pub struct MetricsHandle {
    inner: PrometheusHandle,
    families: Arc<Mutex<Families>>,
}

impl GatewayRecorder {
    pub fn new() -> (Self, MetricsHandle) {
        let inner = PrometheusBuilder::new().build_recorder();
        let families = Arc::default();
        let handle = MetricsHandle {
            inner: inner.handle(),
            families: Arc::clone(&families),
        };
        (Self { inner, families }, handle)
    }

    fn families(&self) -> std::sync::MutexGuard<'_, Families> {
        lock(&self.families)
    }
}

fn lock(families: &Mutex<Families>) -> std::sync::MutexGuard<'_, Families> {
    families.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder for GatewayRecorder {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.families().counters.describe(key, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.families().histograms.describe(key, description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.families().counters.register(key))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.families().histograms.register(key))
    }
}

impl MetricsHandle {
    /// The Prometheus text: the exporter's metrics (gauges), then the counters and histograms.
    pub fn render(&self) -> String {
        let mut out = self.inner.render();
        let f = lock(&self.families);
        f.counters.render(&mut out, "counter", |out, metric, labels, c| {
            write_metric_line::<&str, u64>(out, metric, None, labels, None, c.total(), None);
        });
        f.histograms
            .render(&mut out, "histogram", |out, metric, labels, buckets| {
                let (counts, sum) = buckets.snapshot();
                for (le, count) in BUCKETS.iter().zip(counts) {
                    write_metric_line(out, metric, Some("bucket"), labels, Some(("le", le)), count, None);
                }
                let total = counts[BUCKETS.len()];
                write_metric_line(out, metric, Some("bucket"), labels, Some(("le", "+Inf")), total, None);
                write_metric_line::<&str, f64>(out, metric, Some("sum"), labels, None, sum, None);
                write_metric_line::<&str, u64>(out, metric, Some("count"), labels, None, total, None);
            });
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
            metrics::counter!("requests_total", "outcome" => "replayed").increment(1);
            metrics::gauge!("records").set(7.0);
            metrics::describe_counter!("requests_total", "requests by outcome");
        });
        for line in [
            "# HELP requests_total requests by outcome",
            "# TYPE requests_total counter",
            "requests_total{outcome=\"executed\"} 2",
            "requests_total{outcome=\"replayed\"} 1",
            "records 7",
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
        assert_eq!(text.matches("# TYPE requests_total counter").count(), 1, "{text}");
    }

    #[test]
    fn a_key_registered_twice_is_one_metric_and_threads_add_up() {
        let text = with_recorder(|| {
            let a = metrics::histogram!("upstream_seconds");
            let b = metrics::histogram!("upstream_seconds");
            let c = metrics::counter!("total");
            let d = metrics::counter!("total");
            std::thread::scope(|s| {
                for (h, c) in [(&a, &c), (&b, &d), (&a, &d), (&b, &c)] {
                    s.spawn(move || {
                        for _ in 0..1000 {
                            h.record(0.5);
                            c.increment(1);
                        }
                    });
                }
            });
            metrics::describe_histogram!("upstream_seconds", "time \"upstream\"");
        });
        assert!(text.contains("upstream_seconds_count 4000\n"), "{text}");
        assert!(text.contains("\ntotal 4000\n"), "{text}");
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
