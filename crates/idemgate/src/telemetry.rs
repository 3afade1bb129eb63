//! Logs (`tracing`, text or JSON, written off the request path) and the Prometheus recorder.
//!
//! Log lines are appended to an in-memory buffer under a short lock and written to stderr by a
//! background thread every 50 ms (or as soon as 256 KiB are waiting): one line per request costs
//! no wake-up and no system call on the request path. A full 4 MiB buffer drops lines (counted,
//! and reported in the next write) rather than block requests. [`LogGuard`] flushes on drop.
//!
//! Logs never contain raw keys or `Authorization` values: the layer logs record ids (a keyed
//! hash, truncated) and request outcomes only.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

const FLUSH_EVERY: Duration = Duration::from_millis(50);
const WAKE_AT: usize = 256 * 1024;
const MAX_BUFFER: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: u64,
    closed: bool,
}

/// The shared log buffer and its writer thread's wake-up.
#[derive(Clone, Default)]
struct Batched(Arc<(Mutex<Buffer>, Condvar)>);

impl Batched {
    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what is buffered; returns false once closed and drained. `spare` is swapped with
    /// the shared buffer, so both keep their capacity and steady logging allocates nothing.
    fn drain(&self, out: &mut impl Write, spare: &mut Vec<u8>) -> bool {
        spare.clear();
        let (dropped, closed) = {
            let mut b = self.lock();
            if b.bytes.is_empty() && b.dropped == 0 && !b.closed {
                b = self
                    .0
                     .1
                    .wait_timeout(b, FLUSH_EVERY)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            std::mem::swap(&mut b.bytes, spare);
            (std::mem::take(&mut b.dropped), b.closed)
        };
        if dropped > 0 {
            let _ = writeln!(out, "idemgate: {dropped} log lines dropped (log output too slow)");
        }
        let _ = out.write_all(spare);
        let _ = out.flush();
        !(closed && spare.is_empty())
    }
}

impl Write for Batched {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut b = self.lock();
        if b.bytes.len() + line.len() > MAX_BUFFER {
            b.dropped += 1;
        } else {
            b.bytes.extend_from_slice(line);
            if b.bytes.len() >= WAKE_AT {
                self.0 .1.notify_one();
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Flushes the buffered log lines when dropped (at exit).
pub struct LogGuard {
    buffer: Batched,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.buffer.lock().closed = true;
        self.buffer.0 .1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Installs the log subscriber; keep the guard alive until exit so buffered lines are written.
pub fn init_logs(json: bool) -> LogGuard {
    let buffer = Batched::default();
    let thread = {
        let buffer = buffer.clone();
        std::thread::Builder::new()
            .name("idemgate-log".into())
            .spawn(move || {
                let mut err = std::io::stderr();
                let mut spare = Vec::new();
                while buffer.drain(&mut err, &mut spare) {}
            })
            .ok()
    };
    let guard = LogGuard {
        buffer: buffer.clone(),
        thread,
    };
    let writer = move || buffer.clone();
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
