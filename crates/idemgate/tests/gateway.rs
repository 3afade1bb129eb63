//! The gateway's contract, driven through the real binary over real sockets: one test per rule of
//! the semantics in docs/DESIGN.md, each against an upstream that counts executions.

mod common;

use std::time::Duration;

use common::{eventually, memory_config, Gateway, Http, Upstream};

fn memory(up: &Upstream) -> Vec<String> {
    vec!["--upstream".into(), up.url(), "--store".into(), "memory".into()]
}

fn args<'a>(base: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter().map(String::as_str).chain(extra.iter().copied()).collect()
}

#[tokio::test]
async fn rule1_2_executes_once_and_replays_status_headers_and_body() {
    let up = Upstream::start().await;
    let base = memory(&up);
    let gw = Gateway::start(&args(&base, &[]));
    let http = Http::default();
    let first = http.post(&gw.url("/payments?x=1"), "k-1", r#"{"amount":1}"#).await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed());
    assert_eq!(first.header("location"), Some("/things/1"));
    for _ in 0..3 {
        let again = http.post(&gw.url("/payments?x=1"), "k-1", r#"{"amount":1}"#).await;
        assert_eq!(again.status, 201, "the original status, not 200");
        assert!(again.replayed());
        assert_eq!(again.body, first.body);
        for name in ["location", "content-type", "x-execution", "content-length"] {
            assert_eq!(again.header(name), first.header(name), "{name}");
        }
    }
    assert_eq!(up.executions(), 1);
    // The key given as an RFC 8941 string is the same key.
    let quoted = http.post(&gw.url("/payments?x=1"), "\"k-1\"", r#"{"amount":1}"#).await;
    assert!(quoted.replayed());
    assert_eq!(up.executions(), 1);
}

#[tokio::test]
async fn rule3_same_key_other_request_is_422_and_not_executed() {
    let up = Upstream::start().await;
    let base = memory(&up);
    let gw = Gateway::start(&args(&base, &[]));
    let http = Http::default();
    assert_eq!(http.post(&gw.url("/pay?a=1"), "k", r#"{"amount":1}"#).await.status, 201);
    http.post(&gw.url("/pay?a=1"), "k", r#"{"amount":2}"#)
        .await
        .assert_problem(422, "key-reused");
    http.post(&gw.url("/pay?a=2"), "k", r#"{"amount":1}"#)
        .await
        .assert_problem(422, "key-reused");
    http.post(&gw.url("/other?a=1"), "k", r#"{"amount":1}"#)
        .await
        .assert_problem(422, "key-reused");
    http.send(
        "PATCH",
        &gw.url("/pay?a=1"),
        &[("idempotency-key", "k"), ("content-type", "application/json")],
        r#"{"amount":1}"#,
    )
    .await
    .assert_problem(422, "key-reused");
    http.send(
        "POST",
        &gw.url("/pay?a=1"),
        &[("idempotency-key", "k"), ("content-type", "text/plain")],
        r#"{"amount":1}"#,
    )
    .await
    .assert_problem(422, "key-reused");
    // Key order and whitespace matter by default...
    http.post(&gw.url("/pay?a=1"), "k", r#"{ "amount": 1 }"#)
        .await
        .assert_problem(422, "key-reused");
    assert_eq!(up.executions(), 1);
}

#[tokio::test]
async fn rule3_canonical_json_ignores_key_order_and_whitespace() {
    let up = Upstream::start().await;
    let base = memory(&up);
    let gw = Gateway::start(&args(&base, &["--canonical-json"]));
    let http = Http::default();
    assert_eq!(http.post(&gw.url("/pay"), "k", r#"{"a":1,"b":2}"#).await.status, 201);
    assert!(http
        .post(&gw.url("/pay"), "k", "{ \"b\": 2,\n \"a\": 1 }")
        .await
        .replayed());
    http.post(&gw.url("/pay"), "k", r#"{"a":1,"b":3}"#)
        .await
        .assert_problem(422, "key-reused");
    assert_eq!(up.executions(), 1);
}

#[tokio::test]
async fn rule4_repeat_in_flight_is_409_then_replayed() {
    let up = Upstream::start().await;
    let base = memory(&up);
    let gw = Gateway::start(&args(&base, &[]));
    let http = Http::default();
    let url = gw.url("/pay?delay_ms=1500");
    let first = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { http.post(&url, "slow", "{}").await }
    });
    // Wait until the first request reached the upstream (a signal, not a guess).
    assert!(up.wait_for_executions(1).await);
    let dup = http.post(&url, "slow", "{}").await;
    dup.assert_problem(409, "request-in-progress");
    assert_eq!(dup.header("retry-after"), Some("1"));
    // A different body while the first is in flight: 422 takes precedence over 409.
    http.post(&url, "slow", r#"{"x":1}"#)
        .await
        .assert_problem(422, "key-reused");
    assert_eq!(first.await.unwrap().status, 201);
    assert!(http.post(&url, "slow", "{}").await.replayed());
    assert_eq!(up.executions(), 1);
}

#[tokio::test]
async fn rule4_two_hundred_concurrent_duplicates_execute_once() {
    let up = Upstream::start().await;
    let base = memory(&up);
    let gw = Gateway::start(&args(&base, &[]));
    let http = Http::default();
    let url = gw.url("/pay?delay_ms=300");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (http, url, barrier) = (http.clone(), url.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                http.post(&url, "same-key", r#"{"n":1}"#).await
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        let r = t.await.unwrap();
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    assert_eq!(up.executions(), 1, "{statuses:?}");
    assert_eq!(
        statuses.keys().copied().filter(|s| *s != 201 && *s != 409).count(),
        0,
        "{statuses:?}"
    );
    assert!(statuses.get(&201).copied().unwrap_or(0) >= 1);
    assert!(http.post(&url, "same-key", r#"{"n":1}"#).await.replayed());
}

#[tokio::test]
async fn rule4_wait_in_flight_replays_instead_of_409() {
    let up = Upstream::start().await;
    let base = memory(&up);
    let gw = Gateway::start(&args(&base, &["--wait-in-flight", "5s"]));
    let http = Http::default();
    let url = gw.url("/pay?delay_ms=300");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { http.post(&url, "w", "{}").await })
        })
        .collect();
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 201, "{:?}", r.body);
        bodies.push(r.body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every waiter got the original response"
    );
    assert_eq!(up.executions(), 1);
}

#[tokio::test]
async fn rule5_key_syntax_multiple_keys_and_missing_keys() {
    let up = Upstream::start().await;
    let base = memory(&up);
    let gw = Gateway::start(&args(&base, &[]));
    let http = Http::default();
    let long = "k".repeat(256);
    for bad in ["a b", "\"unterminated", "", long.as_str(), "\"\""] {
        http.post(&gw.url("/pay"), bad, "{}")
            .await
            .assert_problem(400, "invalid-key");
    }
    let max = "k".repeat(255);
    assert_eq!(http.post(&gw.url("/pay"), &max, "{}").await.status, 201);
    http.send(
        "POST",
        &gw.url("/pay"),
        &[("idempotency-key", "a"), ("idempotency-key", "b")],
        "{}",
    )
    .await
    .assert_problem(400, "multiple-keys");
    let before = up.executions();
    // No key: forwarded untouched, every time.
    for _ in 0..2 {
        let r = http.send("POST", &gw.url("/pay"), &[], "{}").await;
        assert_eq!(r.status, 201);
        assert!(!r.replayed());
    }
    assert_eq!(up.executions(), before + 2);

    let strict = Gateway::start(&args(&base, &["--require-key"]));
    http.send("POST", &strict.url("/pay"), &[], "{}")
        .await
        .assert_problem(400, "missing-key");
    assert_eq!(up.executions(), before + 2);
}

#[tokio::test]
async fn rule6_other_methods_pass_through_and_are_never_stored() {
    let up = Upstream::start().await;
    let base = memory(&up);
    let gw = Gateway::start(&args(&base, &[]));
    let http = Http::default();
    for (i, method) in ["GET", "PUT", "DELETE", "OPTIONS", "GET"].iter().enumerate() {
        let r = http
            .send(method, &gw.url("/pay"), &[("idempotency-key", "k")], "")
            .await;
        assert_eq!(r.status, 201);
        assert!(!r.replayed());
        assert_eq!(up.executions(), i as u64 + 1);
    }
    let head = http
        .send("HEAD", &gw.url("/pay"), &[("idempotency-key", "k")], "")
        .await;
    assert_eq!(head.status, 201);
    assert_eq!(up.executions(), 6);
    // The key was never stored: a POST with it executes.
    assert!(!http.post(&gw.url("/pay"), "k", "{}").await.replayed());
    assert_eq!(up.executions(), 7);
}

#[tokio::test]
async fn rule6_methods_and_routes_match_as_an_upstream_reads_them() {
    let up = Upstream::start().await;
    // Kebab-case names (as the flags spell them) work in the file too.
    let (_dir, cfg) = memory_config(&up, "[[route]]\nprefix = \"/payments\"\nrequire-key = true\n");
    // `--methods post,put`: lower case names the same methods as upper case.
    let gw = Gateway::start(&["--config", &cfg, "--methods", "post,put"]);
    let http = Http::default();
    for path in ["/payments", "//payments", "/%70ayments/1", "/x/..//payments"] {
        http.send("POST", &gw.url(path), &[], "{}")
            .await
            .assert_problem(400, "missing-key");
    }
    assert_eq!(up.executions(), 0, "no path form dodges the route's require-key");
    for (method, n) in [("PUT", 1), ("put", 2)] {
        let key = [("idempotency-key", method)];
        let first = http.send(method, &gw.url(&format!("/other/{n}")), &key, "{}").await;
        assert!(!first.replayed());
        let again = http.send(method, &gw.url(&format!("/other/{n}")), &key, "{}").await;
        assert!(again.replayed(), "{method} is protected");
        assert_eq!(up.executions(), n);
    }
}

#[tokio::test]
async fn rule7_keys_are_scoped_to_the_caller() {
    let up = Upstream::start().await;
    let base = memory(&up);
    let gw = Gateway::start(&args(&base, &[]));
    let http = Http::default();
    let send = |auth: &'static str| {
        let (http, url) = (http.clone(), gw.url("/pay"));
        async move {
            http.send(
                "POST",
                &url,
                &[("idempotency-key", "shared-key"), ("authorization", auth)],
                "{}",
            )
            .await
        }
    };
    let alice = send("Bearer alice").await;
    let bob = send("Bearer bob").await;
    assert_eq!(up.executions(), 2, "the same key under two callers is two keys");
    assert_eq!(alice.json()["auth"], "Bearer alice");
    assert_eq!(bob.json()["auth"], "Bearer bob", "bob never receives alice's response");
    let alice2 = send("Bearer alice").await;
    assert!(alice2.replayed());
    assert_eq!(alice2.body, alice.body);
    let bob2 = send("Bearer bob").await;
    assert_eq!(bob2.body, bob.body);
    // Anonymous callers (no scope header) are their own scope.
    let anon = http.post(&gw.url("/pay"), "shared-key", "{}").await;
    assert!(!anon.replayed());
    assert_eq!(up.executions(), 3);
    // The raw Authorization value never reaches the logs.
    assert!(!gw.logs().contains("Bearer alice"));
    assert!(!gw.logs().contains("shared-key"));
}

#[tokio::test]
async fn rule8_expired_keys_execute_again_and_are_purged() {
    let up = Upstream::start().await;
    let base = memory(&up);
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "an-admin-token-of-some-length").unwrap();
    let token_path = token.path().to_str().unwrap();
    let gw = Gateway::start(&args(
        &base,
        &[
            "--ttl",
            "1s",
            "--purge-interval",
            "100ms",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            token_path,
        ],
    ));
    let http = Http::default();
    assert_eq!(http.post(&gw.url("/pay"), "ttl", "{}").await.status, 201);
    assert!(http.post(&gw.url("/pay"), "ttl", "{}").await.replayed());
    let auth = [("authorization", "Bearer an-admin-token-of-some-length")];
    assert_eq!(
        http.send("GET", &gw.admin_url("/keys/ttl"), &auth, "").await.status,
        200
    );
    // The background purge removes it once the TTL passed.
    let purged = eventually(Duration::from_secs(5), || async {
        http.send("GET", &gw.admin_url("/keys/ttl"), &auth, "").await.status == 404
    })
    .await;
    assert!(purged, "record was not purged");
    let again = http.post(&gw.url("/pay"), "ttl", "{}").await;
    assert!(!again.replayed());
    assert_eq!(up.executions(), 2);
}

/// Every serving thread has its own listener and upstream pool but all share one store: a key
/// sent concurrently over many connections (spread across the threads by the kernel) executes
/// once, whatever the thread count; `--threads 1` serves from the shared runtime instead.
#[tokio::test]
async fn serving_threads_share_one_store() {
    for threads in ["1", "4"] {
        let up = Upstream::start().await;
        let base = memory(&up);
        let gw = Gateway::start(&args(&base, &["--threads", threads]));
        let url = gw.url("/pay?delay_ms=100");
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                // A client each, so every request comes on its own connection.
                let url = url.clone();
                tokio::spawn(async move { Http::default().post(&url, &format!("k{}", i % 4), "{}").await })
            })
            .collect();
        for t in tasks {
            let status = t.await.unwrap().status;
            assert!(status == 201 || status == 409, "threads={threads}: {status}");
        }
        assert_eq!(up.executions(), 4, "threads={threads}");
        for i in 0..4 {
            let again = Http::default().post(&url, &format!("k{i}"), "{}").await;
            assert!(again.replayed(), "threads={threads}");
        }
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idemgate"))
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--store",
            "memory",
            "--threads",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("threads"));
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = Upstream::start().await;
    let base = memory(&up);
    let gw = Gateway::start(&args(&base, &["--threads", "1"]));
    let http = Http::default();
    for n in 0..20 {
        let key = format!("reuse-{n}");
        assert_eq!(http.post(&gw.url("/payments"), &key, "{}").await.status, 201);
        assert!(http.post(&gw.url("/payments"), &key, "{}").await.replayed());
        // Unprotected, streamed through, also on the pooled connection.
        assert_eq!(
            http.send("GET", &gw.url("/payments?bytes=100000"), &[], "")
                .await
                .body
                .len(),
            100_000
        );
    }
    assert_eq!(up.executions(), 40);
    assert_eq!(
        up.connections(),
        1,
        "one client at a time needs one upstream connection"
    );
}

#[tokio::test]
async fn an_upstream_that_closes_its_connections_gets_a_new_one_for_each_request() {
    let up = Upstream::without_keep_alive().await;
    let base = memory(&up);
    let gw = Gateway::start(&args(&base, &["--threads", "1"]));
    let http = Http::default();
    for n in 0..10 {
        let reply = http.post(&gw.url("/payments"), &format!("close-{n}"), "{}").await;
        assert_eq!(reply.status, 201, "request {n}: {:?}", reply.body);
        assert_eq!(http.send("GET", &gw.url("/payments"), &[], "").await.status, 201);
    }
    assert_eq!(up.executions(), 20, "each executed once: none lost, none repeated");
    assert_eq!(up.connections(), 20);
}

/// Reads one HTTP/1.1 response with a `content-length` from `s` (bounded); returns its status.
async fn read_response(s: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed before a whole response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return head[9..12].parse().unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response within 10 s")
}

/// Waits (bounded) for the gateway to close `s`; how long it took.
async fn closed_after(s: &mut tokio::net::TcpStream) -> Duration {
    use tokio::io::AsyncReadExt;
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed within 10 s")
        .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "no bytes, just the close: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    start.elapsed()
}

#[tokio::test]
async fn header_timeout_closes_slow_and_idle_connections_but_not_slow_requests() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    let base = memory(&up);
    let gw = Gateway::start(&args(&base, &["--header-timeout", "400ms"]));

    // A head that never ends (slowloris): closed after the timeout, not before.
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"POST /payments HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let took = closed_after(&mut slow).await;
    assert!(took >= Duration::from_millis(300), "closed after {took:?}");

    // A request that takes longer than the timeout is not cut, its connection stays usable, and
    // once idle it is closed too.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = |key: &str, query: &str| {
        format!("POST /payments{query} HTTP/1.1\r\nhost: x\r\nidempotency-key: {key}\r\ncontent-length: 2\r\n\r\n{{}}")
    };
    s.write_all(req("slow-1", "?delay_ms=1200").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s).await, 201);
    s.write_all(req("slow-2", "").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s).await, 201);
    let took = closed_after(&mut s).await;
    assert!(
        took >= Duration::from_millis(300),
        "idle connection closed after {took:?}"
    );
    assert_eq!(up.executions(), 2);
}

/// The status line of the answer to one raw request on a fresh connection.
async fn status_line(gw: std::net::SocketAddr, path: &str, key: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nidempotency-key: {key}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split("\r\n").next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn rule2_the_first_answer_and_its_replays_have_one_status_line() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream with reason phrases of its own, one request per connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = if String::from_utf8_lossy(&head).contains("/weird") {
                    "599 Weird"
                } else {
                    "200 Okay"
                };
                let resp = format!("HTTP/1.1 {line}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let gw = Gateway::start(&["--upstream", &format!("http://{up}"), "--store", "memory"]);
    for (path, want) in [("/okay", "HTTP/1.1 200 OK"), ("/weird", "HTTP/1.1 599 ")] {
        assert_eq!(status_line(gw.addr, path, path).await, want, "first answer to {path}");
        assert_eq!(status_line(gw.addr, path, path).await, want, "replay of {path}");
    }
}
