//! The whole order flow in one process on SQLite: users, products and orders with
//! their consumers over the in-memory bus, fed from the log by the relay.

#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use common::{System, eventually, get, post, post_with, send};
use futures::future::join_all;
use http::{Request, StatusCode, header};
use keel_core::{Publisher as _, StreamId};
use keel_services_common::MAX_BODY_BYTES;
use serde_json::json;

#[tokio::test]
async fn an_order_with_enough_stock_is_confirmed_and_shows_in_the_users_orders() {
    let system = System::sqlite().await;
    let user = system.user("ada").await;
    let product = system.product(5).await;
    let order = system.order(&user, &product, 2).await;

    let settled = system.settled(&order).await;
    assert_eq!(settled["status"], "confirmed", "{settled}");
    assert_eq!(settled["user_id"], user.as_str());
    assert_eq!(system.stock(&product).await, 3);

    let uri = format!("/api/users/{user}/orders");
    let orders = eventually(|| async {
        let reply = get(&system.users, &uri).await;
        (reply.body["orders"][0]["status"] == "confirmed").then_some(reply.body)
    })
    .await;
    assert_eq!(orders["orders"].as_array().unwrap().len(), 1);
    assert_eq!(orders["orders"][0]["id"], order.as_str());
    assert_eq!(orders["orders"][0]["items"][0]["quantity"], 2);
    system.stop().await;
}

#[tokio::test]
async fn an_order_beyond_the_stock_is_rejected_and_takes_nothing() {
    let system = System::sqlite().await;
    let user = system.user("bob").await;
    let plenty = system.product(100).await;
    let scarce = system.product(5).await;
    let body = json!({ "user_id": user, "items": [
        { "product_id": plenty, "quantity": 10 },
        { "product_id": scarce, "quantity": 6 },
    ]});
    let reply = post(&system.orders, "/api/orders", body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let order = reply.body["id"].as_str().unwrap().to_owned();

    let settled = system.settled(&order).await;
    assert_eq!(settled["status"], "rejected", "{settled}");
    assert!(settled["reason"].as_str().unwrap().contains("in stock"), "{settled}");
    assert_eq!(system.stock(&plenty).await, 100, "all items or none");
    assert_eq!(system.stock(&scarce).await, 5);

    let uri = format!("/api/users/{user}/orders");
    eventually(|| async {
        let reply = get(&system.users, &uri).await;
        (reply.body["orders"][0]["status"] == "rejected").then_some(())
    })
    .await;
    system.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_orders_for_the_last_units_never_drive_stock_negative() {
    let system = System::sqlite().await;
    let user = system.user("crowd").await;
    let product = system.product(3).await;
    let orders = join_all((0..20).map(|_| system.order(&user, &product, 1))).await;
    let mut confirmed = 0;
    for order in &orders {
        if system.settled(order).await["status"] == "confirmed" {
            confirmed += 1;
        }
    }
    assert_eq!(confirmed, 3);
    assert_eq!(system.stock(&product).await, 0);
    system.stop().await;
}

#[tokio::test]
async fn a_redelivered_order_placed_does_not_reserve_twice() {
    let system = System::sqlite().await;
    let user = system.user("dup").await;
    let product = system.product(5).await;
    let order = system.order(&user, &product, 2).await;
    assert_eq!(system.settled(&order).await["status"], "confirmed");
    assert_eq!(system.stock(&product).await, 3);

    // The bus delivers the same event again (same id), then the cancel follows it on
    // the same partition key, so the products service sees the duplicate first.
    let stream = StreamId::new(format!("order-{order}")).unwrap();
    let placed = system.db.read_stream(&stream).await.unwrap().remove(0);
    system.bus.publish("order", &[placed]).await.unwrap();
    let reply = post(&system.orders, &format!("/api/orders/{order}/cancel"), json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "cancelled");

    eventually(|| async { (system.stock(&product).await == 5).then_some(()) }).await;
    let stock_stream = StreamId::new(format!("stock-{order}")).unwrap();
    let answers: Vec<String> = system
        .db
        .read_stream(&stock_stream)
        .await
        .unwrap()
        .iter()
        .map(|e| e.ty().to_owned())
        .collect();
    assert_eq!(answers, ["stock.reserved", "stock.released"]);
    system.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_result() {
    let system = System::sqlite().await;
    let body = json!({ "name": "Eve", "email": "eve-idem@example.org" });
    let key = [("idempotency-key", "signup-eve-1")];
    let first = post_with(&system.users, "/api/users", body.clone(), &key).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let again = post_with(&system.users, "/api/users", body, &key).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = json!({ "name": "Mallory", "email": "mallory@example.org" });
    let misuse = post_with(&system.users, "/api/users", other, &key).await;
    assert_eq!(misuse.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(misuse.pointers(), ["Idempotency-Key"]);

    // Orders: concurrent retries of one request place one order.
    let user = first.body["id"].as_str().unwrap().to_owned();
    let product = system.product(10).await;
    let body = json!({ "user_id": user, "items": [{ "product_id": product, "quantity": 1 }] });
    let key = [("idempotency-key", "order-eve-1")];
    let replies =
        join_all((0..5).map(|_| post_with(&system.orders, "/api/orders", body.clone(), &key)))
            .await;
    let ids: Vec<_> = replies.iter().map(|r| r.body["id"].clone()).collect();
    assert!(replies.iter().all(|r| r.status == StatusCode::ACCEPTED));
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let order = ids[0].as_str().unwrap();
    assert_eq!(system.settled(order).await["status"], "confirmed");
    assert_eq!(system.stock(&product).await, 9);
    let uri = format!("/api/users/{user}/orders");
    let listed = eventually(|| async {
        let reply = get(&system.users, &uri).await;
        (reply.body["orders"][0]["status"] == "confirmed").then_some(reply.body)
    })
    .await;
    assert_eq!(listed["orders"].as_array().unwrap().len(), 1);
    system.stop().await;
}

#[tokio::test]
async fn invalid_input_is_a_problem_naming_the_field() {
    let system = System::sqlite().await;
    let user = system.user("val").await;
    let product = system.product(1).await;

    let reply = post(&system.orders, "/api/orders", json!({})).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.is_problem());
    assert_eq!(reply.pointers(), ["/user_id", "/items"]);

    let body = json!({ "user_id": 5, "items": [{ "product_id": product, "quantity": 0 }, { "quantity": "2" }] });
    let reply = post(&system.orders, "/api/orders", body).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.pointers(),
        ["/user_id", "/items/0/quantity", "/items/1/product_id", "/items/1/quantity"]
    );

    let reply = post(&system.orders, "/api/orders", json!({ "user_id": user, "items": [] })).await;
    assert_eq!(reply.pointers(), ["/items"]);

    let body = json!({ "user_id": "nobody", "items": [
        { "product_id": product, "quantity": 1 },
        { "product_id": "no-such-product", "quantity": 1 },
    ]});
    let reply = post(&system.orders, "/api/orders", body).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.pointers(), ["/user_id", "/items/1/product_id"]);

    let reply = post(&system.users, "/api/users", json!({ "name": "x", "email": "nope" })).await;
    assert_eq!(reply.pointers(), ["/email"]);
    let body = json!({ "name": "x", "price_cents": 0, "stock": -1 });
    let reply = post(&system.products, "/api/products", body).await;
    assert_eq!(reply.pointers(), ["/price_cents", "/stock"]);

    let plain = Request::post("/api/users")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("name=x"))
        .unwrap();
    let reply = send(&system.users, plain).await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(reply.is_problem());

    let broken = Request::post("/api/products")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"name\": "))
        .unwrap();
    let reply = send(&system.products, broken).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.is_problem());

    let huge = json!({ "user_id": user, "items": [], "pad": "x".repeat(MAX_BODY_BYTES) });
    let reply = post(&system.orders, "/api/orders", huge).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.is_problem());

    let reply = get(&system.orders, "/api/orders/does-not-exist").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.is_problem());
    system.stop().await;
}

#[tokio::test]
async fn concurrent_commands_on_one_order_are_a_conflict() {
    let system = System::sqlite().await;
    let user = system.user("race").await;
    let product = system.product(5).await;
    let order = system.order(&user, &product, 1).await;
    let settled = system.settled(&order).await;
    assert_eq!(settled["version"], 2);

    let uri = format!("/api/orders/{order}/cancel");
    let stale = post_with(&system.orders, &uri, json!({}), &[("if-match", "\"1\"")]).await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert!(stale.is_problem());

    let replies = join_all(
        (0..2).map(|_| post_with(&system.orders, &uri, json!({}), &[("if-match", "\"2\"")])),
    )
    .await;
    let mut statuses: Vec<_> = replies.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT]);
    let reply = get(&system.orders, &format!("/api/orders/{order}")).await;
    assert_eq!(reply.body["status"], "cancelled");
    assert_eq!(reply.body["version"], 3);
    eventually(|| async { (system.stock(&product).await == 5).then_some(()) }).await;
    system.stop().await;
}

#[tokio::test]
async fn the_actor_and_the_cause_travel_with_the_events() {
    let system = System::sqlite().await;
    let user = system.user("actor").await;
    let product = system.product(5).await;
    let body = json!({ "user_id": user, "items": [{ "product_id": product, "quantity": 1 }] });
    let reply =
        post_with(&system.orders, "/api/orders", body, &[("x-keel-subject", "alice")]).await;
    let order = reply.body["id"].as_str().unwrap().to_owned();
    assert_eq!(system.settled(&order).await["status"], "confirmed");

    let events =
        system.db.read_stream(&StreamId::new(format!("order-{order}")).unwrap()).await.unwrap();
    let answer =
        system.db.read_stream(&StreamId::new(format!("stock-{order}")).unwrap()).await.unwrap();
    assert_eq!(events[0].actor(), Some("alice"));
    assert_eq!(answer[0].actor(), Some("alice"));
    assert_eq!(answer[0].causation_id(), Some(events[0].id()));
    assert_eq!(events[1].causation_id(), Some(answer[0].id()));
    assert_eq!(events[1].actor(), Some("alice"));
    system.stop().await;
}
