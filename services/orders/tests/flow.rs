//! The whole order flow in one process on SQLite: users, products and orders with
//! their consumers over the in-memory bus, fed from the log by the relay.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use common::{System, behind_kit, eventually, get, get_with, identity, post, post_with, send};
use futures::future::join_all;
use http::{Request, StatusCode, header};
use keel::core::{CloudEvent, ExpectedVersion, Publisher as _, StreamId};
use keel::http::MAX_BODY_BYTES;
use keel::registry::InProcessRegistry;
use keel::sql::args;
use keel_orders::{AppState, DiscoveryDirectory};
use serde_json::{Value, json};

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

#[tokio::test]
async fn a_retried_cancel_replays_the_stored_answer() {
    let system = System::sqlite().await;
    let user = system.user("retry").await;
    let product = system.product(5).await;
    let order = system.order(&user, &product, 1).await;
    system.settled(&order).await;
    let uri = format!("/api/orders/{order}/cancel");
    let key = [("idempotency-key", "cancel-1")];
    let first = post_with(&system.orders, &uri, json!({}), &key).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let again = post_with(&system.orders, &uri, json!({}), &key).await;
    assert_eq!(again.status, StatusCode::OK, "the retry: {}", again.body);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    system.stop().await;
}

#[tokio::test]
async fn a_retried_order_replays_while_users_and_products_cannot_be_asked() {
    let system = System::sqlite().await;
    let user = system.user("outage").await;
    let product = system.product(5).await;
    let body = json!({ "user_id": user, "items": [{ "product_id": product, "quantity": 1 }] });
    let key = [("idempotency-key", "order-outage-1")];
    let first = post_with(&system.orders, "/api/orders", body.clone(), &key).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    // The orders service again, on the same store, but nothing to ask about users and
    // products (no instance registered).
    let directory = Arc::new(DiscoveryDirectory::new(Arc::new(InProcessRegistry::new())));
    let state = AppState::new(system.db.clone(), directory);
    let cut_off = behind_kit("orders", keel_orders::app(state), None);
    let again = post_with(&cut_off, "/api/orders", body, &key).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "the retry: {}", again.body);
    assert_eq!(again.body["id"], first.body["id"]);
    system.stop().await;
}

#[tokio::test]
async fn only_owners_and_admins_act_for_users_and_orders() {
    let system = System::with_identities().await;
    let alice_id = system.user("alice").await;
    let product = system.product(10).await;
    let (h, alice) = identity("alice", &[]);
    let (_, bob) = identity("bob", &[]);
    let (_, root) = identity("root", &["admin"]);
    let (alice, bob, root) = ([(h, alice.as_str())], [(h, bob.as_str())], [(h, root.as_str())]);
    let body = json!({ "user_id": alice_id, "items": [{ "product_id": product, "quantity": 1 }] });
    fn keyed<'a>(who: &[(&'static str, &'a str); 1]) -> [(&'static str, &'a str); 2] {
        [who[0], ("idempotency-key", "k-1")]
    }

    let placed = post_with(&system.orders, "/api/orders", body.clone(), &keyed(&alice)).await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    let order = placed.body["id"].as_str().unwrap().to_owned();
    system.settled(&order).await;

    // Bob may not order for Alice's user, even with her Idempotency-Key.
    let reply = post_with(&system.orders, "/api/orders", body.clone(), &bob).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "Bob orders for Alice: {}", reply.body);
    let reply = post_with(&system.orders, "/api/orders", body.clone(), &keyed(&bob)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "Bob replays Alice's key: {}", reply.body);
    assert_ne!(reply.body["id"], order.as_str());
    // Nor cancel or read her order, nor read her user or her orders.
    let cancel = format!("/api/orders/{order}/cancel");
    let reply = post_with(&system.orders, &cancel, json!({}), &bob).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "Bob cancels: {}", reply.body);
    for (router, uri) in [
        (&system.orders, format!("/api/orders/{order}")),
        (&system.users, format!("/api/users/{alice_id}")),
        (&system.users, format!("/api/users/{alice_id}/orders")),
    ] {
        let reply = get_with(router, &uri, &bob).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "Bob reads {uri}: {}", reply.body);
        assert!(reply.is_problem());
        let reply = get_with(router, &uri, &alice).await;
        assert_eq!(reply.status, StatusCode::OK, "Alice reads {uri}: {}", reply.body);
        let reply = get(router, &uri).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "anonymous reads {uri}");
    }

    // Alice's retry replays her answer; an admin may act for her.
    let again = post_with(&system.orders, "/api/orders", body.clone(), &keyed(&alice)).await;
    assert_eq!(again.body["id"], order.as_str());
    let reply = post_with(&system.orders, "/api/orders", body.clone(), &root).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "an admin orders for Alice: {}", reply.body);
    let reply = post_with(&system.orders, &cancel, json!({}), &root).await;
    assert_eq!(reply.status, StatusCode::OK, "an admin cancels: {}", reply.body);

    // Anonymous writes are refused, and a bare x-keel-subject is no identity.
    let spoof = [("x-keel-subject", "alice")];
    for (router, uri, body) in [
        (&system.orders, "/api/orders", body.clone()),
        (&system.orders, cancel.as_str(), json!({})),
        (&system.users, "/api/users", json!({ "name": "M", "email": "m@example.org" })),
        (&system.products, "/api/products", json!({ "name": "P", "price_cents": 1, "stock": 1 })),
    ] {
        let reply = post_with(router, uri, body.clone(), &spoof).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{uri}: {}", reply.body);
        assert!(reply.is_problem());
    }
    system.stop().await;
}

#[tokio::test]
async fn hostile_text_is_refused_on_sqlite() {
    let system = System::sqlite().await;
    common::hostile_text_is_refused_before_any_store_sees_it(&system).await;
    system.stop().await;
}

#[tokio::test]
async fn concurrent_sign_ups_with_one_email_on_sqlite() {
    let system = System::sqlite().await;
    common::concurrent_sign_ups_with_one_email(&system).await;
    system.stop().await;
}

#[tokio::test]
async fn a_poisoned_order_stream_is_a_problem_naming_the_bad_event() {
    let system = System::sqlite().await;
    // What `keel publish order.placed --stream order-x --data '{"garbage":1}'` appends.
    let event = CloudEvent::builder("order.placed", "/cli")
        .json_data(&json!({ "garbage": 1 }))
        .unwrap()
        .build()
        .unwrap();
    let event_id = event.id().to_owned();
    let stream = StreamId::new("order-x").unwrap();
    system.db.log().append(&stream, ExpectedVersion::Any, &[event]).await.unwrap();
    for reply in [
        get(&system.orders, "/api/orders/x").await,
        post(&system.orders, "/api/orders/x/cancel", json!({})).await,
    ] {
        assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
        assert!(reply.is_problem());
        let detail = reply.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("order-x") && detail.contains(&event_id), "{}", reply.body);
    }
    system.stop().await;
}

#[tokio::test]
async fn a_users_orders_come_in_pages() {
    let system = System::sqlite().await;
    let user = system.user("pager").await;
    let product = system.product(100).await;
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(system.order(&user, &product, 1).await);
    }
    let uri = format!("/api/users/{user}/orders");
    eventually(|| async {
        let reply = get(&system.users, &uri).await;
        (reply.body["orders"].as_array().map(Vec::len) == Some(5)).then_some(())
    })
    .await;

    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut next = Value::Null;
    loop {
        let page_uri = match next.as_str() {
            None => format!("{uri}?limit=2"),
            Some(after) => format!("{uri}?limit=2&after={after}"),
        };
        let reply = get(&system.users, &page_uri).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["user_id"], user.as_str());
        let orders = reply.body["orders"].as_array().unwrap().clone();
        pages.push(orders.len());
        seen.extend(orders.iter().map(|o| o["id"].as_str().unwrap().to_owned()));
        next = reply.body["next"].clone();
        if next.is_null() {
            break;
        }
        assert!(pages.len() < 5, "the pages never end: {pages:?}");
    }
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(seen, placed);
    for bad in ["limit=0", "limit=1001", "limit=x"] {
        let reply = get(&system.users, &format!("{uri}?{bad}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}: {}", reply.body);
        assert!(reply.is_problem());
    }
    system.stop().await;
}

#[tokio::test]
async fn a_subject_in_any_script_reaches_the_events_actor() {
    let system = System::with_identities().await;
    let (header, value) = identity("Zoë ☕ 山田", &[]);
    let body = json!({ "name": "Tea", "price_cents": 300, "stock": 1 });
    let reply = post_with(&system.products, "/api/products", body, &[(header, &value)]).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap();
    let events =
        system.db.read_stream(&StreamId::new(format!("product-{id}")).unwrap()).await.unwrap();
    assert_eq!(events[0].actor(), Some("Zoë ☕ 山田"));
    system.stop().await;
}

#[tokio::test]
async fn idempotency_keys_expire_and_are_purged() {
    let system = System::sqlite().await;
    let state = keel_products::AppState::new(system.db.clone())
        .with_idempotency_ttl(Duration::from_secs(1));
    let products = behind_kit("products", keel_products::app(state), None);
    let body = json!({ "name": "Kettle", "price_cents": 1999, "stock": 3 });
    let with_key = |key: &'static str| [("idempotency-key", key)];
    let first = post_with(&products, "/api/products", body.clone(), &with_key("kettle-1")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let other = post_with(&products, "/api/products", body.clone(), &with_key("kettle-2")).await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.body);

    // Once the key has expired it is unused again: the same request is a new product.
    eventually(|| async {
        let again =
            post_with(&products, "/api/products", body.clone(), &with_key("kettle-1")).await;
        assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
        (again.body["id"] != first.body["id"]).then_some(())
    })
    .await;
    // And expired keys leave the table (requests with keys run the purge now and then).
    eventually(|| async {
        post_with(&products, "/api/products", body.clone(), &with_key("kettle-1")).await;
        let sql = "SELECT COUNT(*) FROM products_idempotency WHERE key = $1";
        let left: Option<(i64,)> = system.db.fetch_optional(sql, args!["kettle-2"]).await.unwrap();
        (left == Some((0,))).then_some(())
    })
    .await;
    system.stop().await;
}
