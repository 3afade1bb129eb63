//! Logs (`tracing`, text or JSON, written off the request path) and installing the metrics
//! recorder ([`crate::recorder`]).
//!
//! Log lines are appended to an in-memory buffer under a short lock and written to stderr by a
//! background thread every 50 ms (or as soon as 256 KiB are waiting): one line per request costs
//! no wake-up and no system call on the request path. A full 4 MiB buffer drops lines (counted,
//! and reported in the next write) rather than block requests. [`LogGuard`] flushes on drop.
//!
//! The per-request line (target `idemgate::request`, one per request at info) is written by
//! [`AccessLines`], which builds it in a buffer of the thread's own (cached date, integers by
//! `itoa`, fields in order) in the same text or JSON shape that tracing-subscriber's formatters
//! give every other line, at a quarter (text) to a sixth (JSON) of their cost; with ANSI colours
//! it leaves the line to them. Both halves of the double buffer start at 512 KiB with their pages
//! resident, so the first seconds of load do not regrow them (and fault them in) on the request
//! path.
//!
//! Logs never contain raw keys or `Authorization` values: the layer logs record ids (a keyed
//! hash, truncated) and request outcomes only.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

const FLUSH_EVERY: Duration = Duration::from_millis(50);
const WAKE_AT: usize = 256 * 1024;
const MAX_BUFFER: usize = 4 * 1024 * 1024;
/// What each of the two buffers holds from the start: a wake-up's worth and more, so that the
/// first seconds under load neither regrow them nor fault their pages in on the request path.
const START_CAPACITY: usize = 2 * WAKE_AT;

/// An empty buffer whose `capacity` bytes have been written once (their pages are resident).
fn prefaulted(capacity: usize) -> Vec<u8> {
    let mut v = vec![0u8; capacity];
    // `vec![0; n]` may map zero pages lazily; touching one byte per page makes them resident.
    for i in (0..capacity).step_by(4096) {
        v[i] = 1;
    }
    v.clear();
    v
}

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
    buffer.lock().bytes = prefaulted(START_CAPACITY);
    let thread = {
        let buffer = buffer.clone();
        std::thread::Builder::new()
            .name("idemgate-log".into())
            .spawn(move || {
                let mut err = std::io::stderr();
                let mut spare = prefaulted(START_CAPACITY);
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
        let inner = format().json().flatten_event(true);
        builder.json().event_format(AccessLines { inner, json: true }).init();
    } else {
        let inner = format().with_ansi(ansi);
        builder.event_format(AccessLines { inner, json: false }).init();
    }
    guard
}

fn format() -> format::Format {
    format::Format::default().with_target(true)
}

/// The event formatter: per-request lines directly, every other line by `inner`.
struct AccessLines<F> {
    inner: F,
    json: bool,
}

/// The target of the layer's per-request line.
const REQUEST_TARGET: &str = "idemgate::request";

impl<S, N, F> FormatEvent<S, N> for AccessLines<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        if meta.target() != REQUEST_TARGET || w.has_ansi_escapes() {
            return self.inner.format_event(ctx, w, event);
        }
        // Built in a buffer of this thread's and handed to the writer in one piece: every piece
        // written to `w` directly would be a dynamic call. A line formatted while another is
        // (a field's `Debug` that logs) gets a buffer of its own instead of a borrow panic.
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                access_line(&mut line, event, self.json);
                w.write_str(&line)
            }
            Err(_) => {
                let mut line = String::new();
                access_line(&mut line, event, self.json);
                w.write_str(&line)
            }
        })
    }
}

thread_local! {
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// One per-request line, as tracing-subscriber's text or flattened JSON format writes it.
fn access_line(line: &mut String, event: &Event<'_>, json: bool) {
    let meta = event.metadata();
    if json {
        line.push_str("{\"timestamp\":\"");
        push_timestamp(line);
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push('"');
        event.record(&mut Fields { line, json });
        line.push_str(",\"target\":\"");
        line.push_str(REQUEST_TARGET);
        line.push_str("\"}\n");
    } else {
        push_timestamp(line);
        // `{level:>5}`: the five level names padded to five characters.
        line.push_str(match *meta.level() {
            tracing::Level::INFO => "  INFO ",
            tracing::Level::WARN => "  WARN ",
            tracing::Level::ERROR => " ERROR ",
            tracing::Level::DEBUG => " DEBUG ",
            _ => " TRACE ",
        });
        line.push_str(REQUEST_TARGET);
        line.push(':');
        event.record(&mut Fields { line, json });
        line.push('\n');
    }
}

/// Writes an event's fields in order: ` name=value` (text, values as tracing-subscriber's default
/// fields shows them) or `,"name":value` (JSON).
struct Fields<'a> {
    line: &'a mut String,
    json: bool,
}

impl Fields<'_> {
    /// The field's name and what goes before and after it; `line` then takes the value.
    fn name(&mut self, field: &Field) -> &mut String {
        let (before, after) = if self.json { (",\"", "\":") } else { (" ", "=") };
        self.line.push_str(before);
        self.line.push_str(field.name());
        self.line.push_str(after);
        self.line
    }
}

impl Visit for Fields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field).push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field).push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field).push_str(if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let json = self.json;
        let line = self.name(field);
        if json {
            json_str(line, value);
        } else if value
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        {
            // What `{:?}` writes for a string that needs no escapes.
            line.push('"');
            line.push_str(value);
            line.push('"');
        } else {
            let _ = write!(line, "{value:?}");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let json = self.json;
        let line = self.name(field);
        if json {
            line.push('"');
            let _ = std::fmt::Write::write_fmt(&mut JsonEscaped(line), format_args!("{value:?}"));
            line.push('"');
        } else {
            let _ = write!(line, "{value:?}");
        }
    }
}

/// A JSON string literal.
fn json_str(line: &mut String, s: &str) {
    line.push('"');
    let _ = std::fmt::Write::write_str(&mut JsonEscaped(line), s);
    line.push('"');
}

/// Writes what is formatted into it as the inside of a JSON string (no allocation).
struct JsonEscaped<'a>(&'a mut String);

impl std::fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let line = &mut *self.0;
        let mut rest = s;
        while let Some(i) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
            line.push_str(&rest[..i]);
            let c = rest[i..].chars().next().unwrap_or(' ');
            match c {
                '"' => line.push_str("\\\""),
                '\\' => line.push_str("\\\\"),
                '\n' => line.push_str("\\n"),
                '\r' => line.push_str("\\r"),
                '\t' => line.push_str("\\t"),
                c => write!(line, "\\u{:04x}", c as u32)?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        line.push_str(rest);
        Ok(())
    }
}

thread_local! {
    /// The last second formatted on this thread and its `YYYY-MM-DDTHH:MM:SS`.
    static DATE: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// `2026-11-30T07:30:37.514540Z`, as tracing-subscriber's `SystemTime` timer writes it.
fn push_timestamp(line: &mut String) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (cached, mut date) = DATE.get();
    if cached != secs {
        date = civil(secs);
        DATE.set((secs, date));
    }
    line.push_str(std::str::from_utf8(&date).unwrap_or("1970-01-01T00:00:00"));
    // `.{:06}Z`
    let mut frac = *b".000000Z";
    let mut us = now.subsec_micros();
    for d in frac[1..7].iter_mut().rev() {
        *d = b'0' + (us % 10) as u8;
        us /= 10;
    }
    line.push_str(std::str::from_utf8(&frac).unwrap_or(".000000Z"));
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time (days to civil date: H. Hinnant's algorithm).
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut out = [0u8; 19];
    let text = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    if text.len() == out.len() {
        out.copy_from_slice(text.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_instants() {
        assert_eq!(&civil(0), b"1970-01-01T00:00:00");
        assert_eq!(&civil(951_782_400), b"2000-02-29T00:00:00");
        assert_eq!(&civil(1_796_023_837), b"2026-11-30T07:30:37");
        assert_eq!(&civil(4_102_444_799), b"2099-12-31T23:59:59");
    }

    /// The fast lines are the lines tracing-subscriber's formatters write, field for field.
    #[test]
    fn request_lines_match_the_default_formatters() {
        for json in [false, true] {
            let fast = capture(json, true);
            let slow = capture(json, false);
            let strip = |l: &str| -> String {
                // The timestamps differ; everything after them must not.
                if json {
                    l.split_once("\",\"level\"")
                        .map(|x| x.1.to_string())
                        .unwrap_or_default()
                } else {
                    l.split_once('Z').map(|x| x.1.to_string()).unwrap_or_default()
                }
            };
            assert!(!fast.is_empty() && fast.len() == slow.len(), "{fast:?} / {slow:?}");
            for (f, s) in fast.iter().zip(&slow) {
                assert_eq!(strip(f), strip(s), "json={json}");
                assert_eq!(f.len(), s.len(), "json={json}: {f} / {s}");
            }
        }
    }

    fn capture(json: bool, fast: bool) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false);
        let emit = || {
            let method = http::Method::POST;
            for path in ["/payments", "/a \"quoted\"\\path\n\u{1}é"] {
                tracing::info!(target: "idemgate::request", method = %method, path, status = 200u16, outcome = "replayed", micros = 42u64);
            }
        };
        match (json, fast) {
            (true, true) => {
                let inner = format().json().flatten_event(true);
                let s = builder.json().event_format(AccessLines { inner, json: true }).finish();
                tracing::subscriber::with_default(s, emit);
            }
            (true, false) => {
                let s = builder.json().flatten_event(true).finish();
                tracing::subscriber::with_default(s, emit);
            }
            (false, true) => {
                let s = builder
                    .event_format(AccessLines {
                        inner: format().with_ansi(false),
                        json: false,
                    })
                    .finish();
                tracing::subscriber::with_default(s, emit);
            }
            (false, false) => {
                let s = builder.with_target(true).finish();
                tracing::subscriber::with_default(s, emit);
            }
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }
}

/// Installs the metrics recorder ([`crate::recorder`]: histograms with fixed buckets, in seconds).
pub fn init_metrics() -> anyhow::Result<crate::recorder::MetricsHandle> {
    let (recorder, handle) = crate::recorder::GatewayRecorder::new();
    metrics::set_global_recorder(recorder)?;
    Ok(handle)
}
/// What one per-request line costs, fast path against tracing-subscriber's formatters (a
/// measurement, not a check: `cargo test --release -p idemgate --bin idemgate
/// access_line_cost -- --ignored --nocapture`; figures in docs/PERFORMANCE.md).
#[cfg(test)]
mod cost {
    use super::*;

    #[test]
    #[ignore = "a measurement; run by hand"]
    #[allow(clippy::disallowed_types)] // wall-clock time is what is measured
    fn access_line_cost() {
        const N: u32 = 200_000;
        for (json, fast) in [(false, false), (false, true), (true, false), (true, true)] {
            let builder = tracing_subscriber::fmt().with_writer(std::io::sink).with_ansi(false);
            let emit = || {
                let method = http::Method::POST;
                let t = std::time::Instant::now();
                for _ in 0..N {
                    tracing::info!(target: "idemgate::request", method = %method, path = "/payments", status = 200u16, outcome = "replayed", micros = 42u64);
                }
                t.elapsed().as_nanos() / u128::from(N)
            };
            let ns = match (json, fast) {
                (true, true) => {
                    let inner = format().json().flatten_event(true);
                    tracing::subscriber::with_default(
                        builder.json().event_format(AccessLines { inner, json }).finish(),
                        emit,
                    )
                }
                (true, false) => tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), emit),
                (false, true) => {
                    let inner = format().with_ansi(false);
                    tracing::subscriber::with_default(builder.event_format(AccessLines { inner, json }).finish(), emit)
                }
                (false, false) => tracing::subscriber::with_default(builder.with_target(true).finish(), emit),
            };
            println!("json={json} fast={fast}: {ns} ns per line");
        }
    }
}
