//! The transactional inbox: a handler's writes and the processed mark commit together.

use keel_bus::HandlerError;
use keel_bus::layer::Inbox;
use sqlx::{PgPool, Postgres, Transaction};

/// Records processed event ids per consumer group in `keel_inbox`. Use it with
/// [`keel_bus::layer::inbox_fn`]: the handler gets the open transaction, writes its
/// read model in it, and the mark commits with them.
#[derive(Clone, Debug)]
pub struct PgInbox {
    pool: PgPool,
}

impl PgInbox {
    /// An inbox on the tables of the pool's database (`keel_inbox`).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Whether `group` has processed `event_id`.
    pub async fn contains(&self, group: &str, event_id: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM keel_inbox WHERE group_name = $1 AND event_id = $2)",
        )
        .bind(group)
        .bind(event_id)
        .fetch_one(&self.pool)
        .await
    }
}

impl Inbox for PgInbox {
    type Tx = Transaction<'static, Postgres>;

    async fn begin(&self, group: &str, event_id: &str) -> Result<Option<Self::Tx>, HandlerError> {
        let mut tx = self.pool.begin().await.map_err(HandlerError::transient)?;
        // A concurrent duplicate waits here for the first one's outcome.
        let inserted = sqlx::query(
            "INSERT INTO keel_inbox (group_name, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(event_id)
        .execute(&mut *tx)
        .await
        .map_err(HandlerError::transient)?;
        if inserted.rows_affected() == 0 {
            tx.rollback().await.map_err(HandlerError::transient)?;
            return Ok(None);
        }
        Ok(Some(tx))
    }

    async fn commit(&self, tx: Self::Tx) -> Result<(), HandlerError> {
        tx.commit().await.map_err(HandlerError::transient)
    }
}
