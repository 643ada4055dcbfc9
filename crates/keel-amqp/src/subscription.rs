//! A group member ([`AmqpSubscription`]) and how its deliveries are settled
//! ([`AmqpSettle`]).
//!
//! Each member has a channel of its own on the bus's consuming connection, with
//! `basic.qos` set to its prefetch, consuming the group queue. When the channel or
//! the connection breaks, `next` re-joins with backoff (re-declaring the topology)
//! and carries on; whatever the member held unacknowledged is back in the queue by
//! then, so it is redelivered (at-least-once).
//!
//! Settling: `ack` acks; `nack(delay)` publishes the message (confirmed) to the retry
//! queue of the delay's bucket with the attempt count raised, then acks it, so the
//! group queue is never blocked by a waiting message; `dead_letter` publishes it
//! (confirmed) to the dead-letter queue with headers saying why, then acks it. A
//! delivery dropped unsettled is rejected with requeue, and goes back to the group.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use keel_core::bus::{DeadLetterReason, Settle};
use keel_core::{BusError, Delivery, Subscription, SubscriptionSpec};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Shared;
use crate::connector::{Wait, sleep_until};
use crate::error::from_lapin;
use crate::headers::{self, Outgoing, short, text};
use crate::names::{DEAD_LETTER_EXCHANGE, GroupNames, retry_bucket};
use crate::topology::{declare_dead_letters, declare_group, declare_retry_queue};

/// One member of a consumer group.
pub(crate) struct AmqpSubscription {
    shared: Arc<Shared>,
    spec: SubscriptionSpec,
    names: Arc<GroupNames>,
    prefetch: u16,
    member: Option<Member>,
    closed: watch::Receiver<bool>,
    failures: u32,
    ended: bool,
}

struct Member {
    /// Shared with the member's deliveries, which ack on it.
    channel: Arc<Channel>,
    consumer: lapin::Consumer,
}

impl fmt::Debug for AmqpSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSubscription")
            .field("queue", &self.names.queue)
            .field("prefetch", &self.prefetch)
            .field("joined", &self.member.is_some())
            .finish_non_exhaustive()
    }
}

impl AmqpSubscription {
    /// Declares the group's topology and starts consuming; fails (retryably) when the
    /// broker cannot be reached now.
    pub(crate) async fn open(
        shared: Arc<Shared>,
        spec: SubscriptionSpec,
    ) -> Result<Self, BusError> {
        let names = Arc::new(GroupNames::new(&spec.topic, &spec.group)?);
        let prefetch = shared
            .config
            .prefetch
            .unwrap_or_else(|| u16::try_from(spec.prefetch).unwrap_or(u16::MAX))
            .max(1);
        let closed = shared.closed.subscribe();
        let mut subscription =
            Self { shared, spec, names, prefetch, member: None, closed, failures: 0, ended: false };
        subscription.member = Some(subscription.join(Wait::No).await?);
        Ok(subscription)
    }

    async fn join(&mut self, wait: Wait) -> Result<Member, BusError> {
        let live = self.shared.consuming.get(wait, Some(&mut self.closed)).await?;
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(|e| from_lapin("opening a consumer channel", &e))?;
        declare_group(&channel, &self.names, &self.spec, &self.shared.config).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| from_lapin("setting the prefetch", &e))?;
        let queue = short(&self.names.queue, "queue name")?;
        tracing::debug!(queue = %self.names.queue, generation = live.generation, "joining the group");
        let consumer = channel
            .basic_consume(
                queue,
                ShortString::default(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| from_lapin(&format!("consuming `{}`", self.names.queue), &e))?;
        Ok(Member { channel: Arc::new(channel), consumer })
    }

    fn delivery(&self, delivery: lapin::message::Delivery) -> Delivery {
        let lapin::message::Delivery {
            delivery_tag,
            routing_key,
            redelivered,
            properties,
            data,
            ..
        } = delivery;
        let body = Bytes::from(data);
        let payload = headers::decode(&properties, body.clone());
        let attempt = headers::attempt(&properties, redelivered);
        let settle = AmqpSettle {
            shared: Arc::clone(&self.shared),
            names: Arc::clone(&self.names),
            channel: self.member.as_ref().map(|m| Arc::clone(&m.channel)),
            delivery_tag,
            settled: false,
            properties,
            body,
            routing_key,
            attempt,
        };
        Delivery::new(payload, attempt, Box::new(settle))
    }

    async fn leave(&mut self) {
        self.ended = true;
        let Some(member) = self.member.take() else { return };
        let config = &self.shared.config;
        let single_active = config.single_active_consumer;
        member.leave(&self.names.queue, config.connect_timeout, single_active, "member left").await;
    }
}

impl Member {
    /// Makes the queue take this member's last acks, then closes the channel, each
    /// step within `patience`.
    ///
    /// On a quorum queue the channel holds back the acks it sends faster than the
    /// queue applies them, and closing it drops the held ones (rabbitmq-server#10327):
    /// the group then hands out again messages this member acknowledged. A round trip
    /// through the queue before the close lets the channel pass them on. That round
    /// trip is cancelling the consumer, which also stops the broker pushing. With a
    /// single active consumer, though, the cancel would hand the group to the next
    /// member while this one still holds prefetched messages, which come back only at
    /// the close, behind later ones; so there the round trip is a second consumer,
    /// which waits behind the first and receives nothing, added and cancelled.
    async fn leave(self, queue: &str, patience: Duration, single_active: bool, reason: &str) {
        if !self.channel.status().connected() {
            return;
        }
        let round_trip = async {
            let tag = if single_active {
                let probe = self
                    .channel
                    .basic_consume(
                        self.consumer.queue(),
                        ShortString::default(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                probe.tag()
            } else {
                self.consumer.tag()
            };
            self.channel.basic_cancel(tag, BasicCancelOptions::default()).await
        };
        match tokio::time::timeout(patience, round_trip).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, queue, "cancelling a consumer"),
            Err(_) => tracing::warn!(queue, "the broker did not confirm cancelling a consumer"),
        }
        let closing = self.channel.close(200, format!("keel: {reason}").into());
        match tokio::time::timeout(patience, closing).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, queue, "closing a consumer channel"),
            Err(_) => {
                tracing::warn!(queue, "the broker did not confirm closing a consumer channel");
            }
        }
    }
}

impl Drop for AmqpSubscription {
    /// Dropped without `close`: leave anyway (deliveries still out hold the channel),
    /// so the broker gives back everything the member held.
    fn drop(&mut self) {
        let Some(member) = self.member.take() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let names = Arc::clone(&self.names);
            let patience = self.shared.config.connect_timeout;
            let single_active = self.shared.config.single_active_consumer;
            runtime.spawn(async move {
                member.leave(&names.queue, patience, single_active, "member dropped").await;
            });
        }
    }
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        loop {
            if self.ended {
                return None;
            }
            if *self.closed.borrow() {
                self.leave().await;
                return None;
            }
            let Some(member) = self.member.as_mut() else {
                match self.join(Wait::Yes).await {
                    Ok(member) => {
                        if self.failures > 0 {
                            tracing::info!(queue = %self.names.queue, "consumer re-joined its group");
                        }
                        self.failures = 0;
                        self.member = Some(member);
                    }
                    Err(BusError::Closed) => {}
                    Err(error) if error.is_retryable() => {
                        self.failures = self.failures.saturating_add(1);
                        let delay = self.shared.config.reconnect_delay(self.failures);
                        tracing::warn!(%error, queue = %self.names.queue, ?delay, "could not re-join the group; retrying");
                        let _ = sleep_until(Instant::now() + delay, Some(&mut self.closed)).await;
                    }
                    Err(error) => return Some(Err(error)),
                }
                continue;
            };
            // What the broker has already pushed is taken without setting up a wait.
            let item = match member.consumer.next().now_or_never() {
                Some(item) => item,
                None => tokio::select! {
                    biased;
                    _ = self.closed.wait_for(|closed| *closed) => continue,
                    item = member.consumer.next() => item,
                },
            };
            match item {
                Some(Ok(delivery)) => return Some(Ok(self.delivery(delivery))),
                Some(Err(error)) => {
                    tracing::warn!(%error, queue = %self.names.queue, "consumer channel failed; re-joining");
                    self.member = None;
                }
                None => {
                    tracing::info!(queue = %self.names.queue, "consumer was cancelled; re-joining");
                    self.member = None;
                }
            }
        }
    }

    async fn close(mut self: Box<Self>) -> Result<(), BusError> {
        self.leave().await;
        Ok(())
    }
}

/// How one delivery is settled (see the module docs).
pub(crate) struct AmqpSettle {
    shared: Arc<Shared>,
    names: Arc<GroupNames>,
    /// The member's channel: acks go straight to it (not through lapin's `Acker`,
    /// whose internal RPC hop costs a task wake-up per message).
    channel: Option<Arc<Channel>>,
    delivery_tag: u64,
    /// Set once an ack, or the ack after a republish, has been attempted.
    settled: bool,
    properties: BasicProperties,
    body: Bytes,
    routing_key: ShortString,
    attempt: u32,
}

impl fmt::Debug for AmqpSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSettle")
            .field("queue", &self.names.queue)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl AmqpSettle {
    /// The routing key the message was first published with.
    fn original_routing_key(&self) -> String {
        headers::text_header(&self.properties, headers::ROUTING_KEY)
            .unwrap_or_else(|| self.routing_key.to_string())
    }

    async fn ack(&mut self) -> Result<(), BusError> {
        self.settled = true;
        let Some(channel) = self.channel.as_ref().filter(|c| c.status().connected()) else {
            return Err(BusError::Connection(
                "the delivery's channel closed before the ack; the broker redelivers it".into(),
            ));
        };
        channel
            .basic_ack(self.delivery_tag, BasicAckOptions::default())
            .await
            .map_err(|error| from_lapin("acknowledging a delivery", &error))
    }

    /// Publishes the message again (confirmed) with `headers`.
    async fn republish(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: FieldTable,
        ensure: Ensure,
    ) -> Result<(), BusError> {
        let publishing = &self.shared.publishing;
        let config = &self.shared.config;
        let names = &*self.names;
        let mut lease = publishing.lease().await?;
        match ensure {
            Ensure::Nothing => {}
            Ensure::RetryQueue(bucket) => {
                lease
                    .ensure(routing_key, |channel| async move {
                        declare_retry_queue(&channel, names, bucket, config).await
                    })
                    .await?;
            }
            Ensure::DeadLetters => {
                lease
                    .ensure(&names.dlq, |channel| async move {
                        declare_dead_letters(&channel, names, config).await
                    })
                    .await?;
            }
        }
        let message = Outgoing {
            exchange: short(exchange, "exchange")?,
            routing_key: short(routing_key, "routing key")?,
            properties: headers::republish_properties(&self.properties, headers),
            body: self.body.clone(),
        };
        lease.send(vec![message]).await
    }
}

/// What a republish must declare first.
enum Ensure {
    Nothing,
    RetryQueue(u64),
    DeadLetters,
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        AmqpSettle::ack(&mut self).await
    }

    async fn nack(mut self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        let mut table = headers::lasting_headers(&self.properties);
        let next = i64::from(self.attempt.saturating_add(1));
        table.insert(headers::ATTEMPT.into(), AMQPValue::LongLongInt(next));
        table.insert(headers::ROUTING_KEY.into(), text(self.original_routing_key()));
        match retry_bucket(delay) {
            // Straight back to the tail of the group queue.
            None => self.republish("", &self.names.queue, table, Ensure::Nothing).await?,
            Some(bucket) => {
                let queue = self.names.retry_queue(bucket);
                self.republish("", &queue, table, Ensure::RetryQueue(bucket)).await?;
            }
        }
        metrics::counter!("keel_amqp_retried_total", "topic" => self.names.topic.clone())
            .increment(1);
        AmqpSettle::ack(&mut self).await
    }

    async fn dead_letter(mut self: Box<Self>, reason: DeadLetterReason) -> Result<(), BusError> {
        let mut table = headers::lasting_headers(&self.properties);
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        table.insert(headers::ERROR.into(), text(headers::error_text(&reason.error)));
        table.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(reason.attempts)));
        table.insert(headers::ROUTING_KEY.into(), text(self.original_routing_key()));
        table.insert(headers::DEAD_LETTER_ID.into(), text(uuid::Uuid::now_v7().to_string()));
        table.insert(headers::DEAD_LETTERED_AT.into(), text(now));
        table.insert(headers::TOPIC.into(), text(self.names.topic.as_str()));
        table.insert(headers::GROUP.into(), text(self.names.group.as_str()));
        self.republish(DEAD_LETTER_EXCHANGE, &self.names.dlq, table, Ensure::DeadLetters).await?;
        metrics::counter!("keel_amqp_dead_lettered_total", "topic" => self.names.topic.clone())
            .increment(1);
        AmqpSettle::ack(&mut self).await
    }
}

impl Drop for AmqpSettle {
    /// Unsettled (or a settle that failed before its ack): back to the group.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Some(channel) = self.channel.take().filter(|c| c.status().connected()) else {
            return; // a closed channel has given the message back already
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let tag = self.delivery_tag;
        runtime.spawn(async move {
            let requeue = BasicNackOptions { multiple: false, requeue: true };
            if let Err(error) = channel.basic_nack(tag, requeue).await {
                tracing::debug!(%error, "returning an unsettled delivery");
            }
        });
    }
}
