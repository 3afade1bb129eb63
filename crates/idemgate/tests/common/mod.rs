//! Test support: a counting upstream with failure modes, the real `idemgate` binary, and a client.
//!
//! Everything listens on `127.0.0.1:0`; the gateway prints its address once it is ready, which is
//! the signal tests wait for (bounded), never a sleep.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// A test upstream. Every request to it counts as one execution, except `GET /stats`.
///
/// Query parameters choose its behaviour: `delay_ms=N` (answer after N ms), `status=N`,
/// `bytes=N` (N bytes of a binary pattern, chunked, no Content-Length), `echo=1` (the request
/// body back), `sse=1` (an event stream), `cut=1` (headers, some bytes, then the connection
/// breaks), `hang=1` (never answers within the test).
pub struct Upstream {
    pub addr: SocketAddr,
    pub count: Arc<AtomicU64>,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    /// Woken on every execution: tests wait on it instead of polling the count.
    executed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::start_with(addr, true).await
    }

    /// An upstream that closes every connection after one response (`keep_alive: false`).
    pub async fn without_keep_alive() -> Self {
        Self::start_with("127.0.0.1:0".parse().unwrap(), false).await
    }

    async fn start_with(addr: SocketAddr, keep_alive: bool) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let executed = Arc::new(tokio::sync::Notify::new());
        let c = (count.clone(), executed.clone());
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, c.clone()));
                    let _ = http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            count,
            connections,
            executed,
            task,
        }
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn executions(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until the upstream has executed at least `n` requests (false after 10 s).
    pub async fn wait_for_executions(&self, n: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let woken = self.executed.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.executions() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return self.executions() >= n;
            }
        }
    }
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A `--config` file in a new temporary directory: `upstream` (this upstream), `store = "memory"`,
/// then `rest`. Returns the directory (removed when dropped) and the file's path.
#[allow(dead_code)]
pub fn memory_config(up: &Upstream, rest: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idemgate.toml");
    std::fs::write(
        &path,
        format!("upstream = \"{}\"\nstore = \"memory\"\n{rest}", up.url()),
    )
    .unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

async fn handle(
    req: Request<Incoming>,
    (count, executed): (Arc<AtomicU64>, Arc<tokio::sync::Notify>),
) -> Result<Response<BoxBody<Bytes, BoxErr>>, Infallible> {
    let q = query(&req);
    let full = |status: u16, body: Bytes| {
        let mut r = Response::new(
            Full::new(body)
                .map_err(|e: Infallible| -> BoxErr { match e {} })
                .boxed(),
        );
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    };
    if req.method() == Method::GET && req.uri().path() == "/stats" {
        return Ok(full(200, Bytes::from(count.load(Ordering::SeqCst).to_string())));
    }
    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
    executed.notify_waiters();
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let method = req.method().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if let Some(ms) = q.get("delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if q.contains_key("hang") {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    if q.contains_key("echo") {
        let mut r = full(200, body);
        r.headers_mut()
            .insert("content-type", "application/octet-stream".parse().unwrap());
        return Ok(r);
    }
    if let Some(size) = q.get("bytes").and_then(|v| v.parse::<usize>().ok()) {
        let data = pattern(size);
        let chunks: Vec<Result<Frame<Bytes>, BoxErr>> = data
            .chunks(65536)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let mut r = Response::new(StreamBody::new(futures_stream(chunks)).boxed());
        r.headers_mut()
            .insert("content-type", "application/octet-stream".parse().unwrap());
        r.headers_mut().insert("x-execution", n.into());
        return Ok(r);
    }
    // Three frames, one per line, as a streaming API sends them.
    let lines = |content_type: &'static str, line: &dyn Fn(u64) -> String| {
        let frames: Vec<Result<Frame<Bytes>, BoxErr>> = (0..3).map(|i| Ok(Frame::data(Bytes::from(line(i))))).collect();
        let mut r = Response::new(StreamBody::new(futures_stream(frames)).boxed());
        r.headers_mut().insert("content-type", content_type.parse().unwrap());
        r
    };
    if q.contains_key("sse") {
        return Ok(lines("text/event-stream", &|i| {
            format!("data: event {i} of execution {n}\n\n")
        }));
    }
    if q.contains_key("ndjson") {
        let line = |i| format!("{{\"line\":{i},\"execution\":{n}}}\n");
        return Ok(lines("Application/X-NDJSON; charset=utf-8", &line));
    }
    if q.contains_key("cut") {
        let frames: Vec<Result<Frame<Bytes>, BoxErr>> = vec![
            Ok(Frame::data(Bytes::from_static(b"partial"))),
            Err("upstream died".into()),
        ];
        let mut r = Response::new(StreamBody::new(futures_stream(frames)).boxed());
        r.headers_mut().insert("content-length", "1000".parse().unwrap());
        return Ok(r);
    }
    let status = q.get("status").and_then(|v| v.parse().ok()).unwrap_or(201);
    let json = serde_json::json!({
        "execution": n,
        "method": method,
        "auth": auth,
        "len": body.len(),
    });
    let mut r = full(status, Bytes::from(json.to_string()));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut()
        .insert("location", format!("/things/{n}").parse().unwrap());
    r.headers_mut().insert("x-execution", n.into());
    Ok(r)
}

fn futures_stream(
    frames: Vec<Result<Frame<Bytes>, BoxErr>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxErr>> + Send + Sync + 'static {
    futures_util::stream::iter(frames)
}

/// A running `idemgate serve` process; killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// What the gateway printed after its "listening" line (the demo's banner).
    pub stdout: Arc<Mutex<Option<Vec<String>>>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Starts `idemgate serve --listen 127.0.0.1:0 ARGS…` and waits (bounded) until it listens.
    pub fn start(args: &[&str]) -> Self {
        Self::start_env(args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_idemgate"));
        cmd.arg("serve").arg("--listen").arg("127.0.0.1:0").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd)
    }

    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn idemgate");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        // Lines go to `rx` until the "listening" line is read, then to `printed`; the switch happens
        // under the lock, so no line is lost between the two.
        let handover = Arc::new(Mutex::new(None::<Vec<String>>));
        {
            let handover = handover.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let mut after = handover.lock().unwrap();
                    match after.as_mut() {
                        Some(printed) => printed.push(line),
                        None => {
                            let _ = tx.send(line);
                        }
                    }
                }
            });
        }
        let mut admin = None;
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("admin listening on http://") {
                        admin = Some(rest.trim().parse().unwrap());
                    }
                    if let Some(rest) = line.strip_prefix("idemgate listening on http://") {
                        let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                        {
                            let mut after = handover.lock().unwrap();
                            *after = Some(rx.try_iter().collect());
                        }
                        return Self {
                            child,
                            addr,
                            admin,
                            stderr: lines,
                            stdout: handover,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("idemgate did not start; stderr: {:?}", lines.lock().unwrap());
                }
            }
        }
    }

    /// Waits (bounded) for the process to exit on its own, e.g. after SIGTERM; blocks in `wait`
    /// rather than polling. If it has not exited within `within` it is killed and `None` returned.
    pub async fn exit_within(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let waiting = tokio::task::spawn_blocking(move || {
            let status = self.child.wait();
            (self, status)
        });
        tokio::pin!(waiting);
        let (exited, (_gw, status)) = match tokio::time::timeout(within, &mut waiting).await {
            Ok(done) => (true, done.unwrap()),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                (false, waiting.await.unwrap())
            }
        };
        exited.then(|| status.unwrap())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin.expect("started with --admin-listen"), path)
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// What the gateway printed to stdout after its "listening" line.
    pub fn printed(&self) -> String {
        self.stdout.lock().unwrap().as_deref().unwrap_or_default().join("\n")
    }
}

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }

    /// Asserts an RFC 9457 problem with this status and `type` slug.
    pub fn assert_problem(&self, status: u16, slug: &str) {
        assert_eq!(self.status, status, "body: {:?}", self.body);
        assert_eq!(self.header("content-type"), Some("application/problem+json"));
        let v = self.json();
        assert_eq!(v["type"], format!("https://idemgate.dev/problems/{slug}"), "{v}");
        assert_eq!(v["status"], status);
        assert!(v["title"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
        assert!(v["detail"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    }
}

/// A small HTTP/1.1 client.
#[derive(Clone)]
pub struct Http {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(512)
                .build_http(),
        }
    }
}

impl Http {
    pub async fn send(&self, method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        self.try_send(method, url, headers, body).await.expect("request failed")
    }

    pub async fn try_send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, BoxErr> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into()))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req)).await??;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
            .await??
            .to_bytes();
        Ok(Reply { status, headers, body })
    }

    /// POST with an idempotency key and a JSON content type.
    pub async fn post(&self, url: &str, key: &str, body: &str) -> Reply {
        self.send(
            "POST",
            url,
            &[("idempotency-key", key), ("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }
}

/// Polls `f` every 20 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
