//! `idemgate-load`: an open-loop HTTP load generator whose latencies are corrected for
//! coordinated omission, for the harness's fixed-rate pass (`bench/run.sh`, where Debian has no
//! `wrk2`).
//!
//! It takes wrk2's flags (`-t -c -d -R --timeout --latency -s`; the script is not run) and
//! `bench/idem.lua`'s environment (`IDEM_MODE`, `IDEM_KEY`, `IDEM_PREFIX`, `BODY_BYTES`,
//! `EXTRA_HEADERS`, `LABEL`, `WORKLOAD`, `ROUND`), sends the same requests, and prints the same
//! `WRKJSON {...}` summary line, so the harness can use it where it would use wrk2:
//!
//! ```text
//! cargo run --release -p idemgate-bench --bin idemgate-load -- -t1 -c32 -d5s -R 20000 http://127.0.0.1:8080/payments
//! ```
//!
//! **The schedule.** Each of the `c` connections sends at `R / c` requests per second on a fixed
//! schedule (connection `k` offset by `k / R`). A request's latency is counted from the time it
//! was *due*, whenever the connection was still busy with an earlier response at that time: a
//! server that stalls is charged for every request it kept the client from sending, which a
//! closed-loop tool (wrk) never sees. When the connection was free and only this process's timer
//! was late (tokio's timer has a millisecond granularity), the latency is counted from the
//! actual send instead, so the client's own timer is never charged to the server.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Flags as wrk2 spells them.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "idemgate-load",
    about = "open-loop load at a fixed rate, latencies corrected for coordinated omission"
)]
struct Args {
    /// Threads (each a current-thread runtime with its share of the connections).
    #[arg(short = 't', long = "threads", default_value_t = 1)]
    threads: usize,
    /// Connections.
    #[arg(short = 'c', long = "connections", default_value_t = 32)]
    connections: usize,
    /// Duration (`500ms`, `5s`, `1m`).
    #[arg(short = 'd', long = "duration", default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Total requests per second.
    #[arg(short = 'R', long = "rate")]
    rate: f64,
    /// A request without an answer within this long counts as a timeout error.
    #[arg(long = "timeout", default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Accepted for wrk2 compatibility: the latency distribution is always printed.
    #[arg(long = "latency")]
    latency: bool,
    /// Accepted for wrk2 compatibility (the requests are `bench/idem.lua`'s, built in).
    #[arg(short = 's', long = "script")]
    script: Option<String>,
    /// `http://host:port/path`.
    url: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// Which `Idempotency-Key` each request carries (see `bench/idem.lua`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A fresh key per request.
    Unique,
    /// One key for every request.
    Fixed,
    /// 80 % fresh keys, 20 % repeats of a key this connection sent 256–1279 requests earlier.
    Mix,
    /// No key.
    None,
}

/// What every request is made of.
#[derive(Clone, Debug)]
struct Plan {
    uri: Uri,
    host: HeaderValue,
    addr: String,
    mode: Mode,
    fixed_key: String,
    prefix: String,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
    connections: usize,
    rate: f64,
    duration: Duration,
    timeout: Duration,
}

/// One thread's results.
struct Tally {
    /// Corrected latency, microseconds.
    latency: Histogram<u64>,
    completed: u64,
    non2xx3xx: u64,
    errors: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("3 digits")),
            completed: 0,
            non2xx3xx: 0,
            errors: 0,
        }
    }

    fn add(&mut self, other: &Tally) {
        let _ = self.latency.add(&other.latency);
        self.completed += other.completed;
        self.non2xx3xx += other.non2xx3xx;
        self.errors += other.errors;
    }
}

/// The request body `bench/idem.lua` sends for `BODY_BYTES` (0: its ~80-byte payment).
fn body_of(bytes: usize) -> Bytes {
    if bytes == 0 {
        return Bytes::from_static(br#"{"amount":1999,"currency":"usd","source":"tok_visa","description":"bench"}"#);
    }
    let head = r#"{"amount":1999,"currency":"usd","source":"tok_visa","pad":""#;
    let tail = r#""}"#;
    match bytes.checked_sub(head.len() + tail.len()) {
        Some(pad) => Bytes::from(format!("{head}{}{tail}", "x".repeat(pad))),
        None => Bytes::from(" ".repeat(bytes)),
    }
}

fn plan(args: &Args, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Plan> {
    let uri: Uri = args.url.parse().with_context(|| format!("invalid URL {}", args.url))?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs are supported");
    }
    let authority = uri.authority().context("the URL has no host")?.clone();
    let addr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
    let path: Uri = uri.path_and_query().map_or("/", |pq| pq.as_str()).parse()?;
    let mode = match env("IDEM_MODE").as_deref().unwrap_or("unique") {
        "unique" => Mode::Unique,
        "fixed" => Mode::Fixed,
        "mix" => Mode::Mix,
        "none" => Mode::None,
        other => bail!("unknown IDEM_MODE {other:?} (unique, fixed, mix, none)"),
    };
    let run = format!("o{:x}{:06x}", std::process::id(), fastrand::u32(..0xff_ffff));
    let prefix = env("IDEM_PREFIX").unwrap_or_else(|| run.clone());
    let fixed_key = env("IDEM_KEY").unwrap_or_else(|| format!("bench-fixed-{prefix}"));
    let body = body_of(env("BODY_BYTES").and_then(|b| b.parse().ok()).unwrap_or(0));
    let mut headers = vec![(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    if let Some(extra) = env("EXTRA_HEADERS").filter(|e| !e.is_empty()) {
        let extra = match extra.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("EXTRA_HEADERS file {path}"))?
                .replace(['\r', '\n'], "|"),
            None => extra,
        };
        for pair in extra.split('|').filter(|p| !p.trim().is_empty()) {
            let (name, value) = pair
                .split_once(':')
                .with_context(|| format!("header {pair:?} has no ':'"))?;
            headers.push((name.trim().parse()?, value.trim().parse()?));
        }
    }
    if args.connections == 0 || args.threads == 0 || args.rate.is_nan() || args.rate <= 0.0 {
        bail!("-c, -t and -R must be positive");
    }
    Ok(Plan {
        uri: path,
        host: HeaderValue::from_str(authority.as_str())?,
        addr,
        mode,
        fixed_key,
        prefix,
        body,
        headers,
        connections: args.connections,
        rate: args.rate,
        duration: args.duration,
        timeout: args.timeout,
    })
}

/// The key of a connection's `n`-th request (`None`: no key header).
fn key_for(plan: &Plan, conn: usize, counter: &mut u64) -> Option<String> {
    match plan.mode {
        Mode::None => None,
        Mode::Fixed => Some(plan.fixed_key.clone()),
        Mode::Unique => {
            *counter += 1;
            Some(format!("{}-c{conn}-{counter}", plan.prefix))
        }
        Mode::Mix => {
            if *counter > 1280 && fastrand::f64() < 0.2 {
                let back = 256 + fastrand::u64(0..1024);
                Some(format!("{}-c{conn}-{}", plan.prefix, *counter - back))
            } else {
                *counter += 1;
                Some(format!("{}-c{conn}-{counter}", plan.prefix))
            }
        }
    }
}

fn request(plan: &Plan, key: Option<String>) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(plan.body.clone()));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = plan.uri.clone();
    let h = req.headers_mut();
    h.insert(http::header::HOST, plan.host.clone());
    for (name, value) in &plan.headers {
        h.insert(name.clone(), value.clone());
    }
    if let Some(key) = key.and_then(|k| HeaderValue::from_str(&k).ok()) {
        h.insert("idempotency-key", key);
    }
    req
}

/// One connection on its schedule until `end`; reconnects after an error.
async fn connection(plan: Rc<Plan>, conn: usize, start: Instant, end: Instant, tally: Rc<RefCell<Tally>>) {
    let interval = Duration::from_secs_f64(plan.connections as f64 / plan.rate);
    // Spread the connections' first requests over one interval.
    let mut due = start + interval.mul_f64(conn as f64 / plan.connections as f64);
    let mut counter = 0u64;
    let mut sender = None;
    while due < end {
        let now = Instant::now();
        // Free before its turn: wait for it, and measure from the actual send (the client's
        // timer is late, not the server). Busy past its turn: send now, measure from the turn.
        let from = if now < due {
            tokio::time::sleep_until(due).await;
            Instant::now()
        } else {
            due
        };
        due += interval;
        let req = request(&plan, key_for(&plan, conn, &mut counter));
        match tokio::time::timeout(plan.timeout, exchange(&plan.addr, &mut sender, req)).await {
            Ok(Ok(status)) => {
                let done = Instant::now();
                let mut t = tally.borrow_mut();
                if done <= end {
                    let micros = done.saturating_duration_since(from).as_micros().max(1);
                    t.latency.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                    t.completed += 1;
                    if !(status.is_success() || status.is_redirection()) {
                        t.non2xx3xx += 1;
                    }
                }
            }
            _ => {
                sender = None;
                tally.borrow_mut().errors += 1;
            }
        }
    }
}

/// Sends `req` on the connection in `sender` (opening one when there is none) and reads the
/// whole response. A connection the server closed meanwhile (nginx after `keepalive_requests`)
/// gives the request back unsent: it goes out on a new connection, as wrk reconnects.
async fn exchange(
    addr: &str,
    sender: &mut Option<Sender>,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<http::StatusCode> {
    let mut req = req;
    for _ in 0..2 {
        let mut s = match sender.take() {
            Some(s) => s,
            None => connect(addr).await?,
        };
        match s.try_send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                resp.into_body().collect().await?;
                *sender = Some(s);
                return Ok(status);
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(e.into_error().into()),
            },
        }
    }
    bail!("the request could not be sent on a new connection either")
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::task::spawn_local(async move {
        let _ = driver.await;
    });
    std::future::poll_fn(|cx| sender.poll_ready(cx)).await?;
    Ok(sender)
}

/// Runs the plan on `threads` threads; returns the merged tally and the measured seconds.
fn run(plan: Plan, threads: usize) -> anyhow::Result<(Tally, f64)> {
    let plan = std::sync::Arc::new(plan);
    let started = Instant::now();
    let mut handles = Vec::new();
    for th in 0..threads {
        let plan = plan.clone();
        handles.push(std::thread::spawn(move || -> anyhow::Result<Tally> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let local = tokio::task::LocalSet::new();
            let plan = Rc::new((*plan).clone());
            let tally = Rc::new(RefCell::new(Tally::new()));
            local.block_on(&rt, async {
                let start = Instant::now();
                let end = start + plan.duration;
                let mut tasks = Vec::new();
                for conn in (th..plan.connections).step_by(threads) {
                    tasks.push(tokio::task::spawn_local(connection(
                        plan.clone(),
                        conn,
                        start,
                        end,
                        tally.clone(),
                    )));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
            let tally = tally.replace(Tally::new());
            Ok(tally)
        }));
    }
    let mut all = Tally::new();
    for h in handles {
        let t = h.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        all.add(&t);
    }
    Ok((
        all,
        started
            .elapsed()
            .as_secs_f64()
            .min(plan.duration.as_secs_f64().max(1e-9)),
    ))
}

fn main() -> anyhow::Result<()> {
    use std::io::Write as _;
    let args = Args::parse();
    let env = |k: &str| std::env::var(k).ok();
    let plan = plan(&args, env)?;
    let mode = env("IDEM_MODE").unwrap_or_else(|| "unique".into());
    let body_len = plan.body.len();
    let connections = plan.connections;
    let (t, secs) = run(plan, args.threads.min(args.connections))?;
    let ms = |q: f64| t.latency.value_at_quantile(q) as f64 / 1000.0;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "idemgate-load: {} requests in {secs:.2}s at a target of {:.0} req/s over {connections} connections (open loop; latency from each request's due time)",
        t.completed, args.rate
    )?;
    writeln!(
        out,
        "  latency p50 {:.3} ms  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        t.latency.max() as f64 / 1000.0,
        t.latency.mean() / 1000.0
    )?;
    writeln!(out, "  non-2xx/3xx {}  errors {}", t.non2xx3xx, t.errors)?;
    let label = env("LABEL").unwrap_or_default();
    let workload = env("WORKLOAD").unwrap_or_else(|| mode.clone());
    let round: i64 = env("ROUND").and_then(|r| r.parse().ok()).unwrap_or(0);
    let json = serde_json::json!({
        "label": label,
        "workload": workload,
        "mode": mode,
        "round": round,
        "body_bytes": body_len,
        "requests": t.completed,
        "duration_s": secs,
        "rps": t.completed as f64 / secs,
        "p50_ms": ms(0.5),
        "p90_ms": ms(0.9),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": t.latency.max() as f64 / 1000.0,
        "mean_ms": t.latency.mean() / 1000.0,
        "non2xx3xx": t.non2xx3xx,
        "socket_errors": t.errors,
        "target_rate": args.rate,
        "tool": "idemgate-load",
    });
    writeln!(out, "WRKJSON {json}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A server answering at once, except that it stops answering for `stall` once, after
    /// `before` requests: the kind of pause a closed-loop client hides.
    fn stalling_server(before: u64, stall: Duration) -> (String, Arc<AtomicU64>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let s = s.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |_req| {
                            let n = s.fetch_add(1, Ordering::SeqCst);
                            async move {
                                if n == before {
                                    tokio::time::sleep(stall).await;
                                }
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                                    b"ok",
                                ))))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        (format!("http://{addr}/payments"), seen)
    }

    fn args(url: &str, rate: f64, connections: usize, duration: &str) -> Args {
        Args::parse_from([
            "idemgate-load",
            "-c",
            &connections.to_string(),
            "-d",
            duration,
            "-R",
            &rate.to_string(),
            url,
        ])
    }

    #[test]
    fn a_stall_is_charged_to_every_request_it_held_back() {
        // One connection at 500 req/s for 1 s; the server stalls 200 ms on its 100th request.
        // A closed-loop count would see one slow request among ~400; the schedule held back
        // ~100 requests (200 ms at 500/s), so about a tenth of all requests are late by up to
        // 200 ms, and the 95th percentile is tens of milliseconds.
        let (url, seen) = stalling_server(100, Duration::from_millis(200));
        let a = args(&url, 500.0, 1, "1s");
        let plan = plan(&a, |_| None).unwrap();
        let (t, _) = run(plan, 1).unwrap();
        assert!(seen.load(Ordering::SeqCst) > 150, "the server was reached");
        assert_eq!(t.errors, 0);
        let p95 = t.latency.value_at_quantile(0.95);
        let max = t.latency.max();
        assert!(max >= 190_000, "the stalled request waited ~200 ms: max {max} us");
        assert!(
            p95 >= 20_000,
            "requests due during the stall are charged for it: p95 {p95} us"
        );
        // And the rate was kept (the held-back requests were sent when the server came back).
        assert!(t.completed >= 400, "completed {}", t.completed);
    }

    #[test]
    fn a_server_that_keeps_up_shows_its_own_latency() {
        let (url, _) = stalling_server(u64::MAX, Duration::ZERO);
        let a = args(&url, 2000.0, 4, "500ms");
        let (t, _) = run(plan(&a, |_| None).unwrap(), 1).unwrap();
        assert_eq!(t.errors, 0);
        assert!(t.completed >= 800, "completed {}", t.completed);
        // No stall: the median is the loopback round trip, far below the 2 ms between a
        // connection's requests (a timer-late send is not charged to the server).
        assert!(
            t.latency.value_at_quantile(0.5) < 2_000,
            "p50 {} us",
            t.latency.value_at_quantile(0.5)
        );
    }

    #[test]
    fn requests_are_the_harness_requests() {
        let a = args("http://127.0.0.1:9/payments?x=1", 10.0, 1, "1s");
        let env = |k: &str| match k {
            "IDEM_MODE" => Some("mix".to_string()),
            "IDEM_PREFIX" => Some("p".to_string()),
            "BODY_BYTES" => Some("4096".to_string()),
            "EXTRA_HEADERS" => Some("X-A: 1|Cookie: s=2".to_string()),
            _ => None,
        };
        let p = plan(&a, env).unwrap();
        assert_eq!(p.body.len(), 4096);
        assert_eq!(p.uri, "/payments?x=1");
        let mut counter = 0;
        let keys: Vec<String> = (0..3000).filter_map(|_| key_for(&p, 3, &mut counter)).collect();
        assert_eq!(keys[0], "p-c3-1");
        let repeats = keys.len() as u64 - counter;
        assert!(
            repeats > 200 && repeats < 600,
            "about 20 % of the requests after the first 1280 repeat: {repeats}"
        );
        let req = request(&p, Some("k".into()));
        assert_eq!(req.headers()["x-a"], "1");
        assert_eq!(req.headers()["cookie"], "s=2");
        assert_eq!(req.headers()["idempotency-key"], "k");
        assert_eq!(req.headers()["host"], "127.0.0.1:9");
        assert!(plan(&args("https://h/x", 1.0, 1, "1s"), |_| None).is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5x").is_err());
    }
}
