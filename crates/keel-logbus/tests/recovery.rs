//! Crash recovery, takeover across processes, and events appended by services, on
//! SQLite.
// The tests open both stores (tests/common), behind the crate's store features.
#![cfg(all(feature = "sqlite", feature = "postgres"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use keel_core::{
    CloudEvent, ExpectedVersion, Payload, Position, Publisher, StartFrom, StreamId, Subscriber,
    SubscriptionSpec,
};
use keel_logbus::checkpoint_name;
use keel_store::EventLog;

use common::{PATIENCE, SqliteDb, bus_over, id_of, next, numbered};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_redelivers_what_was_not_settled_and_nothing_acked() {
    let db = SqliteDb::new();
    let events: Vec<_> = (0..10).map(numbered).collect();
    {
        let log = db.log().await;
        let bus = bus_over(log.clone()).await;
        let mut sub =
            bus.subscribe(SubscriptionSpec::new("crash", "g").prefetch(10)).await.unwrap();
        bus.publish("crash", &events).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(next(&mut sub).await);
        }
        // Acks 0..4 and the 7th: the cursor may move past 0..4 only.
        let seventh = held.remove(7);
        seventh.ack().await.unwrap();
        let acked: Vec<_> = held.drain(..4).collect();
        for delivery in acked {
            delivery.ack().await.unwrap();
        }
        let name = checkpoint_name("crash", "g");
        let fourth = log.read_all(&keel_store::LogQuery::default()).await.unwrap()[3].cursor;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while log.checkpoint(&name).await.unwrap() != Some(fourth) {
            assert!(tokio::time::Instant::now() < deadline, "the checkpoint is stored");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The process dies with five deliveries unsettled.
        std::mem::forget(held);
        drop(sub);
        drop(bus);
    }
    let log = db.log().await;
    let bus = bus_over(log).await;
    let mut sub = bus.subscribe(SubscriptionSpec::new("crash", "g")).await.unwrap();
    let after = numbered(99);
    bus.publish("crash", std::slice::from_ref(&after)).await.unwrap();
    let mut again = Vec::new();
    loop {
        let delivery = next(&mut sub).await;
        let id = id_of(&delivery);
        let attempt = delivery.attempt();
        delivery.ack().await.unwrap();
        if id == after.id() {
            assert_eq!(attempt, 1);
            break;
        }
        again.push((id, attempt));
    }
    // The seventh was acked but lies after unsettled ones: at-least-once gives it again,
    // at a first attempt. The others were out when the process went: their second.
    let expected: Vec<(String, u32)> = events[4..]
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id().to_owned(), if i == 3 { 1 } else { 2 }))
        .collect();
    assert_eq!(again, expected, "exactly the unsettled suffix, in log order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_takes_over_a_group() {
    let db = SqliteDb::new();
    let first = bus_over(db.log().await).await;
    let second = bus_over(db.log().await).await;
    let mut a = first.subscribe(SubscriptionSpec::new("handover", "g")).await.unwrap();
    first.publish("handover", &[numbered(1)]).await.unwrap();
    let held = next(&mut a).await;
    let id = id_of(&held);
    // The second process joins the group while the first one feeds it: it stands by.
    let mut b = second.subscribe(SubscriptionSpec::new("handover", "g")).await.unwrap();
    second.publish("handover", &[numbered(2)]).await.unwrap();
    let other = next(&mut a).await;
    other.ack().await.unwrap();
    // The first process dies holding the delivery; the second one gets it.
    std::mem::forget(held);
    drop(a);
    drop(first);
    let delivery = next(&mut b).await;
    assert_eq!(id_of(&delivery), id);
    delivery.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_appended_by_services_are_delivered_on_their_category() {
    let db = SqliteDb::new();
    let log = db.log().await;
    let bus = bus_over(log.clone()).await;
    let mut sub = bus.subscribe(SubscriptionSpec::new("order", "billing")).await.unwrap();
    let stream = StreamId::new("order-17").unwrap();
    let placed = CloudEvent::builder("order.placed", "/orders").build().unwrap();
    log.append(&stream, ExpectedVersion::NoStream, std::slice::from_ref(&placed)).await.unwrap();
    let delivery = next(&mut sub).await;
    let Payload::Event(event) = delivery.payload().clone() else { panic!("undecodable") };
    assert_eq!(event.id(), placed.id());
    assert_eq!(event.subject(), Some("order-17"));
    assert_eq!(event.position(), Some(Position(1)), "as the log has it");
    delivery.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_starting_at_the_end_skips_history() {
    let db = SqliteDb::new();
    let bus = bus_over(db.log().await).await;
    bus.publish("latest", &[numbered(1)]).await.unwrap();
    let spec = SubscriptionSpec::new("latest", "g").start(StartFrom::Latest);
    let mut sub = bus.subscribe(spec).await.unwrap();
    // Wait until the group exists (its checkpoint is stored), then publish.
    let name = checkpoint_name("latest", "g");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while bus.log().checkpoint(&name).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the group starts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let later = numbered(2);
    bus.publish("latest", std::slice::from_ref(&later)).await.unwrap();
    let delivery = next(&mut sub).await;
    assert_eq!(id_of(&delivery), later.id());
}
