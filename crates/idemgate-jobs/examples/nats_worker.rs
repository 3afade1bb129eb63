//! A NATS JetStream worker that charges each order exactly once, however often the broker
//! delivers it.
//!
//! JetStream delivers at least once: a message whose ack is lost (the worker crashed after doing
//! the work, the ack timed out) is delivered again, possibly to another worker. JetStream's own
//! `Nats-Msg-Id` de-duplication only drops a *publisher's* retries within its duplicate window; it
//! does nothing for redeliveries, nor for an order published again later. The worker therefore
//! runs each charge through [`RunOnce`], keyed by the order id: the first delivery charges and
//! records the receipt, every later one gets the recorded receipt back and is acked without
//! charging.
//!
//! Run it against a local server (Debian: `apt-get install nats-server`):
//!
//! ```text
//! nats-server -js &
//! cargo run -p idemgate-jobs --example nats_worker -- nats://127.0.0.1:4222
//! ```
//!
//! It publishes a batch of orders (some twice), consumes them with a worker that "crashes"
//! before acking the first delivery of every third order (so JetStream redelivers it), waits
//! until every message is acked, and prints how many times each order was charged: once each.
//! `tests/nats_worker.rs` runs the same code against a private `nats-server`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures_util::StreamExt;
use idemgate_core::MemoryStore;
use idemgate_jobs::{Failure, RunError, RunOnce};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The stream the orders are published to.
pub const STREAM: &str = "ORDERS";

/// Its subjects: `orders.<order id>`.
pub const SUBJECTS: &str = "orders.*";

/// The durable consumer every worker pulls from.
pub const CONSUMER: &str = "charger";

/// Orders above this amount are declined: a permanent failure.
pub const LIMIT_CENTS: u64 = 1_000_000;

/// An order to charge: the message payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order id: the idempotency key.
    pub id: String,
    /// The amount to charge.
    pub cents: u64,
}

/// What a charge returns: the recorded, replayed job result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The payment provider's charge id.
    pub charge_id: String,
    /// The amount charged.
    pub cents: u64,
}

/// Why a charge failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The provider refused the charge: retrying will not help.
    #[error("declined: {0} cents is over the limit")]
    Declined(u64),
}

/// Declines are permanent: recorded, so a redelivery does not try to charge again.
pub fn classify(e: &PaymentError) -> Failure {
    match e {
        PaymentError::Declined(_) => Failure::Permanent,
    }
}

/// The side effect: a payment provider, in memory, that counts charge attempts per order.
#[derive(Debug, Default)]
pub struct Payments {
    attempts: Mutex<BTreeMap<String, u32>>,
    next: AtomicU64,
}

impl Payments {
    /// Charges an order (the function run once per order).
    pub async fn charge(&self, order: &Order) -> Result<Receipt, PaymentError> {
        *self
            .attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(order.id.clone())
            .or_default() += 1;
        // A call to a provider takes a while; redeliveries may arrive meanwhile.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if order.cents > LIMIT_CENTS {
            return Err(PaymentError::Declined(order.cents));
        }
        Ok(Receipt {
            charge_id: format!("ch_{}", self.next.fetch_add(1, Ordering::Relaxed) + 1),
            cents: order.cents,
        })
    }

    /// How many times each order was charged (attempted).
    pub fn attempts(&self) -> BTreeMap<String, u32> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the worker did with one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The order was charged by this delivery, then acked.
    Charged(String),
    /// The order had been charged before: the receipt was replayed, then acked.
    Replayed(String),
    /// The order was charged (or replayed) but the simulated crash skipped the ack: JetStream
    /// will deliver it again.
    AckSkipped(String),
    /// The order was declined (now or before): the message was terminated.
    Declined(String),
    /// Not done now (running elsewhere, store outage): negatively acked for a later redelivery.
    Retry(String),
    /// The message was not an order: terminated.
    Malformed,
}

/// Creates the `ORDERS` stream (if missing) and the durable pull consumer `charger` with the
/// given ack wait (how long JetStream waits for an ack before redelivering).
pub async fn setup(js: &jetstream::Context, ack_wait: Duration) -> Result<PullConsumer, async_nats::Error> {
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: STREAM.to_string(),
            subjects: vec![SUBJECTS.to_string()],
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            CONSUMER,
            jetstream::consumer::pull::Config {
                durable_name: Some(CONSUMER.to_string()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait,
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer)
}

/// Publishes an order with `msg_id` as its `Nats-Msg-Id`; `Ok(true)` when JetStream dropped it as
/// a duplicate of an earlier publish with the same id.
pub async fn publish(js: &jetstream::Context, order: &Order, msg_id: &str) -> Result<bool, async_nats::Error> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    let body = serde_json::to_vec(order)?;
    let ack = js
        .publish_with_headers(format!("orders.{}", order.id), headers, body.into())
        .await?
        .await?;
    Ok(ack.duplicate)
}

/// Consumes `consumer` until the stream of messages ends: each order is charged through
/// `jobs` (keyed by its id), then acked. `skip_ack(order, delivery)` simulates a crash between
/// the work and the ack (JetStream then redelivers). Every delivery is reported on `events`.
pub async fn run_worker(
    consumer: PullConsumer,
    jobs: RunOnce,
    payments: Arc<Payments>,
    skip_ack: impl Fn(&Order, i64) -> bool,
    events: mpsc::UnboundedSender<Event>,
) -> Result<(), async_nats::Error> {
    let mut messages = consumer.messages().await?;
    while let Some(msg) = messages.next().await {
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => {
                eprintln!("worker: receiving failed: {e}");
                continue;
            }
        };
        let delivery = msg.info().map(|i| i.delivered).unwrap_or(1);
        let Ok(order) = serde_json::from_slice::<Order>(&msg.payload) else {
            msg.ack_with(AckKind::Term).await?;
            let _ = events.send(Event::Malformed);
            continue;
        };
        let result = jobs
            .run_with(&order.id, &order, classify, || payments.charge(&order))
            .await;
        let (event, ack) = match result {
            Ok(run) if skip_ack(&order, delivery) => {
                let _ = run;
                (Event::AckSkipped(order.id.clone()), None)
            }
            Ok(run) if run.was_replayed() => (Event::Replayed(order.id.clone()), Some(AckKind::Ack)),
            Ok(_) => (Event::Charged(order.id.clone()), Some(AckKind::Ack)),
            Err(RunError::Failed(_) | RunError::FailedBefore(_)) => {
                (Event::Declined(order.id.clone()), Some(AckKind::Term))
            }
            Err(RunError::InProgress { retry_after }) => (
                Event::Retry(order.id.clone()),
                Some(AckKind::Nak(Some(retry_after.min(Duration::from_secs(1))))),
            ),
            Err(RunError::Store(e)) => {
                eprintln!("worker: store failed, order {} will be redelivered: {e}", order.id);
                (
                    Event::Retry(order.id.clone()),
                    Some(AckKind::Nak(Some(Duration::from_secs(1)))),
                )
            }
            Err(e) => {
                // A changed payload under a known id, an invalid id: no redelivery can fix it.
                eprintln!("worker: order {} refused: {e}", order.id);
                (Event::Malformed, Some(AckKind::Term))
            }
        };
        if let Some(kind) = ack {
            msg.ack_with(kind).await?;
        }
        let _ = events.send(event);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("NATS_URL").ok())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_string());
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client);
    let consumer = setup(&js, Duration::from_secs(1)).await?;

    let run = std::process::id();
    let orders: Vec<Order> = (1..=9)
        .map(|n| Order {
            id: format!("{run}-{n}"),
            cents: if n == 9 { LIMIT_CENTS + 1 } else { n * 100 },
        })
        .collect();
    for order in &orders {
        publish(&js, order, &order.id).await?;
    }
    // The producer publishes two orders again, later and under new message ids: JetStream's
    // de-duplication cannot tell, the worker must.
    for order in &orders[..2] {
        publish(&js, order, &format!("{}-again", order.id)).await?;
    }
    let expected = orders.len() + 2;

    let jobs = RunOnce::builder(
        Arc::new(MemoryStore::default()),
        b"example secret: share it between workers",
    )
    .namespace("charges")
    .wait(Some(Duration::from_secs(5)))
    .build();
    let payments = Arc::new(Payments::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let skip_first_ack_of_every_third = |order: &Order, delivery: i64| {
        delivery == 1
            && order
                .id
                .rsplit('-')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n % 3 == 0)
    };
    let worker = tokio::spawn(run_worker(
        consumer,
        jobs,
        payments.clone(),
        skip_first_ack_of_every_third,
        tx,
    ));

    let mut done = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while done < expected {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| "timed out waiting for the worker")?
            .ok_or("the worker stopped")?;
        println!("{event:?}");
        let mine = |id: &str| id.starts_with(&format!("{run}-"));
        if matches!(&event, Event::Charged(id) | Event::Replayed(id) | Event::Declined(id) if mine(id)) {
            done += 1;
        }
    }
    worker.abort();
    let attempts = payments.attempts();
    println!("charge attempts per order: {attempts:?}");
    let mine: Vec<_> = orders
        .iter()
        .map(|o| attempts.get(&o.id).copied().unwrap_or(0))
        .collect();
    if mine.iter().all(|&n| n == 1) {
        println!("every order was charged exactly once");
        Ok(())
    } else {
        Err("an order was charged more or less than once".into())
    }
}
