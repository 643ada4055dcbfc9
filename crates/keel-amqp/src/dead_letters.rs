//! `keel dlq` for RabbitMQ: browsing, retrying and purging a group's dead-letter
//! queue `keel.<topic>:<group>:dlq`.
//!
//! A queue cannot be read without taking messages, so browsing takes them on a
//! short-lived channel with `basic.get` (no ack) and closing the channel gives them
//! all back. `retry` scans the same way for the id, republishes that message
//! (confirmed) to the group queue with its attempt count reset, then acks it out of
//! the dead-letter queue; the scan is linear in the queue's length. Concurrent
//! browsers each see only what the other is not holding at that moment. Browsing
//! uses the consuming connection (the broker never blocks it during an alarm), and
//! each operation is bounded by `publish_timeout`.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use keel_core::bus::{DeadLetter, GroupDepth};
use keel_core::{BusError, DeadLetterId};
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;

use crate::Shared;
use crate::connector::Wait;
use crate::error::{from_lapin, is_not_found};
use crate::headers::{self, Outgoing, short};
use crate::names::GroupNames;

const TAKE: BasicGetOptions = BasicGetOptions { no_ack: false };

/// A channel on the consuming connection, which the broker never blocks (it blocks
/// connections that publish during a memory or disk alarm).
pub(crate) async fn browse_channel(shared: &Shared) -> Result<Channel, BusError> {
    if shared.publishing.is_closed() {
        return Err(BusError::Closed);
    }
    let live = shared.consuming.get(Wait::No, None).await?;
    live.connection
        .create_channel()
        .await
        .map_err(|e| from_lapin("opening a channel to browse dead letters", &e))
}

/// Closing the channel returns every message it took.
pub(crate) async fn give_back(channel: Channel) {
    if channel.status().connected() {
        let _ = channel.close(200, "keel: done browsing".into()).await;
    }
}

/// The next message of `queue`, or `None` when it is empty or does not exist.
async fn take(
    channel: &Channel,
    queue: &str,
) -> Result<Option<lapin::message::Delivery>, BusError> {
    match channel.basic_get(short(queue, "queue name")?, TAKE).await {
        Ok(message) => Ok(message.map(|m| m.delivery)),
        Err(error) if is_not_found(&error) => Ok(None),
        Err(error) => Err(from_lapin(&format!("reading `{queue}`"), &error)),
    }
}

/// Runs a dead-letter operation within `publish_timeout`.
pub(crate) async fn bounded<T>(
    shared: &Shared,
    what: &str,
    operation: impl Future<Output = Result<T, BusError>>,
) -> Result<T, BusError> {
    let limit = shared.config.publish_timeout;
    tokio::time::timeout(limit, operation)
        .await
        .map_err(|_| BusError::Timeout(format!("{what} took longer than {limit:?}")))?
}

/// The ready messages of the group queue and of its dead-letter queue, read with a
/// passive declare each (on a channel of its own: a missing queue closes it); a queue
/// that does not exist counts 0.
pub(crate) async fn depth(
    shared: &Arc<Shared>,
    topic: &str,
    group: &str,
) -> Result<GroupDepth, BusError> {
    let names = GroupNames::new(topic, group)?;
    let lag = ready_messages(shared, &names.queue).await?;
    let dead = ready_messages(shared, &names.dlq).await?;
    Ok(GroupDepth::new(Some(lag), Some(dead)))
}

async fn ready_messages(shared: &Shared, queue: &str) -> Result<u64, BusError> {
    const PASSIVE: QueueDeclareOptions = QueueDeclareOptions {
        passive: true,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
    };
    let channel = browse_channel(shared).await?;
    let declared =
        channel.queue_declare(short(queue, "queue name")?, PASSIVE, FieldTable::default()).await;
    let count = match declared {
        Ok(queue) => Ok(u64::from(queue.message_count())),
        Err(error) if is_not_found(&error) => Ok(0),
        Err(error) => Err(from_lapin(&format!("counting the messages of `{queue}`"), &error)),
    };
    give_back(channel).await;
    count
}

pub(crate) async fn list(
    shared: &Arc<Shared>,
    topic: &str,
    group: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, BusError> {
    let names = GroupNames::new(topic, group)?;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let channel = browse_channel(shared).await?;
    let mut letters = Vec::new();
    let mut outcome = Ok(());
    while letters.len() < limit {
        match take(&channel, &names.dlq).await {
            Ok(Some(delivery)) => letters.push(dead_letter(&names, &delivery)),
            Ok(None) => break,
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
    }
    give_back(channel).await;
    outcome?;
    letters.sort_by(|a, b| (a.dead_lettered_at, &a.id).cmp(&(b.dead_lettered_at, &b.id)));
    Ok(letters)
}

pub(crate) async fn retry(
    shared: &Arc<Shared>,
    topic: &str,
    group: &str,
    id: &DeadLetterId,
) -> Result<bool, BusError> {
    let names = GroupNames::new(topic, group)?;
    let channel = browse_channel(shared).await?;
    let outcome = retry_on(shared, &channel, &names, id).await;
    give_back(channel).await;
    outcome
}

async fn retry_on(
    shared: &Shared,
    channel: &Channel,
    names: &GroupNames,
    id: &DeadLetterId,
) -> Result<bool, BusError> {
    let found = loop {
        match take(channel, &names.dlq).await? {
            None => return Ok(false),
            Some(delivery) if letter_id(&delivery) == id.0 => break delivery,
            Some(_) => {}
        }
    };
    // Back to the group as new: first attempt, no dead-letter headers.
    let table = headers::lasting_headers(&found.properties);
    let message = Outgoing {
        exchange: short("", "exchange")?,
        routing_key: short(&names.queue, "queue name")?,
        properties: headers::republish_properties(&found.properties, table),
        body: bytes::Bytes::from(found.data.clone()),
    };
    let mut lease = shared.publishing.lease().await?;
    lease.send(vec![message]).await?;
    drop(lease);
    match found.acker.ack(BasicAckOptions::default()).await {
        Ok(true) => Ok(true),
        // Republished but still in the dead-letter queue: it will be there twice.
        Ok(false) => Err(BusError::Connection(
            "the dead letter was sent back to its group, but the browse channel closed \
             before it could be removed from the dead-letter queue"
                .into(),
        )),
        Err(error) => Err(from_lapin("removing a retried dead letter", &error)),
    }
}

pub(crate) async fn purge(shared: &Arc<Shared>, topic: &str, group: &str) -> Result<u64, BusError> {
    let names = GroupNames::new(topic, group)?;
    let channel = browse_channel(shared).await?;
    let purged =
        channel.queue_purge(short(&names.dlq, "queue name")?, QueuePurgeOptions::default()).await;
    give_back(channel).await;
    match purged {
        Ok(count) => Ok(u64::from(count)),
        Err(error) if is_not_found(&error) => Ok(0),
        Err(error) => Err(from_lapin(&format!("purging `{}`", names.dlq), &error)),
    }
}

/// A dead letter's id: the `x-keel-dead-letter-id` Keel gives it; for a message the
/// broker dead-lettered on its own, its message id, its CloudEvents id, or a hash of
/// its headers and body.
fn letter_id(delivery: &lapin::message::Delivery) -> String {
    let properties = &delivery.properties;
    headers::text_header(properties, headers::DEAD_LETTER_ID)
        .or_else(|| properties.message_id().as_ref().map(ToString::to_string))
        .or_else(|| headers::text_header(properties, "cloudEvents_id"))
        .unwrap_or_else(|| {
            let mut hash = Fnv::default();
            for (name, value) in headers::raw_headers(properties) {
                hash.write(name.as_bytes());
                hash.write(&value);
            }
            hash.write(&delivery.data);
            format!("h-{:016x}", hash.0)
        })
}

fn dead_letter(names: &GroupNames, delivery: &lapin::message::Delivery) -> DeadLetter {
    let properties = &delivery.properties;
    let reason = headers::text_header(properties, headers::ERROR)
        .or_else(|| {
            headers::text_header(properties, "x-first-death-reason")
                .map(|why| format!("dead-lettered by the broker: {why}"))
        })
        .unwrap_or_else(|| "dead-lettered, reason unknown".to_owned());
    let attempts = headers::int_header(properties, headers::ATTEMPTS)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or_else(|| headers::attempt(properties, false));
    let dead_lettered_at = headers::text_header(properties, headers::DEAD_LETTERED_AT)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            properties
                .timestamp()
                .and_then(|secs| i64::try_from(secs).ok())
                .and_then(|secs| DateTime::from_timestamp(secs, 0))
        })
        .unwrap_or_else(Utc::now);
    DeadLetter {
        id: DeadLetterId(letter_id(delivery)),
        topic: names.topic.clone(),
        group: names.group.clone(),
        reason,
        attempts,
        dead_lettered_at,
        payload: headers::decode(properties, bytes::Bytes::from(delivery.data.clone())),
    }
}

/// FNV-1a, 64 bits: stable across processes and releases (unlike std's hasher).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
