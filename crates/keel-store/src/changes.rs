//! Change notifications by topic, for the stores' [`EventLog::changes`] and
//! [`EventLog::topic_changes`].
//!
//! A subscriber that follows one topic (a log bus group, a projection of one topic)
//! re-reads the log whenever it is woken. Woken by every append, it would also read
//! once per append to every other topic, and find nothing. So an append that knows
//! its topics wakes only those topics' receivers (and every whole-log receiver); a
//! change whose topics are not known (another process's append without them, a
//! caller that did not say) wakes every receiver, as before.
//!
//! [`EventLog::changes`]: crate::EventLog::changes
//! [`EventLog::topic_changes`]: crate::EventLog::topic_changes

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// The change counters of one log: one for the whole log, one per topic that someone
/// follows.
#[derive(Debug)]
pub struct Changes {
    all: watch::Sender<u64>,
    topics: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Default for Changes {
    fn default() -> Self {
        Self { all: watch::channel(0).0, topics: Mutex::new(HashMap::new()) }
    }
}

impl Changes {
    /// A receiver that changes on every append.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.all.subscribe()
    }

    /// A receiver that changes on appends to `topic` and on changes of unknown topics.
    pub fn subscribe_topic(&self, topic: &str) -> watch::Receiver<u64> {
        let mut topics = self.lock();
        topics.entry(topic.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Events were appended to these topics (and no others).
    pub fn appended<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        {
            let mut followed = self.lock();
            followed.retain(|_, sender| !sender.is_closed());
            for topic in topics {
                if let Some(sender) = followed.get(topic) {
                    bump(sender);
                }
            }
        }
        bump(&self.all);
    }

    /// Events were appended to topics nobody told us: every receiver is woken.
    pub fn appended_anywhere(&self) {
        {
            let mut followed = self.lock();
            followed.retain(|_, sender| !sender.is_closed());
            followed.values().for_each(bump);
        }
        bump(&self.all);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // A panic while bumping counters leaves them usable.
        self.topics.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn bump(sender: &watch::Sender<u64>) {
    sender.send_modify(|n| *n = n.wrapping_add(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_wakes_its_topics_and_the_whole_log_only() {
        let changes = Changes::default();
        let mut all = changes.subscribe();
        let mut orders = changes.subscribe_topic("order");
        let stock = changes.subscribe_topic("stock");
        changes.appended(["order"]);
        assert!(all.has_changed().expect("open"));
        assert!(orders.has_changed().expect("open"));
        assert!(!stock.has_changed().expect("open"), "another topic's append does not wake stock");
        all.borrow_and_update();
        orders.borrow_and_update();

        changes.appended_anywhere();
        assert!(all.has_changed().expect("open"));
        assert!(orders.has_changed().expect("open"));
        assert!(stock.has_changed().expect("open"), "a change of unknown topics wakes everyone");
    }

    #[test]
    fn topics_nobody_follows_any_more_are_forgotten() {
        let changes = Changes::default();
        drop(changes.subscribe_topic("order"));
        let _stock = changes.subscribe_topic("stock");
        changes.appended(["order"]);
        assert_eq!(changes.lock().keys().collect::<Vec<_>>(), ["stock"]);
    }
}
