//! Fast tests against librdkafka's in-process mock cluster (no broker needed). They
//! check the backend's own logic (hand-out order, redelivery, commits, dead letters);
//! the integration tests run everything against the real broker.

use std::time::Duration;

use keel_core::bus::DeadLetterReason;
use keel_core::{
    CloudEvent, DeadLetters, Payload, Publisher, Subscriber, Subscription, SubscriptionSpec,
};
use rdkafka::mocking::MockCluster;

use crate::{KafkaBus, KafkaConfig};

fn event(seq: u64, key: &str) -> CloudEvent {
    CloudEvent::builder("t.seq", "/tests")
        .partition_key(key)
        .data("application/json", format!(r#"{{"seq":{seq}}}"#))
        .build()
        .expect("valid")
}

fn seq(payload: &Payload) -> u64 {
    match payload {
        Payload::Event(e) => {
            let v: serde_json::Value =
                serde_json::from_slice(e.data().expect("data")).expect("json");
            v["seq"].as_u64().expect("seq")
        }
        Payload::Undecodable(raw) => panic!("undecodable: {raw:?}"),
    }
}

fn topics(cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>, topic: &str) {
    cluster.create_topic(topic, 2, 1).expect("topic");
    for side in [crate::retry_topic(topic, "g"), crate::dead_letter_topic(topic, "g")] {
        cluster.create_topic(&side, 1, 1).expect("side topic");
    }
}

fn bus(cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>) -> KafkaBus {
    let mut config = KafkaConfig::new(cluster.bootstrap_servers());
    // The mock cluster is a well-behaved Kafka: the defaults (no hand-off grace, no
    // rewind, cooperative-sticky assignment) are for it.
    config.partitions = 2;
    // The mock's coordinator holds a new member's join until a member that left has
    // timed out: keep that short (the defaults are otherwise Apache Kafka's).
    config.session_timeout = Duration::from_secs(10);
    // The mock cluster does not answer CreateTopics: the tests create their topics.
    config.create_topics = false;
    KafkaBus::new(config).expect("bus")
}

async fn next(sub: &mut Box<dyn Subscription>) -> keel_core::Delivery {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("a delivery in time")
        .expect("open")
        .expect("delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_in_order_nack_first_and_resume_after_the_last_ack() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    topics(&cluster, "orders");
    let bus = bus(&cluster);
    let mut sub =
        bus.subscribe(SubscriptionSpec::new("orders", "g").prefetch(8)).await.expect("subscribe");
    let events: Vec<_> = (0..5).map(|i| event(i, "k")).collect();
    bus.publish("orders", &events).await.expect("publish");

    // Same key: the second is not handed out while the first is unsettled.
    let first = next(&mut sub).await;
    assert_eq!((seq(first.payload()), first.attempt()), (0, 1));
    let early = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(early.is_err(), "a later record of the key came out early: {early:?}");
    // Nacked: it comes back (attempt 2) before anything later of its key.
    first.nack(Duration::from_millis(50)).await.expect("nack");
    let again = next(&mut sub).await;
    assert_eq!((seq(again.payload()), again.attempt()), (0, 2));
    again.ack().await.expect("ack");
    for expected in 1..3 {
        let d = next(&mut sub).await;
        assert_eq!(seq(d.payload()), expected);
        d.ack().await.expect("ack");
    }
    // Dropped unsettled: handed out again, same attempt.
    drop(next(&mut sub).await);
    let redelivered = next(&mut sub).await;
    assert_eq!((seq(redelivered.payload()), redelivered.attempt()), (3, 1));
    redelivered.ack().await.expect("ack");
    sub.close().await.expect("close");

    // The group resumes after what was acknowledged (3 settled + 1 more = seq 4 left).
    let mut sub = bus.subscribe(SubscriptionSpec::new("orders", "g")).await.expect("subscribe");
    let d = next(&mut sub).await;
    assert_eq!(seq(d.payload()), 4);
    d.ack().await.expect("ack");
    sub.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_round_trip_on_the_mock_cluster() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    topics(&cluster, "pay");
    let bus = bus(&cluster);
    let mut sub = bus.subscribe(SubscriptionSpec::new("pay", "g")).await.expect("subscribe");
    bus.publish("pay", &[event(1, "a"), event(2, "b")]).await.expect("publish");
    for _ in 0..2 {
        let d = next(&mut sub).await;
        let reason = DeadLetterReason { error: format!("bad {}", seq(d.payload())), attempts: 3 };
        d.dead_letter(reason).await.expect("dead-letter");
    }
    let letters = bus.list("pay", "g", 10).await.expect("list");
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().all(|l| l.attempts == 3 && l.reason.starts_with("bad ")));
    assert!(bus.retry("pay", "g", &letters[0].id).await.expect("retry"));
    let retried = next(&mut sub).await;
    assert_eq!(
        retried.payload(),
        &letters[0].payload,
        "the retried record comes back to the group"
    );
    retried.ack().await.expect("ack");
    assert_eq!(bus.list("pay", "g", 10).await.expect("list").len(), 1);
    assert_eq!(bus.purge("pay", "g").await.expect("purge"), 1);
    assert!(bus.list("pay", "g", 10).await.expect("list").is_empty());
    sub.close().await.expect("close");
    Publisher::close(&bus).await.expect("close");
    assert!(bus.publish("pay", &[event(3, "c")]).await.is_err(), "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_checked_answers_at_once_for_a_broker_and_fails_for_none() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let url = format!("kafka://{}", cluster.bootstrap_servers());
    KafkaBus::connect_checked(&url).await.expect("the mock broker answers");

    // A port nobody listens on: one connection error, within the probe's timeout.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("kafka://127.0.0.1:{port}");
    let outcome = tokio::time::timeout(
        crate::CONNECT_TIMEOUT + Duration::from_secs(50),
        KafkaBus::connect_checked(&url),
    )
    .await
    .expect("connect_checked returns");
    let error = outcome.expect_err("nobody answers");
    assert!(matches!(error, keel_core::BusError::Connection(_)), "{error}");
    assert!(error.to_string().contains(&format!("127.0.0.1:{port}")), "{error}");
}
