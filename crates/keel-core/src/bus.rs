//! The seams between Keel and a message bus: what a backend implements.
//!
//! A backend implements [`Publisher`] (publish a batch and return once the broker has
//! confirmed it), [`Subscriber`] (join a consumer group on a topic and receive
//! [`Delivery`]s), and [`DeadLetters`] (inspect and retry what was dead-lettered).
//! Consumer groups compete within a group and fan out across groups. Everything else
//! (typed handlers, retries, concurrency, tracing, the inbox) is built once on top of
//! these traits in `keel-bus`.
//!
//! These traits use `async_trait` because backends are chosen at run time from
//! `KEEL_BUS_URL` and so are used as trait objects.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::envelope::CloudEvent;
use crate::error::DecodeError;

/// Errors of bus backends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The publisher or subscription was closed.
    #[error("the bus connection is closed")]
    Closed,
    /// The broker cannot be reached or the connection broke; retrying may succeed.
    #[error("bus connection failed: {0}")]
    Connection(String),
    /// The broker refused the message (a negative confirm, an authorization or policy
    /// refusal): a refusal that may go away (a full queue, a fixed setting), so the
    /// relay retries it.
    #[error("the broker rejected the message: {0}")]
    Rejected(String),
    /// This message can never be published as it is, while other messages can: it is
    /// larger than the broker or producer accepts, the broker found the record invalid,
    /// or an attribute does not fit the wire format (an AMQP routing key over 255
    /// bytes). Retrying it will not help; the relay dead-letters it and goes on.
    #[error("the message cannot be published: {0}")]
    Unpublishable(String),
    /// No consumer group subscribes to what was published, and the broker keeps
    /// nothing for nobody (RabbitMQ with `mandatory`). The relay skips such events; a
    /// group created later gets them with a backfill from the log
    /// ([`Publisher::publish_to_group`], `keel replay --into group:TOPIC:GROUP`).
    #[error("nobody subscribes to it: {0}")]
    Unroutable(String),
    /// The backend is full and the caller should slow down.
    #[error("back-pressure: {0}")]
    Backpressure(String),
    /// The broker did not answer in time; the outcome is unknown (at-least-once: retry).
    #[error("timed out waiting for the broker: {0}")]
    Timeout(String),
    /// The backend was configured or called wrongly; retrying will not help.
    #[error("invalid bus configuration: {0}")]
    Config(String),
    /// A message could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] DecodeError),
    /// Anything else a backend reports.
    #[error("bus backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl BusError {
    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Connection(_) | Self::Backpressure(_) | Self::Timeout(_))
    }

    /// Whether the failure belongs to the message itself (too large, invalid, cannot
    /// be encoded), so that other messages can still be published. Everything else
    /// (connection, timeouts, refusals of the whole topic or account) is about the bus
    /// and must never be blamed on a message.
    pub fn is_unpublishable(&self) -> bool {
        matches!(self, Self::Unpublishable(_) | Self::Codec(_))
    }
}

type BusResult<T> = Result<T, BusError>;

/// Checks a topic name: 1 to 200 characters of `[A-Za-z0-9._-]`, which every backend
/// (Kafka topics, RabbitMQ exchanges, SQL values) accepts.
pub fn validate_topic(topic: &str) -> BusResult<()> {
    let ok = !topic.is_empty()
        && topic.len() <= 200
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BusError::Config(format!(
            "topic `{topic}` must be 1 to 200 characters of letters, digits, `.`, `_` and `-`"
        )))
    }
}

/// Checks a consumer group name (same rules as topics).
pub fn validate_group(group: &str) -> BusResult<()> {
    validate_topic(group).map_err(|_| {
        BusError::Config(format!(
            "group `{group}` must be 1 to 200 characters of letters, digits, `.`, `_` and `-`"
        ))
    })
}

/// Where a consumer group that does not exist yet starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// Everything the backend still holds (durable backends: all of it).
    #[default]
    Earliest,
    /// Only what is published after the group is created.
    Latest,
}

/// What to subscribe to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionSpec {
    /// The topic to consume.
    pub topic: String,
    /// The consumer group: members of a group share the messages, groups each get all.
    pub group: String,
    /// Only these CloudEvents types (empty: all types).
    pub types: Vec<String>,
    /// How many deliveries this subscriber may hold unsettled at once.
    pub prefetch: u32,
    /// Where a new group starts reading.
    pub start: StartFrom,
}

impl SubscriptionSpec {
    /// All types of `topic` for `group`, 64 in flight, from the earliest message.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            types: Vec::new(),
            prefetch: 64,
            start: StartFrom::Earliest,
        }
    }

    /// Only events of these CloudEvents types (an empty list means all).
    #[must_use]
    pub fn types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.types = types.into_iter().map(Into::into).collect();
        self
    }

    /// How many deliveries may be held unsettled at once (at least 1).
    #[must_use]
    pub fn prefetch(mut self, prefetch: u32) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Where the group starts if it does not exist yet.
    #[must_use]
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Whether an event of type `ty` is wanted.
    pub fn wants(&self, ty: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == ty)
    }

    /// Validates the topic and group names.
    pub fn validate(&self) -> BusResult<()> {
        validate_topic(&self.topic)?;
        validate_group(&self.group)
    }
}

/// Publishes events to topics.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes `events` to `topic`, in order, and returns once the broker has
    /// confirmed every one. On error an unknown prefix may have been published: the
    /// caller retries the whole batch (delivery is at-least-once).
    async fn publish(&self, topic: &str, events: &[CloudEvent]) -> BusResult<()>;

    /// Like [`Publisher::publish`], except that events nobody subscribes to do not
    /// fail the batch: the broker keeps nothing for nobody (RabbitMQ with `mandatory`
    /// returns them), every other event is confirmed, and the ids of the events that
    /// went nowhere are returned, in batch order. This is how the relay skips what no
    /// group takes without publishing the rest of the batch again.
    ///
    /// The default publishes the batch, and after a [`BusError::Unroutable`] publishes
    /// its events again one by one to find the ones nobody takes (the others may then
    /// go out twice: delivery is at-least-once). A backend that can tell which
    /// messages came back overrides it.
    async fn publish_routed(&self, topic: &str, events: &[CloudEvent]) -> BusResult<Vec<String>> {
        match self.publish(topic, events).await {
            Ok(()) => Ok(Vec::new()),
            Err(BusError::Unroutable(_)) => publish_one_by_one(self, topic, events).await,
            Err(error) => Err(error),
        }
    }

    /// Publishes `events` of `topic` to one consumer group only, in order, and returns
    /// once the broker has confirmed every one: how a group created after the events
    /// were published is backfilled from the log without the other groups getting
    /// them twice (RabbitMQ: the group's queue; Kafka: the group's retry topic). Fails
    /// with [`BusError::Unroutable`] when the backend knows the group does not exist.
    /// The default refuses with [`BusError::Config`]: the log bus keeps it (its groups
    /// read the log itself, from where the caller asks), and so does the in-memory bus.
    async fn publish_to_group(
        &self,
        topic: &str,
        group: &str,
        events: &[CloudEvent],
    ) -> BusResult<()> {
        let _ = events;
        Err(BusError::Config(format!(
            "this bus backend cannot publish to one consumer group (`{topic}`/`{group}`)"
        )))
    }

    /// Waits for everything already accepted to be confirmed; later publishes fail
    /// with [`BusError::Closed`].
    async fn close(&self) -> BusResult<()>;
}

/// Publishes `events` one at a time and returns the ids of those nobody subscribes to
/// ([`BusError::Unroutable`]): how [`Publisher::publish_routed`]'s default finds
/// them after a batch was refused, for a backend's own override to fall back on.
pub async fn publish_one_by_one<P: Publisher + ?Sized>(
    publisher: &P,
    topic: &str,
    events: &[CloudEvent],
) -> BusResult<Vec<String>> {
    let mut unrouted = Vec::new();
    for event in events {
        match publisher.publish(topic, std::slice::from_ref(event)).await {
            Ok(()) => {}
            Err(BusError::Unroutable(_)) => unrouted.push(event.id().to_owned()),
            Err(error) => return Err(error),
        }
    }
    Ok(unrouted)
}

/// Joins consumer groups.
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// Joins `spec.group` on `spec.topic`; fails on invalid names or when the broker
    /// refuses.
    async fn subscribe(&self, spec: SubscriptionSpec) -> BusResult<Box<dyn Subscription>>;

    /// How far consumer group `group` of `topic` is behind, as far as the backend can
    /// tell: what the `keel_consumer_lag_messages` and `keel_dead_letters` gauges show.
    /// The default knows nothing (both `None`).
    async fn depth(&self, topic: &str, group: &str) -> BusResult<GroupDepth> {
        let _ = (topic, group);
        Ok(GroupDepth::default())
    }
}

/// A consumer group's backlog ([`Subscriber::depth`]); `None` where the backend cannot
/// tell. What "waiting" counts is the backend's own measure: the log bus counts the
/// topic's events after the group's checkpoint, RabbitMQ the group queue's ready
/// messages, Kafka the high watermarks minus the group's committed offsets, the
/// in-memory bus the messages queued for the group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupDepth {
    /// Messages waiting for the group (published, not yet settled by it).
    pub lag: Option<u64>,
    /// The group's dead letters at rest.
    pub dead_letters: Option<u64>,
}

impl GroupDepth {
    /// A depth with both figures known or not.
    pub fn new(lag: Option<u64>, dead_letters: Option<u64>) -> Self {
        Self { lag, dead_letters }
    }
}

/// One member of a consumer group. Dropping it (or closing it) gives every delivery it
/// has not settled back to the group.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery, or `None` once the subscription is closed.
    async fn next(&mut self) -> Option<BusResult<Delivery>>;

    /// Leaves the group; unsettled deliveries are redelivered to other members.
    async fn close(self: Box<Self>) -> BusResult<()>;
}

/// A message as a subscription hands it out: decoded, or raw with the reason it
/// could not be decoded (such messages go straight to the dead-letter destination).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A valid CloudEvent.
    Event(CloudEvent),
    /// A message that is not one, with the decoding error.
    Undecodable(RawMessage),
}

/// A message that is not a valid CloudEvent, kept as it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawMessage {
    /// Broker headers as received (name, raw value).
    pub headers: Vec<(String, Bytes)>,
    /// The content type the broker reported, if any.
    pub content_type: Option<String>,
    /// The body as received.
    pub body: Bytes,
    /// Why it could not be decoded.
    pub error: String,
}

/// Why a message was dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterReason {
    /// The handler's (or decoder's) error text.
    pub error: String,
    /// How many times delivery was attempted.
    pub attempts: u32,
}

/// The backend's part of a delivery: how to settle it.
#[async_trait]
pub trait Settle: Send {
    /// The handler succeeded: the message is done for this group.
    async fn ack(self: Box<Self>) -> BusResult<()>;

    /// Give the message back for another attempt no sooner than `delay`. Backends
    /// that keep order per partition key hold back the key's later messages until
    /// this one is settled.
    async fn nack(self: Box<Self>, delay: Duration) -> BusResult<()>;

    /// Move the message to the group's dead-letter destination with `reason`, then
    /// treat it as done.
    async fn dead_letter(self: Box<Self>, reason: DeadLetterReason) -> BusResult<()>;
}

/// One message handed to one member of a group, to be settled exactly once.
/// Dropping it unsettled gives it back to the group (as a nack without delay).
pub struct Delivery {
    payload: Payload,
    attempt: u32,
    settle: Box<dyn Settle>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("payload", &self.payload)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// `attempt` counts from 1 (the first delivery).
    pub fn new(payload: Payload, attempt: u32, settle: Box<dyn Settle>) -> Self {
        Self { payload, attempt: attempt.max(1), settle }
    }

    /// The message: an event, or raw bytes that did not decode.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The event, when the message decoded.
    pub fn event(&self) -> Option<&CloudEvent> {
        match &self.payload {
            Payload::Event(event) => Some(event),
            Payload::Undecodable(_) => None,
        }
    }

    /// Which attempt this is (1 = first delivery).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The partition key, if any: deliveries with the same key are handled in order.
    pub fn partition_key(&self) -> Option<&str> {
        self.event().and_then(CloudEvent::partition_key)
    }

    /// Settles the delivery as done (see [`Settle::ack`]).
    pub async fn ack(self) -> BusResult<()> {
        self.settle.ack().await
    }

    /// Gives the delivery back for a retry after `delay` (see [`Settle::nack`]).
    pub async fn nack(self, delay: Duration) -> BusResult<()> {
        self.settle.nack(delay).await
    }

    /// Moves the delivery to the dead-letter destination (see [`Settle::dead_letter`]).
    pub async fn dead_letter(self, reason: DeadLetterReason) -> BusResult<()> {
        self.settle.dead_letter(reason).await
    }

    /// Splits the delivery, for handlers that need the payload by value.
    pub fn into_parts(self) -> (Payload, u32, Box<dyn Settle>) {
        (self.payload, self.attempt, self.settle)
    }
}

/// The id of a dead-lettered message within its group's dead-letter destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeadLetterId(pub String);

impl fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A dead-lettered message and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id within the dead-letter destination (for `keel dlq retry`/`purge`).
    pub id: DeadLetterId,
    /// The topic it was consumed from.
    pub topic: String,
    /// The consumer group that gave up on it.
    pub group: String,
    /// The handler's or decoder's error text.
    pub reason: String,
    /// How many delivery attempts were made.
    pub attempts: u32,
    /// When it was dead-lettered.
    pub dead_lettered_at: DateTime<Utc>,
    /// The message as it was delivered.
    pub payload: Payload,
}

/// A group's dead-letter destination (`keel dlq`).
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Up to `limit` dead letters of the group, oldest first.
    async fn list(&self, topic: &str, group: &str, limit: usize) -> BusResult<Vec<DeadLetter>>;

    /// Sends a dead letter back to its group for another try; `false` if not found.
    async fn retry(&self, topic: &str, group: &str, id: &DeadLetterId) -> BusResult<bool>;

    /// Deletes every dead letter of the group; returns how many.
    async fn purge(&self, topic: &str, group: &str) -> BusResult<u64>;
}

/// A complete bus backend.
pub trait Bus: Publisher + Subscriber + DeadLetters {}

impl<T: Publisher + Subscriber + DeadLetters> Bus for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_checked() {
        assert!(validate_topic("orders.v1_x-y").is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic("a b").is_err());
        assert!(validate_topic(&"a".repeat(201)).is_err());
        assert!(SubscriptionSpec::new("t", "g/1").validate().is_err());
    }

    /// A bus that refuses, as RabbitMQ does, any batch holding an event of type
    /// `nobody`, and records what it accepted.
    #[derive(Default)]
    struct Mandatory {
        accepted: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Publisher for Mandatory {
        async fn publish(&self, _topic: &str, events: &[CloudEvent]) -> BusResult<()> {
            if events.iter().any(|e| e.ty() == "nobody") {
                return Err(BusError::Unroutable("no queue bound".into()));
            }
            let mut accepted =
                self.accepted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            accepted.extend(events.iter().map(|e| e.id().to_owned()));
            Ok(())
        }

        async fn close(&self) -> BusResult<()> {
            Ok(())
        }
    }

    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn publish_routed_by_default_sorts_the_unroutable_out_one_by_one() {
        let event = |ty: &str| CloudEvent::builder(ty, "/t").build().unwrap();
        let bus = Mandatory::default();
        let batch = [event("a"), event("nobody"), event("b")];
        let unrouted = bus.publish_routed("t", &batch).await.unwrap();
        assert_eq!(unrouted, [batch[1].id()]);
        assert_eq!(*bus.accepted.lock().unwrap(), [batch[0].id(), batch[2].id()]);
        let routed = [event("a")];
        assert!(bus.publish_routed("t", &routed).await.unwrap().is_empty());
    }

    #[test]
    fn only_the_message_s_own_faults_are_unpublishable() {
        assert!(BusError::Unpublishable("too large".into()).is_unpublishable());
        assert!(BusError::Codec(DecodeError::MissingAttribute("id")).is_unpublishable());
        for error in [
            BusError::Closed,
            BusError::Connection("reset".into()),
            BusError::Rejected("negative confirm".into()),
            BusError::Unroutable("no queue".into()),
            BusError::Backpressure("full".into()),
            BusError::Timeout("no confirm".into()),
            BusError::Config("access refused".into()),
        ] {
            assert!(!error.is_unpublishable(), "{error}");
        }
        assert!(!BusError::Unpublishable("too large".into()).is_retryable());
    }

    #[test]
    fn spec_filters_types() {
        let all = SubscriptionSpec::new("t", "g");
        assert!(all.wants("x"));
        let some = SubscriptionSpec::new("t", "g").types(["a", "b"]);
        assert!(some.wants("a") && !some.wants("c"));
    }
}
