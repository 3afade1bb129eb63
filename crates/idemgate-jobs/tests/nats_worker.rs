//! The example NATS JetStream worker against a private `nats-server -js`: messages that are
//! redelivered (an ack skipped, as if the worker crashed after the work) and orders published
//! twice under different message ids are charged exactly once, by two workers sharing one
//! durable consumer and one embedded (redb) store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use idemgate_jobs::RunOnce;
use idemgate_testkit::nats::NatsServer;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/nats_worker.rs"]
mod nats_worker;

use nats_worker::{Event, Order, Payments};

const ORDERS: u64 = 30;

/// How long JetStream waits for an ack before redelivering. Long enough that a slow machine does
/// not cause extra redeliveries (the assertions tolerate them anyway), short for a quick test.
const ACK_WAIT: Duration = Duration::from_secs(1);

/// Orders whose first delivery is processed but not acked.
fn skips_first_ack(order: &Order) -> bool {
    order
        .id
        .strip_prefix("o")
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n % 3 == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_republished_orders_are_charged_once() {
    let deadline = Instant::now() + Duration::from_secs(60);
    let server = tokio::task::spawn_blocking(NatsServer::start).await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    // JetStream may still be starting when the port opens: retry set-up briefly.
    let consumer = loop {
        match nats_worker::setup(&js, ACK_WAIT).await {
            Ok(c) => break c,
            Err(e) if Instant::now() + Duration::from_secs(50) < deadline => {
                eprintln!("set-up not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("JetStream set-up failed: {e}"),
        }
    };

    let orders: Vec<Order> = (1..=ORDERS)
        .map(|n| Order {
            id: format!("o{n}"),
            // One order is declined: a permanent failure, recorded, never retried.
            cents: if n == 7 { nats_worker::LIMIT_CENTS + 1 } else { n * 100 },
        })
        .collect();
    for order in &orders {
        assert!(!nats_worker::publish(&js, order, &order.id).await.unwrap());
    }
    // A publisher retry with the same Nats-Msg-Id is dropped by JetStream itself...
    for order in &orders[..3] {
        assert!(
            nats_worker::publish(&js, order, &order.id).await.unwrap(),
            "JetStream dedup"
        );
    }
    // ...but the same order published again under a new id reaches the workers.
    let republished = &orders[3..8];
    for order in republished {
        assert!(!nats_worker::publish(&js, order, &format!("{}-again", order.id))
            .await
            .unwrap());
    }
    let messages = orders.len() + republished.len();

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(idemgate_store_redb::RedbStore::open(dir.path()).unwrap());
    let payments = Arc::new(Payments::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for _ in 0..2 {
        // Two workers, as two processes would: each its own RunOnce on the shared store.
        let jobs = RunOnce::builder(store.clone(), b"nats worker test secret")
            .namespace("charges")
            .wait(Some(Duration::from_secs(5)))
            .build();
        workers.push(tokio::spawn(nats_worker::run_worker(
            consumer.clone(),
            jobs,
            payments.clone(),
            |order: &Order, delivery: i64| delivery == 1 && skips_first_ack(order),
            tx.clone(),
        )));
    }
    drop(tx);

    // Every stream message ends acked (charged or replayed) or terminated (declined): wait until
    // each order has had as many finished deliveries as it has stream messages.
    let mut want: BTreeMap<&str, usize> = orders.iter().map(|o| (o.id.as_str(), 1)).collect();
    for o in republished {
        *want.get_mut(o.id.as_str()).unwrap() += 1;
    }
    let mut events: Vec<Event> = Vec::new();
    while !want.values().all(|&n| n == 0) {
        let event = timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; events so far: {events:?}"))
            .expect("the workers stopped");
        if let Event::Charged(id) | Event::Replayed(id) | Event::Declined(id) = &event {
            let left = want.get_mut(id.as_str()).expect("a published order");
            *left = left.saturating_sub(1);
        }
        events.push(event);
    }

    // o3, o6, …, o30 skip the ack of their first delivery, and so does o6's republished copy.
    // (A machine slow enough to miss the ack wait causes extra redeliveries: hence the `>=`.)
    let skipping_orders = orders.iter().filter(|o| skips_first_ack(o)).count();
    let skipped = skipping_orders + republished.iter().filter(|o| skips_first_ack(o)).count();
    let count = |f: fn(&Event) -> bool| events.iter().filter(|e| f(e)).count();
    assert!(count(|e| matches!(e, Event::AckSkipped(_))) >= skipped, "{events:?}");
    assert_eq!(count(|e| matches!(e, Event::Malformed)), 0, "{events:?}");
    // o7 is declined by its first delivery and its republished copy gets the recorded failure.
    assert!(count(|e| matches!(e, Event::Declined(_))) >= 2, "{events:?}");
    // Each other order is charged by exactly one delivery (an acked one unless it skips its
    // ack); every other delivery of it replays the receipt.
    let charged = orders.len() - 1 - skipping_orders;
    assert_eq!(count(|e| matches!(e, Event::Charged(_))), charged, "{events:?}");
    assert!(
        count(|e| matches!(e, Event::Replayed(_))) >= messages - charged - 2,
        "{events:?}"
    );

    // The side effect: every order attempted exactly once, the declined one included.
    let attempts = payments.attempts();
    let expected: BTreeMap<String, u32> = orders.iter().map(|o| (o.id.clone(), 1)).collect();
    assert_eq!(attempts, expected);

    // Nothing is left for JetStream to deliver.
    let mut consumer = consumer;
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            // Every skipped ack cost a redelivery.
            assert!(
                info.delivered.consumer_sequence >= (messages + skipped) as u64,
                "{info:?}"
            );
            assert_eq!(info.delivered.stream_sequence, messages as u64, "{info:?}");
            break;
        }
        assert!(Instant::now() < deadline, "messages left unacked: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in workers {
        w.abort();
    }
    drop(server);
}
