//! Timing the relay against a bus: how fast it moves a backlog from the log to the
//! broker. The bus crates' benches print it beside their raw client's confirmed publish
//! rate, in the same run (issue 18's target: at least 0.8x).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_core::{CloudEvent, ExpectedVersion, Publisher, StreamId};
use keel_store::{EventLog, Relay};

/// Streams the backlog is spread over (each a run of events in order).
const STREAMS: usize = 64;

/// Appends `events` to `log` (not timed), `per_append` at a time, on streams of
/// `topic`, then runs a relay to `bus` until its checkpoint reaches the log's head.
/// Returns the time from the relay's start to then: taking its lease, reading,
/// publishing with the broker's confirmations, and storing checkpoints.
///
/// `topic` must be a stream category (no `-`): the events take their topic from their
/// stream. The relay is stopped before this returns.
///
/// # Panics
/// When the log or the bus fails: a benchmark has no answer then.
pub async fn relay_backlog(
    log: Arc<dyn EventLog>,
    bus: Arc<dyn Publisher>,
    topic: &str,
    events: &[CloudEvent],
    per_append: usize,
) -> Duration {
    assert!(!topic.contains('-'), "`{topic}` is not a stream category");
    for (n, batch) in events.chunks(per_append.max(1)).enumerate() {
        let stream = StreamId::new(format!("{topic}-{}", n % STREAMS)).expect("a stream id");
        log.append(&stream, ExpectedVersion::Any, batch).await.expect("append the backlog");
    }
    let head = log.head().await.expect("the log's head");
    let name = format!("bench-{topic}");
    let key = Relay::checkpoint_name(&name);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let relay = tokio::spawn(Relay::new(log.clone(), bus, name).run(async {
        let _ = stopped.await;
    }));
    loop {
        let at = log.checkpoint(&key).await.expect("the relay's checkpoint");
        if at.is_some_and(|cursor| u64::try_from(cursor.position).is_ok_and(|at| at >= head.0)) {
            break;
        }
        assert!(!relay.is_finished(), "the relay stopped before relaying the backlog");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop.send(());
    relay.await.expect("the relay task").expect("the relay");
    elapsed
}
