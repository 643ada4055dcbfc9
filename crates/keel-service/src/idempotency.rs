//! `Idempotency-Key` on POST: a retried request gets the first response.
//!
//! The first response is stored, keyed by the caller's subject and the key, in the same
//! transaction as the request's effect, so a key is either unused or tied to exactly
//! one committed effect and its answer. A retry with the same key and the same body
//! gets that answer again (with `Idempotent-Replayed: true`); the same key with another
//! body is a 422.
//!
//! - **Replay first.** A handler asks [`Idempotency::replay`] before any other check:
//!   what those checks would say now (the order is cancelled by now, a service it asks
//!   is down) is not the answer the first request got. [`Idempotency::run`] replays
//!   again inside the effect's transaction, for a twin that committed in between.
//! - **Concurrent twins.** The key is claimed (inserted) before the effect runs, so of
//!   two concurrent requests with one key the second waits on the key's primary key,
//!   then rolls back without running its effect and replays the first one's answer.
//! - **Per subject** (DESIGN 2.18). Keys are scoped by the caller's subject (empty for
//!   an anonymous caller in the open mode): one caller's key never replays another's
//!   answer, whatever the key.
//! - **Expiry.** A key is remembered for the TTL ([`DEFAULT_IDEMPOTENCY_TTL`] unless
//!   configured); after that it is unused again. Expired rows are deleted now and then
//!   (at most every quarter of the TTL, by one request that runs the purge in the
//!   background), so the table does not grow for ever.
//!
//! Each service keeps its keys in its own table, created by its migrations as
//! `CREATE TABLE <svc>_idempotency (subject TEXT NOT NULL, key TEXT NOT NULL, request
//! TEXT NOT NULL, status BIGINT NOT NULL, body TEXT NOT NULL, created_at BIGINT NOT
//! NULL, PRIMARY KEY (subject, key))` with an index on `created_at` (Unix seconds).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use keel_sql::{Db, Error as SqlError, Result, Tx};
use serde_json::Value;

use crate::{Caller, Problem};

/// The request header.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// How long a key is remembered unless configured otherwise.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest key accepted.
const MAX_KEY_LEN: usize = 255;

/// An idempotency key, whose it is, and the request it was sent with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The caller's subject; empty for an anonymous caller (open mode only).
    subject: String,
    key: String,
    /// The request body in canonical form (object keys sorted), to tell a retry from
    /// a different request reusing the key.
    request: String,
}

impl IdempotencyKey {
    /// The key of a request by `caller`, if it has one; 400 naming the header when it
    /// is malformed.
    pub fn from_request(
        headers: &HeaderMap,
        caller: &Caller,
        body: &Value,
    ) -> Result<Option<Self>, Problem> {
        let Some(value) = headers.get(IDEMPOTENCY_HEADER) else { return Ok(None) };
        let key = value.to_str().ok().map(str::trim).unwrap_or_default();
        let valid = !key.is_empty()
            && key.len() <= MAX_KEY_LEN
            && key.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(Problem::invalid_field(
                "Idempotency-Key",
                format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
            ));
        }
        Ok(Some(Self {
            subject: caller.subject().unwrap_or_default().to_owned(),
            key: key.to_owned(),
            // serde_json's map keeps keys sorted, so equal bodies print equally.
            request: body.to_string(),
        }))
    }

    /// The stored answer in `row`: the first response for the same request, a 422 for
    /// a different one.
    fn answer(&self, row: Option<(String, i64, String)>) -> Result<Option<Response>, Problem> {
        let Some((request, status, body)) = row else { return Ok(None) };
        if request != self.request {
            return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
                .with_detail("this Idempotency-Key was used with a different request body")
                .with_field("Idempotency-Key", "was used with a different request body"));
        }
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| SqlError::Event(format!("stored status {status} is invalid")))?;
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        Ok(Some(response))
    }
}

/// A service's idempotency keys: its table and how long keys are remembered. Cheap to
/// clone; clones share the purge schedule.
#[derive(Clone, Debug)]
pub struct Idempotency {
    table: &'static str,
    ttl: Duration,
    /// Unix seconds before which no purge starts.
    next_purge: Arc<AtomicI64>,
}

impl Idempotency {
    /// The keys in `table` (a service's own, see the module docs), remembered for
    /// [`DEFAULT_IDEMPOTENCY_TTL`].
    pub fn new(table: &'static str) -> Self {
        Self { table, ttl: DEFAULT_IDEMPOTENCY_TTL, next_purge: Arc::new(AtomicI64::new(0)) }
    }

    /// The same, remembering keys for `ttl` (at least a second).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// How long a key is remembered.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Keys created before this (Unix seconds) have expired.
    fn cutoff(&self, now: i64) -> i64 {
        now.saturating_sub(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX))
    }

    /// The stored answer to `key`, if it was used before (and has not expired): ask
    /// this before any other check.
    pub async fn replay(
        &self,
        db: &Db,
        key: Option<&IdempotencyKey>,
    ) -> Result<Option<Response>, Problem> {
        let Some(key) = key else { return Ok(None) };
        self.purge_now_and_then(db);
        let row = db.fetch_optional(&self.select(), self.select_args(key)).await?;
        key.answer(row)
    }

    fn select(&self) -> String {
        format!(
            "SELECT request, status, body FROM {} WHERE subject = $1 AND key = $2 AND created_at >= $3",
            self.table
        )
    }

    fn select_args(&self, key: &IdempotencyKey) -> Vec<keel_sql::Arg> {
        let cutoff = self.cutoff(chrono::Utc::now().timestamp());
        keel_sql::args![&key.subject, &key.key, cutoff]
    }

    /// Runs a POST's effect in one transaction with its idempotency key (if any): a
    /// key seen before answers with the stored response and `effect` does not run;
    /// otherwise `effect` does its writes in the transaction and returns the response
    /// (status and JSON body), which is stored under the key and committed with the
    /// writes. The transaction is a request's ([`Db::begin_request`]): it yields to
    /// the consumers settling earlier requests.
    pub async fn run<F, Fut>(
        &self,
        db: &Db,
        key: Option<&IdempotencyKey>,
        effect: F,
    ) -> Result<Response, Problem>
    where
        F: FnOnce(Tx) -> Fut,
        Fut: Future<Output = Result<(Tx, StatusCode, Value), Problem>>,
    {
        let mut tx = db.begin_request().await?;
        if let Some(key) = key {
            self.purge_now_and_then(db);
            let row = tx.fetch_optional(&self.select(), self.select_args(key)).await?;
            if let Some(replayed) = key.answer(row)? {
                return Ok(replayed);
            }
            if let Err(error) = self.claim_in(&mut tx, key).await {
                drop(tx);
                // A concurrent request with the same key committed first: answer as it did.
                if error.is_unique_violation()
                    && let Some(replayed) = self.replay(db, Some(key)).await?
                {
                    return Ok(replayed);
                }
                return Err(error.into());
            }
        }
        let (mut tx, status, body) = effect(tx).await?;
        if let Some(key) = key {
            self.save_in(&mut tx, key, status, &body).await?;
        }
        tx.commit().await?;
        Ok((status, Json(body)).into_response())
    }

    /// Claims the key inside the effect's transaction, before the effect (an expired
    /// row of the same key makes way): a concurrent request with the same key waits
    /// here for this transaction and then fails with a unique violation.
    async fn claim_in(&self, tx: &mut Tx, key: &IdempotencyKey) -> Result<()> {
        let now = chrono::Utc::now().timestamp();
        let table = self.table;
        tx.execute(
            &format!("DELETE FROM {table} WHERE subject = $1 AND key = $2 AND created_at < $3"),
            keel_sql::args![&key.subject, &key.key, self.cutoff(now)],
        )
        .await?;
        tx.execute(
            &format!(
                "INSERT INTO {table} (subject, key, request, status, body, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)"
            ),
            keel_sql::args![&key.subject, &key.key, &key.request, 0_i64, "", now],
        )
        .await?;
        Ok(())
    }

    /// Stores the response to the claimed key, in the same transaction.
    async fn save_in(
        &self,
        tx: &mut Tx,
        key: &IdempotencyKey,
        status: StatusCode,
        body: &Value,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET status = $1, body = $2 WHERE subject = $3 AND key = $4",
            self.table
        );
        let args =
            keel_sql::args![i64::from(status.as_u16()), body.to_string(), &key.subject, &key.key];
        tx.execute(&sql, args).await?;
        Ok(())
    }

    /// Deletes the expired keys in the background, at most every quarter of the TTL
    /// (between a second and a quarter of an hour). A failure is only logged: the next
    /// purge catches up.
    fn purge_now_and_then(&self, db: &Db) {
        let now = chrono::Utc::now().timestamp();
        let due = self.next_purge.load(Ordering::Relaxed);
        let every = (self.ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(900));
        let next = now.saturating_add(i64::try_from(every.as_secs()).unwrap_or(i64::MAX));
        if now < due
            || self
                .next_purge
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (db, table, cutoff) = (db.clone(), self.table, self.cutoff(now));
        tokio::spawn(async move {
            let purge = async {
                let mut tx = db.begin().await?;
                let sql = format!("DELETE FROM {table} WHERE created_at < $1");
                let purged = tx.execute(&sql, keel_sql::args![cutoff]).await?;
                tx.commit().await?;
                Ok::<_, SqlError>(purged)
            };
            match purge.await {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(table, purged, "expired idempotency keys purged"),
                Err(error) => tracing::warn!(table, %error, "purging idempotency keys failed"),
            }
        });
    }
}
