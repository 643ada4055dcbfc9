//! The HTTP handlers.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use keel_core::{ExpectedVersion, StreamVersion};
use keel_service::Problem;
use keel_services_common::events::{OrderItem, OrderPlaced, stream_id, topics};
use keel_services_common::{
    Fields, IdempotencyKey, JsonBody, envelope, request_context, run_idempotent,
};
use serde_json::{Value, json};

use crate::order::Order;
use crate::{AppState, SOURCE};

const IDEMPOTENCY_TABLE: &str = "orders_idempotency";
const MAX_ITEMS: usize = 100;
const MAX_QUANTITY: i64 = 1_000_000;

/// `POST /api/orders {"user_id", "items": [{"product_id", "quantity"}]}` -> 202 with
/// `"id"` and `"status": "pending"`; the stock reservation decides the rest.
pub(crate) async fn place_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
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

    // The references must name existing things (422 naming each one that does not).
    let mut fields = Fields::new(&body);
    if !state.directory.user_exists(&user_id).await? {
        fields.invalid("/user_id", format!("no user `{user_id}`"));
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
            fields.invalid(
                format!("/items/{n}/product_id"),
                format!("no product `{}`", item.product_id),
            );
        }
    }
    fields.finish()?;

    let key = IdempotencyKey::from_request(&headers, &body)?;
    let context = request_context(&headers);
    run_idempotent(&state.db, IDEMPOTENCY_TABLE, key.as_ref(), |mut tx| async move {
        let id = uuid::Uuid::now_v7().to_string();
        let placed = OrderPlaced { order_id: id.clone(), user_id, items };
        let stream = stream_id(topics::ORDER, &id)?;
        tx.append(&stream, ExpectedVersion::NoStream, &[envelope(&placed, SOURCE, &context)?])
            .await?;
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

/// `GET /api/orders/{id}`.
pub(crate) async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let order = Order::load(&state.db, &id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no order `{id}`")))?;
    Ok(Json(order.to_json()))
}

/// `POST /api/orders/{id}/cancel`, optionally with `If-Match: "<version>"` (the
/// version the caller saw): 200 with the cancelled order; 409 when the order is
/// already past cancelling, or when another command changed it first.
pub(crate) async fn cancel_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
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
    let order = Order::load(&state.db, &id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no order `{id}`")))?;
    let expected = if_match.unwrap_or(order.version);
    if expected != order.version {
        return Err(Problem::conflict(format!(
            "the order is at version {}, not {expected}",
            order.version
        ))
        .with_type("https://keel.invalid/problems/version-conflict"));
    }
    let cancelled = order.cancel().map_err(Problem::conflict)?;
    let key = IdempotencyKey::from_request(&headers, &json!({ "cancel": id }))?;
    let context = request_context(&headers);
    run_idempotent(&state.db, IDEMPOTENCY_TABLE, key.as_ref(), |mut tx| async move {
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
