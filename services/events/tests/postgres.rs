//! The event log over HTTP on the real PostgreSQL, where subscription order (by
//! writer's transaction id, then position) and position order differ: a transaction
//! that took its id early and appends late gets a higher position than events that
//! sort after it. `from=N` and the live tail must still never answer a position <= N.
#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use keel::core::{CloudEvent, ExpectedVersion, StreamId};
use keel::postgres::{PgEventLog, PgOptions};
use keel::store::{EventLog, SqlEventLog as _};
use tower::ServiceExt as _;

async fn pg_log() -> PgEventLog {
    let url = keel_testkit::postgres::fresh_database("events").await;
    PgEventLog::connect(&url, PgOptions::default()).await.unwrap()
}

fn event(ty: &str) -> CloudEvent {
    CloudEvent::builder(ty, "/tests/events").build().unwrap()
}

fn stream(id: &str) -> StreamId {
    StreamId::new(id).unwrap()
}

/// Opens transaction A and gives it its transaction id now; appends `test.b` (position
/// 1, a later transaction id) and commits it. A is returned open: what it appends later
/// gets a higher position but sorts before `test.b`.
async fn early_writer(log: &PgEventLog) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut a = log.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *a).await.unwrap();
    log.append(&stream("b-1"), ExpectedVersion::Any, &[event("test.b")]).await.unwrap();
    a
}

fn positions(page: &serde_json::Value) -> Vec<u64> {
    page["events"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()).collect()
}

async fn get(log: &Arc<dyn EventLog>, uri: &str) -> serde_json::Value {
    let response = keel_events::app(log.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{uri}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn from_never_answers_a_position_at_or_below_it_on_postgres() {
    let pg = pg_log().await;
    let mut a = early_writer(&pg).await;
    pg.append_in(&mut *a, &stream("a-1"), ExpectedVersion::Any, &[event("test.a")]).await.unwrap();
    a.commit().await.unwrap();
    let log: Arc<dyn EventLog> = Arc::new(pg);

    let page = get(&log, "/api/events?from=1").await;
    assert_eq!(positions(&page), [2], "{page}");
    // The floor holds on the following pages when `from` comes with the cursor.
    let first = get(&log, "/api/events?from=1&limit=1").await;
    assert_eq!(positions(&first), [2], "{first}");
    let next = first["next"].as_str().unwrap();
    let second = get(&log, &format!("/api/events?from=1&after={next}")).await;
    assert_eq!(positions(&second), Vec::<u64>::new(), "{second}");
}

#[tokio::test]
async fn the_live_tail_starts_after_the_head_on_postgres() {
    let pg = pg_log().await;
    let mut a = early_writer(&pg).await;
    let log: Arc<dyn EventLog> = Arc::new(pg.clone());
    // The head is 1 (`test.b`); the tail must show only what comes after it.
    let response = keel_events::app(log.clone())
        .oneshot(Request::get("/api/events/live").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    pg.append_in(&mut *a, &stream("a-1"), ExpectedVersion::Any, &[event("test.a")]).await.unwrap();
    a.commit().await.unwrap();
    pg.append(&stream("c-1"), ExpectedVersion::Any, &[event("test.c")]).await.unwrap();

    let mut body = response.into_body();
    let mut text = String::new();
    while !text.contains("event: test.c") {
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("an SSE frame in time")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(text.contains("event: test.a"), "{text}");
    assert!(!text.contains("event: test.b"), "the tail showed position 1, at the head: {text}");
}
