//! Timing the relay against a bus: how fast it moves a backlog from the log to the
//! broker, and the CPU the whole machine spent meanwhile. The bus crates' benches print
//! it beside their raw client's confirmed publish rate, in the same run (issue 18's
//! target: at least 0.8x).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_core::{CloudEvent, ExpectedVersion, Publisher, StreamId};
use keel_store::{EventLog, Relay};

/// Streams the backlog is spread over (each a run of events in order).
const STREAMS: usize = 64;

/// A timed run (of the relay, or of a bench's publish).
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// How long it took (the relay: from its start until its checkpoint reached the
    /// log's head).
    pub elapsed: Duration,
    /// The CPU time the whole machine spent meanwhile ([`machine_cpu_time`]).
    pub machine_cpu: Duration,
}

/// The CPU time every process of the machine has spent so far (the bench, the broker,
/// PostgreSQL alike), from `/proc/stat`; zero where there is none. On a machine whose
/// cores the bench, the broker and the database share, a rate follows the CPU each
/// message costs all of them, so the benches print it beside the rate.
pub fn machine_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map_while(|field| field.parse().ok())
        .collect();
    // user, nice, system, idle, iowait, irq, softirq, steal (guest time is counted in
    // user already): busy is all but idle and iowait.
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(busy * 10)
}

/// Appends `events` to `log` (not timed), `per_append` at a time, on streams of
/// `topic`, then runs a relay to `bus` until its checkpoint reaches the log's head.
/// Returns the time from the relay's start to then (taking its lease, reading,
/// publishing with the broker's confirmations, and storing checkpoints), and the
/// machine's CPU time meanwhile.
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
) -> Measured {
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
    let cpu_before = machine_cpu_time();
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
    let machine_cpu = machine_cpu_time().saturating_sub(cpu_before);
    let _ = stop.send(());
    relay.await.expect("the relay task").expect("the relay");
    Measured { elapsed, machine_cpu }
}
