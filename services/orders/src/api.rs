//! The HTTP handlers. With identities verified, every write needs a caller; an order
//! belongs to the subject that placed it, and only it or an admin reads or cancels it
//! or places orders for its user (see docs/security.md).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use keel::core::envelope::ext;
use keel::core::{ExpectedVersion, StreamVersion};
use keel::http::openapi::{
    BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, Unauthorized, Unavailable,
    Unprocessable, UnsupportedMediaType,
};
use keel::http::{Caller, Denied, Problem, ProblemField};
use keel::http::{Fields, IdempotencyKey, JsonBody, request_context};
use keel::sql::envelope;
use keel::timers::{Timer, schedule_in};
use keel_services_common::events::{
    OrderDeadlinePassed, OrderItem, OrderPlaced, stream_id, topics,
};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::directory::UserLookup;
use crate::order::Order;
use crate::{AppState, SOURCE};

const MAX_ITEMS: usize = 100;
const MAX_QUANTITY: i64 = 1_000_000;

/// An order to place (the body of `POST /api/orders`; checked field by field with
/// `Fields`, so this type only describes it).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct NewOrder {
    /// The user the order is for (the caller must own it, or be an admin).
    #[schema(min_length = 1, max_length = 100)]
    user_id: String,
    /// 1 to 100 lines; each product must exist.
    #[schema(min_items = 1, max_items = 100)]
    items: Vec<OrderItem>,
}

/// The answer to placing an order: it is pending until the stock is reserved (its
/// `status` is always `pending`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct PlacedOrder {
    /// The order's id (a UUIDv7).
    id: String,
    user_id: String,
    items: Vec<OrderItem>,
    #[schema(inline)]
    status: crate::order::OrderStatus,
}

/// An order as its events left it (what `Order::to_json` writes).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct OrderBody {
    id: String,
    user_id: String,
    items: Vec<OrderItem>,
    #[schema(inline)]
    status: crate::order::OrderStatus,
    /// Why it was rejected.
    reason: Option<String>,
    /// The version of the order's stream: send it as `If-Match` to cancel only this
    /// state of the order.
    #[schema(minimum = 1)]
    version: u64,
}

/// `POST /api/orders {"user_id", "items": [{"product_id", "quantity"}]}` -> 202 with
/// `"id"` and `"status": "pending"`; the stock reservation decides the rest. The
/// order's deadline timer is scheduled in the same transaction as its placement. A retry
/// with the caller's Idempotency-Key gets the first answer before anything else is
/// looked at (the users and products services need not answer again).
#[utoipa::path(
    post,
    path = "/api/orders",
    tag = "orders",
    request_body(content = NewOrder, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: a retry with the same key (and body) gets the first answer")),
    responses(
        (status = 202, description = "The order is placed, pending its stock reservation", body = PlacedOrder),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
    ),
    security((), ("bearer_jwt" = [])),
)]
pub(crate) async fn place_order(
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
    let user_id = fields.string("/user_id", 100);
    let mut items = Vec::new();
    if let Some(raw) = fields.array("/items", 1, MAX_ITEMS) {
        for n in 0..raw.len() {
            let product_id = fields.string(&format!("/items/{n}/product_id"), 100);
            let quantity = fields.integer(&format!("/items/{n}/quantity"), 1, MAX_QUANTITY);
            if let (Some(product_id), Some(quantity)) = (product_id, quantity) {
                items.push(OrderItem { product_id, quantity });
            }
        }
    }
    fields.finish()?;
    let Some(user_id) = user_id else { return Err(Problem::internal()) };

    // The references must name existing things (422 naming each one that does not),
    // and the caller must be the user's owner or an admin (403).
    let mut missing = Vec::new();
    match state.directory.user(&user_id).await? {
        UserLookup::Found { owner } => caller.authorize_for(owner.as_deref())?,
        UserLookup::Forbidden => return Err(Denied::Forbidden.into()),
        UserLookup::Missing => missing.push(ProblemField {
            pointer: "/user_id".to_owned(),
            detail: format!("no user `{user_id}`"),
        }),
    }
    let mut known = BTreeMap::new();
    for (n, item) in items.iter().enumerate() {
        let exists = match known.get(&item.product_id) {
            Some(&exists) => exists,
            None => {
                let exists = state.directory.product_exists(&item.product_id).await?;
                known.insert(item.product_id.clone(), exists);
                exists
            }
        };
        if !exists {
            missing.push(ProblemField {
                pointer: format!("/items/{n}/product_id"),
                detail: format!("no product `{}`", item.product_id),
            });
        }
    }
    if !missing.is_empty() {
        return Err(Problem::invalid_body(missing));
    }

    let context = request_context(&headers);
    let deadline = state.deadline;
    state
        .idempotency
        .run(&state.db, key.as_ref(), |mut tx| async move {
            let id = uuid::Uuid::now_v7().to_string();
            let placed = OrderPlaced { order_id: id.clone(), user_id, items };
            let stream = stream_id(topics::ORDER, &id)?;
            tx.append(&stream, ExpectedVersion::NoStream, &[envelope(&placed, SOURCE, &context)?])
                .await?;
            schedule_deadline(&mut tx, &id, deadline, &context).await?;
            let body = json!({
                "id": id,
                "user_id": placed.user_id,
                "items": placed.items,
                "status": "pending",
            });
            Ok((tx, StatusCode::ACCEPTED, body))
        })
        .await
}

/// Schedules order `id`'s deadline in `tx`: the fulfilment saga hears
/// `order.deadline_passed` (on the `order` topic) when it is due, and cancels the
/// order unless it was settled first (then it has cancelled the timer).
async fn schedule_deadline(
    tx: &mut keel::sql::Tx,
    id: &str,
    deadline: std::time::Duration,
    context: &keel::bus::layer::EventContext,
) -> Result<(), Problem> {
    let mut event = envelope(&OrderDeadlinePassed { order_id: id.to_owned() }, SOURCE, context)?;
    event.set_extension(ext::TOPIC, topics::ORDER).map_err(|e| {
        tracing::error!(error = %e, "the deadline's topic");
        Problem::internal()
    })?;
    let key = keel::saga::SagaRunner::<crate::Fulfilment>::timer_key(id, crate::DEADLINE);
    schedule_in(tx, &Timer::after(key, deadline, event)).await.map_err(|e| match e {
        keel::timers::Error::Sql(e) => Problem::from(e),
        other => {
            tracing::error!(error = %other, "scheduling the order's deadline");
            Problem::internal()
        }
    })
}

/// Order `id` (404 if there is none) once the caller may act for it (401/403).
async fn authorized_order(state: &AppState, caller: &Caller, id: &str) -> Result<Order, Problem> {
    let order = Order::load(&state.db, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no order `{id}`")))?;
    caller.authorize_for(order.owner.as_deref())?;
    Ok(order)
}

/// `GET /api/orders/{id}`.
#[utoipa::path(
    get,
    path = "/api/orders/{id}",
    tag = "orders",
    params(("id" = String, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = OrderBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    ),
)]
pub(crate) async fn get_order(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    Ok(Json(authorized_order(&state, &caller, &id).await?.to_json()))
}

/// `POST /api/orders/{id}/cancel`, optionally with `If-Match: "<version>"` (the
/// version the caller saw): 200 with the cancelled order; 409 when the order is
/// already past cancelling, or when another command changed it first. A retry with
/// the same Idempotency-Key gets the first answer (the 200), not the 409 the order's
/// new state would give.
#[utoipa::path(
    post,
    path = "/api/orders/{id}/cancel",
    tag = "orders",
    params(
        ("id" = String, Path, description = "The order's id"),
        ("If-Match" = Option<String>, Header, description = "The order version the caller saw, such as `\"2\"`: 409 if the order changed since"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: a retry with the same key (and body) gets the first answer"),
    ),
    responses(
        (status = 200, description = "The cancelled order", body = OrderBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = Unprocessable),
    ),
    security((), ("bearer_jwt" = [])),
)]
pub(crate) async fn cancel_order(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    caller.require()?;
    let key = IdempotencyKey::from_request(&headers, &caller, &json!({ "cancel": id }))?;
    if let Some(replayed) = state.idempotency.replay(&state.db, key.as_ref()).await? {
        return Ok(replayed);
    }
    let if_match = match headers.get(header::IF_MATCH) {
        None => None,
        Some(value) => {
            let version = value
                .to_str()
                .ok()
                .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    Problem::invalid_field("If-Match", "must be an order version such as \"2\"")
                })?;
            Some(StreamVersion(version))
        }
    };
    let order = authorized_order(&state, &caller, &id).await?;
    let expected = if_match.unwrap_or(order.version);
    if expected != order.version {
        return Err(Problem::conflict(format!(
            "the order is at version {}, not {expected}",
            order.version
        ))
        .with_type("https://keel.invalid/problems/version-conflict"));
    }
    let cancelled = order.cancel().map_err(Problem::conflict)?;
    let context = request_context(&headers);
    state
        .idempotency
        .run(&state.db, key.as_ref(), |mut tx| async move {
            let stream = stream_id(topics::ORDER, &id)?;
            let event = envelope(&cancelled, SOURCE, &context)?;
            let appended = tx.append(&stream, ExpectedVersion::Exact(expected), &[event]).await?;
            let mut order = order;
            order.status = crate::order::OrderStatus::Cancelled;
            order.version = appended.version;
            Ok((tx, StatusCode::OK, order.to_json()))
        })
        .await
}
