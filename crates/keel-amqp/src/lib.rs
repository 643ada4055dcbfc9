//! Keel's RabbitMQ bus backend: [`AmqpBus`] implements the `keel_core::bus` traits
//! ([`Publisher`], [`Subscriber`], [`DeadLetters`], so it is a [`keel_core::Bus`]) over
//! AMQP 0-9-1 with lapin, for `KEEL_BUS_URL=amqp://...`.
//!
//! ```no_run
//! # async fn example() -> Result<(), keel_core::BusError> {
//! use keel_amqp::{AmqpBus, AmqpConfig};
//! let bus = AmqpBus::connect("amqp://guest:guest@127.0.0.1:5672/%2f?prefetch=64",
//!                            AmqpConfig::default()).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `lib.rs`: [`AmqpBus`] and the trait impls, which only dispatch.
//! - `config.rs`: [`AmqpConfig`] and reading it from the URL's query parameters.
//! - `names.rs`: the names of exchanges and queues, and the retry delay buckets.
//! - `topology.rs`: declaring exchanges, queues and bindings (idempotently).
//! - `headers.rs`: events as AMQP messages (CloudEvents binary mode through
//!   `keel_core::codec`), header values as bytes, the `x-keel-*` headers.
//! - `connector.rs`: the reconnect loop: one live connection, backoff, generations.
//! - `publisher.rs`: confirmed, mandatory, pipelined publishing over a channel pool.
//! - `subscription.rs`: a group member (re-joins after a failure) and settling.
//! - `dead_letters.rs`: listing, retrying and purging a group's dead-letter queue, and
//!   counting a group's queues (`Subscriber::depth`).
//! - `groups.rs`: a group's queue depth and emptying it (`keel groups`).
//! - `error.rs`: lapin errors as `BusError`s (retryable or not).
//!
//! # Wire format
//!
//! CloudEvents binary mode as the AMQP binding has it on RabbitMQ: every attribute in a
//! `cloudEvents_<name>` header (long string), the data content type as the message's
//! content type, the data as the body; the CloudEvents type is the routing key; the
//! message is persistent, with the event id as its message id. Consumers also accept
//! structured mode (content type `application/cloudevents+json`) and the binding's
//! `cloudEvents:` header prefix. A message that is neither (a Python dict printed as
//! text, say) is handed out as `Payload::Undecodable` with the reason, and the
//! `keel-bus` consumer dead-letters it at once.
//!
//! # Topology
//!
//! | what | name | kind |
//! |---|---|---|
//! | a topic | `keel.<topic>` | durable topic exchange; routing key = event type |
//! | a consumer group | `keel.<topic>:<group>` | durable queue (quorum by default), bound with `#`, or once per subscribed type |
//! | its retries | `keel.<topic>:<group>:retry.<ms>` | one queue per delay bucket (a power of two of ms), `x-message-ttl = <ms>`, dead-lettering back into the group queue |
//! | dead letters | `keel.dlx` | durable direct exchange shared by all groups |
//! | a group's dead letters | `keel.<topic>:<group>:dlq` | durable queue bound to `keel.dlx` by its own name; also the group queue's `x-dead-letter-exchange` target |
//!
//! Topic and group names are `[A-Za-z0-9._-]`, so `:` cannot make two groups share a
//! queue. Everything is declared idempotently when a member joins (and re-joins
//! after a reconnect); the publisher declares the topic exchange, and the settle path
//! the retry and dead-letter queues, once per channel. Queue arguments are fixed at
//! declaration: changing `queue_type` or `single_active_consumer` for an existing
//! group is refused by the broker (a `BusError::Config` naming it) until the queue is
//! deleted. Type bindings only ever grow.
//!
//! A group exists once a member has subscribed: RabbitMQ keeps messages only for
//! queues that exist, so a group created later does not see earlier messages
//! (`StartFrom` makes no difference), and publishing to a topic no group is bound to
//! fails with `BusError::Unroutable`, because every publish is `mandatory` (the relay
//! skips such events). A group created later is backfilled from the log with
//! `publish_to_group` (`keel replay --into group:TOPIC:GROUP`): it publishes to the
//! group's queue through the default exchange, so no other group gets the events
//! again; the event type travels in `x-keel-routing-key`, as for retries.
//!
//! # Publishing
//!
//! `publish` returns once the broker has confirmed every message of the batch
//! (publisher confirms). A nacked message fails the batch with `BusError::Rejected`,
//! an unroutable one with `BusError::Unroutable` (`publish_routed`, which the relay
//! uses, confirms the rest of the batch instead and names the returned events by their
//! message ids, so the routed ones go out once), and one the broker or the encoder
//! can never take (over RabbitMQ's `max_message_size`, which it answers with 406
//! PRECONDITION_FAILED at publish; an event type longer than a routing key's 255
//! bytes) with `BusError::Unpublishable`; a connection lost before the confirms came fails it with
//! `BusError::Connection` (retryable), never with silence; no confirm within
//! `publish_timeout` is `BusError::Timeout`. The caller retries the whole batch, so
//! delivery is at-least-once. Batches are pipelined (every message is sent before the
//! first confirm is awaited) on a pool of `publish_channels` channels; when all are
//! busy a publish waits (back-pressure), then fails with `BusError::Backpressure`, as
//! it does at once while the broker blocks publishers (memory or disk alarm). All a
//! publish does, from waiting for a channel to its last confirm, is bounded by one
//! `publish_timeout`, so a publish never hangs.
//!
//! # Consuming, retries and dead letters
//!
//! Each member has its own channel with `basic.qos` = its prefetch (the
//! subscription's, or `prefetch` from the URL for all). A delivery is acked only when
//! settled: `ack` after the handler succeeds; `nack(delay)` publishes it (confirmed)
//! to the retry queue of the smallest bucket `>= delay` with `x-keel-attempt` raised,
//! then acks it, so a waiting message never blocks the group queue and no message
//! waits behind a longer delay; `nack(0)` goes straight back to the group queue's
//! tail. `dead_letter` publishes it (confirmed) to the group's dead-letter queue with
//! the original body and headers plus `x-keel-error`, `x-keel-attempts`,
//! `x-keel-routing-key` (the original routing key), `x-keel-dead-letter-id` (a UUIDv7,
//! the id `keel dlq` uses), `x-keel-dead-lettered-at`, `x-keel-topic` and
//! `x-keel-group`, then acks it. `Delivery::attempt` is `x-keel-attempt` (1 when
//! absent) plus the broker's returns (`x-delivery-count` on quorum queues, the
//! redelivered flag on classic ones). A delivery dropped unsettled is rejected with
//! requeue; a member that closes or is dropped cancels its consumer and closes its
//! channel, and the broker gives everything it held back to the group. (The cancel
//! makes a quorum queue take the acks sent just before: closing straight after a
//! burst of acks loses some of them, rabbitmq-server#10327, and the group hands
//! those messages out again. With `single_active_consumer=true` a cancel would hand
//! the group on before the close gives back what the member held, so there the
//! member adds a second consumer and cancels that instead.) A quorum queue counts
//! those returns too, the prefetched messages no handler saw included: a group whose
//! members come and go often (a restart loop, say) spends attempts that way, so give
//! its redelivery policy room for it. Acks go straight to the member's channel
//! (`Channel::basic_ack`), not through lapin's `Acker`, whose internal RPC hop costs
//! a task wake-up per message (half the client's CPU when consuming).
//!
//! # Order
//!
//! What holds, for one group (each point is tested in `tests/ordering.rs`, on both
//! queue types):
//!
//! - **While no message is retried or given back, a group queue hands messages out
//!   in the order the broker accepted them** (one publisher's batches in publish
//!   order; concurrent publishers interleave). With one member, `keel-bus`'s consumer
//!   then keeps each partition key in order even with `concurrency > 1`.
//! - **A retried message goes behind later ones**: `nack(delay)` (and `nack(0)`)
//!   re-enters the group queue at its tail, after everything queued meanwhile, so a
//!   key's later messages can be handled before it. Per-key order therefore holds
//!   only up to a key's first retry.
//! - **What a member gives back** when it leaves, fails or loses its connection is
//!   redelivered before later messages (on both queue types). A single delivery
//!   dropped unsettled (rejected with requeue) is redelivered first on a classic
//!   queue, but goes to the tail of a quorum queue (RabbitMQ 3.x behaviour).
//! - **Competing members share the queue**, so two members can hold messages of the
//!   same key at once: order per key is not kept across members. With
//!   `single_active_consumer=true` the broker delivers to one member at a time; the
//!   others stand by and take over where it stopped when it leaves, so the group
//!   keeps queue order with several members (and members beyond the first add
//!   availability, not throughput).
//!
//! # Recovery
//!
//! The backend owns its reconnect loop (`connector.rs`; lapin's auto-recovery is
//! off). A publish in flight when the connection or channel is lost fails with a
//! retryable `BusError::Connection`; later publishes reconnect (with exponential
//! backoff between failed attempts; while waiting they fail at once, retryably). A
//! subscription whose channel or connection breaks re-joins on its own: reconnect
//! with backoff, re-declare the topology, consume again; the broker has returned
//! what it held, so nothing acknowledged is lost and nothing unacknowledged is
//! dropped (settling a delivery from the lost channel fails with a retryable error,
//! and the message comes again). Confirmed messages are on disk in durable queues,
//! so they survive a broker restart. Tested against `rabbitmqctl
//! close_all_connections`, `stop_app`/`start_app` and a memory alarm
//! (`tests/disrupt.rs`).
//!
//! # Configuration
//!
//! [`AmqpConfig`], or query parameters of the URL (the URL wins): `queue_type`
//! (`quorum`|`classic`), `prefetch`, `single_active_consumer`, `publish_timeout_ms`,
//! `publish_channels`, `confirm_window`, `reconnect_min_ms`, `reconnect_max_ms`,
//! `connect_timeout_ms`, `queue_expires_ms` (tests only), `connection_name`; lapin's
//! `heartbeat`, `frame_max`, `channel_max`, `connection_timeout`, `auth_mechanism`
//! pass through. Any other parameter is a `BusError::Config` naming it.
#![warn(missing_docs)]

mod config;
mod connector;
mod dead_letters;
mod error;
mod groups;
mod headers;
mod names;
mod publisher;
mod subscription;
mod topology;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use keel_core::bus::{DeadLetter, DeadLetterId, GroupDepth, validate_topic};
use keel_core::{
    BusError, CloudEvent, DeadLetters, Publisher, Subscriber, Subscription, SubscriptionSpec,
};
use lapin::types::ShortString;
use tokio::sync::watch;

pub use crate::config::{AmqpConfig, QueueType};
use crate::connector::{Connector, Wait};
pub use crate::groups::QueueDepth;
use crate::publisher::Publishing;
use crate::subscription::AmqpSubscription;

/// The RabbitMQ bus. Clones share the connections; see the crate docs.
#[derive(Clone)]
pub struct AmqpBus {
    shared: Arc<Shared>,
}

/// What the bus's parts share.
pub(crate) struct Shared {
    pub(crate) config: Arc<AmqpConfig>,
    pub(crate) publishing: Publishing,
    pub(crate) consuming: Arc<Connector>,
    /// Set once the bus is closed; subscriptions end when they see it.
    pub(crate) closed: watch::Sender<bool>,
}

impl fmt::Debug for AmqpBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBus")
            .field("config", &self.shared.config)
            .field("publishing", &self.shared.publishing)
            .field("closed", &*self.shared.closed.borrow())
            .finish_non_exhaustive()
    }
}

impl AmqpBus {
    /// Connects to the broker at `url` (an `amqp://` URL whose Keel query parameters
    /// override `config`). Fails with [`BusError::Config`] for a bad URL or parameter
    /// and with [`BusError::Connection`] when the broker cannot be reached now.
    pub async fn connect(url: &str, config: AmqpConfig) -> Result<Self, BusError> {
        let (config, uri) = config.apply_url(url)?;
        let config = Arc::new(config);
        let publishing = Arc::new(Connector::new(uri.clone(), "publish", Arc::clone(&config)));
        publishing.get(Wait::No, None).await?;
        let consuming = Arc::new(Connector::new(uri, "consume", Arc::clone(&config)));
        let (closed, _) = watch::channel(false);
        let shared = Shared {
            publishing: Publishing::new(publishing, Arc::clone(&config)),
            config,
            consuming,
            closed,
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// The configuration in effect (after the URL's parameters).
    pub fn config(&self) -> &AmqpConfig {
        &self.shared.config
    }

    /// How many messages wait in consumer group `group`'s queue of `topic` (its lag)
    /// and how many members consume it; `None` when the group was never subscribed.
    /// AMQP cannot list queues: the caller names the group.
    pub async fn queue_depth(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Option<QueueDepth>, BusError> {
        self.check_open()?;
        groups::depth(&self.shared, topic, group).await
    }

    /// Drops every message waiting in consumer group `group`'s queue of `topic` (not
    /// those its members hold), returning how many: the first step of moving a group,
    /// which a backfill from the log then refills (`keel groups reset`).
    pub async fn purge_group(&self, topic: &str, group: &str) -> Result<u64, BusError> {
        self.check_open()?;
        groups::purge(&self.shared, topic, group).await
    }

    fn check_open(&self) -> Result<(), BusError> {
        if *self.shared.closed.borrow() { Err(BusError::Closed) } else { Ok(()) }
    }

    /// Publishes `events` to `topic`'s exchange, confirmed and mandatory; what the
    /// broker returned as unroutable comes back, for the caller to judge.
    async fn publish_batch(
        &self,
        topic: &str,
        events: &[CloudEvent],
    ) -> Result<publisher::Returned, BusError> {
        validate_topic(topic)?;
        self.check_open()?;
        if events.is_empty() {
            return Ok(publisher::Returned::default());
        }
        let exchange = names::topic_exchange(topic);
        let exchange_name = headers::short(&exchange, "exchange name")?;
        let messages = events
            .iter()
            .map(|event| headers::encode(&exchange_name, event))
            .collect::<Result<Vec<_>, _>>()?;
        let mut lease = self.shared.publishing.lease().await?;
        let name = exchange.as_str();
        let declared = lease
            .ensure(name, |channel| async move {
                topology::declare_topic_exchange(&channel, name).await
            })
            .await;
        let result = match declared {
            Ok(()) => lease.send_returning(messages).await,
            Err(error) => Err(error),
        };
        drop(lease);
        let count = |outcome: &'static str, n: usize| {
            if n == 0 {
                return;
            }
            metrics::counter!(
                "keel_published_total",
                "backend" => "amqp",
                "topic" => topic.to_owned(),
                "outcome" => outcome,
            )
            .increment(n as u64);
        };
        match &result {
            Ok(returned) => {
                count("ok", events.len() - returned.ids.len());
                count("unroutable", returned.ids.len());
            }
            Err(_) => count("error", events.len()),
        }
        result
    }
}

#[async_trait]
impl Publisher for AmqpBus {
    async fn publish(&self, topic: &str, events: &[CloudEvent]) -> Result<(), BusError> {
        match self.publish_batch(topic, events).await?.into_error() {
            None => Ok(()),
            Some(unroutable) => Err(unroutable),
        }
    }

    /// One batch, confirmed, with the messages RabbitMQ returned named by their ids.
    async fn publish_routed(
        &self,
        topic: &str,
        events: &[CloudEvent],
    ) -> Result<Vec<String>, BusError> {
        let returned = self.publish_batch(topic, events).await?;
        let unnamed = returned.ids.iter().any(Option::is_none);
        let mut unrouted: HashSet<String> = returned.ids.into_iter().flatten().collect();
        if unnamed {
            // Only an event whose id does not fit a message id (over 255 bytes) comes
            // back without one: publish those alone to learn which (a routed one then
            // goes out twice: at-least-once).
            let long: Vec<CloudEvent> =
                events.iter().filter(|e| ShortString::try_new(e.id()).is_err()).cloned().collect();
            unrouted.extend(keel_core::bus::publish_one_by_one(self, topic, &long).await?);
        }
        Ok(events.iter().filter(|e| unrouted.contains(e.id())).map(|e| e.id().to_owned()).collect())
    }

    /// To the group's queue `keel.<topic>:<group>` through the default exchange,
    /// confirmed and mandatory: `BusError::Unroutable` if the group does not exist.
    async fn publish_to_group(
        &self,
        topic: &str,
        group: &str,
        events: &[CloudEvent],
    ) -> Result<(), BusError> {
        let names = names::GroupNames::new(topic, group)?;
        self.check_open()?;
        if events.is_empty() {
            return Ok(());
        }
        let default_exchange = headers::short("", "exchange name")?;
        let queue = headers::short(&names.queue, "queue name")?;
        let messages = events
            .iter()
            .map(|event| headers::encode_to_queue(&default_exchange, &queue, event))
            .collect::<Result<Vec<_>, _>>()?;
        let mut lease = self.shared.publishing.lease().await?;
        let result = lease.send(messages).await;
        drop(lease);
        result.map_err(|error| match error {
            BusError::Unroutable(_) => BusError::Unroutable(format!(
                "consumer group `{group}` of topic `{topic}` does not exist (no queue `{}`); \
                 subscribe it first",
                names.queue
            )),
            other => other,
        })
    }

    /// Waits for publishes in flight to be confirmed, then closes the bus: later
    /// publishes fail with [`BusError::Closed`] and subscriptions end (their
    /// unsettled deliveries go back to their groups).
    async fn close(&self) -> Result<(), BusError> {
        self.shared.closed.send_replace(true);
        let flushed = self.shared.publishing.close().await;
        self.shared.consuming.close().await;
        flushed
    }
}

#[async_trait]
impl Subscriber for AmqpBus {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BusError> {
        spec.validate()?;
        self.check_open()?;
        let subscription = AmqpSubscription::open(Arc::clone(&self.shared), spec).await?;
        Ok(Box::new(subscription))
    }

    /// Lag: the ready messages of the group's queue (not those its members hold
    /// unacknowledged, nor those waiting in its retry queues); dead letters: the ready
    /// messages of its dead-letter queue.
    async fn depth(&self, topic: &str, group: &str) -> Result<GroupDepth, BusError> {
        self.check_open()?;
        let depth = dead_letters::depth(&self.shared, topic, group);
        dead_letters::bounded(&self.shared, "counting a group's messages", depth).await
    }
}

#[async_trait]
impl DeadLetters for AmqpBus {
    async fn list(
        &self,
        topic: &str,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        self.check_open()?;
        let listing = dead_letters::list(&self.shared, topic, group, limit);
        dead_letters::bounded(&self.shared, "listing dead letters", listing).await
    }

    async fn retry(&self, topic: &str, group: &str, id: &DeadLetterId) -> Result<bool, BusError> {
        self.check_open()?;
        let retrying = dead_letters::retry(&self.shared, topic, group, id);
        dead_letters::bounded(&self.shared, "retrying a dead letter", retrying).await
    }

    async fn purge(&self, topic: &str, group: &str) -> Result<u64, BusError> {
        self.check_open()?;
        let purging = dead_letters::purge(&self.shared, topic, group);
        dead_letters::bounded(&self.shared, "purging dead letters", purging).await
    }
}
