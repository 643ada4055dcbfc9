//! The transactional inbox: a handler's writes and the processed mark commit together.

use chrono::Utc;
use keel_bus::HandlerError;
use keel_bus::layer::Inbox;
use sqlx::{Sqlite, SqlitePool, Transaction};

/// Records processed event ids per consumer group in `keel_inbox`; use it with
/// [`keel_bus::layer::inbox_fn`].
#[derive(Clone, Debug)]
pub struct SqliteInbox {
    pool: SqlitePool,
}

impl SqliteInbox {
    /// An inbox on the tables of the pool's database (`keel_inbox`).
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Whether `group` has processed `event_id`.
    pub async fn contains(&self, group: &str, event_id: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM keel_inbox WHERE group_name = ? AND event_id = ?)",
        )
        .bind(group)
        .bind(event_id)
        .fetch_one(&self.pool)
        .await
    }
}

impl Inbox for SqliteInbox {
    type Tx = Transaction<'static, Sqlite>;

    async fn begin(&self, group: &str, event_id: &str) -> Result<Option<Self::Tx>, HandlerError> {
        let mut tx = crate::begin_immediate(&self.pool).await.map_err(HandlerError::transient)?;
        let inserted = sqlx::query("INSERT OR IGNORE INTO keel_inbox (group_name, event_id, processed_at) VALUES (?, ?, ?)")
            .bind(group)
            .bind(event_id)
            .bind(Utc::now().to_rfc3339())
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
