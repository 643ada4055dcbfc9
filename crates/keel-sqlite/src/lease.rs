//! Leases as rows with an expiry: taken when free or expired, renewed while held.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use keel_store::{Lease, Result};
use sqlx::SqlitePool;

/// A holder that stops renewing loses the lease after this long (unless the log is
/// given another TTL).
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(15);

struct RowLease {
    pool: SqlitePool,
    name: String,
    owner: String,
    ttl_millis: i64,
}

fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

pub(crate) async fn try_lease(
    pool: &SqlitePool,
    name: &str,
    ttl: Duration,
) -> Result<Option<Box<dyn Lease>>> {
    let ttl_millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    let owner = uuid::Uuid::now_v7().to_string();
    let taken = sqlx::query(
        "INSERT INTO keel_leases (name, owner, expires_at) VALUES (?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
         WHERE keel_leases.expires_at < ?",
    )
    .bind(name)
    .bind(&owner)
    .bind(now_millis() + ttl_millis)
    .bind(now_millis())
    .execute(pool)
    .await?;
    if taken.rows_affected() == 0 {
        return Ok(None);
    }
    Ok(Some(Box::new(RowLease { pool: pool.clone(), name: name.to_owned(), owner, ttl_millis })))
}

#[async_trait]
impl Lease for RowLease {
    async fn renew(&mut self) -> bool {
        let renewed =
            sqlx::query("UPDATE keel_leases SET expires_at = ? WHERE name = ? AND owner = ?")
                .bind(now_millis() + self.ttl_millis)
                .bind(&self.name)
                .bind(&self.owner)
                .execute(&self.pool)
                .await;
        matches!(renewed, Ok(done) if done.rows_affected() == 1)
    }

    /// A third of the lease's lifetime.
    fn renew_interval(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.ttl_millis / 3).unwrap_or(0))
    }

    async fn release(self: Box<Self>) {
        let _ = sqlx::query("DELETE FROM keel_leases WHERE name = ? AND owner = ?")
            .bind(&self.name)
            .bind(&self.owner)
            .execute(&self.pool)
            .await;
    }
}
