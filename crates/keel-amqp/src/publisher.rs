//! Confirmed, mandatory, pipelined publishing over a small pool of channels.
//!
//! Every publish (a batch of events, or one retry or dead letter) leases a channel of
//! its own from a pool of `publish_channels`, so one batch's confirms and returns are
//! never mixed up with another's (lapin hands a `basic.return` to whichever confirm
//! completes next, and the broker may confirm several messages at once). A lease
//! waits up to `publish_timeout` for a free channel: that wait is the back-pressure.
//!
//! Within a lease the batch is pipelined: every `basic.publish` is queued (in order,
//! each with its delivery tag) before the first confirm is awaited, in windows of
//! `confirm_window` messages. A batch succeeds when every message is acked; the
//! messages the broker returned as unroutable (`mandatory`: no queue bound) are
//! reported by their message ids, and the caller decides whether that is an error. A
//! nack, a lost channel or connection, or no confirm within `publish_timeout` fails
//! it, and the caller retries the whole batch (at-least-once).

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Context;

use futures::future::{MaybeDone, maybe_done};
use keel_core::BusError;
use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::config::AmqpConfig;
use crate::connector::{Connector, Live, Wait};
use crate::error::{from_lapin, from_lapin_publish};
use crate::headers::Outgoing;

const MANDATORY: BasicPublishOptions = BasicPublishOptions { mandatory: true, immediate: false };

/// The publishing side of a bus: its connection and channel pool.
pub(crate) struct Publishing {
    connector: Arc<Connector>,
    config: Arc<AmqpConfig>,
    lanes: Semaphore,
    idle: Mutex<Vec<PubChannel>>,
    closed: AtomicBool,
}

impl fmt::Debug for Publishing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publishing")
            .field("connector", &self.connector)
            .field("free_lanes", &self.lanes.available_permits())
            .field("closed", &self.closed.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// A channel in confirm mode and what has been declared through it.
struct PubChannel {
    channel: Channel,
    live: Live,
    declared: HashSet<String>,
}

impl Publishing {
    pub(crate) fn new(connector: Arc<Connector>, config: Arc<AmqpConfig>) -> Self {
        Self {
            lanes: Semaphore::new(config.publish_channels),
            connector,
            config,
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// A channel of the pool for one publish.
    pub(crate) async fn lease(&self) -> Result<Lease<'_>, BusError> {
        if self.is_closed() {
            return Err(BusError::Closed);
        }
        // Everything a publish does, from waiting for a channel to the last confirm,
        // happens within one `publish_timeout`.
        let deadline = Instant::now() + self.config.publish_timeout;
        let permit = match tokio::time::timeout_at(deadline, self.lanes.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(BusError::Closed),
            Err(_) => {
                return Err(BusError::Backpressure(format!(
                    "all {} publishing channels stayed busy for {:?}",
                    self.config.publish_channels, self.config.publish_timeout
                )));
            }
        };
        if self.is_closed() {
            return Err(BusError::Closed);
        }
        // An idle channel whose connection is alive needs no trip to the connector.
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                match idle.pop() {
                    Some(pc) if pc.channel.status().connected() => break Some(pc),
                    Some(_) => {}
                    None => break None,
                }
            }
        };
        let channel = match idle {
            Some(channel) => channel,
            None => {
                let live = self.connector.get(Wait::No, None).await?;
                check_blocked(&live)?;
                let opening = async {
                    let channel = live
                        .connection
                        .create_channel()
                        .await
                        .map_err(|e| from_lapin("opening a publishing channel", &e))?;
                    channel
                        .confirm_select(ConfirmSelectOptions::default())
                        .await
                        .map_err(|e| from_lapin("enabling publisher confirms", &e))?;
                    Ok::<_, BusError>(channel)
                };
                let channel = tokio::time::timeout_at(deadline, opening)
                    .await
                    .map_err(|_| timed_out("opening a publishing channel", &self.config))??;
                PubChannel { channel, live, declared: HashSet::new() }
            }
        };
        Ok(Lease { owner: self, channel: Some(channel), reusable: true, deadline, _permit: permit })
    }

    /// Stops new publishes, waits (up to `publish_timeout`) for those in flight to be
    /// confirmed, then closes the channels and the connection.
    pub(crate) async fn close(&self) -> Result<(), BusError> {
        self.closed.store(true, Ordering::SeqCst);
        let lanes = u32::try_from(self.config.publish_channels).unwrap_or(u32::MAX);
        let drained =
            tokio::time::timeout(self.config.publish_timeout, self.lanes.acquire_many(lanes)).await;
        self.lanes.close();
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        for pc in idle {
            if pc.channel.status().connected() {
                let _ = pc.channel.close(200, "keel: closed".into()).await;
            }
        }
        self.connector.close().await;
        match drained {
            Ok(_) => Ok(()),
            Err(_) => Err(BusError::Timeout(format!(
                "publishes in flight were not confirmed within {:?}",
                self.config.publish_timeout
            ))),
        }
    }
}

/// One channel of the pool, held for one publish; back in the pool when dropped
/// (unless the channel broke).
pub(crate) struct Lease<'a> {
    owner: &'a Publishing,
    channel: Option<PubChannel>,
    /// False once a confirm may still be outstanding (a timeout): such a channel could
    /// hand a late `basic.return` to a later publish, so it is closed, not reused.
    reusable: bool,
    /// When this publish runs out of `publish_timeout`.
    deadline: Instant,
    _permit: SemaphorePermit<'a>,
}

impl fmt::Debug for Lease<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(pc) = self.channel.take() else { return };
        if self.reusable && pc.channel.status().connected() && !self.owner.is_closed() {
            self.owner.idle.lock().unwrap_or_else(PoisonError::into_inner).push(pc);
        } else if pc.channel.status().connected()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = pc.channel.close(200, "keel: channel retired".into()).await;
            });
        }
    }
}

impl Lease<'_> {
    fn pc(&mut self) -> Result<&mut PubChannel, BusError> {
        self.channel.as_mut().ok_or(BusError::Closed)
    }

    /// Runs `declare` once per channel for `key` (exchanges and queues this publish
    /// needs; declarations are idempotent, the cache only saves round trips).
    pub(crate) async fn ensure<F, Fut>(&mut self, key: &str, declare: F) -> Result<(), BusError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<(), BusError>>,
    {
        let deadline = self.deadline;
        let timeout = self.owner.config.publish_timeout;
        let pc = self.pc()?;
        if pc.declared.contains(key) {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, declare(pc.channel.clone())).await {
            Ok(result) => result?,
            Err(_) => {
                self.reusable = false;
                return Err(BusError::Timeout(format!(
                    "declaring `{key}` took longer than {timeout:?}"
                )));
            }
        }
        if let Some(pc) = self.channel.as_mut() {
            pc.declared.insert(key.to_owned());
        }
        Ok(())
    }

    /// Publishes `messages` in order and returns once the broker has confirmed all of
    /// them; a message it returned as unroutable is an error
    /// ([`BusError::Unroutable`]).
    pub(crate) async fn send(&mut self, messages: Vec<Outgoing>) -> Result<(), BusError> {
        match self.send_returning(messages).await?.into_error() {
            None => Ok(()),
            Some(unroutable) => Err(unroutable),
        }
    }

    /// Publishes `messages` in order and returns once the broker has confirmed all of
    /// them, with those it returned as unroutable (see the module docs).
    pub(crate) async fn send_returning(
        &mut self,
        messages: Vec<Outgoing>,
    ) -> Result<Returned, BusError> {
        let timeout = self.owner.config.publish_timeout;
        let window = self.owner.config.confirm_window.max(1);
        let deadline = self.deadline;
        let pc = self.pc()?;
        let channel = pc.channel.clone();
        check_blocked(&pc.live)?;
        let mut messages = messages.into_iter();
        let mut returned = Returned::default();
        loop {
            let chunk: Vec<Outgoing> = messages.by_ref().take(window).collect();
            if chunk.is_empty() {
                return Ok(returned);
            }
            let confirmed =
                tokio::time::timeout_at(deadline, publish_window(&channel, chunk)).await;
            match confirmed {
                Ok(Ok(window)) => returned.extend(window),
                Ok(Err(error)) => {
                    // Something declared through this channel may be gone (a retry or
                    // dead-letter queue deleted, say): declare again next time.
                    if let Some(pc) = self.channel.as_mut() {
                        pc.declared.clear();
                    }
                    return Err(error);
                }
                Err(_) => {
                    self.reusable = false;
                    return Err(BusError::Timeout(format!(
                        "the broker did not confirm within {timeout:?}; the messages may or \
                         may not have been accepted"
                    )));
                }
            }
        }
    }
}

/// A broker under a memory or disk alarm stops reading from publishing connections:
/// say so at once rather than wait for confirms that cannot come.
fn check_blocked(live: &Live) -> Result<(), BusError> {
    if live.connection.status().blocked() {
        return Err(BusError::Backpressure(
            "the broker has blocked publishing (a memory or disk alarm)".into(),
        ));
    }
    Ok(())
}

fn timed_out(what: &str, config: &AmqpConfig) -> BusError {
    BusError::Timeout(format!("{what} took longer than {:?}", config.publish_timeout))
}

type Issued<'a> = Pin<Box<MaybeDone<BoxedPublish<'a>>>>;
type BoxedPublish<'a> =
    Pin<Box<dyn Future<Output = lapin::Result<lapin::PublisherConfirm>> + Send + 'a>>;

/// The messages of a publish that the broker returned as unroutable (no queue bound
/// for their routing key): each one's message id (the event id), and why.
#[derive(Debug, Default)]
pub(crate) struct Returned {
    /// The returned messages' ids; `None` for a message without one (an event id over
    /// 255 bytes does not fit an AMQP message id and travels in the headers only).
    pub(crate) ids: Vec<Option<String>>,
    /// The broker's reason for the first one.
    pub(crate) reason: Option<String>,
}

impl Returned {
    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn push(&mut self, returned: &BasicReturnMessage) {
        self.ids.push(returned.delivery.properties.message_id().as_ref().map(|id| id.to_string()));
        self.reason.get_or_insert_with(|| {
            format!(
                "unroutable: exchange `{}` has no queue bound for routing key `{}` ({} {}); \
                 subscribe a consumer group to the topic first",
                returned.delivery.exchange,
                returned.delivery.routing_key,
                returned.reply_code,
                returned.reply_text
            )
        });
    }

    fn extend(&mut self, other: Returned) {
        self.ids.extend(other.ids);
        if self.reason.is_none() {
            self.reason = other.reason;
        }
    }

    /// As an error, for a publish that wanted every message routed.
    pub(crate) fn into_error(self) -> Option<BusError> {
        (!self.is_empty())
            .then(|| BusError::Unroutable(self.reason.unwrap_or_else(|| "unroutable".to_owned())))
    }
}

/// Queues every message of the window, then awaits every confirm; the first failure
/// (after all confirms are in) is the result, unless a message was refused for what
/// it is: then that, because the broker closes the channel and the other messages of
/// the window fail only as a consequence. Returned messages are not failures here:
/// the broker acks them too, and they come back in the result.
async fn publish_window(channel: &Channel, messages: Vec<Outgoing>) -> Result<Returned, BusError> {
    let mut heads = Vec::with_capacity(messages.len());
    let mut bodies = Vec::with_capacity(messages.len());
    for message in messages {
        bodies.push(message.body);
        heads.push((message.exchange, message.routing_key, message.properties));
    }
    let mut issued: Vec<Issued<'_>> = Vec::with_capacity(bodies.len());
    {
        // One poll of each publish queues its frames with its delivery tag, in order,
        // without waiting for the previous one to reach the socket.
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        for ((exchange, routing_key, properties), body) in heads.into_iter().zip(&bodies) {
            let publish: BoxedPublish<'_> =
                Box::pin(channel.basic_publish(exchange, routing_key, MANDATORY, body, properties));
            let mut publish = Box::pin(maybe_done(publish));
            let _ = publish.as_mut().poll(&mut cx);
            issued.push(publish);
        }
    }
    let mut outcome = Ok(());
    let mut returned = Returned::default();
    for mut publish in issued {
        publish.as_mut().await;
        let result = match publish.as_mut().take_output() {
            Some(Ok(confirm)) => match confirm.await {
                Ok(confirmation) => check(confirmation, &mut returned),
                Err(error) => Err(from_lapin_publish("waiting for the publish confirm", &error)),
            },
            Some(Err(error)) => Err(from_lapin_publish("publishing", &error)),
            None => Err(BusError::Connection("a publish vanished before it was sent".into())),
        };
        match (&outcome, result) {
            (_, Ok(())) => {}
            (Ok(()), Err(error)) => outcome = Err(error),
            (Err(first), Err(error)) if error.is_unpublishable() && !first.is_unpublishable() => {
                outcome = Err(error);
            }
            (Err(_), Err(_)) => {}
        }
    }
    outcome.map(|()| returned)
}

/// One message's confirmation. lapin hands a `basic.return` to whichever confirm
/// completes next, not necessarily the returned message's own, so a return is
/// recorded by the message id it carries, apart from this confirm's own outcome.
fn check(confirmation: Confirmation, returned: &mut Returned) -> Result<(), BusError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(message)) => {
            returned.push(&message);
            Ok(())
        }
        Confirmation::Nack(Some(message)) => {
            returned.push(&message);
            Err(nacked())
        }
        Confirmation::Nack(None) => Err(nacked()),
        Confirmation::NotRequested => {
            Err(BusError::Connection("the channel lost confirm mode; publish again".into()))
        }
    }
}

fn nacked() -> BusError {
    BusError::Rejected(
        "the broker refused the message (negative confirm: a queue is full or failed)".into(),
    )
}

#[cfg(test)]
mod tests {
    use lapin::message::Delivery;

    use super::*;

    fn returned_message(id: Option<&str>) -> BasicReturnMessage {
        let mut delivery =
            Delivery::mock(0, "keel.orders".into(), "order.placed".into(), false, vec![]);
        if let Some(id) = id {
            delivery.properties = delivery.properties.with_message_id(id.into());
        }
        BasicReturnMessage { delivery, reply_code: 312, reply_text: "NO_ROUTE".into() }
    }

    #[test]
    fn a_return_is_recorded_by_its_message_id_and_only_a_nack_fails() {
        let mut returned = Returned::default();
        assert!(check(Confirmation::Ack(None), &mut returned).is_ok());
        assert!(returned.is_empty());
        // A return rides on an ack (whichever message's): recorded, not a failure.
        assert!(
            check(Confirmation::Ack(Some(returned_message(Some("e-1")))), &mut returned).is_ok()
        );
        // On a nack, both: the return is recorded and the nack fails.
        let err = check(Confirmation::Nack(Some(returned_message(None))), &mut returned)
            .expect_err("nacked");
        assert!(matches!(&err, BusError::Rejected(m) if m.contains("negative confirm")), "{err}");
        assert_eq!(returned.ids, [Some("e-1".to_owned()), None]);
        let err = returned.into_error().expect("two returned");
        assert!(
            matches!(&err, BusError::Unroutable(m)
                if m.contains("unroutable") && m.contains("keel.orders") && m.contains("order.placed")),
            "{err}"
        );
        let err = check(Confirmation::Nack(None), &mut Returned::default()).expect_err("nacked");
        assert!(!err.is_retryable());
        let err = check(Confirmation::NotRequested, &mut Returned::default())
            .expect_err("no confirm mode");
        assert!(err.is_retryable(), "{err}");
        assert!(Returned::default().into_error().is_none());
    }
}
