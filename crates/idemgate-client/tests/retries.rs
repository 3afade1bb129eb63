//! The middleware against a real server over real sockets, failing in scripted ways.
//!
//! The server is a few lines of HTTP/1.1 over `tokio::net`: each request gets the next scripted
//! action (drop the connection, answer a status with headers, or hang), every response closes its
//! connection, and every request's method and key are recorded. Delays are kept tiny through the
//! middleware's configuration; the one `Retry-After: 1` test waits a real second.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use idemgate_client::{attempts, idempotency_key, was_replayed, IdempotencyMiddleware, RetryError};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
enum Action {
    /// Read the request, then close without answering.
    Drop,
    /// Answer this status with these extra headers.
    Respond(u16, Vec<(&'static str, &'static str)>),
    /// Read the request and never answer (until the test ends).
    Hang,
    /// Answer 201 with `content-length: 100` and close after 10 bytes of body.
    Cut,
}

use Action::*;

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    key: Option<String>,
    body: Vec<u8>,
}

struct Script {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::ops::Drop for Script {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Script {
    /// Serves `actions` in order; after the last one, every request gets a 201.
    async fn start(actions: Vec<Action>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let actions = Arc::new(Mutex::new(actions.into_iter()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, actions) = (s.clone(), actions.clone());
                tokio::spawn(async move {
                    let _ = serve_one(stream, s, actions).await;
                });
            }
        });
        Self { addr, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve_one(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    actions: Arc<Mutex<std::vec::IntoIter<Action>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let method = lines.next().unwrap_or("").split(' ').next().unwrap_or("").to_string();
    let mut key = None;
    let mut len = 0usize;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "idempotency-key" => key = Some(v.trim().to_string()),
                "content-length" => len = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..].to_vec();
    seen.lock().unwrap().push(Seen { method, key, body });
    let action = actions.lock().unwrap().next().unwrap_or(Respond(201, vec![]));
    match action {
        Drop => Ok(()),
        Hang => {
            // Bounded: far longer than any test's deadline, and the test's runtime ends first.
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        }
        Cut => {
            let resp = "HTTP/1.1 201 X\r\ncontent-length: 100\r\nconnection: close\r\n\r\n0123456789";
            stream.write_all(resp.as_bytes()).await?;
            stream.shutdown().await
        }
        Respond(status, headers) => {
            let mut resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n");
            for (k, v) in headers {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
            resp.push_str("\r\nok");
            stream.write_all(resp.as_bytes()).await?;
            stream.shutdown().await
        }
    }
}

fn fast() -> IdempotencyMiddleware {
    IdempotencyMiddleware::new()
        .base_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
        .deadline(Duration::from_secs(10))
}

fn client(m: IdempotencyMiddleware) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new()).with(m).build()
}

fn keys(seen: &[Seen]) -> Vec<Option<String>> {
    seen.iter().map(|s| s.key.clone()).collect()
}

#[tokio::test]
async fn drop_503_and_409s_then_replay_all_with_one_key() {
    let server = Script::start(vec![
        Drop,
        Respond(503, vec![("retry-after", "0")]),
        Respond(409, vec![("retry-after", "0")]),
        Respond(409, vec![]),
        Respond(201, vec![("idempotent-replayed", "true")]),
    ])
    .await;
    let c = client(fast().max_attempts(6));
    let resp = c
        .post(server.url("/charges"))
        .body("{\"amount\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(was_replayed(&resp));
    assert_eq!(attempts(&resp), Some(5));
    let seen = server.seen();
    assert_eq!(seen.len(), 5);
    let key = idempotency_key(&resp).expect("a key was added").to_string();
    assert!(
        uuid::Uuid::parse_str(&key).is_ok_and(|u| u.get_version_num() == 4),
        "{key}"
    );
    assert!(
        keys(&seen).iter().all(|k| k.as_deref() == Some(key.as_str())),
        "{seen:?}"
    );
    assert!(seen.iter().all(|s| s.method == "POST" && s.body == b"{\"amount\":1}"));
}

#[tokio::test]
async fn retry_after_one_second_is_honoured() {
    let server = Script::start(vec![Respond(503, vec![("retry-after", "1")])]).await;
    // Backoff alone would wait at most 20 ms; Retry-After asks for a second.
    let c = client(fast());
    let t = Instant::now();
    let resp = c.post(server.url("/x")).body("a").send().await.unwrap();
    let took = t.elapsed();
    assert_eq!(resp.status(), 201);
    assert!(!was_replayed(&resp));
    assert_eq!(attempts(&resp), Some(2));
    assert!(took >= Duration::from_millis(950), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn retry_after_past_the_deadline_returns_the_answer_at_once() {
    let server = Script::start(vec![Respond(503, vec![("retry-after", "3600")])]).await;
    let c = client(fast().deadline(Duration::from_secs(2)));
    let t = Instant::now();
    let resp = c.post(server.url("/x")).body("a").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(attempts(&resp), Some(1));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn absurd_retry_after_values_and_deadlines_do_not_overflow() {
    // 10^20 seconds saturates to u64::MAX seconds, too far for an `Instant`: past any deadline.
    let server = Script::start(vec![Respond(503, vec![("retry-after", "99999999999999999999")])]).await;
    let c = client(fast().deadline(Duration::from_secs(2)));
    let resp = c.post(server.url("/x")).body("a").send().await.unwrap();
    assert_eq!((resp.status().as_u16(), attempts(&resp)), (503, Some(1)));
    // No deadline at all (Duration::MAX) still retries and ends with the answer.
    let server = Script::start(vec![Respond(503, vec![("retry-after", "0")])]).await;
    let c = client(fast().deadline(Duration::MAX));
    let resp = c.post(server.url("/x")).body("a").send().await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(attempts(&resp), Some(2));
}

#[tokio::test]
async fn a_response_cut_off_mid_body_is_retried_with_the_same_key() {
    let server = Script::start(vec![Cut, Cut]).await;
    let c = client(fast());
    let resp = c.post(server.url("/charges")).body("a").send().await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(attempts(&resp), Some(3));
    assert_eq!(resp.url().as_str(), server.url("/charges"));
    let key = idempotency_key(&resp).unwrap().to_string();
    assert_eq!(resp.bytes().await.unwrap(), "ok");
    assert!(keys(&server.seen()).iter().all(|k| k.as_deref() == Some(key.as_str())));
    // With buffering off the cut reaches the caller, who still has the key to retry with.
    let server = Script::start(vec![Cut]).await;
    let c = client(fast().buffer_limit(0));
    let resp = c.post(server.url("/charges")).body("a").send().await.unwrap();
    assert_eq!(attempts(&resp), Some(1));
    assert!(idempotency_key(&resp).is_some());
    assert!(resp.bytes().await.is_err());
}

#[tokio::test]
async fn a_caller_key_is_kept_on_every_attempt() {
    let server = Script::start(vec![Respond(502, vec![]), Respond(504, vec![]), Respond(429, vec![])]).await;
    let c = client(fast());
    let resp = c
        .patch(server.url("/orders/1"))
        .header("idempotency-key", "order-1001")
        .body("b")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(idempotency_key(&resp), Some("order-1001"));
    assert_eq!(attempts(&resp), Some(4));
    assert_eq!(keys(&server.seen()), vec![Some("order-1001".to_string()); 4]);
}

#[tokio::test]
async fn no_retry_on_422_400_or_500() {
    for status in [422u16, 400, 500, 404] {
        let server = Script::start(vec![Respond(status, vec![("retry-after", "0")])]).await;
        let c = client(fast());
        let resp = c.post(server.url("/x")).body("a").send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(attempts(&resp), Some(1));
        assert!(!was_replayed(&resp));
        assert_eq!(server.seen().len(), 1, "status {status}");
    }
}

#[tokio::test]
async fn attempts_are_bounded() {
    let server = Script::start(vec![Respond(503, vec![]); 20]).await;
    let c = client(fast().max_attempts(3));
    let resp = c.post(server.url("/x")).body("a").send().await.unwrap();
    assert_eq!(resp.status(), 503, "the last answer is returned");
    assert_eq!(attempts(&resp), Some(3));
    assert_eq!(server.seen().len(), 3);

    let server = Script::start(vec![Drop; 20]).await;
    let err = c.post(server.url("/x")).body("a").send().await.unwrap_err();
    assert!(matches!(err, reqwest_middleware::Error::Reqwest(_)), "{err:?}");
    assert_eq!(server.seen().len(), 3);
    let keys = keys(&server.seen());
    assert!(keys[0].is_some() && keys.iter().all(|k| *k == keys[0]), "{keys:?}");
}

#[tokio::test]
async fn the_deadline_bounds_retries_and_a_hanging_attempt() {
    // Endless 503s: the deadline ends the retries, not max_attempts.
    let server = Script::start(vec![Respond(503, vec![]); 10_000]).await;
    let c = client(
        fast()
            .max_attempts(10_000)
            .base_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(10))
            .deadline(Duration::from_millis(300)),
    );
    let t = Instant::now();
    let result = c.post(server.url("/x")).body("a").send().await;
    let took = t.elapsed();
    assert!(took < Duration::from_millis(2000), "{took:?}");
    // The deadline falls either during a backoff wait (the last 503 is returned) or during an
    // attempt (DeadlineExceeded); which one depends on scheduling. Both end well before
    // max_attempts.
    let n = match result {
        Ok(resp) => {
            assert_eq!(resp.status(), 503);
            attempts(&resp).unwrap()
        }
        Err(reqwest_middleware::Error::Middleware(e)) => {
            let e = e.downcast_ref::<RetryError>().expect("a RetryError");
            assert!(matches!(e, RetryError::DeadlineExceeded { .. }), "{e:?}");
            e.attempts()
        }
        Err(e) => panic!("{e:?}"),
    };
    assert!((2..10_000).contains(&n), "{n}");
    assert!(n as usize <= server.seen().len() + 1, "{n}");

    // A server that never answers: the attempt is abandoned at the deadline.
    let server = Script::start(vec![Hang]).await;
    let c = client(fast().deadline(Duration::from_millis(300)));
    let t = Instant::now();
    let err = c.post(server.url("/x")).body("a").send().await.unwrap_err();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(3000),
        "{took:?}"
    );
    let reqwest_middleware::Error::Middleware(e) = err else {
        panic!("{err:?}")
    };
    let e = e.downcast_ref::<RetryError>().expect("a RetryError");
    assert!(matches!(e, RetryError::DeadlineExceeded { attempts: 1, .. }), "{e:?}");
    assert!(e.key().is_some());
}

#[tokio::test]
async fn a_timed_out_attempt_is_retried_with_the_same_key() {
    let server = Script::start(vec![Hang, Respond(201, vec![("idempotent-replayed", "true")])]).await;
    let c = client(fast().attempt_timeout(Duration::from_millis(200)));
    let resp = c.post(server.url("/x")).body("a").send().await.unwrap();
    assert_eq!(resp.status(), 201);
    assert!(was_replayed(&resp));
    assert_eq!(attempts(&resp), Some(2));
    let keys = keys(&server.seen());
    assert_eq!(keys.len(), 2);
    assert!(keys[0].is_some() && keys[0] == keys[1]);

    // reqwest's own per-request timeout counts as a transport timeout too.
    let server = Script::start(vec![Hang]).await;
    let c = client(fast());
    let resp = c
        .post(server.url("/x"))
        .timeout(Duration::from_millis(200))
        .body("a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(attempts(&resp), Some(2));
}

#[tokio::test]
async fn a_get_is_retried_without_a_key_and_a_keyless_unprotected_post_is_not() {
    let server = Script::start(vec![Respond(503, vec![])]).await;
    let c = client(fast());
    let resp = c.get(server.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(idempotency_key(&resp), None);
    assert_eq!(keys(&server.seen()), vec![None, None]);

    // POST left out of `methods`: no key is added, and an unkeyed POST is never repeated.
    let server = Script::start(vec![Respond(503, vec![])]).await;
    let c = client(fast().methods([http::Method::PATCH]));
    let resp = c.post(server.url("/x")).body("a").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(attempts(&resp), Some(1));
    assert_eq!(keys(&server.seen()), vec![None]);
}

#[tokio::test]
async fn a_custom_key_header() {
    let server = Script::start(vec![]).await;
    let c = client(fast().key_header(http::HeaderName::from_static("x-request-key")));
    let resp = c
        .post(server.url("/x"))
        .header("idempotency-key", "ignored")
        .body("a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // The custom header got a fresh key; the default header is left as the caller set it.
    let key = idempotency_key(&resp).unwrap();
    assert!(uuid::Uuid::parse_str(key).is_ok());
}
