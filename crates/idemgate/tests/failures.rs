//! Rules 9 and 10: what upstream failures and large or streamed bodies do to a key.

mod common;

use std::time::Duration;

use common::{memory_config, pattern, Gateway, Http, Upstream};

fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn rule9_connection_refused_is_502_and_releases_the_key() {
    let addr = free_port();
    let upstream = format!("http://{addr}");
    let gw = Gateway::start(&["--upstream", &upstream, "--store", "memory"]);
    let http = Http::default();
    http.post(&gw.url("/pay"), "k", "{}")
        .await
        .assert_problem(502, "upstream-unavailable");
    // Unprotected requests get a problem document too.
    http.send("GET", &gw.url("/pay"), &[], "")
        .await
        .assert_problem(502, "upstream-unavailable");
    // Nothing was executed, so the key is free: once the upstream is up, the retry executes.
    let up = Upstream::start_on(addr).await;
    let r = http.post(&gw.url("/pay"), "k", "{}").await;
    assert_eq!(r.status, 201);
    assert!(!r.replayed());
    assert_eq!(up.executions(), 1);
}

#[tokio::test]
async fn rule9_429_and_503_release_the_key_other_statuses_are_stored() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--upstream", &up.url(), "--store", "memory"]);
    let http = Http::default();
    for status in [429, 503] {
        let url = gw.url(&format!("/pay?status={status}"));
        let key = format!("release-{status}");
        for n in 1..=2 {
            let r = http.post(&url, &key, "{}").await;
            assert_eq!(r.status, status);
            assert!(!r.replayed(), "{status} is not stored (attempt {n})");
        }
    }
    assert_eq!(up.executions(), 4);
    for status in [500, 502, 400, 200] {
        let url = gw.url(&format!("/pay?status={status}"));
        let key = format!("store-{status}");
        let first = http.post(&url, &key, "{}").await;
        let again = http.post(&url, &key, "{}").await;
        assert_eq!(again.status, status);
        assert!(again.replayed(), "{status} is stored and replayed");
        assert_eq!(again.body, first.body);
    }
    assert_eq!(up.executions(), 8);
}

#[tokio::test]
async fn rule9_release_statuses_are_a_per_route_setting() {
    let up = Upstream::start().await;
    let (_dir, cfg) = memory_config(
        &up,
        "[[route]]\nprefix = \"/flaky\"\nrelease_statuses = [500, 502, 503, 429]\n",
    );
    let gw = Gateway::start(&["--config", &cfg]);
    let http = Http::default();
    for _ in 0..2 {
        assert!(!http.post(&gw.url("/flaky?status=500"), "a", "{}").await.replayed());
    }
    assert_eq!(up.executions(), 2, "500 released on /flaky");
    http.post(&gw.url("/stable?status=500"), "a", "{}").await;
    assert!(
        http.post(&gw.url("/stable?status=500"), "a", "{}").await.replayed(),
        "500 stored elsewhere"
    );
    assert_eq!(up.executions(), 3);
}

#[tokio::test]
async fn rule9_timeout_is_504_and_the_key_stays_locked_until_the_lock_timeout() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[
        "--upstream",
        &up.url(),
        "--store",
        "memory",
        "--upstream-timeout",
        "300ms",
        "--lock-timeout",
        "3s",
        "--log-format",
        "json",
    ]);
    let http = Http::default();
    let url = gw.url("/pay?hang=1");
    let r = http.post(&url, "t", "{}").await;
    r.assert_problem(504, "upstream-timeout");
    assert!(r.header("retry-after").is_some());
    // The outcome is unknown: a retry is refused while the lock holds…
    http.post(&url, "t", "{}")
        .await
        .assert_problem(409, "request-in-progress");
    assert_eq!(up.executions(), 1);
    // …and executes again once the lock has expired.
    let retried = common::eventually(Duration::from_secs(15), || async {
        http.post(&url, "t", "{}").await.status == 504
    })
    .await;
    assert!(retried);
    assert_eq!(up.executions(), 2);
    // A request without a key times out the same way, and its access-log line says 504 as well.
    http.send("POST", &url, &[], "{}")
        .await
        .assert_problem(504, "upstream-timeout");
    let logged = common::eventually(Duration::from_secs(5), || async {
        gw.logs()
            .lines()
            .any(|l| l.contains("\"outcome\":\"bypassed\"") && l.contains("\"status\":504"))
    })
    .await;
    assert!(logged, "{}", gw.logs());
}

#[tokio::test]
async fn rule9_response_cut_mid_body_is_502_and_keeps_the_key_locked() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--upstream", &up.url(), "--store", "memory"]);
    let http = Http::default();
    let url = gw.url("/pay?cut=1");
    http.post(&url, "c", "{}").await.assert_problem(502, "upstream-failed");
    http.post(&url, "c", "{}")
        .await
        .assert_problem(409, "request-in-progress");
    assert_eq!(up.executions(), 1);
}

/// Sends a raw HTTP/1.1 request head (and optional body bytes) and returns the status line and body.
async fn raw(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.lines().next().unwrap_or("").to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test]
async fn rule10_bodies_over_the_limit_are_413() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--upstream", &up.url(), "--store", "memory", "--max-body", "1KiB"]);
    let http = Http::default();
    // Declared too large: refused from the headers alone, before the body is read.
    let head =
        "POST /pay HTTP/1.1\r\nhost: x\r\nidempotency-key: big\r\ncontent-length: 5000000\r\nconnection: close\r\n\r\n";
    let (status, body) = raw(gw.addr, head, b"").await;
    assert!(status.contains(" 413 "), "{status}");
    assert!(body.contains("payload-too-large"), "{body}");
    // A small body over the limit, with a length.
    let r = http
        .send(
            "POST",
            &gw.url("/pay"),
            &[("idempotency-key", "big")],
            common::pattern(2048),
        )
        .await;
    r.assert_problem(413, "payload-too-large");
    // Chunked, no length: counted while read.
    let head = "POST /pay HTTP/1.1\r\nhost: x\r\nidempotency-key: chunked\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let chunk = format!(
        "800\r\n{}\r\n800\r\n{}\r\n0\r\n\r\n",
        "a".repeat(2048),
        "b".repeat(2048)
    );
    let (status, body) = raw(gw.addr, head, chunk.as_bytes()).await;
    assert!(status.contains(" 413 "), "{status}");
    assert!(body.contains("payload-too-large"), "{body}");
    // At the limit: accepted.
    let r = http
        .send(
            "POST",
            &gw.url("/pay"),
            &[("idempotency-key", "fits")],
            common::pattern(1024),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(up.executions(), 1);
}

#[tokio::test]
async fn rule10_binary_bodies_replay_byte_exact() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--upstream", &up.url(), "--store", "memory"]);
    let http = Http::default();
    // A 3 MiB binary body echoed back: stored and replayed byte for byte.
    let body = pattern(3 * 1024 * 1024);
    let first = http
        .send(
            "POST",
            &gw.url("/pay?echo=1"),
            &[("idempotency-key", "bin")],
            body.clone(),
        )
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(&first.body[..], &body[..]);
    let again = http
        .send(
            "POST",
            &gw.url("/pay?echo=1"),
            &[("idempotency-key", "bin")],
            body.clone(),
        )
        .await;
    assert!(again.replayed());
    assert_eq!(&again.body[..], &body[..]);
    assert_eq!(again.header("content-type"), Some("application/octet-stream"));
    assert_eq!(up.executions(), 1);
}

#[tokio::test]
async fn rule10_chunked_responses_replay_byte_exact_and_oversized_ones_pass_through() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[
        "--upstream",
        &up.url(),
        "--store",
        "memory",
        "--max-response-body",
        "6MiB",
    ]);
    let http = Http::default();
    let url = gw.url("/pay?bytes=5000000");
    let first = http.post(&url, "chunked", "{}").await;
    assert_eq!(first.body.len(), 5_000_000);
    assert_eq!(&first.body[..], &pattern(5_000_000)[..]);
    let again = http.post(&url, "chunked", "{}").await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(up.executions(), 1);
    // Over the cap: the client still gets every byte, nothing is stored, the key is released.
    let url = gw.url("/pay?bytes=7000000");
    for n in 0..2 {
        let r = http.post(&url, "too-big", "{}").await;
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], &pattern(7_000_000)[..], "attempt {n}");
        assert!(!r.replayed());
    }
    assert_eq!(up.executions(), 3);
}

#[tokio::test]
async fn rule10_event_streams_pass_through_and_are_not_stored() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--upstream", &up.url(), "--store", "memory"]);
    let http = Http::default();
    let url = gw.url("/events?sse=1");
    let first = http.post(&url, "sse", "{}").await;
    assert_eq!(first.header("content-type"), Some("text/event-stream"));
    assert!(String::from_utf8_lossy(&first.body).contains("event 2 of execution 1"));
    let second = http.post(&url, "sse", "{}").await;
    assert!(!second.replayed());
    assert!(String::from_utf8_lossy(&second.body).contains("of execution 2"));
}

#[tokio::test]
async fn stream_content_types_choose_what_is_streamed_through() {
    let up = Upstream::start().await;
    let http = Http::default();
    // By default an NDJSON response is stored and replayed like any other.
    let gw = Gateway::start(&["--upstream", &up.url(), "--store", "memory"]);
    let first = http.post(&gw.url("/lines?ndjson=1"), "nd-1", "{}").await;
    assert!(String::from_utf8_lossy(&first.body).contains("\"line\":2,\"execution\":1"));
    let again = http.post(&gw.url("/lines?ndjson=1"), "nd-1", "{}").await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(up.executions(), 1);
    // Listed (its header says `Application/X-NDJSON; charset=utf-8`): streamed, not stored, the
    // key released; event streams are streamed only if listed too.
    let listed = Gateway::start(&[
        "--upstream",
        &up.url(),
        "--store",
        "memory",
        "--stream-content-types",
        "application/x-ndjson",
    ]);
    let streamed = http.post(&listed.url("/lines?ndjson=1"), "nd-2", "{}").await;
    assert!(String::from_utf8_lossy(&streamed.body).contains("\"execution\":2"));
    let retried = http.post(&listed.url("/lines?ndjson=1"), "nd-2", "{}").await;
    assert!(!retried.replayed());
    assert!(String::from_utf8_lossy(&retried.body).contains("\"execution\":3"));
    let sse = http.post(&listed.url("/events?sse=1"), "sse-1", "{}").await;
    assert!(http.post(&listed.url("/events?sse=1"), "sse-1", "{}").await.replayed());
    assert!(String::from_utf8_lossy(&sse.body).contains("of execution 4"));
    assert_eq!(up.executions(), 4);
}

#[tokio::test]
async fn a_client_that_hangs_up_does_not_cancel_its_request() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--upstream", &up.url(), "--store", "memory"]);
    let http = Http::default();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = "POST /pay?delay_ms=400 HTTP/1.1\r\nhost: x\r\nidempotency-key: gone\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    s.write_all(head.as_bytes()).await.unwrap();
    assert!(up.wait_for_executions(1).await);
    drop(s); // the client times out and disconnects while the upstream is still working
             // The retry sees the request in flight, then its recorded outcome: never a second execution.
    let replayed = common::eventually(Duration::from_secs(5), || async {
        let r = http.post(&gw.url("/pay?delay_ms=400"), "gone", "{}").await;
        assert!(r.status == 409 || r.replayed(), "{r:?}");
        r.replayed()
    })
    .await;
    assert!(replayed);
    assert_eq!(up.executions(), 1);
}

/// SIGTERM while a request whose client hung up is still running: the drain waits for it, so its
/// outcome is recorded (and replayed after a restart) instead of its key staying locked until
/// the lease ends.
#[tokio::test]
async fn sigterm_waits_for_a_request_whose_client_hung_up() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--upstream", &up.url(), "--store", dir.path().to_str().unwrap()];
    let gw = Gateway::start(&args);
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = "POST /pay?delay_ms=700 HTTP/1.1\r\nhost: x\r\nidempotency-key: term\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    s.write_all(head.as_bytes()).await.unwrap();
    assert!(up.wait_for_executions(1).await);
    drop(s);
    let pid = gw.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = gw.exit_within(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exited cleanly within 10 s: {status:?}"
    );
    let gw = Gateway::start(&args);
    let r = Http::default().post(&gw.url("/pay?delay_ms=700"), "term", "{}").await;
    assert!(r.replayed(), "the outcome was recorded before the exit: {r:?}");
    assert_eq!(up.executions(), 1);
}
