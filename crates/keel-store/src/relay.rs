//! The relay: the log is the outbox, and the relay delivers it to the bus.
//!
//! One relay per name is active across processes (the store's lease); the others wait
//! and take over when the active one dies. The active relay reads the log after its
//! checkpoint in subscription order, publishes each page to the bus (each topic's
//! events in order as one batch, the topics side by side), waits for the broker's
//! confirmation of all of it, and only then stores its checkpoint. A crash between
//! publish and checkpoint publishes the page again: delivery is at-least-once, and
//! consumers deduplicate with the inbox. The work overlaps where order allows: the
//! next page is read while this one is published, and a page's checkpoint is written
//! while the next one is published (each write after the one before).
//!
//! Failures: an error about the bus (connection, timeout, back-pressure, a refused
//! topic) is retried with backoff for ever and never blamed on an event. An event the
//! bus refuses for what it is ([`BusError::is_unpublishable`]: too large, invalid)
//! becomes a relay dead letter ([`crate::relay_dlq`]) and the relay goes on; one
//! nobody subscribes to ([`Publisher::publish_routed`]) is skipped, and a group created
//! later is backfilled from the log ([`crate::backfill`]). A store error ends the
//! active phase: the lease is released, and the relay starts again from its
//! checkpoint.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use keel_core::{BusError, CloudEvent, Position, Publisher};

use crate::error::Result;
use crate::log::{Cursor, EventLog, Lease, LogEvent, LogFilter};
use crate::relay_dlq::RelayDeadLetter;
use crate::subscription::{SubscribeOptions, read_ahead, subscribe};

/// How often an active relay reads its lag into `keel_relay_lag_events`.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// How a relay runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayOptions {
    /// Events read and published per round (default 5,000). Each round ends waiting
    /// for the broker to confirm its last event (after the Kafka producer's linger,
    /// if one is set), so small pages cap the rate: a Kafka relay moved 0.66x
    /// raw rdkafka's confirmed publish rate with pages of 1,000 and 0.84x with 5,000
    /// (docs/benchmarks.md). A page is only as large as the backlog, so this matters
    /// when the relay catches up, and bounds the memory it takes then.
    pub batch_size: usize,
    /// How often a standby relay tries to take the lease.
    pub standby_poll: Duration,
    /// Upper bound of the backoff between failed publishes.
    pub max_backoff: Duration,
    /// Reading options (poll interval and so on).
    pub subscribe: SubscribeOptions,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 5_000,
            standby_poll: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            subscribe: SubscribeOptions::default(),
        }
    }
}

/// Publishes the log to a bus. See the module docs.
///
/// ```no_run
/// use std::sync::Arc;
/// use keel_core::Publisher;
/// use keel_store::{EventLog, Relay, RelayOptions};
///
/// async fn relay(
///     log: Arc<dyn EventLog>,
///     bus: Arc<dyn Publisher>,
///     shutdown: impl Future<Output = ()> + Send,
/// ) -> keel_store::Result<()> {
///     let options = RelayOptions { batch_size: 200, ..RelayOptions::default() };
///     // Holds the lease named `main` (one active relay per name across processes) and
///     // publishes the log in order until `shutdown` completes.
///     Relay::new(log, bus, "main").options(options).run(shutdown).await
/// }
/// ```
pub struct Relay {
    log: Arc<dyn EventLog>,
    bus: Arc<dyn Publisher>,
    name: String,
    options: RelayOptions,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Why the active phase ended.
enum Ended {
    Shutdown,
    LeaseLost,
}

impl Relay {
    /// A relay named `name` (its checkpoint and lease are `relay:<name>`).
    pub fn new(log: Arc<dyn EventLog>, bus: Arc<dyn Publisher>, name: impl Into<String>) -> Self {
        Self { log, bus, name: name.into(), options: RelayOptions::default() }
    }

    #[must_use]
    /// Sets batch size, standby poll and backoff.
    pub fn options(mut self, options: RelayOptions) -> Self {
        self.options = options;
        self
    }

    /// The checkpoint name of a relay.
    pub fn checkpoint_name(name: &str) -> String {
        format!("relay:{name}")
    }

    /// Runs until `shutdown` completes: waits for the lease, then relays.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        let key = Self::checkpoint_name(&self.name);
        loop {
            let lease = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                lease = self.acquire(&key) => lease,
            };
            tracing::info!(relay = %self.name, "relay is active");
            metrics::gauge!("keel_relay_active", "relay" => self.name.clone()).set(1.0);
            let ended = self.relay(lease, &key, &mut shutdown).await;
            metrics::gauge!("keel_relay_active", "relay" => self.name.clone()).set(0.0);
            match ended {
                Ok(Ended::Shutdown) => return Ok(()),
                Ok(Ended::LeaseLost) => {
                    tracing::warn!(relay = %self.name, "relay lost its lease; standing by")
                }
                Err(error) => {
                    tracing::warn!(relay = %self.name, %error, "relay failed; retrying");
                    tokio::time::sleep(self.options.standby_poll).await;
                }
            }
        }
    }

    async fn acquire(&self, key: &str) -> Box<dyn Lease> {
        loop {
            match self.log.try_lease(key).await {
                Ok(Some(lease)) => return lease,
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(relay = %self.name, %error, "could not ask for the relay lease")
                }
            }
            tokio::time::sleep(self.options.standby_poll).await;
        }
    }

    /// The active phase; the lease is released however it returns (an error
    /// included), so the relay, or a standby, takes over at once instead of waiting for
    /// the lease to expire. Only a `run` future dropped mid-phase (as a killed process)
    /// leaves the lease to expire, as the failover tests expect.
    async fn relay(
        &self,
        mut lease: Box<dyn Lease>,
        key: &str,
        shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Result<Ended> {
        let ended = self.active(&mut *lease, key, shutdown).await;
        lease.release().await;
        ended
    }

    async fn active(
        &self,
        lease: &mut dyn Lease,
        key: &str,
        shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Result<Ended> {
        let from = self.log.checkpoint(key).await?.unwrap_or(Cursor::START);
        let mut checkpoints =
            Checkpoints { log: self.log.clone(), key: key.to_owned(), writing: None };
        let ended = self.publish_pages(lease, from, &mut checkpoints, shutdown).await;
        // The last page's checkpoint, written behind, lands before the phase ends.
        let flushed = checkpoints.flush().await;
        let ended = ended?;
        flushed?;
        Ok(ended)
    }

    async fn publish_pages(
        &self,
        lease: &mut dyn Lease,
        from: Cursor,
        checkpoints: &mut Checkpoints,
        shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Result<Ended> {
        let options =
            SubscribeOptions { batch_size: self.options.batch_size, ..self.options.subscribe };
        // The next page is read while this one is published and checkpointed.
        let mut pages =
            read_ahead(subscribe(self.log.clone(), from, LogFilter::default(), options));
        // The lag (the log's events after the checkpoint) is read on a timer of its own,
        // so the gauge goes on growing while publishing stalls and reaches 0 when idle.
        let mut saved = from;
        let lag = metrics::gauge!("keel_relay_lag_events", "relay" => self.name.clone());
        let mut lag_check = tokio::time::interval(LAG_INTERVAL);
        lag_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Renewed on a timer too, so an idle relay notices a lost lease (a dead
        // PostgreSQL lock connection) before a standby takes over and publishes.
        let mut renewal = tokio::time::interval(lease.renew_interval());
        renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renewal.tick().await;
        loop {
            let page = tokio::select! {
                biased;
                () = &mut *shutdown => return Ok(Ended::Shutdown),
                _ = renewal.tick() => {
                    if !lease.renew().await {
                        return Ok(Ended::LeaseLost);
                    }
                    continue;
                }
                _ = lag_check.tick() => {
                    if let Ok(behind) = self.log.count_after(saved, Position(u64::MAX)).await {
                        #[allow(clippy::cast_precision_loss, reason = "a gauge is a float")]
                        lag.set(behind as f64);
                    }
                    continue;
                }
                // A failed checkpoint write ends the phase while the relay waits, too.
                written = checkpoints.written() => {
                    written?;
                    continue;
                }
                page = pages.next() => page,
            };
            let Some(page) = page else { return Ok(Ended::Shutdown) };
            let page = page?;
            if !lease.renew().await {
                return Ok(Ended::LeaseLost);
            }
            let Some(last) = page.events.last().map(|e| e.cursor) else { continue };
            tokio::select! {
                biased;
                () = &mut *shutdown => return Ok(Ended::Shutdown),
                published = self.publish_page(&page.events) => published?,
            }
            // Only now: every event of the page is confirmed by the broker, skipped as
            // unroutable, or recorded as a relay dead letter. Written while the next
            // page is published.
            checkpoints.save(last).await?;
            saved = last;
            metrics::counter!("keel_relay_published_total", "relay" => self.name.clone())
                .increment(page.events.len() as u64);
        }
    }

    /// Publishes a page: each topic's events in log order as one batch, the topics at
    /// the same time. Order is kept where a bus keeps it, within a topic (per key);
    /// two topics are independent streams to every consumer, so waiting for one
    /// topic's confirmation before publishing another only costs time: a page in which
    /// `order` and `stock` events alternate took a broker round trip per event, which
    /// capped a Kafka relay near 1 / (the producer's linger) events a second. Events
    /// nobody subscribes to are skipped within the batch ([`Publisher::publish_routed`]);
    /// a batch the bus refuses as a whole for what is in it (unpublishable) is
    /// published again event by event, to find the events to dead-letter.
    async fn publish_page(&self, events: &[LogEvent]) -> Result<()> {
        let mut topics: Vec<(&str, Vec<&LogEvent>)> = Vec::new();
        for event in events {
            match topics.iter_mut().find(|(topic, _)| *topic == event.topic) {
                Some((_, batch)) => batch.push(event),
                None => topics.push((&event.topic, vec![event])),
            }
        }
        let published = futures::future::join_all(
            topics.iter().map(|(topic, batch)| self.publish_topic(topic, batch)),
        )
        .await;
        published.into_iter().collect()
    }

    /// One topic's events of a page, in log order.
    async fn publish_topic(&self, topic: &str, events: &[&LogEvent]) -> Result<()> {
        let batch: Vec<CloudEvent> = events.iter().map(|e| e.event.clone()).collect();
        match self.publish_confirmed(topic, &batch).await {
            Ok(unrouted) => {
                self.skipped(topic, &unrouted);
                Ok(())
            }
            Err(Refused(_)) => self.publish_one_by_one(events).await,
        }
    }

    /// Publishes `events`, retrying with backoff until the broker confirms them (the
    /// ids of those nobody subscribes to come back), or until the bus says they cannot
    /// go out as they are ([`Refused`]). Every other error (connection, timeout,
    /// back-pressure, a refusal of the whole topic or account, a closed bus) is about
    /// the bus, not the events: retried for ever, never dead-lettered.
    async fn publish_confirmed(
        &self,
        topic: &str,
        events: &[CloudEvent],
    ) -> Result<Vec<String>, Refused> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.bus.publish_routed(topic, events).await {
                Ok(unrouted) => return Ok(unrouted),
                Err(BusError::Unroutable(_)) if events.len() == 1 => {
                    return Ok(vec![events[0].id().to_owned()]);
                }
                Err(error)
                    if error.is_unpublishable() || matches!(error, BusError::Unroutable(_)) =>
                {
                    return Err(Refused(error.to_string()));
                }
                Err(error) => {
                    tracing::warn!(relay = %self.name, %topic, %error, ?backoff, "publish failed; retrying");
                    metrics::counter!("keel_relay_publish_failures_total", "relay" => self.name.clone()).increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
            }
        }
    }

    /// Events nobody subscribes to: skipped (RabbitMQ keeps nothing for nobody; a group
    /// created later is backfilled from the log, see [`crate::backfill`]).
    fn skipped(&self, topic: &str, unrouted: &[String]) {
        if unrouted.is_empty() {
            return;
        }
        tracing::debug!(relay = %self.name, %topic, ids = ?unrouted, "nobody subscribes; skipped");
        metrics::counter!("keel_relay_unroutable_total", "relay" => self.name.clone())
            .increment(unrouted.len() as u64);
    }

    /// A batch the bus refused as a whole for what is in it: publishes its events one
    /// by one. Those nobody subscribes to are skipped; those that can never be
    /// published become relay dead letters, committed before the relay goes past them.
    /// Events published before the failure may go out twice: delivery is
    /// at-least-once.
    async fn publish_one_by_one(&self, events: &[&LogEvent]) -> Result<()> {
        for event in events {
            let topic = &event.topic;
            match self.publish_confirmed(topic, std::slice::from_ref(&event.event)).await {
                Ok(unrouted) => self.skipped(topic, &unrouted),
                Err(Refused(reason)) => self.dead_letter(event, reason).await?,
            }
        }
        Ok(())
    }

    /// Records an event the bus can never take as a relay dead letter.
    async fn dead_letter(&self, event: &LogEvent, reason: String) -> Result<()> {
        tracing::error!(
            relay = %self.name, topic = %event.topic, id = event.event.id(),
            position = %event.cursor.log_position(), %reason,
            "the bus can never take this event; recorded as a relay dead letter (keel dlq list --relay)"
        );
        let letter = RelayDeadLetter::new(&self.name, event, reason);
        self.log.save_relay_dead_letter(&letter).await?;
        metrics::counter!("keel_relay_dead_letters_total", "relay" => self.name.clone())
            .increment(1);
        Ok(())
    }
}

/// The relay's checkpoint, written behind the publishing: the write of one page's
/// checkpoint runs on a task of its own while the next page is published, and each
/// write waits for the one before, so they land in order and an error is not lost.
struct Checkpoints {
    log: Arc<dyn EventLog>,
    key: String,
    writing: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl Checkpoints {
    /// Waits for the previous write, then starts writing `at`.
    async fn save(&mut self, at: Cursor) -> Result<()> {
        self.flush().await?;
        let (log, key) = (self.log.clone(), self.key.clone());
        self.writing = Some(tokio::spawn(async move { log.save_checkpoint(&key, at).await }));
        Ok(())
    }

    /// Waits for the write under way, if any.
    async fn flush(&mut self) -> Result<()> {
        if self.writing.is_none() {
            return Ok(());
        }
        self.written().await
    }

    /// Completes when the write under way ends, with its outcome; never, when there is
    /// none. Cancel-safe: the write goes on, and a later call waits for it.
    async fn written(&mut self) -> Result<()> {
        let Some(writing) = self.writing.as_mut() else {
            return std::future::pending().await;
        };
        let outcome = writing.await;
        self.writing = None;
        match outcome {
            Ok(written) => written,
            Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
            // Only a runtime shutting down cancels the task: the page is published
            // again after the restart (delivery is at-least-once).
            Err(_) => Ok(()),
        }
    }
}

/// The bus refused a batch for what is in it: an event that can never be published
/// ([`BusError::is_unpublishable`]), or, from a bus whose
/// [`Publisher::publish_routed`] does not sort them out, one nobody subscribes to.
/// Publishing the events one by one finds which.
struct Refused(String);
