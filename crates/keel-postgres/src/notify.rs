//! Wake-ups across processes: `NOTIFY` after appends, `LISTEN` for others' appends.
//!
//! The notification is sent on its own connection after the append's transaction has
//! committed, never inside it: a `NOTIFY` inside a transaction takes a global lock at
//! commit and serialises every writer. Notifications are at least `NOTIFY_INTERVAL`
//! apart: pokes that arrive meanwhile coalesce into the next one, so under a heavy
//! append load the wake-ups cost a few hundred small transactions a second instead of
//! one per append (which measurably slowed appends: 0.72x raw instead of 0.83x with
//! 8 clients), at the price of up to that interval of extra latency for subscribers in
//! other processes. An idle log notifies at once. A notification that fails (the
//! connection broke, the server restarts) is sent again, with backoff, until it goes
//! through: the appends it announces are committed, and subscribers elsewhere would
//! otherwise wait for their poll.
//!
//! The payload names the topics appended to since the last notification, separated
//! by spaces (topics are letters, digits, `.`, `_` and `-`), so listeners wake only
//! those topics' followers ([`keel_store::changes`]). An empty payload (appends whose
//! topics are not known, too many topics for one payload, an older sender) wakes
//! everyone.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keel_bus::Backoff;
use keel_store::{Changes, Result};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The least time between two notifications.
pub(crate) const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

/// The longest payload sent; PostgreSQL takes up to 8,000 bytes.
const MAX_PAYLOAD: usize = 4_000;

/// How long a failed notification waits before it is sent again.
const RESEND: Backoff = Backoff {
    initial: Duration::from_millis(50),
    max: Duration::from_secs(2),
    multiplier: 2.0,
    jitter: true,
};

/// Aborts its task when dropped (the log owns its background tasks).
pub(crate) struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `NOTIFY keel_events` (the namespace's channel) after appends, coalescing bursts.
pub(crate) struct Notifier {
    poke: Arc<Notify>,
    pending: Arc<Mutex<Pending>>,
    _task: TaskGuard,
}

/// What the next notification announces.
#[derive(Default)]
struct Pending {
    /// Appends to topics not known: the notification names none (wakes everyone).
    anywhere: bool,
    topics: BTreeSet<String>,
}

impl Pending {
    /// The payload announcing these appends, and nothing pending afterwards.
    fn take_payload(&mut self) -> String {
        let Self { anywhere, topics } = std::mem::take(self);
        let payload = topics.into_iter().collect::<Vec<_>>().join(" ");
        if anywhere || payload.len() > MAX_PAYLOAD { String::new() } else { payload }
    }
}

impl Notifier {
    pub(crate) fn start(pool: PgPool, channel: String) -> Self {
        let poke = Arc::new(Notify::new());
        let pending = Arc::new(Mutex::new(Pending::default()));
        let waiting = poke.clone();
        let announced = pending.clone();
        let task = tokio::spawn(async move {
            loop {
                waiting.notified().await;
                let payload =
                    announced.lock().unwrap_or_else(PoisonError::into_inner).take_payload();
                let mut failures = 0;
                while let Err(error) = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(&channel)
                    .bind(&payload)
                    .execute(&pool)
                    .await
                {
                    failures += 1;
                    tracing::debug!(%error, failures, "could not send the append notification; sending it again");
                    tokio::time::sleep(RESEND.delay(failures)).await;
                }
                tokio::time::sleep(NOTIFY_INTERVAL).await;
            }
        });
        Self { poke, pending, _task: TaskGuard(task) }
    }

    /// Asks for one notification announcing appends to `topics`, or to topics not
    /// known with `None` (cheap; never waits).
    pub(crate) fn poke(&self, topics: Option<&[&str]>) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            match topics {
                Some(topics) => pending.topics.extend(topics.iter().map(|t| (*t).to_owned())),
                None => pending.anywhere = true,
            }
        }
        self.poke.notify_one();
    }
}

/// Listens for notifications and wakes the topics each names (everyone for an empty
/// payload).
pub(crate) async fn listen(
    pool: PgPool,
    channel: String,
    changes: Arc<Changes>,
) -> Result<TaskGuard> {
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(&channel).await?;
    let task = tokio::spawn(async move {
        loop {
            match listener.recv().await {
                Ok(notification) => match notification.payload() {
                    "" => changes.appended_anywhere(),
                    topics => changes.appended(topics.split(' ')),
                },
                Err(error) => {
                    // The listener reconnects by itself on the next recv; wake the
                    // subscribers anyway, something may have been missed meanwhile.
                    tracing::debug!(%error, "notification listener lost its connection");
                    changes.appended_anywhere();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    Ok(TaskGuard(task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_names_the_topics_or_none_when_it_cannot() {
        let mut pending = Pending::default();
        pending.topics.extend(["stock".to_owned(), "order".to_owned(), "order".to_owned()]);
        assert_eq!(pending.take_payload(), "order stock");
        assert_eq!(pending.take_payload(), "", "nothing pending after");

        pending.topics.insert("order".to_owned());
        pending.anywhere = true;
        assert_eq!(pending.take_payload(), "", "unknown topics: everyone");

        pending.topics.extend((0..1_000).map(|n| format!("topic-{n}")));
        assert_eq!(pending.take_payload(), "", "too many for one payload: everyone");
    }
}
