//! The log bus faults of issue 13, each shown on the stores it concerns: SQLite
//! always, PostgreSQL with the `integration` feature.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use keel_core::{
    CloudEvent, Delivery, ExpectedVersion, Publisher, StreamId, StreamVersion, Subscriber,
    Subscription, SubscriptionSpec,
};
use keel_logbus::BusStore;
use keel_store::Direction;

use common::bus_over;

const PATIENCE: Duration = Duration::from_secs(30);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(PATIENCE, sub.next()).await.expect("a delivery in time").unwrap().unwrap()
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
