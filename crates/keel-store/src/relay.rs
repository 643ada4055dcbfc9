//! The relay: the log is the outbox, and the relay delivers it to the bus.
//!
//! One relay per name is active across processes (the store's lease); the others wait
//! and take over when the active one dies. The active relay reads the log after its
//! checkpoint in subscription order, publishes each page to the bus in order (runs of
//! the same topic in one batch), waits for the broker's confirmation, and only then
//! stores its checkpoint. A crash between publish and checkpoint publishes the page
//! again: delivery is at-least-once, and consumers deduplicate with the inbox.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use keel_core::{BusError, CloudEvent, Position, Publisher};

use crate::error::Result;
use crate::log::{Cursor, EventLog, Lease, LogEvent, LogFilter};
use crate::subscription::{SubscribeOptions, subscribe};

/// How a relay runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayOptions {
    /// Events read and published per round.
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
            batch_size: 500,
            standby_poll: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            subscribe: SubscribeOptions::default(),
        }
    }
}

/// Publishes the log to a bus. See the module docs.
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

    async fn relay(
        &self,
        mut lease: Box<dyn Lease>,
        key: &str,
        shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Result<Ended> {
        let from = self.log.checkpoint(key).await?.unwrap_or(Cursor::START);
        let options =
            SubscribeOptions { batch_size: self.options.batch_size, ..self.options.subscribe };
        let mut pages = subscribe(self.log.clone(), from, LogFilter::default(), options);
        let mut last_lag_check = tokio::time::Instant::now();
        let ended = loop {
            let page = tokio::select! {
                biased;
                () = &mut *shutdown => break Ended::Shutdown,
                page = pages.next() => page,
            };
            let Some(page) = page else { break Ended::Shutdown };
            let page = page?;
            if !lease.renew().await {
                break Ended::LeaseLost;
            }
            let Some(last) = page.events.last().map(|e| e.cursor) else { continue };
            tokio::select! {
                biased;
                () = &mut *shutdown => break Ended::Shutdown,
                () = self.publish_page(&page.events) => {}
            }
            self.log.save_checkpoint(key, last).await?;
            metrics::counter!("keel_relay_published_total", "relay" => self.name.clone())
                .increment(page.events.len() as u64);
            if last_lag_check.elapsed() > Duration::from_secs(1) {
                last_lag_check = tokio::time::Instant::now();
                if let Ok(lag) = self.log.count_after(last, Position(u64::MAX)).await {
                    #[allow(clippy::cast_precision_loss)]
                    metrics::gauge!("keel_relay_lag_events", "relay" => self.name.clone())
                        .set(lag as f64);
                }
            }
        };
        lease.release().await;
        Ok(ended)
    }

    /// Publishes a page in log order, one batch per run of the same topic, retrying
    /// each batch with backoff until the broker confirms it.
    async fn publish_page(&self, events: &[LogEvent]) {
        let mut start = 0;
        while start < events.len() {
            let topic = &events[start].topic;
            let end = events[start..]
                .iter()
                .position(|e| &e.topic != topic)
                .map_or(events.len(), |n| start + n);
            let batch: Vec<CloudEvent> =
                events[start..end].iter().map(|e| e.event.clone()).collect();
            if self.publish_confirmed(topic, &batch).await.is_err() {
                self.publish_routable(topic, &batch).await;
            }
            start = end;
        }
    }

    /// Publishes `events`, retrying with backoff until the broker confirms them, or
    /// until it says it cannot route them ([`BusError::Unroutable`], with its reason).
    async fn publish_confirmed(&self, topic: &str, events: &[CloudEvent]) -> Result<(), String> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.bus.publish(topic, events).await {
                Ok(()) => return Ok(()),
                Err(BusError::Unroutable(reason)) => return Err(reason),
                Err(error) => {
                    tracing::warn!(relay = %self.name, %topic, %error, ?backoff, "publish failed; retrying");
                    metrics::counter!("keel_relay_publish_failures_total", "relay" => self.name.clone()).increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
            }
        }
    }

    /// A batch the broker could not route as a whole: publishes its events one by one
    /// and skips those nobody subscribes to (RabbitMQ keeps nothing for nobody; a group
    /// created later replays them from the log). Events published before the failure
    /// may go out twice: delivery is at-least-once.
    async fn publish_routable(&self, topic: &str, batch: &[CloudEvent]) {
        for event in batch {
            if let Err(reason) = self.publish_confirmed(topic, std::slice::from_ref(event)).await {
                tracing::debug!(relay = %self.name, %topic, id = event.id(), %reason, "nobody subscribes; skipped");
                metrics::counter!("keel_relay_unroutable_total", "relay" => self.name.clone())
                    .increment(1);
            }
        }
    }
}
