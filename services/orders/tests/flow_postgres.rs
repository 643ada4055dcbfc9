//! The order flow on the real PostgreSQL (`keel_testkit::postgres`: 127.0.0.1:5432, or
//! `KEEL_TEST_DATABASE_URL`), each test in a fresh database: the same code as on SQLite.

#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

mod common;

use common::{System, eventually, get, post_with};
use futures::future::join_all;
use http::StatusCode;
use keel::sql::Db;
use serde_json::json;

/// The store on a fresh database of the test server.
async fn fresh_db() -> Db {
    Db::connect(&keel_testkit::postgres::fresh_database("orders").await).await.unwrap()
}

#[tokio::test]
async fn orders_are_confirmed_rejected_and_never_oversell_on_postgres() {
    let db = fresh_db().await;
    let system = System::on(db, None).await;
    let user = system.user("pg").await;
    let product = system.product(3).await;

    let orders = join_all((0..20).map(|_| system.order(&user, &product, 1))).await;
    let mut confirmed = Vec::new();
    for order in &orders {
        let settled = system.settled(order).await;
        if settled["status"] == "confirmed" {
            confirmed.push(order.clone());
        } else {
            assert_eq!(settled["status"], "rejected");
        }
    }
    assert_eq!(confirmed.len(), 3);
    assert_eq!(system.stock(&product).await, 0);

    let uri = format!("/api/users/{user}/orders");
    eventually(|| async {
        let reply = get(&system.users, &uri).await;
        let listed = reply.body["orders"].as_array().cloned().unwrap_or_default();
        (listed.len() == 20 && listed.iter().all(|o| o["status"] != "pending")).then_some(())
    })
    .await;

    // Idempotency and the version conflict on Postgres.
    let body = json!({ "name": "pg", "email": "pg-idem@example.org" });
    let key = [("idempotency-key", "pg-1")];
    let replies =
        join_all((0..4).map(|_| post_with(&system.users, "/api/users", body.clone(), &key))).await;
    assert!(
        replies
            .iter()
            .all(|r| r.status == StatusCode::CREATED && r.body["id"] == replies[0].body["id"])
    );

    // Cancelling is allowed while confirmed.
    let order = confirmed[0].as_str();
    let version = system.settled(order).await["version"].as_u64().unwrap().to_string();
    let uri = format!("/api/orders/{order}/cancel");
    let if_match = [("if-match", version.as_str())];
    let replies =
        join_all((0..2).map(|_| post_with(&system.orders, &uri, json!({}), &if_match))).await;
    let mut statuses: Vec<_> = replies.iter().map(|r| r.status).collect();
    statuses.sort();
    let bodies: Vec<_> = replies.iter().map(|r| r.body.to_string()).collect();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT], "{bodies:?}");
    system.stop().await;
}

#[tokio::test]
async fn hostile_text_is_refused_on_postgres() {
    let system = System::on(fresh_db().await, None).await;
    common::hostile_text_is_refused_before_any_store_sees_it(&system).await;
    system.stop().await;
}

#[tokio::test]
async fn concurrent_sign_ups_with_one_email_on_postgres() {
    let system = System::on(fresh_db().await, None).await;
    common::concurrent_sign_ups_with_one_email(&system).await;
    system.stop().await;
}
