//! The event log over HTTP against a real SQLite log.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use keel::core::{CloudEvent, ExpectedVersion, StreamId};
use keel::http::{Identity, IdentityKey, Service, ServiceConfig};
use keel::registry::InProcessRegistry;
use keel::sqlite::SqliteEventLog;
use keel::store::EventLog;
use tower::ServiceExt as _;

async fn log_with(events: &[(&str, &str)]) -> Arc<dyn EventLog> {
    let path = std::env::temp_dir().join(format!("keel-events-{}.db", uuid_like()));
    let log = SqliteEventLog::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    for (stream, ty) in events {
        let event = CloudEvent::builder(*ty, "/tests/events")
            .json_data(&serde_json::json!({ "stream": stream }))
            .unwrap()
            .build()
            .unwrap();
        log.append(&StreamId::new(*stream).unwrap(), ExpectedVersion::Any, &[event]).await.unwrap();
    }
    Arc::new(log)
}

fn uuid_like() -> String {
    format!("{}-{:?}", std::process::id(), std::time::Instant::now())
        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
}

async fn get(log: &Arc<dyn EventLog>, uri: &str) -> (StatusCode, serde_json::Value) {
    let response = keel_events::app(log.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn pages_follow_the_cursor_to_the_end() {
    let log = log_with(&[
        ("order-1", "order.placed"),
        ("order-2", "order.placed"),
        ("order-1", "order.confirmed"),
    ])
    .await;
    let (status, first) = get(&log, "/api/events?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["events"].as_array().unwrap().len(), 2);
    assert_eq!(first["events"][0]["specversion"], "1.0");
    assert_eq!(first["head"], 3);
    let next = first["next"].as_str().unwrap();
    let (_, second) = get(&log, &format!("/api/events?after={next}&limit=2")).await;
    assert_eq!(second["events"].as_array().unwrap().len(), 1);
    assert_eq!(second["events"][0]["type"], "order.confirmed");

    let (_, placed) = get(&log, "/api/events?type=order.placed").await;
    assert_eq!(placed["events"].as_array().unwrap().len(), 2);
    let (_, from) = get(&log, "/api/events?from=2").await;
    assert_eq!(from["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn one_stream_forward_and_backward() {
    let log = log_with(&[
        ("order-1", "order.placed"),
        ("order-2", "order.placed"),
        ("order-1", "order.confirmed"),
    ])
    .await;
    let (status, stream) = get(&log, "/api/events/streams/order-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stream["version"], 2);
    assert_eq!(stream["events"][0]["type"], "order.placed");
    let (_, backward) = get(&log, "/api/events/streams/order-1?direction=backward&limit=1").await;
    assert_eq!(backward["events"][0]["type"], "order.confirmed");
    let (missing, problem) = get(&log, "/api/events/streams/order-9").await;
    assert_eq!(missing, StatusCode::NOT_FOUND);
    assert_eq!(problem["status"], 404);
}

#[tokio::test]
async fn bad_parameters_name_the_field() {
    let log = log_with(&[]).await;
    for (uri, field) in [
        ("/api/events?limit=0", "limit"),
        ("/api/events?limit=100000", "limit"),
        ("/api/events?after=nonsense", "after"),
        ("/api/events?after=-1.-1.-1", "after"),
        ("/api/events?after=0.0.-2", "after"),
        ("/api/events?after=0.-1.0", "after"),
        ("/api/events?from=abc", "from"),
        ("/api/events/streams/order-1?direction=sideways", "direction"),
        // A parameter a route does not take: a pager sending `cursor` for `after`
        // would otherwise get the first page for ever.
        ("/api/events?cursor=0.0.5", "cursor"),
        ("/api/events?limit=5&page=2", "page"),
        ("/api/events/streams/order-1?after=3", "after"),
        ("/api/events/live?limit=5", "limit"),
    ] {
        let (status, problem) = get(&log, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(problem["errors"][0]["pointer"], field, "{uri}: {problem}");
    }
}

#[tokio::test]
async fn live_tail_streams_new_events_as_server_sent_events() {
    let log = log_with(&[("order-1", "order.placed")]).await;
    let response = keel_events::app(log.clone())
        .oneshot(Request::get("/api/events/live?from=0").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let event = CloudEvent::builder("order.shipped", "/tests/events").build().unwrap();
    log.append(&StreamId::new("order-1").unwrap(), ExpectedVersion::Any, &[event]).await.unwrap();
    let mut text = String::new();
    while !text.contains("order.shipped") {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(20), body.frame())
            .await
            .expect("an SSE frame in time")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(text.contains("event: order.placed"), "{text}");
    assert!(text.contains("event: order.shipped"), "{text}");
    assert!(text.contains("id: "), "{text}");
}

/// The events app behind the service kit, as `keel up` serves it.
fn behind_kit(log: &Arc<dyn EventLog>, identity: Option<IdentityKey>) -> axum::Router {
    let registry = Arc::new(InProcessRegistry::new());
    let mut config = ServiceConfig::new("events", ([127, 0, 0, 1], 0).into(), registry);
    config.identity = identity;
    Service::new(config).router(keel_events::app(log.clone())).into_router()
}

async fn status_of(app: &axum::Router, uri: &str, identity: Option<&str>) -> StatusCode {
    let mut request = Request::get(uri);
    if let Some(token) = identity {
        request = request.header("x-keel-identity", token);
    }
    app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap().status()
}

#[tokio::test]
async fn reading_the_log_needs_a_reader_role_when_identities_are_verified() {
    let log = log_with(&[("order-1", "order.placed")]).await;
    let key = IdentityKey::derive_from_jwt_secret("the-events-test-secret-01");
    let app = behind_kit(&log, Some(key.clone()));
    let sign = |subject: &str, roles: &[&str]| {
        key.sign(&Identity::new(subject).unwrap().with_roles(roles.iter().copied()).unwrap())
    };
    let (bob, reader, admin) =
        (sign("bob", &[]), sign("tool", &["events:read"]), sign("root", &["admin"]));
    for uri in ["/api/events", "/api/events/streams/order-1", "/api/events/live?from=0"] {
        assert_eq!(status_of(&app, uri, None).await, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(status_of(&app, uri, Some(&bob)).await, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(status_of(&app, uri, Some(&reader)).await, StatusCode::OK, "{uri}");
        assert_eq!(status_of(&app, uri, Some(&admin)).await, StatusCode::OK, "{uri}");
    }
    // The open mode (no key) reads as before.
    let open = behind_kit(&log, None);
    assert_eq!(status_of(&open, "/api/events", None).await, StatusCode::OK);
}

#[tokio::test]
async fn control_characters_in_filters_are_refused() {
    let log = log_with(&[("order-1", "order.placed")]).await;
    let app = behind_kit(&log, None);
    for uri in
        ["/api/events?type=%00", "/api/events?stream=order-1%00", "/api/events/live?type=a%0Ab"]
    {
        assert_eq!(status_of(&app, uri, None).await, StatusCode::BAD_REQUEST, "{uri}");
    }
}
