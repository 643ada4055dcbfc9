//! A consumer with the skip policy counts each skipped event in
//! `keel_events_skipped_total{subscriber, reason}` (on the in-process bus; the
//! conformance suite checks the skipping itself on every backend).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_bus::{Consumer, Typed, Unreadable, typed};
use keel_core::envelope::{JSON, ext};
use keel_core::{CloudEvent, Event, Publisher, SubscriptionSpec};
use keel_memory::MemoryBus;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Event, Serialize, Deserialize)]
#[event(type = "keel.test.n", version = 2, upcast(from = 1, with = keep))]
struct N {
    n: u64,
}

fn keep(data: serde_json::Value) -> Result<serde_json::Value, String> {
    Ok(data)
}

fn at(version: i64, data: &str) -> CloudEvent {
    CloudEvent::builder("keel.test.n", "/t")
        .data(JSON, data.to_owned())
        .extension(ext::SCHEMA_VERSION, version)
        .build()
        .expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_events_are_counted_by_subscriber_and_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder of this test binary");

    let bus = Arc::new(MemoryBus::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let handler = typed(move |n: Typed<N>| {
        let sink = sink.clone();
        async move {
            sink.lock().expect("not poisoned").push(n.event.n);
            Ok(())
        }
    });
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new("t", "g"))
        .on_unreadable(Unreadable::Skip)
        .start(handler)
        .await
        .expect("subscribe");
    let events =
        [at(3, r#"{"n":1}"#), at(3, r#"{"n":2}"#), at(2, r#"{"n":"x"}"#), at(1, r#"{"n":4}"#)];
    bus.publish("t", &events).await.expect("publish");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().expect("not poisoned").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the readable event never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.stop().await.expect("stop");
    assert_eq!(*seen.lock().expect("not poisoned"), vec![4]);

    let mut skipped: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "keel_events_skipped_total")
        .map(|(key, _, _, value)| {
            let labels: Vec<String> =
                key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            let DebugValue::Counter(n) = value else { panic!("a counter") };
            (labels.join(","), n)
        })
        .collect();
    skipped.sort();
    assert_eq!(
        skipped,
        vec![
            ("subscriber=group:t:g,reason=future_version".to_owned(), 2),
            ("subscriber=group:t:g,reason=undecodable".to_owned(), 1),
        ]
    );
}
