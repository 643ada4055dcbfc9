//! A consumer group's queue from outside: how many messages wait in it, and emptying
//! it (`keel groups list|reset`). RabbitMQ cannot move a queue back; a reset empties
//! the queue and the caller backfills it from the log.

use keel_core::BusError;
use lapin::options::{QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;

use crate::Shared;
use crate::dead_letters::{browse_channel, give_back};
use crate::error::{from_lapin, is_not_found};
use crate::headers::short;
use crate::names::GroupNames;

/// A group's queue as the broker reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages ready in the group's queue (its lag; those handed out and not yet
    /// settled are not counted).
    pub messages: u64,
    /// Members consuming from it now.
    pub consumers: u64,
}

/// The depth of `topic`/`group`'s queue; `None` when the group was never subscribed.
pub(crate) async fn depth(
    shared: &Shared,
    topic: &str,
    group: &str,
) -> Result<Option<QueueDepth>, BusError> {
    let names = GroupNames::new(topic, group)?;
    let channel = browse_channel(shared).await?;
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let declared = channel
        .queue_declare(short(&names.queue, "queue name")?, passive, FieldTable::default())
        .await;
    give_back(channel).await;
    match declared {
        Ok(queue) => Ok(Some(QueueDepth {
            messages: u64::from(queue.message_count()),
            consumers: u64::from(queue.consumer_count()),
        })),
        Err(error) if is_not_found(&error) => Ok(None),
        Err(error) => Err(from_lapin(&format!("looking up `{}`", names.queue), &error)),
    }
}

/// Empties `topic`/`group`'s queue; returns how many messages it dropped.
pub(crate) async fn purge(shared: &Shared, topic: &str, group: &str) -> Result<u64, BusError> {
    let names = GroupNames::new(topic, group)?;
    let channel = browse_channel(shared).await?;
    let purged =
        channel.queue_purge(short(&names.queue, "queue name")?, QueuePurgeOptions::default()).await;
    give_back(channel).await;
    match purged {
        Ok(count) => Ok(u64::from(count)),
        Err(error) if is_not_found(&error) => Err(BusError::Config(format!(
            "no queue `{}`: group {group} of topic {topic} was never subscribed",
            names.queue
        ))),
        Err(error) => Err(from_lapin(&format!("purging `{}`", names.queue), &error)),
    }
}
