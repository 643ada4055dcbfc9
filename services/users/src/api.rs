//! The HTTP handlers.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use keel::core::ExpectedVersion;
use keel::http::{Caller, Problem, Query};
use keel::http::{Fields, IdempotencyKey, JsonBody, request_context};
use keel::sql::{args, envelope};
use keel_services_common::events::{UserRegistered, stream_id, topics};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{AppState, SOURCE};

/// The page size of a user's orders when the client does not ask for one.
pub const DEFAULT_ORDERS_PAGE: i64 = 100;
/// The largest page of a user's orders a client may ask for.
pub const MAX_ORDERS_PAGE: i64 = 1000;

fn taken() -> Problem {
    Problem::conflict("a user with this e-mail address exists")
        .with_field("/email", "is already registered")
}

/// `POST /api/users {"name", "email"}` -> 201 `{"id", "name", "email"}`, owned by the
/// caller.
pub(crate) async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    caller.require()?;
    let key = IdempotencyKey::from_request(&headers, &caller, &body)?;
    if let Some(replayed) = state.idempotency.replay(&state.db, key.as_ref()).await? {
        return Ok(replayed);
    }
    let mut fields = Fields::new(&body);
    let name = fields.string("/name", 200);
    let email = fields.email("/email");
    fields.finish()?;
    let (Some(name), Some(email)) = (name, email) else { return Err(Problem::internal()) };
    let owner = caller.subject().map(str::to_owned);
    let context = request_context(&headers);
    state
        .idempotency
        .run(&state.db, key.as_ref(), |mut tx| async move {
            let exists: Option<(String,)> = tx
                .fetch_optional("SELECT id FROM users_users WHERE email = $1", args![&email])
                .await?;
            if exists.is_some() {
                return Err(taken());
            }
            let id = uuid::Uuid::now_v7().to_string();
            let now = chrono::Utc::now().to_rfc3339();
            // A concurrent sign-up with the address can commit between the check and
            // this insert (on PostgreSQL both see no row): the unique index decides.
            tx.execute(
                "INSERT INTO users_users (id, name, email, owner, created_at) VALUES ($1, $2, $3, $4, $5)",
                args![&id, &name, &email, owner, now],
            )
            .await
            .map_err(|error| if error.is_unique_violation() { taken() } else { error.into() })?;
            let event =
                UserRegistered { user_id: id.clone(), name: name.clone(), email: email.clone() };
            let stream = stream_id(topics::USER, &id)?;
            tx.append(&stream, ExpectedVersion::NoStream, &[envelope(&event, SOURCE, &context)?])
                .await?;
            Ok((tx, StatusCode::CREATED, json!({ "id": id, "name": name, "email": email })))
        })
        .await
}

/// The user `id` (404 if there is none) once the caller may act for it (401/403).
async fn authorized_user(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(String, String, String, Option<String>), Problem> {
    let row: Option<(String, String, String, Option<String>)> = state
        .db
        .fetch_optional("SELECT id, name, email, owner FROM users_users WHERE id = $1", args![id])
        .await?;
    let user = row.ok_or_else(|| Problem::not_found(format!("no user `{id}`")))?;
    caller.authorize_for(user.3.as_deref())?;
    Ok(user)
}

/// `GET /api/users/{id}`: the user, with `owner` (the subject it belongs to).
pub(crate) async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let (id, name, email, owner) = authorized_user(&state, &caller, &id).await?;
    Ok(Json(json!({ "id": id, "name": name, "email": email, "owner": owner })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrdersQuery {
    limit: Option<i64>,
    after: Option<String>,
}

/// `GET /api/users/{id}/orders?limit=N&after=ORDER_ID`: the user's orders, oldest
/// first (order ids are UUIDv7), a page at a time: `{"user_id", "orders", "next"}`,
/// where `next` is the `after` of the following page, `null` after the last.
pub(crate) async fn user_orders(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<OrdersQuery>,
) -> Result<Json<Value>, Problem> {
    let limit = query.limit.unwrap_or(DEFAULT_ORDERS_PAGE);
    if !(1..=MAX_ORDERS_PAGE).contains(&limit) {
        return Err(Problem::invalid_field("limit", format!("must be 1 to {MAX_ORDERS_PAGE}")));
    }
    let (id, ..) = authorized_user(&state, &caller, &id).await?;
    // One more than the page, to know whether another follows.
    let mut rows: Vec<(String, String, String, Option<String>)> = state
        .db
        .fetch_all(
            "SELECT order_id, status, items, reason FROM users_orders
             WHERE user_id = $1 AND order_id > $2 ORDER BY order_id LIMIT $3",
            args![&id, query.after.unwrap_or_default(), limit + 1],
        )
        .await?;
    let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next = more.then(|| rows.last().map(|row| row.0.clone())).flatten();
    let orders = rows
        .into_iter()
        .map(|(order_id, status, items, reason)| {
            let items: Value = serde_json::from_str(&items).unwrap_or(Value::Null);
            json!({ "id": order_id, "status": status, "items": items, "reason": reason })
        })
        .collect::<Vec<_>>();
    Ok(Json(json!({ "user_id": id, "orders": orders, "next": next })))
}
