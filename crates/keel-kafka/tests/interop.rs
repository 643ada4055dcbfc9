//! Interop with a Kafka client that knows nothing of Keel: PyPI's `confluent-kafka`
//! (which bundles its own librdkafka), driven through the scripts in `tests/interop/`.
//! Needs `python3 -m pip install confluent-kafka`.

#![cfg(feature = "integration")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use keel_core::envelope::ext;
use keel_core::{CloudEvent, Payload, Publisher, Subscriber, SubscriptionSpec};

const PIP: &str = "python3 -m pip install confluent-kafka";

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop").join(name)
}

/// Fails with the install command when Python or the package is missing.
fn require_confluent_kafka() {
    let output = Command::new("python3").args(["-c", "import confluent_kafka"]).output();
    match output {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the interop tests need PyPI's confluent-kafka (`{PIP}`): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("the interop tests need python3 with confluent-kafka (`{PIP}`): {e}"),
    }
}

fn python(args: &[&str]) -> String {
    let output = Command::new("python3").args(args).output().expect("python3 runs");
    assert!(
        output.status.success(),
        "python3 {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_records_are_read_with_cloudevents_headers_by_another_client() {
    require_confluent_kafka();
    let bus = common::bus(&common::unique_prefix());
    let topic = keel_testkit::util::unique("interop-out");
    let event = CloudEvent::builder("keel.test.order-placed", "/keel/interop")
        .subject("order-9")
        .partition_key("order-9")
        .extension(ext::TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .extension(ext::STREAM_VERSION, 4_i64)
        .data("application/json", r#"{"order_id":"order-9","total":12}"#)
        .build()
        .expect("valid");
    bus.publish(&topic, std::slice::from_ref(&event)).await.expect("publish");

    let out =
        python(&[script("read_topic.py").to_str().expect("path"), &common::brokers(), &topic]);
    let records: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(records.len(), 1, "{out}");
    let record = &records[0];
    let headers = &record["headers"];
    assert_eq!(headers["ce_specversion"], "1.0");
    assert_eq!(headers["ce_id"], event.id());
    assert_eq!(headers["ce_source"], "/keel/interop");
    assert_eq!(headers["ce_type"], "keel.test.order-placed");
    assert_eq!(headers["ce_subject"], "order-9");
    assert_eq!(headers["ce_partitionkey"], "order-9");
    assert_eq!(headers["ce_streamversion"], "4");
    assert_eq!(
        headers["ce_traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert!(headers["ce_time"].as_str().is_some_and(|t| t.ends_with('Z')), "{headers}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(record["key"], "order-9", "the record key is the partition key");
    assert_eq!(record["value"], r#"{"order_id":"order-9","total":12}"#, "data as is");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_records_from_another_client_are_consumed() {
    require_confluent_kafka();
    let bus = common::bus(&common::unique_prefix());
    let topic = keel_testkit::util::unique("interop-in");
    let mut sub = bus.subscribe(SubscriptionSpec::new(&topic, "g")).await.expect("subscribe");
    let id = uuid::Uuid::now_v7().to_string();
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/other/producer",
        "type": "other.thing-happened",
        "subject": "thing-1",
        "time": "2026-11-27T09:30:12Z",
        "datacontenttype": "application/json",
        "partitionkey": "thing-1",
        "data": {"n": 7}
    });
    python(&[
        script("write_structured.py").to_str().expect("path"),
        &common::brokers(),
        &topic,
        &event.to_string(),
    ]);
    let delivery = tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("a delivery in time")
        .expect("open")
        .expect("delivery");
    let Payload::Event(received) = delivery.payload().clone() else {
        panic!("structured record did not decode: {delivery:?}")
    };
    assert_eq!(received.id(), id);
    assert_eq!(received.ty(), "other.thing-happened");
    assert_eq!(received.source(), "/other/producer");
    assert_eq!(received.subject(), Some("thing-1"));
    assert_eq!(received.partition_key(), Some("thing-1"));
    assert_eq!(received.data().map(|d| &d[..]), Some(&br#"{"n":7}"#[..]));
    delivery.ack().await.expect("ack");
    sub.close().await.expect("close");
}
