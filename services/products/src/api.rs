//! The HTTP handlers.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use keel::core::ExpectedVersion;
use keel::http::{Caller, Problem};
use keel::http::{Fields, IdempotencyKey, JsonBody, request_context};
use keel::sql::{args, envelope};
use keel_services_common::events::{ProductCreated, stream_id, topics};
use serde_json::{Value, json};

use crate::{AppState, SOURCE};

/// The largest price and stock accepted (far below where sums could overflow).
const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// `POST /api/products {"name", "price_cents", "stock"}` -> 201 with `"id"`.
pub(crate) async fn create_product(
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
    let price_cents = fields.integer("/price_cents", 1, MAX_AMOUNT);
    let stock = fields.integer("/stock", 0, MAX_AMOUNT);
    fields.finish()?;
    let (Some(name), Some(price_cents), Some(stock)) = (name, price_cents, stock) else {
        return Err(Problem::internal());
    };
    let context = request_context(&headers);
    state
        .idempotency
        .run(&state.db, key.as_ref(), |mut tx| async move {
            let id = uuid::Uuid::now_v7().to_string();
            tx.execute(
                "INSERT INTO products_products (id, name, price_cents, stock, created_at)
             VALUES ($1, $2, $3, $4, $5)",
                args![&id, &name, price_cents, stock, chrono::Utc::now().to_rfc3339()],
            )
            .await?;
            let event =
                ProductCreated { product_id: id.clone(), name: name.clone(), price_cents, stock };
            let stream = stream_id(topics::PRODUCT, &id)?;
            tx.append(&stream, ExpectedVersion::NoStream, &[envelope(&event, SOURCE, &context)?])
                .await?;
            let body =
                json!({ "id": id, "name": name, "price_cents": price_cents, "stock": stock });
            Ok((tx, StatusCode::CREATED, body))
        })
        .await
}

/// `GET /api/products/{id}`: the product with its current stock.
pub(crate) async fn get_product(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let row: Option<(String, String, i64, i64)> = state
        .db
        .fetch_optional(
            "SELECT id, name, price_cents, stock FROM products_products WHERE id = $1",
            args![&id],
        )
        .await?;
    let (id, name, price_cents, stock) =
        row.ok_or_else(|| Problem::not_found(format!("no product `{id}`")))?;
    Ok(Json(json!({ "id": id, "name": name, "price_cents": price_cents, "stock": stock })))
}
