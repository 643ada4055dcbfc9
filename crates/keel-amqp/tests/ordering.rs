#![cfg(feature = "integration")]
//! The order guarantees the crate docs state, on both queue types:
//! a group queue hands messages out in publish order while nothing is retried;
//! a retried message goes behind the ones published before its retry;
//! what a member gives back is redelivered first, except on quorum queues a delivery
//! dropped unsettled, which goes to the tail;
//! with `single_active_consumer` one member at a time receives, and the next takes
//! over where it stopped, so order holds across members. And a member that leaves
//! right after acking keeps its acks.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_amqp::QueueType;
use keel_core::{CloudEvent, Publisher, Subscriber, Subscription, SubscriptionSpec};
use keel_testkit::util::{PATIENCE, seq_event, seq_of, unique};

async fn next(sub: &mut Box<dyn Subscription>) -> keel_core::Delivery {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("a delivery in time")
        .expect("subscription open")
        .expect("delivery")
}

fn keyed(range: std::ops::Range<u64>, keys: u64) -> Vec<CloudEvent> {
    range.map(|i| seq_event(i, Some(&format!("key-{}", i % keys)))).collect()
}

async fn in_publish_order_without_retries(queue_type: QueueType) {
    let bus = common::bus_with(common::config().queue_type(queue_type)).await;
    let topic = unique("fifo");
    let mut sub =
        bus.subscribe(SubscriptionSpec::new(&topic, "g").prefetch(16)).await.expect("sub");
    let events = keyed(0..300, 5);
    for chunk in events.chunks(37) {
        bus.publish(&topic, chunk).await.expect("publish");
    }
    let mut received = Vec::new();
    while received.len() < events.len() {
        let delivery = next(&mut sub).await;
        received.push(seq_of(delivery.event().expect("event")));
        delivery.ack().await.expect("ack");
    }
    assert_eq!(received, (0..300).collect::<Vec<_>>(), "{queue_type:?}: queue order");
    sub.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_queue_hands_out_in_publish_order_without_retries() {
    in_publish_order_without_retries(QueueType::Quorum).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn classic_queue_hands_out_in_publish_order_without_retries() {
    in_publish_order_without_retries(QueueType::Classic).await;
}

async fn retried_goes_behind_later_ones(queue_type: QueueType, delay: Duration) {
    let bus = common::bus_with(common::config().queue_type(queue_type)).await;
    let topic = unique("retry-order");
    let mut sub = bus.subscribe(SubscriptionSpec::new(&topic, "g").prefetch(4)).await.expect("sub");
    let events: Vec<_> = (0..10).map(|i| seq_event(i, Some("one-key"))).collect();
    bus.publish(&topic, &events).await.expect("publish");
    let mut handled = Vec::new();
    while handled.len() < events.len() {
        let delivery = next(&mut sub).await;
        let seq = seq_of(delivery.event().expect("event"));
        if seq == 3 && delivery.attempt() == 1 {
            delivery.nack(delay).await.expect("nack");
            continue;
        }
        if seq == 3 {
            assert_eq!(delivery.attempt(), 2, "the retry counts as the second attempt");
        }
        handled.push(seq);
        delivery.ack().await.expect("ack");
    }
    assert_eq!(
        handled,
        [0, 1, 2, 4, 5, 6, 7, 8, 9, 3],
        "{queue_type:?}, {delay:?}: the retried message comes after those already queued"
    );
    sub.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_retry_goes_behind_later_messages() {
    retried_goes_behind_later_ones(QueueType::Quorum, Duration::from_millis(50)).await;
    retried_goes_behind_later_ones(QueueType::Quorum, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn classic_retry_goes_behind_later_messages() {
    retried_goes_behind_later_ones(QueueType::Classic, Duration::from_millis(50)).await;
    retried_goes_behind_later_ones(QueueType::Classic, Duration::ZERO).await;
}

/// Short delays are not held up behind long ones (each delay bucket is its own queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_retry_does_not_hold_up_a_short_one() {
    let bus = common::bus().await;
    let topic = unique("retry-buckets");
    let mut sub = bus.subscribe(SubscriptionSpec::new(&topic, "g")).await.expect("sub");
    bus.publish(&topic, &[seq_event(0, None), seq_event(1, None)]).await.expect("publish");
    let first = next(&mut sub).await;
    assert_eq!(seq_of(first.event().expect("event")), 0);
    // 0 waits ten minutes; 1 waits 20 ms and must not queue behind it.
    first.nack(Duration::from_secs(600)).await.expect("nack long");
    let second = next(&mut sub).await;
    assert_eq!(seq_of(second.event().expect("event")), 1);
    second.nack(Duration::from_millis(20)).await.expect("nack short");
    let again = next(&mut sub).await;
    assert_eq!(seq_of(again.event().expect("event")), 1, "the short retry came back first");
    assert_eq!(again.attempt(), 2);
    again.ack().await.expect("ack");
    sub.close().await.expect("close");
}

async fn single_active_consumer_keeps_order(queue_type: QueueType) {
    let config = common::config().queue_type(queue_type).single_active_consumer(true);
    let bus = common::bus_with(config).await;
    let topic = unique("sac");
    let spec = SubscriptionSpec::new(&topic, "g").prefetch(8);
    let mut first = bus.subscribe(spec.clone()).await.expect("first member");
    let mut second = bus.subscribe(spec).await.expect("second member");
    let events = keyed(0..100, 4);
    bus.publish(&topic, &events).await.expect("publish");

    let log = Arc::new(Mutex::new(Vec::new()));
    let standby = {
        let log = log.clone();
        tokio::spawn(async move {
            loop {
                let delivery = next(&mut second).await;
                let seq = seq_of(delivery.event().expect("event"));
                log.lock().expect("not poisoned").push(("second", seq));
                delivery.ack().await.expect("ack");
                if seq == 99 {
                    break;
                }
            }
            second.close().await.expect("close");
        })
    };
    // The first member is the active one: it handles a prefix, then leaves.
    for _ in 0..40 {
        let delivery = next(&mut first).await;
        let seq = seq_of(delivery.event().expect("event"));
        log.lock().expect("not poisoned").push(("first", seq));
        delivery.ack().await.expect("ack");
    }
    first.close().await.expect("close");
    tokio::time::timeout(PATIENCE, standby).await.expect("standby finishes").expect("task");

    let log = log.lock().expect("not poisoned").clone();
    let seqs: Vec<u64> = log.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(seqs, (0..100).collect::<Vec<_>>(), "{queue_type:?}: one order across members");
    let firsts = log.iter().take_while(|(member, _)| *member == "first").count();
    assert_eq!(firsts, 40, "only the active member received until it left: {log:?}");
    assert!(log[40..].iter().all(|(member, _)| *member == "second"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_single_active_consumer_keeps_order_across_members() {
    single_active_consumer_keeps_order(QueueType::Quorum).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn classic_single_active_consumer_keeps_order_across_members() {
    single_active_consumer_keeps_order(QueueType::Classic).await;
}

/// Changing a group's settings is refused with a message that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changing_a_groups_queue_type_is_a_config_error() {
    let topic = unique("changed");
    let quorum = common::bus().await;
    let sub = quorum.subscribe(SubscriptionSpec::new(&topic, "g")).await.expect("sub");
    sub.close().await.expect("close");
    let classic = common::bus_with(common::config().queue_type(QueueType::Classic)).await;
    let Err(err) = classic.subscribe(SubscriptionSpec::new(&topic, "g")).await else {
        panic!("a group cannot change its queue type")
    };
    assert!(matches!(err, keel_core::BusError::Config(_)), "{err}");
    assert!(err.to_string().contains("queue_type"), "{err}");
}

/// What a group member gives back: `drop`, a delivery dropped unsettled (rejected with
/// requeue); `leave`, the member closing while holding it (its channel closes).
async fn given_back_order(queue_type: QueueType, leave: bool) -> Vec<(u64, u32)> {
    let bus = common::bus_with(common::config().queue_type(queue_type)).await;
    let topic = unique("given-back");
    let spec = SubscriptionSpec::new(&topic, "g").prefetch(1);
    let mut sub = bus.subscribe(spec.clone()).await.expect("sub");
    bus.publish(&topic, &keyed(0..5, 1)).await.expect("publish");
    let first = next(&mut sub).await;
    assert_eq!(seq_of(first.event().expect("event")), 0);
    if leave {
        sub.close().await.expect("close");
        drop(first);
        sub = bus.subscribe(spec).await.expect("sub");
    } else {
        drop(first);
    }
    let mut handled = Vec::new();
    while handled.len() < 5 {
        let delivery = next(&mut sub).await;
        handled.push((seq_of(delivery.event().expect("event")), delivery.attempt()));
        delivery.ack().await.expect("ack");
    }
    sub.close().await.expect("close");
    handled
}

const REDELIVERED_FIRST: [(u64, u32); 5] = [(0, 2), (1, 1), (2, 1), (3, 1), (4, 1)];
const REDELIVERED_LAST: [(u64, u32); 5] = [(1, 1), (2, 1), (3, 1), (4, 1), (0, 2)];

/// Classic queues put what is given back where it was: redelivered before later ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn classic_redelivers_what_is_given_back_first() {
    assert_eq!(given_back_order(QueueType::Classic, false).await, REDELIVERED_FIRST);
    assert_eq!(given_back_order(QueueType::Classic, true).await, REDELIVERED_FIRST);
}

/// Quorum queues (RabbitMQ 3.x) redeliver what a member held when it leaves or fails
/// first, but a delivery rejected with requeue (dropped unsettled) goes to the tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_redelivers_a_leavers_messages_first_and_a_dropped_one_last() {
    assert_eq!(given_back_order(QueueType::Quorum, true).await, REDELIVERED_FIRST);
    assert_eq!(given_back_order(QueueType::Quorum, false).await, REDELIVERED_LAST);
}

/// A member that acks a burst of deliveries and leaves at once keeps those acks: the
/// group does not hand any of them out again. On a quorum queue, RabbitMQ holds back
/// the acks a channel sends faster than the queue applies them, and closing the
/// channel then dropped the held-back ones (rabbitmq-server#10327): a graceful leave
/// redelivered messages it had acknowledged. Several rounds, because the loss depends
/// on timing.
async fn acks_survive_an_immediate_leave(queue_type: QueueType, single_active: bool) {
    let config = common::config().queue_type(queue_type).single_active_consumer(single_active);
    let bus = common::bus_with(config).await;
    let topic = unique("ack-then-leave");
    let spec = SubscriptionSpec::new(&topic, "g").prefetch(500);
    let mut acked = std::collections::HashSet::new();
    for round in 0..8_u64 {
        let mut sub = bus.subscribe(spec.clone()).await.expect("sub");
        let events: Vec<_> = (round * 300..(round + 1) * 300).map(|i| seq_event(i, None)).collect();
        bus.publish(&topic, &events).await.expect("publish");
        for _ in 0..300 {
            let delivery = next(&mut sub).await;
            let seq = seq_of(delivery.event().expect("event"));
            assert!(acked.insert(seq), "round {round}: event {seq} came again after its ack");
            delivery.ack().await.expect("ack");
        }
        sub.close().await.expect("close");
    }
    let mut sub = bus.subscribe(spec).await.expect("sub");
    let mut again = Vec::new();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(500), sub.next()).await
    {
        again.push(seq_of(delivery.event().expect("event")));
        delivery.ack().await.expect("ack");
    }
    sub.close().await.expect("close");
    assert!(again.is_empty(), "{} acknowledged events came again: {again:?}", again.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_acks_survive_an_immediate_leave() {
    acks_survive_an_immediate_leave(QueueType::Quorum, false).await;
    acks_survive_an_immediate_leave(QueueType::Quorum, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn classic_acks_survive_an_immediate_leave() {
    acks_survive_an_immediate_leave(QueueType::Classic, false).await;
    acks_survive_an_immediate_leave(QueueType::Classic, true).await;
}
