//! Logs (`tracing`, text or JSON, written off the request path) and the Prometheus recorder.
//!
//! Logs never contain raw keys or `Authorization` values: the layer logs record ids (a keyed
//! hash, truncated) and request outcomes only.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the log subscriber; keep the guard alive until exit so buffered lines are written.
pub fn init_logs(json: bool) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_env("IDEMGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(true);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    guard
}

/// Installs the Prometheus recorder (histograms with fixed buckets, in seconds).
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    Ok(PrometheusBuilder::new().set_buckets(&buckets)?.install_recorder()?)
}
