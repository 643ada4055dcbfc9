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

use std::sync::Arc;
use std::time::Duration;

use keel_bus::Backoff;
use keel_store::Result;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// The least time between two notifications.
pub(crate) const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

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
    _task: TaskGuard,
}

impl Notifier {
    pub(crate) fn start(pool: PgPool, channel: String) -> Self {
        let poke = Arc::new(Notify::new());
        let waiting = poke.clone();
        let task = tokio::spawn(async move {
            loop {
                waiting.notified().await;
                let mut failures = 0;
                while let Err(error) =
                    sqlx::query("SELECT pg_notify($1, '')").bind(&channel).execute(&pool).await
                {
                    failures += 1;
                    tracing::debug!(%error, failures, "could not send the append notification; sending it again");
                    tokio::time::sleep(RESEND.delay(failures)).await;
                }
                tokio::time::sleep(NOTIFY_INTERVAL).await;
            }
        });
        Self { poke, _task: TaskGuard(task) }
    }

    /// Asks for one notification (cheap; never waits).
    pub(crate) fn poke(&self) {
        self.poke.notify_one();
    }
}

/// Listens for notifications and bumps `changes` for each.
pub(crate) async fn listen(
    pool: PgPool,
    channel: String,
    changes: watch::Sender<u64>,
) -> Result<TaskGuard> {
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(&channel).await?;
    let task = tokio::spawn(async move {
        loop {
            match listener.recv().await {
                Ok(_) => changes.send_modify(|n| *n = n.wrapping_add(1)),
                Err(error) => {
                    // The listener reconnects by itself on the next recv; wake the
                    // subscribers anyway, something may have been missed meanwhile.
                    tracing::debug!(%error, "notification listener lost its connection");
                    changes.send_modify(|n| *n = n.wrapping_add(1));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    Ok(TaskGuard(task))
}
