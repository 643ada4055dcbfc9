//! Leases as rows with an expiry: taken when free or expired, renewed while held.
//!
//! A renewal that cannot write (another connection holds the write lock past the busy
//! timeout, the pool is exhausted) does not lose the lease: nobody else can take it
//! before it expires, so it stays held until then, with a margin, and the next renewal
//! tries again. A renewal still waiting for the database when the lease expires gives
//! up: the lease is lost. A lease dropped without [`Lease::release`] deletes its row in
//! the background, so a holder's error path does not stall its successor for a TTL.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use keel_store::{Lease, Result};
use sqlx::SqlitePool;
use tokio::time::Instant;

/// A holder that stops renewing loses the lease after this long (unless the log is
/// given another TTL).
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(15);

struct RowLease {
    pool: SqlitePool,
    name: String,
    owner: String,
    ttl: Duration,
    /// Until when the lease is surely ours: the expiry of the last write that took or
    /// renewed it, counted from before the write was sent, less a margin.
    held_until: Instant,
    lost: bool,
    released: bool,
}

fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2)
}

/// How long before the stored expiry a holder stops counting on its lease: a tenth
/// of the TTL, at most a second (other processes read the same clock).
fn margin(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_secs(1))
}

pub(crate) async fn try_lease(
    pool: &SqlitePool,
    name: &str,
    ttl: Duration,
) -> Result<Option<Box<dyn Lease>>> {
    let owner = uuid::Uuid::now_v7().to_string();
    let sent = Instant::now();
    let taken = sqlx::query(
        "INSERT INTO keel_leases (name, owner, expires_at) VALUES (?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
         WHERE keel_leases.expires_at < ?",
    )
    .bind(name)
    .bind(&owner)
    .bind(now_millis().saturating_add(millis(ttl)))
    .bind(now_millis())
    .execute(pool)
    .await?;
    if taken.rows_affected() == 0 {
        return Ok(None);
    }
    Ok(Some(Box::new(RowLease {
        pool: pool.clone(),
        name: name.to_owned(),
        owner,
        ttl,
        held_until: sent + ttl - margin(ttl),
        lost: false,
        released: false,
    })))
}

async fn delete(pool: &SqlitePool, name: &str, owner: &str) {
    let _ = sqlx::query("DELETE FROM keel_leases WHERE name = ? AND owner = ?")
        .bind(name)
        .bind(owner)
        .execute(pool)
        .await;
}

impl RowLease {
    fn lose(&mut self) -> bool {
        self.lost = true;
        false
    }
}

#[async_trait]
impl Lease for RowLease {
    async fn renew(&mut self) -> bool {
        if self.lost || Instant::now() >= self.held_until {
            return self.lose();
        }
        let sent = Instant::now();
        let renewal =
            sqlx::query("UPDATE keel_leases SET expires_at = ? WHERE name = ? AND owner = ?")
                .bind(now_millis().saturating_add(millis(self.ttl)))
                .bind(&self.name)
                .bind(&self.owner)
                .execute(&self.pool);
        match tokio::time::timeout_at(self.held_until, renewal).await {
            Ok(Ok(done)) if done.rows_affected() == 1 => {
                self.held_until = sent + self.ttl - margin(self.ttl);
                true
            }
            Ok(Ok(_)) => {
                tracing::warn!(lease = %self.name, "the lease was taken over");
                self.lose()
            }
            Ok(Err(error)) if Instant::now() < self.held_until => {
                tracing::warn!(lease = %self.name, %error, "could not renew the lease; it holds until it expires");
                true
            }
            Ok(Err(error)) => {
                tracing::warn!(lease = %self.name, %error, "could not renew the lease before it expired");
                self.lose()
            }
            Err(_) => {
                tracing::warn!(lease = %self.name, "the database stayed busy until the lease expired");
                self.lose()
            }
        }
    }

    /// A third of the lease's lifetime.
    fn renew_interval(&self) -> Duration {
        self.ttl / 3
    }

    async fn release(mut self: Box<Self>) {
        self.released = true;
        delete(&self.pool, &self.name, &self.owner).await;
    }
}

impl Drop for RowLease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Without a runtime (a dropped runtime's tasks), the row simply expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (pool, name, owner) = (
                self.pool.clone(),
                std::mem::take(&mut self.name),
                std::mem::take(&mut self.owner),
            );
            runtime.spawn(async move { delete(&pool, &name, &owner).await });
        }
    }
}
