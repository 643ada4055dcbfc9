#![cfg(feature = "integration")]
//! A consumer group's lag on RabbitMQ: the messages ready in its queue and in its
//! dead-letter queue, counted without creating anything (the console's groups page).

mod common;

use keel_core::bus::DeadLetterReason;
use keel_core::{Publisher as _, Subscriber as _, SubscriptionSpec};
use keel_testkit::util::{seq_event, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_s_depth_counts_its_waiting_and_dead_messages() {
    let bus = common::bus().await;
    let topic = unique("depth");
    assert_eq!(bus.queue_depth(&topic, "g").await.expect("count"), None, "no queue yet");
    assert_eq!(bus.queue_depth(&topic, "g").await.expect("count"), None, "and none created");

    let mut member =
        bus.subscribe(SubscriptionSpec::new(&topic, "g").prefetch(1)).await.expect("join");
    let events: Vec<_> = (0..5).map(|n| seq_event(n, None)).collect();
    bus.publish(&topic, &events).await.expect("publish");
    let delivery = member.next().await.expect("open").expect("delivery");
    delivery
        .dead_letter(DeadLetterReason { error: "the test refuses it".into(), attempts: 1 })
        .await
        .expect("dead-letter");
    member.close().await.expect("leave");

    // The broker updates its counts as it settles; poll until they are in.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ready = bus.queue_depth(&topic, "g").await.expect("count").map(|q| q.messages);
        let depth = bus.depth(&topic, "g").await.expect("count");
        if ready == Some(4) && depth.dead_letters == Some(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "depth stayed {ready:?} {depth:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(bus.queue_depth(&topic, "other").await.expect("count"), None);
}
