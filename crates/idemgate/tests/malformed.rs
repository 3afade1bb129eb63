//! Requests that hyper cannot parse get problem documents, over real sockets to the real binary.
//! Nothing of them reaches the upstream, and responses around them pass through byte for byte.

mod common;

use std::time::Duration;

use common::{Gateway, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes `bytes` on a new connection and reads until the gateway closes it (bounded).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the gateway closed the connection within 10 s");
    String::from_utf8_lossy(&out).into_owned()
}

/// The problem document `type` slug of a response that must be one, after checking its headers.
fn problem_slug(response: &str, status: u16) -> String {
    let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
    assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{response}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\ncontent-type: application/problem+json"), "{head}");
    assert!(lower.contains("\r\nconnection: close"), "{head}");
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON problem document");
    assert_eq!(v["status"], status, "{body}");
    v["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("https://idemgate.dev/problems/"))
        .expect("a type under the problem base")
        .to_string()
}

#[tokio::test]
async fn unparsable_requests_get_problem_documents_and_reach_nothing() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--upstream", &up.url(), "--store", "memory"]);
    let many_headers: String = (0..200).map(|i| format!("x-h{i}: a\r\n")).collect();
    let long_uri = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    let cases: [(&str, Vec<u8>, u16, &str); 6] = [
        (
            "garbage",
            b"\x00\x01 nonsense\r\n\r\n".to_vec(),
            400,
            "malformed-request",
        ),
        (
            "a header without a colon",
            b"POST /pay HTTP/1.1\r\nhost x\r\nidempotency-key: m1\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
            400,
            "malformed-request",
        ),
        (
            "an invalid Content-Length",
            b"POST /pay HTTP/1.1\r\nhost: x\r\nidempotency-key: m2\r\ncontent-length: abc\r\n\r\n{}".to_vec(),
            400,
            "malformed-request",
        ),
        (
            "two different Content-Lengths",
            b"POST /pay HTTP/1.1\r\nhost: x\r\nidempotency-key: m3\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}"
                .to_vec(),
            400,
            "malformed-request",
        ),
        (
            "more headers than the limit",
            format!("GET /pay HTTP/1.1\r\nhost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
            "headers-too-large",
        ),
        ("a URI over the limit", long_uri.into_bytes(), 414, "uri-too-long"),
    ];
    for (what, bytes, status, slug) in cases {
        let response = exchange(gw.addr, &bytes).await;
        assert_eq!(problem_slug(&response, status), slug, "{what}: {response}");
    }
    assert_eq!(up.executions(), 0, "nothing unparsable was forwarded");
    assert!(!gw.logs().contains("panicked"), "{}", gw.logs());
}

#[tokio::test]
async fn responses_around_an_unparsable_request_pass_through_unchanged() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--upstream", &up.url(), "--store", "memory"]);
    // A response body made of exactly what hyper answers a parse error with, an upstream's own
    // 400, then garbage, pipelined on one connection: the first two arrive intact, the garbage
    // gets a problem document.
    let lookalike = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
    let request = format!(
        "POST /pay?echo=1 HTTP/1.1\r\nhost: x\r\nidempotency-key: e1\r\ncontent-length: {}\r\n\r\n{lookalike}\
         POST /pay?status=400 HTTP/1.1\r\nhost: x\r\nidempotency-key: e2\r\ncontent-length: 2\r\n\r\n{{}}\
         NOT HTTP\r\n\r\n",
        lookalike.len()
    );
    let response = exchange(gw.addr, request.as_bytes()).await;
    let (first_head, rest) = response.split_once("\r\n\r\n").unwrap();
    assert!(first_head.starts_with("HTTP/1.1 200 "), "{response}");
    let rest = rest
        .strip_prefix(lookalike)
        .unwrap_or_else(|| panic!("the echoed body, intact: {response}"));
    let (second_head, rest) = rest.split_once("\r\n\r\n").unwrap();
    assert!(second_head.starts_with("HTTP/1.1 400 "), "{response}");
    assert!(
        second_head
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "the upstream's 400: {second_head}"
    );
    let third = rest
        .find("HTTP/1.1 ")
        .map(|at| &rest[at..])
        .unwrap_or_else(|| panic!("a third response: {response}"));
    assert_eq!(problem_slug(third, 400), "malformed-request");
    assert_eq!(up.executions(), 2);

    // Both keyed requests were recorded as the upstream answered them.
    let replay = exchange(
        gw.addr,
        request
            .split("NOT HTTP")
            .next()
            .unwrap()
            .replace("e2\r\n", "e2\r\nconnection: close\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(replay.matches("idempotent-replayed: true").count(), 2, "{replay}");
    assert!(replay.contains(lookalike), "{replay}");
    assert_eq!(up.executions(), 2);
}

#[tokio::test]
async fn the_admin_listener_answers_unparsable_requests_with_problem_documents_too() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[
        "--upstream",
        &up.url(),
        "--store",
        "memory",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = gw.admin.expect("the admin listener's address");
    let response = exchange(admin, b"GET /healthz HTTP/1.1\r\nhost x\r\n\r\n").await;
    assert_eq!(problem_slug(&response, 400), "malformed-request");
    // A good request before a bad one on the same connection is answered as usual.
    let response = exchange(admin, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nNOT HTTP\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    let second = &response[response[1..]
        .find("HTTP/1.1 ")
        .map(|at| at + 1)
        .expect("a second response")..];
    assert_eq!(problem_slug(second, 400), "malformed-request");

    // Unparsable requests count as invalid: one on the gateway's listener, two on the admin's.
    exchange(gw.addr, b"NOT HTTP\r\n\r\n").await;
    let metrics = exchange(admin, b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    let invalid = metrics
        .lines()
        .find(|l| l.starts_with("idemgate_requests_total{outcome=\"invalid\"}"))
        .unwrap_or_else(|| panic!("the invalid counter: {metrics}"));
    assert!(invalid.ends_with(" 3"), "{invalid}");
}
