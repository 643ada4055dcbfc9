#![cfg(feature = "integration")]
//! Recovery from losing the broker, while publishing and consuming: every message
//! whose publish was confirmed arrives. These tests cut connections or stop the
//! broker, so the test script runs them alone (`disrupt_` prefix), one at a time.
//!
//! Connections are cut with `rabbitmqctl close_all_connections` in a vhost of their
//! own (`keel-disrupt`), so other clients of the broker are left alone. The memory
//! alarm test blocks every publisher on the broker for a few seconds.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_bus::{Backoff, Consumer, HandlerError, Message, RedeliveryPolicy, handler_fn};
use keel_core::{Bus, BusError, Publisher, SubscriptionSpec};
use keel_testkit::util::{PATIENCE, seq_event, unique};

const VHOST: &str = "keel-disrupt";

/// The test broker's URL with the vhost replaced by [`VHOST`] (created if needed).
async fn isolated_url() -> String {
    let vhosts = common::rabbitmqctl(&["list_vhosts", "--quiet"]).await;
    if !vhosts.lines().any(|line| line.trim() == VHOST) {
        common::rabbitmqctl(&["add_vhost", VHOST]).await;
    }
    let mut url = url::Url::parse(&common::url()).expect("test url");
    common::rabbitmqctl(&["set_permissions", "-p", VHOST, url.username(), ".*", ".*", ".*"]).await;
    url.set_path(&format!("/{VHOST}"));
    url.to_string()
}

/// Publishes events one at a time until `stop` is set, retrying what failed
/// (at-least-once, as the relay does); returns the ids whose publish was confirmed.
/// Records how many publishes failed retryably. It runs until the test has done its
/// damage, not for a fixed count: on a fast machine a fixed count was done before the
/// later cuts, and a cut between two publishes may fail none of them.
fn publisher(
    bus: Arc<dyn Bus>,
    topic: String,
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut confirmed = Vec::new();
        for i in 0.. {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let event = seq_event(i, Some(&format!("key-{}", i % 7)));
            loop {
                match tokio::time::timeout(
                    PATIENCE,
                    bus.publish(&topic, std::slice::from_ref(&event)),
                )
                .await
                .expect("a publish never hangs")
                {
                    Ok(()) => break,
                    Err(error) if error.is_retryable() => {
                        failures.lock().expect("not poisoned").push(error.to_string());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(error) => panic!("publish failed for good: {error}"),
                }
            }
            confirmed.push(event.id().to_owned());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        confirmed
    })
}

/// A consumer that records every id it handles; every tenth message fails once, so
/// retries are in flight when the broker goes away.
async fn consumer(
    bus: &Arc<dyn Bus>,
    topic: &str,
) -> (Arc<Mutex<HashSet<String>>>, keel_bus::ConsumerHandle) {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let sink = seen.clone();
    let handler = handler_fn(move |message: Message| {
        let sink = sink.clone();
        async move {
            let seq = keel_testkit::util::seq_of(message.event());
            if seq.is_multiple_of(10) && message.attempt() == 1 {
                return Err(HandlerError::transient("fails once on purpose"));
            }
            sink.lock().expect("not poisoned").insert(message.event().id().to_owned());
            Ok::<(), HandlerError>(())
        }
    });
    let policy = RedeliveryPolicy::new(
        100,
        Backoff::new(Duration::from_millis(10), Duration::from_millis(200)),
    );
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(topic, "g").prefetch(32))
        .concurrency(4)
        .redelivery(policy)
        .start(handler)
        .await
        .expect("subscribe");
    (seen, handle)
}

async fn wait_for_all(seen: &Arc<Mutex<HashSet<String>>>, confirmed: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let missing = {
            let seen = seen.lock().expect("not poisoned");
            confirmed.iter().filter(|id| !seen.contains(*id)).count()
        };
        if missing == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} confirmed messages never arrived",
            confirmed.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disrupt_close_all_connections() {
    common::init_logs();
    let url = isolated_url().await;
    let bus: Arc<dyn Bus> = Arc::new(common::bus_at(&url, common::config()).await);
    let topic = unique("disrupt-close");
    let (seen, handle) = consumer(&bus, &topic).await;
    let failures = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publisher(bus.clone(), topic.clone(), stop.clone(), failures.clone());
    // At least four cuts, and until one of them has failed a publish.
    for cut in 1.. {
        tokio::time::sleep(Duration::from_millis(600)).await;
        common::rabbitmqctl(&["close_all_connections", "--vhost", VHOST, "keel disrupt test"])
            .await;
        if cut >= 4 && !failures.lock().expect("not poisoned").is_empty() {
            break;
        }
        assert!(cut < 30, "30 cuts of every connection failed no publish");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let confirmed = publishing.await.expect("publisher");
    assert!(confirmed.len() > 100, "only {} publishes confirmed", confirmed.len());
    wait_for_all(&seen, &confirmed).await;
    handle.stop().await.expect("stop");
    Publisher::close(&*bus).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disrupt_broker_stop_start() {
    common::init_logs();
    let bus = common::dyn_bus().await;
    let topic = unique("disrupt-restart");
    let (seen, handle) = consumer(&bus, &topic).await;
    let failures = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publisher(bus.clone(), topic.clone(), stop.clone(), failures.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stopped = common::stop_broker().await;
    // While the broker is away a publish fails at once, retryably, rather than hang.
    let down =
        tokio::time::timeout(Duration::from_secs(10), bus.publish(&topic, &[seq_event(0, None)]))
            .await
            .expect("no hang while the broker is down");
    assert!(
        matches!(&down, Err(e) if e.is_retryable() || matches!(e, BusError::Closed)),
        "{down:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    common::start_broker(stopped).await;
    // Some publishes on the broker that came back, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let confirmed = publishing.await.expect("publisher");
    assert!(confirmed.len() > 100, "only {} publishes confirmed", confirmed.len());
    wait_for_all(&seen, &confirmed).await;
    handle.stop().await.expect("stop");
    assert!(!failures.lock().expect("not poisoned").is_empty(), "publishes failed meanwhile");
}

/// Puts the broker's memory high watermark back to what it was when dropped.
struct RestoreWatermark(String);

impl Drop for RestoreWatermark {
    fn drop(&mut self) {
        let term = format!("vm_memory_monitor:set_vm_memory_high_watermark({}).", self.0);
        let _ = std::process::Command::new("rabbitmqctl").args(["eval", &term]).output();
    }
}

/// A broker that blocks publishers (a memory alarm) is back-pressure: publishes fail,
/// retryably and without hanging, and what was confirmed still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disrupt_memory_alarm_is_backpressure() {
    common::init_logs();
    let bus: Arc<dyn Bus> =
        Arc::new(common::bus_with(common::config().publish_timeout(Duration::from_secs(3))).await);
    let topic = unique("disrupt-alarm");
    let (seen, handle) = consumer(&bus, &topic).await;
    let mut confirmed = Vec::new();
    let first = seq_event(1, None);
    bus.publish(&topic, std::slice::from_ref(&first)).await.expect("publish before the alarm");
    confirmed.push(first.id().to_owned());

    let original =
        common::rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."]).await;
    let restore = RestoreWatermark(original.trim().to_owned());
    common::rabbitmqctl(&["set_vm_memory_high_watermark", "0.000001"]).await;
    let mut outcomes = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            bus.publish(&topic, &[seq_event(2, None)]),
        )
        .await
        .expect("a blocked publish never hangs");
        match result {
            Err(BusError::Backpressure(_)) => break,
            Err(error) => {
                assert!(error.is_retryable(), "{error}");
                outcomes.push(error.to_string());
            }
            Ok(()) => outcomes.push("accepted before the alarm took effect".to_owned()),
        }
        assert!(tokio::time::Instant::now() < deadline, "no back-pressure: {outcomes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(restore);

    // Once the alarm clears, publishing works again and nothing confirmed is lost.
    let last = seq_event(3, None);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while let Err(error) = bus.publish(&topic, std::slice::from_ref(&last)).await {
        assert!(error.is_retryable(), "{error}");
        assert!(tokio::time::Instant::now() < deadline, "still refused: {error}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    confirmed.push(last.id().to_owned());
    wait_for_all(&seen, &confirmed).await;
    handle.stop().await.expect("stop");
}
