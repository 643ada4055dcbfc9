//! Leases as session-level advisory locks, held on a dedicated connection: when the
//! holder dies its connection closes and PostgreSQL releases the lock at once.
//!
//! The lock is lost with its connection (terminated, network failure), and another
//! process may take it at once; the holder finds out when it renews: a ping on the
//! connection, which the holder's timer runs every `RENEW_INTERVAL` (2 s) whether or
//! not it reads anything. A ping that gets no answer within `PING_TIMEOUT` (5 s) counts
//! as a lost connection: better to stand by than to go on beside a new holder.

use std::time::Duration;

use async_trait::async_trait;
use keel_core::Namespace;
use keel_store::{Lease, Result};
use sqlx::{Connection, PgConnection, PgPool};

struct AdvisoryLease {
    name: String,
    conn: Option<PgConnection>,
}

/// How often the holder checks the connection.
const RENEW_INTERVAL: Duration = Duration::from_secs(2);

/// How long a check waits for the server.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

const KEY: &str = "hashtextextended('keel.lease.' || $1, 0)";

/// Tries to take lease `name` of `namespace` (whose leases are kept apart from other
/// namespaces' in the same database; the default's keys are those of before
/// namespaces, so old and new processes exclude each other).
pub(crate) async fn try_lease(
    pool: &PgPool,
    namespace: &Namespace,
    name: &str,
) -> Result<Option<Box<dyn Lease>>> {
    let name = match namespace.as_str() {
        None => name.to_owned(),
        Some(ns) => format!("{ns}:{name}"),
    };
    // Off the pool: the lock lives as long as this connection.
    let mut conn = pool.acquire().await?.detach();
    let locked: bool = sqlx::query_scalar(&format!("SELECT pg_try_advisory_lock({KEY})"))
        .bind(&name)
        .fetch_one(&mut conn)
        .await?;
    if !locked {
        let _ = conn.close().await;
        return Ok(None);
    }
    Ok(Some(Box::new(AdvisoryLease { name, conn: Some(conn) })))
}

#[async_trait]
impl Lease for AdvisoryLease {
    async fn renew(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else { return false };
        match tokio::time::timeout(PING_TIMEOUT, conn.ping()).await {
            Ok(Ok(())) => return true,
            Ok(Err(error)) => {
                tracing::warn!(lease = %self.name, %error, "lost the connection holding the lease");
            }
            Err(_) => {
                tracing::warn!(lease = %self.name, "the connection holding the lease does not answer; giving the lease up");
            }
        }
        self.conn = None;
        false
    }

    fn renew_interval(&self) -> Duration {
        RENEW_INTERVAL
    }

    async fn release(mut self: Box<Self>) {
        if let Some(mut conn) = self.conn.take() {
            let _ = sqlx::query(&format!("SELECT pg_advisory_unlock({KEY})"))
                .bind(&self.name)
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}
