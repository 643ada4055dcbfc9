//! The HTTP handlers.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use keel_core::ExpectedVersion;
use keel_service::Problem;
use keel_services_common::events::{UserRegistered, stream_id, topics};
use keel_services_common::run_idempotent;
use keel_services_common::{Fields, IdempotencyKey, JsonBody, args, envelope, request_context};
use serde_json::{Value, json};

use crate::{AppState, SOURCE};

const IDEMPOTENCY_TABLE: &str = "users_idempotency";

/// `POST /api/users {"name", "email"}` -> 201 `{"id", "name", "email"}`.
pub(crate) async fn create_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let mut fields = Fields::new(&body);
    let name = fields.string("/name", 200);
    let email = fields.email("/email");
    fields.finish()?;
    let (Some(name), Some(email)) = (name, email) else { return Err(Problem::internal()) };
    let key = IdempotencyKey::from_request(&headers, &body)?;
    let context = request_context(&headers);
    run_idempotent(&state.db, IDEMPOTENCY_TABLE, key.as_ref(), |mut tx| async move {
        let taken: Option<(String,)> =
            tx.fetch_optional("SELECT id FROM users_users WHERE email = $1", args![&email]).await?;
        if taken.is_some() {
            return Err(Problem::conflict("a user with this e-mail address exists")
                .with_field("/email", "is already registered"));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let now = chrono::Utc::now().to_rfc3339();
        tx.execute(
            "INSERT INTO users_users (id, name, email, created_at) VALUES ($1, $2, $3, $4)",
            args![&id, &name, &email, now],
        )
        .await?;
        let event =
            UserRegistered { user_id: id.clone(), name: name.clone(), email: email.clone() };
        let stream = stream_id(topics::USER, &id)?;
        tx.append(&stream, ExpectedVersion::NoStream, &[envelope(&event, SOURCE, &context)?])
            .await?;
        Ok((tx, StatusCode::CREATED, json!({ "id": id, "name": name, "email": email })))
    })
    .await
}

/// `GET /api/users/{id}`.
pub(crate) async fn get_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let row: Option<(String, String, String)> = state
        .db
        .fetch_optional("SELECT id, name, email FROM users_users WHERE id = $1", args![&id])
        .await?;
    let (id, name, email) = row.ok_or_else(|| Problem::not_found(format!("no user `{id}`")))?;
    Ok(Json(json!({ "id": id, "name": name, "email": email })))
}

/// `GET /api/users/{id}/orders`: the user's orders, oldest first.
pub(crate) async fn user_orders(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let user: Option<(String,)> =
        state.db.fetch_optional("SELECT id FROM users_users WHERE id = $1", args![&id]).await?;
    if user.is_none() {
        return Err(Problem::not_found(format!("no user `{id}`")));
    }
    let rows: Vec<(String, String, String, Option<String>)> = state
        .db
        .fetch_all(
            "SELECT order_id, status, items, reason FROM users_orders WHERE user_id = $1 ORDER BY order_id",
            args![&id],
        )
        .await?;
    let orders = rows
        .into_iter()
        .map(|(order_id, status, items, reason)| {
            let items: Value = serde_json::from_str(&items).unwrap_or(Value::Null);
            json!({ "id": order_id, "status": status, "items": items, "reason": reason })
        })
        .collect::<Vec<_>>();
    Ok(Json(json!({ "user_id": id, "orders": orders })))
}
