//! The log bus faults of issue 13 (items 2, 9 and 11), each shown on the stores it
//! concerns: SQLite always, PostgreSQL with the `integration` feature.
// The tests open both stores (tests/common), behind the crate's store features.
#![cfg(all(feature = "sqlite", feature = "postgres"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keel_core::bus::DeadLetterReason;
use keel_core::{
    CloudEvent, DeadLetters, ExpectedVersion, Publisher, StreamId, StreamVersion, Subscriber,
    SubscriptionSpec,
};
use keel_logbus::{BusStore, checkpoint_name};
use keel_store::Direction;

use common::{PATIENCE, bus_over, id_of, next, numbered};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

// Item 9: a bus publish never writes into an aggregate's stream.

/// Publishes, through the bus, the stream's own event as read from the log (a
/// forwarder passing it on) and a new event with the stream's id as its subject.
async fn publishing_leaves_the_subjects_stream_alone<L: BusStore>(log: Arc<L>) {
    let bus = bus_over(Arc::clone(&log)).await;
    let stream = StreamId::new(unique("order")).unwrap();
    let placed = CloudEvent::builder("order.placed", "/orders").build().unwrap();
    log.append(&stream, ExpectedVersion::NoStream, &[placed]).await.unwrap();
    let forwarded =
        log.read_stream(&stream, StreamVersion(1), Direction::Forward, 10).await.unwrap()[0]
            .clone();
    let shipped =
        CloudEvent::builder("order.shipped", "/shipping").subject(stream.as_str()).build().unwrap();
    let topic = unique("audit");
    let mut sub = bus.subscribe(SubscriptionSpec::new(&topic, "g")).await.unwrap();
    bus.publish(&topic, &[forwarded.clone(), shipped.clone()]).await.unwrap();

    assert_eq!(
        log.stream_version(&stream).await.unwrap(),
        StreamVersion(1),
        "the bus publish wrote into the aggregate's stream"
    );
    let cancelled = CloudEvent::builder("order.cancelled", "/orders").build().unwrap();
    log.append(&stream, ExpectedVersion::Exact(StreamVersion(1)), &[cancelled])
        .await
        .expect("the aggregate appends its next version as if nothing had been published");

    // The subscriber gets both exactly as published, subject included.
    for expected in [forwarded, shipped] {
        let delivery = next(&mut sub).await;
        assert_eq!(delivery.event(), Some(&expected));
        delivery.ack().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_leaves_the_subjects_stream_alone_on_sqlite() {
    let db = common::SqliteDb::new();
    publishing_leaves_the_subjects_stream_alone(db.log().await).await;
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_leaves_the_subjects_stream_alone_on_postgres() {
    let log = common::pg_log(&common::fresh_database().await).await;
    publishing_leaves_the_subjects_stream_alone(log).await;
}

// Item 11: attempts survive a crash, so a message that kills the process every time it
// is handled reaches the dead letters.

/// Runs `life` as one life of a process: once it returns, the runtime is dropped, so
/// none of its tasks runs again. What `life` forgets is not settled, flushed or
/// released: it is abandoned as a killed process abandons it.
fn process<T>(life: impl Future<Output = T>) -> T {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let out = runtime.block_on(life);
    drop(runtime);
    out
}

/// A process takes the group's message and dies in its handler; returns the attempt it
/// was handed out as.
async fn die_handling<L: BusStore>(log: Arc<L>, topic: &str) -> u32 {
    let bus = bus_over(log).await;
    let mut sub = bus.subscribe(SubscriptionSpec::new(topic, "g").prefetch(1)).await.unwrap();
    let delivery = next(&mut sub).await;
    let attempt = delivery.attempt();
    // The handler takes the process down: none of this is dropped or settled.
    std::mem::forget((delivery, sub, bus));
    attempt
}

const MAX_ATTEMPTS: u32 = 3;

/// After `MAX_ATTEMPTS` crashes the message comes at attempt `MAX_ATTEMPTS + 1`: the
/// `keel-bus` consumer dead-letters it without handling it again, and the group goes on.
async fn the_last_life<L: BusStore>(log: Arc<L>, topic: &str, poison: &CloudEvent) {
    use std::sync::Mutex;

    use keel_bus::{Backoff, Consumer, HandlerError, Message, RedeliveryPolicy, handler_fn};

    let bus = Arc::new(bus_over(log).await);
    let handled = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&handled);
    let handler = handler_fn(move |message: Message| {
        seen.lock().unwrap().push(message.event().id().to_owned());
        async { Ok::<(), HandlerError>(()) }
    });
    let policy = RedeliveryPolicy::new(
        MAX_ATTEMPTS,
        Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
    );
    let consumer =
        Consumer::new(bus.clone() as Arc<dyn Subscriber>, SubscriptionSpec::new(topic, "g"))
            .redelivery(policy)
            .start(handler)
            .await
            .unwrap();
    let later = numbered(2);
    bus.publish(topic, std::slice::from_ref(&later)).await.unwrap();
    keel_testkit::util::eventually("the later event handled", || {
        handled.lock().unwrap().contains(&later.id().to_owned())
    })
    .await;
    consumer.stop().await.unwrap();
    assert_eq!(
        *handled.lock().unwrap(),
        vec![later.id().to_owned()],
        "the poison was not handled again"
    );
    let letters = bus.list(topic, "g", 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, MAX_ATTEMPTS + 1, "every crash counted one attempt");
    assert!(matches!(&letters[0].payload, keel_core::Payload::Event(e) if e.id() == poison.id()));
    assert!(letters[0].reason.contains("without being settled"), "{}", letters[0].reason);
}

#[test]
fn attempts_carry_on_across_crashes_until_dead_lettered_on_sqlite() {
    let db = common::SqliteDb::new();
    let topic = unique("poison");
    let poison = numbered(1);
    process(async {
        let bus = bus_over(db.log().await).await;
        bus.publish(&topic, std::slice::from_ref(&poison)).await.unwrap();
    });
    for life in 1..=MAX_ATTEMPTS {
        let attempt = process(async {
            let log = db.log().await;
            // The dead process's lease runs out (15 s on SQLite): skip the wait.
            sqlx::query("UPDATE keel_leases SET expires_at = 0 WHERE name = ?")
                .bind(checkpoint_name(&topic, "g"))
                .execute(keel_store::SqlEventLog::pool(&*log))
                .await
                .unwrap();
            die_handling(log, &topic).await
        });
        assert_eq!(attempt, life, "the attempt of the delivery in life {life}");
    }
    process(async {
        let log = db.log().await;
        sqlx::query("UPDATE keel_leases SET expires_at = 0 WHERE name = ?")
            .bind(checkpoint_name(&topic, "g"))
            .execute(keel_store::SqlEventLog::pool(&*log))
            .await
            .unwrap();
        the_last_life(log, &topic, &poison).await;
    });
}

#[cfg(feature = "integration")]
#[test]
fn attempts_carry_on_across_crashes_until_dead_lettered_on_postgres() {
    let url = keel_testkit::postgres::fresh_database_blocking("logbus");
    let topic = unique("poison");
    let poison = numbered(1);
    process(async {
        let bus = bus_over(common::pg_log(&url).await).await;
        bus.publish(&topic, std::slice::from_ref(&poison)).await.unwrap();
    });
    // The dead process's advisory lease goes with its connection.
    for life in 1..=MAX_ATTEMPTS {
        let attempt = process(async { die_handling(common::pg_log(&url).await, &topic).await });
        assert_eq!(attempt, life, "the attempt of the delivery in life {life}");
    }
    process(async { the_last_life(common::pg_log(&url).await, &topic, &poison).await });
}

// Item 2: an acked retried letter is not handed out again while its row is deleted.

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acked_retried_letter_is_not_handed_out_again_on_postgres() {
    use sqlx::Connection as _;

    let url = common::fresh_database().await;
    let log = common::pg_log(&url).await;
    let bus = bus_over(Arc::clone(&log)).await;
    let topic = unique("letters");
    let mut sub = bus.subscribe(SubscriptionSpec::new(&topic, "g")).await.unwrap();
    let (first, second) = (numbered(1), numbered(2));
    bus.publish(&topic, &[first.clone(), second.clone()]).await.unwrap();
    for _ in 0..2 {
        let delivery = next(&mut sub).await;
        let reason = DeadLetterReason { error: "rejected".into(), attempts: 1 };
        delivery.dead_letter(reason).await.unwrap();
    }
    let letters = bus.list(&topic, "g", 10).await.unwrap();
    let letter_of = |event: &CloudEvent| {
        letters
            .iter()
            .find(|l| matches!(&l.payload, keel_core::Payload::Event(e) if e.id() == event.id()))
            .unwrap()
            .id
            .clone()
    };
    let (one, two) = (letter_of(&first), letter_of(&second));

    assert!(bus.retry(&topic, "g", &one).await.unwrap());
    let retried = next(&mut sub).await;
    assert_eq!(id_of(&retried), first.id());
    // Another session holds the letter's row: the ack's DELETE waits for it.
    let mut locker = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("SELECT 1 FROM keel_bus_dead_letters WHERE id = $1 FOR UPDATE")
        .bind(&one.0)
        .execute(&mut locker)
        .await
        .unwrap();
    let acking = tokio::spawn(retried.ack());
    let pool = keel_store::SqlEventLog::pool(&*log).clone();
    keel_testkit::util::eventually_async("the ack's DELETE to wait for the row", || {
        let pool = pool.clone();
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE 'DELETE FROM keel_bus_dead_letters%'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            waiting > 0
        }
    })
    .await;
    // The other letter goes back too, so the feeder loads the retrying letters now.
    assert!(bus.retry(&topic, "g", &two).await.unwrap());
    let following = next(&mut sub).await;
    assert_eq!(id_of(&following), second.id(), "the letter being acked was handed out again");
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    acking.await.unwrap().unwrap();
    following.ack().await.unwrap();
    assert!(bus.list(&topic, "g", 10).await.unwrap().is_empty());
}

/// A consumer holds the subscriber it was started on: a program that moves its log bus
/// into the consumer and drops every other handle still gets its events (the bus's
/// feed ends with its last handle).
#[tokio::test]
async fn a_consumer_keeps_its_bus_alive() {
    use keel_bus::{Consumer, HandlerError, Message, handler_fn};

    let db = common::SqliteDb::new();
    let log = db.log().await;
    let topic = unique("kept");
    let (handled, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let bus: Arc<dyn Subscriber> = Arc::new(bus_over(Arc::clone(&log)).await);
    let consumer = Consumer::new(bus, SubscriptionSpec::new(&topic, "g"))
        .start(handler_fn(move |message: Message| {
            let _ = handled.send(message.event().id().to_owned());
            async { Ok::<(), HandlerError>(()) }
        }))
        .await
        .unwrap();
    let publisher = bus_over(log).await;
    let event = numbered(1);
    publisher.publish(&topic, std::slice::from_ref(&event)).await.unwrap();
    let got = tokio::time::timeout(PATIENCE, seen.recv()).await.expect("handled in time");
    assert_eq!(got.as_deref(), Some(event.id()));
    consumer.stop().await.unwrap();
}
