//! The seams behind the console's pages: where consumer groups and their lag come
//! from on each backend, and how projections are rebuilt.

use std::sync::Arc;

use async_trait::async_trait;
use keel_core::BusError;
use keel_store::{EventLog, LogFilter};

/// A consumer group: the topic it reads and its name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupRef {
    /// The topic.
    pub topic: String,
    /// The group's name.
    pub group: String,
}

/// How far a consumer group is behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStatus {
    /// Messages the group has not yet handled (`None`: the backend cannot tell, or the
    /// group does not exist there).
    pub lag: Option<u64>,
    /// Messages in its dead letters, when the backend counts them cheaply (otherwise
    /// the console lists them).
    pub dead_letters: Option<u64>,
    /// Whether the lag reached the counting limit ([`LOG_LAG_LIMIT`]) and is at least
    /// what it says.
    pub at_least: bool,
}

/// Consumer groups and their lag, on one bus backend.
#[async_trait]
pub trait GroupLag: Send + Sync {
    /// The groups the backend can list by itself (a broker that cannot list returns
    /// none; the console also shows the groups it was told about).
    async fn groups(&self) -> Result<Vec<GroupRef>, BusError>;

    /// How far `group` of `topic` is behind.
    async fn status(&self, topic: &str, group: &str) -> Result<GroupStatus, BusError>;
}

/// The log bus counts a group's lag by reading its topic after the group's checkpoint,
/// up to this many events.
pub const LOG_LAG_LIMIT: u64 = 100_000;

/// The groups of the log bus (`KEEL_BUS_URL` unset): their checkpoints are in the store
/// (`bus:<topic>:<group>`), and the lag is the number of events of the topic after it.
#[derive(Clone)]
pub struct LogBusGroups {
    log: Arc<dyn EventLog>,
}

impl std::fmt::Debug for LogBusGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogBusGroups").finish_non_exhaustive()
    }
}

impl LogBusGroups {
    /// The log bus's groups in `log`.
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        Self { log }
    }
}

#[async_trait]
impl GroupLag for LogBusGroups {
    async fn groups(&self) -> Result<Vec<GroupRef>, BusError> {
        let checkpoints = self.log.checkpoints().await.map_err(store_error)?;
        Ok(checkpoints
            .into_iter()
            .filter_map(|(name, _, _)| {
                let (topic, group) = name.strip_prefix("bus:")?.split_once(':')?;
                Some(GroupRef { topic: topic.to_owned(), group: group.to_owned() })
            })
            .collect())
    }

    async fn status(&self, topic: &str, group: &str) -> Result<GroupStatus, BusError> {
        let name = format!("bus:{topic}:{group}");
        let Some(mut cursor) = self.log.checkpoint(&name).await.map_err(store_error)? else {
            return Ok(GroupStatus::default());
        };
        let filter = LogFilter::topic(topic);
        let mut lag = 0u64;
        loop {
            let page = self.log.read_after(cursor, &filter, 1000).await.map_err(store_error)?;
            lag += page.events.len() as u64;
            if page.events.is_empty() || lag >= LOG_LAG_LIMIT {
                let at_least = lag >= LOG_LAG_LIMIT;
                return Ok(GroupStatus { lag: Some(lag), dead_letters: None, at_least });
            }
            cursor = page.next;
        }
    }
}

fn store_error(error: keel_store::StoreError) -> BusError {
    BusError::Backend(Box::new(error))
}

/// A broker's groups (RabbitMQ, Kafka, or any bus), through the bus's own
/// [`keel_core::Subscriber::depth`], the figure the `keel_consumer_lag_messages` and
/// `keel_dead_letters` gauges show: on RabbitMQ the ready messages of the group's queue
/// and of its dead-letter queue, on Kafka the end offsets minus the group's committed
/// ones. Give it the bus the services use (under a namespace, the namespaced one), so
/// the names match theirs. Brokers are not asked to list groups here; tell the console
/// about them with [`crate::Console::group`].
#[derive(Clone)]
pub struct BusGroups {
    bus: Arc<dyn keel_core::Subscriber>,
}

impl std::fmt::Debug for BusGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusGroups").finish_non_exhaustive()
    }
}

impl BusGroups {
    /// The groups of `bus`.
    pub fn new(bus: Arc<dyn keel_core::Subscriber>) -> Self {
        Self { bus }
    }
}

#[async_trait]
impl GroupLag for BusGroups {
    async fn groups(&self) -> Result<Vec<GroupRef>, BusError> {
        Ok(Vec::new())
    }

    async fn status(&self, topic: &str, group: &str) -> Result<GroupStatus, BusError> {
        let depth = self.bus.depth(topic, group).await?;
        Ok(GroupStatus { lag: depth.lag, dead_letters: depth.dead_letters, at_least: false })
    }
}

/// Rebuilds projections (the projections page's button).
#[async_trait]
pub trait Rebuild: Send + Sync {
    /// The projections this can rebuild.
    fn names(&self) -> Vec<String>;

    /// Resets projection `name` and replays the log into it; returns how many events it
    /// applied, or why it could not.
    async fn rebuild(&self, name: &str) -> Result<u64, String>;
}
