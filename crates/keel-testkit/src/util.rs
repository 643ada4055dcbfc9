//! Helpers shared by the conformance cases.

use std::future::Future;
use std::time::Duration;

use keel_core::CloudEvent;

/// How long a case waits for something that should happen before calling it lost.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A name no other test uses: `prefix-<uuid v7>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Polls `condition` every 10 ms until it holds; panics naming `what` after [`PATIENCE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`eventually`] for an async condition.
pub async fn eventually_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Event type of the sample events.
pub const SEQ_TYPE: &str = "keel.test.seq";

/// A sample event carrying `{"seq": seq}`, with a partition key when given.
pub fn seq_event(seq: u64, key: Option<&str>) -> CloudEvent {
    let mut builder = CloudEvent::builder(SEQ_TYPE, "/keel/testkit")
        .json_data(&serde_json::json!({ "seq": seq }))
        .expect("serializable");
    if let Some(key) = key {
        builder = builder.partition_key(key).subject(key);
    }
    builder.build().expect("valid sample event")
}

/// The `seq` of a sample event.
pub fn seq_of(event: &CloudEvent) -> u64 {
    let data = event.data().expect("sample events have data");
    let value: serde_json::Value = serde_json::from_slice(data).expect("sample data is JSON");
    value["seq"].as_u64().expect("sample data has seq")
}
