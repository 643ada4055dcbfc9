//! The HTTP handlers.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use keel::core::ExpectedVersion;
use keel::http::openapi::{
    BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, Unauthorized, Unprocessable,
    UnsupportedMediaType,
};
use keel::http::{Caller, Problem, Query};
use keel::http::{Fields, IdempotencyKey, JsonBody, request_context};
use keel::sql::{args, envelope};
use keel_services_common::events::OrderItem;
use keel_services_common::events::{UserRegistered, stream_id, topics};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::{AppState, SOURCE};

/// The page size of a user's orders when the client does not ask for one.
pub const DEFAULT_ORDERS_PAGE: i64 = 100;
/// The largest page of a user's orders a client may ask for.
pub const MAX_ORDERS_PAGE: i64 = 1000;

fn taken() -> Problem {
    Problem::conflict("a user with this e-mail address exists")
        .with_field("/email", "is already registered")
}

/// A user to register (the body of `POST /api/users`; checked field by field with
/// `Fields`, so this type only describes it).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct NewUser {
    /// 1 to 200 characters, no control characters (trimmed).
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// An e-mail address, unique among the users.
    #[schema(format = Email, max_length = 254)]
    email: String,
}

/// A user.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct User {
    /// The user's id (a UUIDv7).
    id: String,
    name: String,
    email: String,
    /// The subject that registered the user (`null` when identities are not verified).
    owner: Option<String>,
}

/// `POST /api/users {"name", "email"}` -> 201 `{"id", "name", "email", "owner"}`,
/// owned by the caller.
#[utoipa::path(
    post,
    path = "/api/users",
    tag = "users",
    request_body(content = NewUser, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: a retry with the same key and body gets the first answer"),
    ),
    responses(
        (status = 201, description = "The user is registered", body = User),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
    ),
    security((), ("bearer_jwt" = [])),
)]
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
                args![&id, &name, &email, owner.clone(), now],
            )
            .await
            .map_err(|error| if error.is_unique_violation() { taken() } else { error.into() })?;
            let event =
                UserRegistered { user_id: id.clone(), name: name.clone(), email: email.clone() };
            let stream = stream_id(topics::USER, &id)?;
            tx.append(&stream, ExpectedVersion::NoStream, &[envelope(&event, SOURCE, &context)?])
                .await?;
            let user = User { id, name, email, owner };
            Ok((tx, StatusCode::CREATED, json!(user)))
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
#[utoipa::path(
    get,
    path = "/api/users/{id}",
    tag = "users",
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
)]
pub(crate) async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<User>, Problem> {
    let (id, name, email, owner) = authorized_user(&state, &caller, &id).await?;
    Ok(Json(User { id, name, email, owner }))
}

/// The paging parameters of a user's orders.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct OrdersQuery {
    /// The page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next` of the previous page: the orders after that order id.
    after: Option<String>,
}

/// A page of a user's orders.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserOrders {
    user_id: String,
    /// Oldest first.
    orders: Vec<UserOrder>,
    /// The `after` of the following page; `null` after the last.
    next: Option<String>,
}

/// One of a user's orders, as the users service last heard of it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserOrder {
    id: String,
    /// `pending`, `confirmed`, `rejected` or `cancelled`.
    status: String,
    items: Vec<OrderItem>,
    /// Why the order was rejected.
    reason: Option<String>,
}

/// `GET /api/users/{id}/orders?limit=N&after=ORDER_ID`: the user's orders, oldest
/// first (order ids are UUIDv7), a page at a time: `{"user_id", "orders", "next"}`,
/// where `next` is the `after` of the following page, `null` after the last.
#[utoipa::path(
    get,
    path = "/api/users/{id}/orders",
    tag = "users",
    params(("id" = String, Path, description = "The user's id"), OrdersQuery),
    responses(
        (status = 200, description = "A page of the user's orders, oldest first", body = UserOrders),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
)]
pub(crate) async fn user_orders(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<OrdersQuery>,
) -> Result<Json<UserOrders>, Problem> {
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
        .map(|(id, status, items, reason)| {
            let items = serde_json::from_str(&items).unwrap_or_default();
            UserOrder { id, status, items, reason }
        })
        .collect();
    Ok(Json(UserOrders { user_id: id, orders, next }))
}
