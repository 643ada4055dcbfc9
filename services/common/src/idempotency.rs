//! `Idempotency-Key` on POST: a retried request gets the first response.
//!
//! The first response is stored, keyed by the key, in the same transaction as the
//! request's effect, so a key is either unused or tied to exactly one committed effect
//! and its answer. A retry with the same key and the same body gets that answer again
//! (with `Idempotent-Replayed: true`); the same key with another body is a 422. The
//! key is claimed (inserted) before the effect runs, so of two concurrent requests with
//! one key the second waits on the key's primary key, then rolls back without running
//! its effect and replays the first one's answer.
//!
//! Each service keeps its keys in its own table, created by its migrations as
//! `CREATE TABLE <svc>_idempotency (key TEXT PRIMARY KEY, request TEXT NOT NULL,
//! status BIGINT NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL)`.

use std::future::Future;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use keel_service::Problem;
use serde_json::Value;

use crate::db::{Db, Tx};
use crate::error::{Result, ServiceError};

/// The request header.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// The longest key accepted.
const MAX_KEY_LEN: usize = 255;

/// An idempotency key and the request it was sent with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    key: String,
    /// The request body in canonical form (object keys sorted), to tell a retry from
    /// a different request reusing the key.
    request: String,
}

impl IdempotencyKey {
    /// The key of a request, if it has one; 400 naming the header when it is malformed.
    pub fn from_request(headers: &HeaderMap, body: &Value) -> Result<Option<Self>, Problem> {
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
        // serde_json's map keeps keys sorted, so equal bodies print equally.
        Ok(Some(Self { key: key.to_owned(), request: body.to_string() }))
    }

    /// The stored answer to this key, if the key was used before: the first response
    /// for the same request, a 422 for a different one.
    pub async fn replay_in(&self, tx: &mut Tx, table: &str) -> Result<Option<Response>, Problem> {
        let sql = format!("SELECT request, status, body FROM {table} WHERE key = $1");
        let row: Option<(String, i64, String)> =
            tx.fetch_optional(&sql, crate::args![&self.key]).await?;
        let Some((request, status, body)) = row else { return Ok(None) };
        if request != self.request {
            return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
                .with_detail("this Idempotency-Key was used with a different request body")
                .with_field("Idempotency-Key", "was used with a different request body"));
        }
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| ServiceError::Event(format!("stored status {status} is invalid")))?;
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        Ok(Some(response))
    }

    /// Claims the key inside the effect's transaction, before the effect: a
    /// concurrent request with the same key waits here for this transaction and then
    /// fails with a unique violation (and replays this one's answer).
    async fn claim_in(&self, tx: &mut Tx, table: &str) -> Result<()> {
        let sql = format!(
            "INSERT INTO {table} (key, request, status, body, created_at) VALUES ($1, $2, $3, $4, $5)"
        );
        let now = chrono::Utc::now().to_rfc3339();
        tx.execute(&sql, crate::args![&self.key, &self.request, 0_i64, "", now]).await?;
        Ok(())
    }

    /// Stores the response to the claimed key, in the same transaction.
    async fn save_in(
        &self,
        tx: &mut Tx,
        table: &str,
        status: StatusCode,
        body: &Value,
    ) -> Result<()> {
        let sql = format!("UPDATE {table} SET status = $1, body = $2 WHERE key = $3");
        let args = crate::args![i64::from(status.as_u16()), body.to_string(), &self.key];
        tx.execute(&sql, args).await?;
        Ok(())
    }
}

/// Runs a POST's effect in one transaction with its idempotency key (if any): a key
/// seen before answers with the stored response and `effect` does not run; otherwise
/// `effect` does its writes in the transaction and returns the response (status and
/// JSON body), which is stored under the key and committed with the writes.
pub async fn run_idempotent<F, Fut>(
    db: &Db,
    table: &str,
    key: Option<&IdempotencyKey>,
    effect: F,
) -> Result<Response, Problem>
where
    F: FnOnce(Tx) -> Fut,
    Fut: Future<Output = Result<(Tx, StatusCode, Value), Problem>>,
{
    let mut tx = db.begin().await?;
    if let Some(key) = key {
        if let Some(replayed) = key.replay_in(&mut tx, table).await? {
            return Ok(replayed);
        }
        if let Err(error) = key.claim_in(&mut tx, table).await {
            drop(tx);
            // A concurrent request with the same key committed first: answer as it did.
            if error.is_unique_violation() {
                let mut tx = db.begin().await?;
                if let Some(replayed) = key.replay_in(&mut tx, table).await? {
                    return Ok(replayed);
                }
            }
            return Err(error.into());
        }
    }
    let (mut tx, status, body) = effect(tx).await?;
    if let Some(key) = key {
        key.save_in(&mut tx, table, status, &body).await?;
    }
    tx.commit().await?;
    Ok((status, Json(body)).into_response())
}
