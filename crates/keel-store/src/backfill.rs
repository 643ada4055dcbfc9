//! Backfilling one consumer group from the log.
//!
//! A broker keeps messages only for groups that exist (RabbitMQ), so a group created
//! after events were published never sees them; the relay skips what nobody
//! subscribes to. The log still has every event: [`backfill_group`] reads a topic's
//! events from a position or a time and publishes them to that one group
//! ([`Publisher::publish_to_group`]), so the other groups get nothing twice. It is
//! the building block of `keel replay --into group:TOPIC:GROUP`.
//!
//! A backfill reads the log in position order up to what is there when each page is
//! read; the relay meanwhile publishes new events to every existing group, this one
//! included, so the group may get an event from both (delivery is at-least-once, and
//! the inbox deduplicates). Backfilled events arrive in log order among themselves,
//! interleaved with what the relay sends live.

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use keel_core::bus::{validate_group, validate_topic};
use keel_core::{CloudEvent, Position, Publisher, StreamId};

use crate::error::Result;
use crate::log::{EventLog, LogQuery};

/// Which events of a topic a backfill sends to which group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupBackfill {
    /// The topic whose events are sent.
    pub topic: String,
    /// The consumer group that receives them.
    pub group: String,
    /// Events with a position above this one.
    pub from: Position,
    /// Only events whose `time` is at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only these types (empty: all). A group subscribed to some types only should be
    /// backfilled with the same list: the backfill goes to its queue directly, past
    /// the broker's type bindings.
    pub types: Vec<String>,
    /// Only this stream's events.
    pub stream: Option<StreamId>,
    /// Events read and published per batch.
    pub batch_size: usize,
}

impl GroupBackfill {
    /// Every event of `topic`, for `group`.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            from: Position::START,
            since: None,
            types: Vec::new(),
            stream: None,
            batch_size: 500,
        }
    }
}

/// How far a backfill has got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackfillProgress {
    /// Events published (and confirmed) so far.
    pub published: u64,
    /// The position of the last one: a failed backfill resumes after it.
    pub position: Position,
}

/// Publishes the events `spec` selects to its group, batch by batch, each confirmed
/// before the next is read; calls `progress` after each. Returns what was published.
/// On error, the progress last reported says where to resume from.
pub async fn backfill_group(
    log: &dyn EventLog,
    bus: &dyn Publisher,
    spec: &GroupBackfill,
    mut progress: impl FnMut(BackfillProgress) + Send,
) -> Result<BackfillProgress> {
    validate_topic(&spec.topic)?;
    validate_group(&spec.group)?;
    let query = LogQuery {
        from: spec.from,
        since: spec.since,
        types: spec.types.clone(),
        stream: spec.stream.clone(),
        topic: Some(spec.topic.clone()),
        limit: spec.batch_size.max(1),
    };
    let mut done = BackfillProgress { published: 0, position: spec.from };
    let mut pages = log.replay(query);
    while let Some(page) = pages.next().await {
        let page = page?;
        let Some(last) = page.last().map(|e| e.cursor.log_position()) else { continue };
        let events: Vec<CloudEvent> = page.into_iter().map(|e| e.event).collect();
        bus.publish_to_group(&spec.topic, &spec.group, &events).await?;
        done.published += events.len() as u64;
        done.position = last;
        progress(done);
    }
    Ok(done)
}
