//! What the conformance suite does not cover: the Kafka mapping (topics, keys, the
//! dead-letter record's headers), replay from an offset or a time, and Tansu's
//! fetch-from-a-batch-start behaviour.

#![cfg(feature = "integration")]

mod common;

use std::time::Duration;

use keel_bus::{Backoff, Consumer, HandlerError, Message, RedeliveryPolicy, handler_fn};
use keel_core::{
    BusError, CloudEvent, DeadLetters, Payload, Publisher, Subscriber, SubscriptionSpec,
};
use keel_kafka::{KafkaBus, ReplayStart, dead_letter_topic, dlq_headers};
use keel_testkit::util::{eventually_async, seq_event, seq_of, unique};

fn one_partition_bus() -> KafkaBus {
    let mut config = common::config(&common::unique_prefix());
    config.partitions = 1;
    KafkaBus::new(config).expect("bus")
}

fn seqs(records: &[keel_kafka::ReplayedRecord]) -> Vec<u64> {
    records
        .iter()
        .map(|r| match &r.payload {
            Payload::Event(e) => seq_of(e),
            Payload::Undecodable(raw) => panic!("undecodable: {raw:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_with_the_configured_partitions_and_keyed_by_partition_key() {
    let mut config = common::config(&common::unique_prefix());
    config.partitions = 3;
    let bus = KafkaBus::new(config).expect("bus");
    let topic = unique("mapping");
    let events: Vec<CloudEvent> =
        (0..30).map(|i| seq_event(i, Some(&format!("k{}", i % 5)))).collect();
    bus.publish(&topic, &events).await.expect("publish");
    let records = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || common::read_all(&topic)
    })
    .await
    .expect("read");
    assert_eq!(records.len(), 30);
    let partitions: std::collections::HashSet<i32> = records.iter().map(|r| r.partition).collect();
    assert!(partitions.iter().all(|p| (0..3).contains(p)), "{partitions:?}");
    for key in 0..5 {
        let key = format!("k{key}");
        let of_key: Vec<_> =
            records.iter().filter(|r| r.key.as_deref() == Some(key.as_bytes())).collect();
        assert_eq!(of_key.len(), 6);
        assert!(
            of_key.iter().all(|r| r.partition == of_key[0].partition),
            "one key, one partition"
        );
        assert!(of_key.iter().all(|r| r.header("ce_partitionkey") == Some(key.as_str())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reads_from_an_offset_inside_a_batch_and_from_a_time() {
    let bus = one_partition_bus();
    let topic = unique("replay");
    // One batch of ten (offsets 0..9), then two more batches after a pause.
    let first: Vec<_> = (0..10).map(|i| seq_event(i, None)).collect();
    bus.publish(&topic, &first).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    bus.publish(&topic, &(10..15).map(|i| seq_event(i, None)).collect::<Vec<_>>())
        .await
        .expect("publish");
    bus.publish(&topic, &(15..20).map(|i| seq_event(i, None)).collect::<Vec<_>>())
        .await
        .expect("publish");

    let replay = bus.replay();
    let all = replay.read(&topic, ReplayStart::Beginning, usize::MAX).await.expect("replay");
    assert_eq!(seqs(&all), (0..20).collect::<Vec<_>>());
    // Offset 4 lies inside the first batch: Tansu alone would skip to offset 10.
    let from_four = replay.read(&topic, ReplayStart::Offset(4), usize::MAX).await.expect("replay");
    assert_eq!(seqs(&from_four), (4..20).collect::<Vec<_>>());
    let inside_last =
        replay.read(&topic, ReplayStart::Offset(17), usize::MAX).await.expect("replay");
    assert_eq!(seqs(&inside_last), vec![17, 18, 19]);
    let since = replay.read(&topic, ReplayStart::Time(between), usize::MAX).await.expect("replay");
    assert_eq!(seqs(&since), (10..20).collect::<Vec<_>>());
    let limited = replay.read(&topic, ReplayStart::Beginning, 3).await.expect("replay");
    assert_eq!(seqs(&limited), vec![0, 1, 2]);
    let nothing = replay.read(&unique("no-such-topic"), ReplayStart::Beginning, 10).await;
    assert!(nothing.expect("an absent topic reads as empty").is_empty());
    assert!(matches!(
        replay.read(&topic, ReplayStart::Offset(-1), 10).await,
        Err(BusError::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_from_an_offset_inside_a_batch() {
    // One batch of 50 on one partition; the first member handles 20 and leaves with
    // the rest unsettled, so the group's committed offset (20) lies inside the batch.
    let bus = one_partition_bus();
    let topic = unique("midbatch");
    let mut first =
        bus.subscribe(SubscriptionSpec::new(&topic, "g").prefetch(20)).await.expect("subscribe");
    let events: Vec<_> = (0..50).map(|i| seq_event(i, None)).collect();
    bus.publish(&topic, &events).await.expect("publish");
    for expected in 0..20 {
        let delivery = tokio::time::timeout(Duration::from_secs(60), first.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("delivery");
        assert_eq!(delivery.event().map(seq_of), Some(expected));
        delivery.ack().await.expect("ack");
    }
    first.close().await.expect("close");
    let mut second = bus.subscribe(SubscriptionSpec::new(&topic, "g")).await.expect("subscribe");
    for expected in 20..50 {
        let delivery = tokio::time::timeout(Duration::from_secs(60), second.next())
            .await
            .expect("the rest of the batch, in time")
            .expect("open")
            .expect("delivery");
        assert_eq!(delivery.event().map(seq_of), Some(expected));
        delivery.ack().await.expect("ack");
    }
    second.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_records_carry_the_original_and_the_reason() {
    let bus = common::bus(&common::unique_prefix());
    let topic = unique("dlqheaders");
    let handler = handler_fn(|_message: Message| async move {
        Err::<(), _>(HandlerError::transient("boom: always failing"))
    });
    let handle =
        Consumer::new(std::sync::Arc::new(bus.clone()), SubscriptionSpec::new(&topic, "g"))
            .redelivery(RedeliveryPolicy::new(
                2,
                Backoff::new(Duration::from_millis(5), Duration::from_millis(10)),
            ))
            .start(handler)
            .await
            .expect("subscribe");
    let event = seq_event(7, Some("key-7"));
    bus.publish(&topic, std::slice::from_ref(&event)).await.expect("publish");
    eventually_async("a dead letter", || async {
        !bus.list(&topic, "g", 10).await.expect("list").is_empty()
    })
    .await;
    handle.stop().await.expect("stop");
    let letters = bus.list(&topic, "g", 10).await.expect("list");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 2);
    assert!(letters[0].reason.contains("boom: always failing"), "{}", letters[0].reason);

    let dlq = dead_letter_topic(&topic, "g");
    let records = tokio::task::spawn_blocking(move || common::read_all(&dlq)).await.expect("read");
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.key.as_deref(), Some(&b"key-7"[..]), "the original key");
    assert_eq!(record.header("ce_id"), Some(event.id()), "the original CloudEvents headers");
    assert_eq!(record.value, event.data().expect("data").to_vec(), "the original value");
    assert!(record.header(dlq_headers::ERROR).is_some_and(|e| e.contains("boom")));
    assert_eq!(record.header(dlq_headers::ATTEMPTS), Some("2"));
    assert_eq!(record.header(dlq_headers::ORIGINAL_TOPIC), Some(topic.as_str()));
    assert!(
        record.header(dlq_headers::ORIGINAL_PARTITION).is_some_and(|p| p.parse::<i32>().is_ok())
    );
    assert_eq!(record.header(dlq_headers::ORIGINAL_OFFSET), Some("0"));
    assert!(
        record
            .header(dlq_headers::DEAD_LETTERED_AT)
            .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
    );
    assert_eq!(record.header(dlq_headers::ID), Some(letters[0].id.0.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_topic_creation_is_a_clear_error() {
    let mut config = common::config(&common::unique_prefix());
    config.replication = Some(3); // one broker: the broker cannot place three replicas
    let bus = KafkaBus::new(config).expect("bus");
    let topic = unique("refused");
    match bus.publish(&topic, &[seq_event(0, None)]).await {
        Err(error @ (BusError::Config(_) | BusError::Connection(_))) => {
            assert!(error.to_string().contains(&topic), "names the topic: {error}");
        }
        // Tansu 0.6 accepts any replication factor on one broker.
        Ok(()) => {}
        Err(other) => panic!("unexpected error: {other}"),
    }
    assert!(
        matches!(KafkaBus::connect("kafka://127.0.0.1:9092?colour=blue"), Err(BusError::Config(m)) if m.contains("`colour`"))
    );
}

/// A topic that disappears after the bus created it (an operator deleted it, or the
/// broker came back empty) is created again by a later publish, instead of every
/// publish timing out for the life of the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_under_the_bus_is_created_again() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;

    let mut config = common::config(&common::unique_prefix());
    config.partitions = 1;
    config.publish_timeout = Duration::from_secs(3);
    let bus = KafkaBus::new(config).expect("bus");
    let topic = unique("deleted");
    bus.publish(&topic, &[seq_event(1, None)]).await.expect("first publish creates the topic");
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .create()
        .expect("admin client");
    let deleted = admin
        .delete_topics(
            &[&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("delete request");
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    // As the relay does: retry a failed publish. Each attempt waits at most 3 s.
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        let outcome = bus.publish(&topic, &[seq_event(2, None)]).await;
        let done = outcome.is_ok();
        outcomes.push(outcome.map_err(|e| e.to_string()));
        if done {
            break;
        }
    }
    assert!(outcomes.last().is_some_and(Result::is_ok), "publishes after the delete: {outcomes:?}");
}
