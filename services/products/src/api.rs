//! The HTTP handlers.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use keel::core::ExpectedVersion;
use keel::http::openapi::{
    BadRequest, NotFound, PayloadTooLarge, Unauthorized, Unprocessable, UnsupportedMediaType,
};
use keel::http::{Caller, Problem};
use keel::http::{Fields, IdempotencyKey, JsonBody, request_context};
use keel::sql::{args, envelope};
use keel_services_common::events::{ProductCreated, stream_id, topics};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::{AppState, SOURCE};

/// The largest price and stock accepted (far below where sums could overflow).
const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// A product to add (the body of `POST /api/products`; checked field by field with
/// `Fields`, so this type only describes it).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct NewProduct {
    /// 1 to 200 characters, no control characters (trimmed).
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// The price in cents, 1 to 10^12.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    price_cents: i64,
    /// The initial stock, 0 to 10^12.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    stock: i64,
}

/// A product of the catalogue.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Product {
    /// The product's id (a UUIDv7).
    id: String,
    name: String,
    price_cents: i64,
    /// The stock not reserved by orders.
    stock: i64,
}

/// `POST /api/products {"name", "price_cents", "stock"}` -> 201 with `"id"`.
#[utoipa::path(
    post,
    path = "/api/products",
    tag = "products",
    request_body(content = NewProduct, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: a retry with the same key and body gets the first answer"),
    ),
    responses(
        (status = 201, description = "The product is added", body = Product),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
    ),
    security((), ("bearer_jwt" = [])),
)]
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
            let product = Product { id, name, price_cents, stock };
            Ok((tx, StatusCode::CREATED, json!(product)))
        })
        .await
}

/// `GET /api/products/{id}`: the product with its current stock.
#[utoipa::path(
    get,
    path = "/api/products/{id}",
    tag = "products",
    params(("id" = String, Path, description = "The product's id")),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
    ),
)]
pub(crate) async fn get_product(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Product>, Problem> {
    let row: Option<(String, String, i64, i64)> = state
        .db
        .fetch_optional(
            "SELECT id, name, price_cents, stock FROM products_products WHERE id = $1",
            args![&id],
        )
        .await?;
    let (id, name, price_cents, stock) =
        row.ok_or_else(|| Problem::not_found(format!("no product `{id}`")))?;
    Ok(Json(Product { id, name, price_cents, stock }))
}
