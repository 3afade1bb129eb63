//! `idemgate demo`: a tiny payments API that counts charges, for trying the gateway in one command.
//!
//! `POST /payments` charges (201 with a JSON receipt and a `Location` header); `GET /payments`
//! reports how many charges were made, so a newcomer can see that retries did not charge twice.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn handle(req: Request<Incoming>, charges: Arc<AtomicU64>) -> Response<Full<Bytes>> {
    let (status, body, location) = match (req.method(), req.uri().path()) {
        (&Method::POST, "/payments") => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
            let id = format!("pay_{n:06}");
            let receipt = serde_json::json!({
                "id": id,
                "status": "succeeded",
                "amount": v.get("amount").cloned().unwrap_or(serde_json::Value::Null),
                "currency": v.get("currency").cloned().unwrap_or(serde_json::Value::Null),
                "charge_number": n,
            });
            (
                StatusCode::CREATED,
                receipt.to_string(),
                Some(format!("/payments/{id}")),
            )
        }
        (&Method::GET, "/payments") => (
            StatusCode::OK,
            serde_json::json!({"charges": charges.load(Ordering::SeqCst)}).to_string(),
            None,
        ),
        _ => (StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.to_string(), None),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Some(l) = location.and_then(|l| header::HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert(header::LOCATION, l);
    }
    r
}

/// Starts the demo API on a free loopback port.
pub async fn start() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let charges = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            };
            let charges = charges.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let charges = charges.clone();
                    async move { Ok::<_, Infallible>(handle(req, charges).await) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

/// Prints what to try, with a key new to this run: the records outlive the demo (in
/// ./idemgate-data) but the demo API's charge count does not, so a key from an earlier run would
/// replay that run's charge and the count would read 0.
pub fn banner(gw: SocketAddr) {
    let key = demo_key();
    println!(
        r#"
idemgate demo: a payments API behind the gateway. Try, in another terminal:

  # 1. a first charge: executed once, 201
  curl -i http://{gw}/payments -H 'Idempotency-Key: {key}' -H 'Content-Type: application/json' -d '{{"amount":1999,"currency":"usd"}}'

  # 2. the same request again (a client retry): the stored 201 is replayed, with Idempotent-Replayed: true
  curl -i http://{gw}/payments -H 'Idempotency-Key: {key}' -H 'Content-Type: application/json' -d '{{"amount":1999,"currency":"usd"}}'

  # 3. the same key with a different body: 422 problem+json, nothing charged
  curl -i http://{gw}/payments -H 'Idempotency-Key: {key}' -H 'Content-Type: application/json' -d '{{"amount":5000,"currency":"usd"}}'

  # 4. how many charges the API really made (1)
  curl http://{gw}/payments

Ctrl-C stops it."#
    );
}

/// `order-` and 8 random hex digits.
fn demo_key() -> String {
    let r = idemgate_core::scope::random_secret();
    let hex: String = r[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("order-{hex}")
}
