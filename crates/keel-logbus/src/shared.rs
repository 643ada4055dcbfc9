//! What a group's members, its settle handles and its feeder share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use keel_core::StartFrom;
use tokio::sync::Notify;

use crate::group::Group;
use crate::progress::ProgressWriter;
use crate::store::BusStore;

/// One consumer group (topic and group name) in this process.
pub(crate) struct GroupShared {
    pub(crate) topic: String,
    pub(crate) group: String,
    /// Its checkpoint and lease name: `bus:<topic>:<group>`.
    pub(crate) name: String,
    /// Where the group starts if it has no checkpoint yet.
    pub(crate) start: StartFrom,
    pub(crate) store: Arc<dyn BusStore>,
    /// Stores the group's progress, with other groups' of the bus (group commit).
    pub(crate) progress: Arc<ProgressWriter>,
    state: Mutex<Group>,
    /// Wakes members: something may be ready (or the group closed).
    pub(crate) members: Notify,
    /// Wakes the feeder: something was settled, a member came or went.
    pub(crate) feeder: Notify,
    /// A dead letter of the group was sent back for another try.
    pub(crate) letters_due: AtomicBool,
}

impl std::fmt::Debug for GroupShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupShared").field("name", &self.name).finish_non_exhaustive()
    }
}

impl GroupShared {
    pub(crate) fn new(
        topic: &str,
        group: &str,
        start: StartFrom,
        types: Vec<String>,
        store: Arc<dyn BusStore>,
        progress: Arc<ProgressWriter>,
    ) -> Self {
        Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
            name: checkpoint_name(topic, group),
            start,
            store,
            progress,
            state: Mutex::new(Group::new(types)),
            members: Notify::new(),
            feeder: Notify::new(),
            letters_due: AtomicBool::new(false),
        }
    }

    /// The state, even after a panic elsewhere: each mutation keeps it consistent at
    /// every step that could panic, and the bus must not panic.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Group> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The checkpoint (and lease) name of a consumer group.
pub fn checkpoint_name(topic: &str, group: &str) -> String {
    format!("bus:{topic}:{group}")
}

/// The groups of one bus, by (topic, group).
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) groups: Mutex<HashMap<(String, String), Arc<GroupShared>>>,
    pub(crate) next_member: AtomicU64,
}

impl Registry {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Arc<GroupShared>>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
