//! Every page of the console answers on a real SQLite log with the log bus, the event
//! page shows the causal lineage, bad input is a problem naming the field, and a dead
//! letter retried through the page's form reaches its group again.

mod common;

use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

async fn call(app: &axum::Router, request: Request<Body>) -> (StatusCode, String, Option<String>) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let location =
        response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), location)
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, String) {
    let (status, body, _) =
        call(app, Request::get(uri).body(Body::empty()).expect("request")).await;
    (status, body)
}

async fn post(app: &axum::Router, uri: &str, form: &str) -> (StatusCode, Option<String>) {
    let request = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .expect("request");
    let (status, _, location) = call(app, request).await;
    (status, location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_answers_and_shows_what_the_log_holds() {
    let f = common::fixture().await;
    let app = keel_console::router(f.console.clone());

    for (uri, expected) in [
        ("/_keel/console/", "position 3"),
        ("/_keel/console/streams", "order"),
        ("/_keel/console/streams?category=order", "order-o1"),
        ("/_keel/console/stream?id=order-o1", "order.confirmed"),
        ("/_keel/console/log?type=stock.reserved", "stock-o1"),
        ("/_keel/console/log?since=2020-01-01T00:00", "order.placed"),
        ("/_keel/console/groups", "shipping"),
        ("/_keel/console/dead-letters?topic=order&group=shipping", "the warehouse is offline"),
        ("/_keel/console/projections", "order-summaries"),
        ("/_keel/console/relays", "main"),
    ] {
        let (status, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert!(body.contains(expected), "{uri} lacks {expected}: {body}");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{uri} fetches nothing from outside"
        );
    }
    let (_, stock_only) = get(&app, "/_keel/console/log?type=stock.reserved").await;
    assert!(!stock_only.contains("order.confirmed"), "the type filter filters");
    let (_, future) = get(&app, "/_keel/console/log?since=2999-01-01T00:00:00Z").await;
    assert!(future.contains("No events match"), "the time filter filters");

    // The event page: the chain from the request to the event, and what it caused.
    let (status, page) = get(&app, &format!("/_keel/console/event?id={}", f.reserved.id())).await;
    assert_eq!(status, StatusCode::OK);
    let lineage = &page[page.find("id=\"lineage\"").expect("a lineage section")..];
    let (request, placed, reserved, confirmed) = (
        lineage.find(f.placed.correlation_id().expect("correlated")).expect("the request"),
        lineage.find(&format!("id={}", f.placed.id())).expect("its cause"),
        lineage.find("class=\"self\"").expect("itself"),
        lineage.find(&format!("id={}", f.confirmed.id())).expect("its effect"),
    );
    assert!(request < placed && placed < reserved && reserved < confirmed, "{lineage}");

    let (status, json) =
        get(&app, &format!("/_keel/console/api/lineage?id={}", f.confirmed.id())).await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(json["causes"][0]["id"], f.placed.id());
    assert_eq!(json["causes"][1]["id"], f.reserved.id());

    // The groups page shows the log bus group's lag and its dead letter.
    let (_, groups) = get(&app, "/_keel/console/groups").await;
    assert!(groups.contains("<span class=\"warn\">1</span>"), "one dead letter: {groups}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_problem_naming_the_field() {
    let f = common::fixture().await;
    let app = keel_console::router(f.console.clone());
    for (uri, status, field) in [
        ("/_keel/console/log?tpye=x", StatusCode::BAD_REQUEST, "tpye"),
        ("/_keel/console/log?since=yesterday", StatusCode::BAD_REQUEST, "since"),
        ("/_keel/console/log?from=-1", StatusCode::BAD_REQUEST, "from"),
        ("/_keel/console/event", StatusCode::BAD_REQUEST, "id"),
        ("/_keel/console/event?id=nope", StatusCode::NOT_FOUND, "nope"),
        ("/_keel/console/stream?id=", StatusCode::BAD_REQUEST, "id"),
        ("/_keel/console/dead-letters?topic=order", StatusCode::BAD_REQUEST, "group"),
    ] {
        let (got, body) = get(&app, uri).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert!(body.contains(field), "{uri}: {body}");
    }
    let (status, _) = post(&app, "/_keel/console/projections/rebuild", "name=unknown").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_retried_from_the_page_reaches_its_group() {
    let f = common::fixture().await;
    let app = keel_console::router(f.console.clone());
    let letters = f.bus.list(common::TOPIC, common::GROUP, 10).await.expect("list");
    assert_eq!(letters.len(), 1);
    f.offline.store(false, std::sync::atomic::Ordering::SeqCst);

    let form = format!("topic=order&group=shipping&id={}", letters[0].id.0);
    let (status, location) = post(&app, "/_keel/console/dead-letters/retry", &form).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = location.expect("back to the page");
    assert!(location.starts_with("/_keel/console/dead-letters?"), "{location}");
    f.handled_eventually(f.placed.id()).await;
    let (_, page) = get(&app, &location).await;
    assert!(page.contains("sent ") && page.contains("No dead letters"), "{page}");

    // Purge and rebuild answer too.
    let (status, _) =
        post(&app, "/_keel/console/dead-letters/purge", "topic=order&group=shipping").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _) =
        post(&app, "/_keel/console/projections/rebuild", "name=order-summaries").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, page) = get(&app, "/_keel/console/projections").await;
        if page.contains("done at") {
            assert!(page.contains("3 event(s)"), "{page}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rebuild never finished: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A form post a browser makes from another site (CSRF) is refused and changes
/// nothing; the console's own pages (same origin) and non-browser clients pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_action_is_refused_and_changes_nothing() {
    let f = common::fixture().await;
    let app = keel_console::router(f.console.clone());
    let purge = |headers: &[(&str, &str)]| {
        let mut request = Request::post("/_keel/console/dead-letters/purge")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::HOST, "127.0.0.1:8080");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(Body::from("topic=order&group=shipping")).expect("request")
    };
    let letters = || f.bus.list(common::TOPIC, common::GROUP, 10);

    for cross_site in [
        &[("origin", "http://evil.example")][..],
        &[("origin", "null")],
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site"), ("origin", "http://127.0.0.1:8080")],
    ] {
        let (status, body, _) = call(&app, purge(cross_site)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{cross_site:?}: {body}");
        assert_eq!(letters().await.expect("list").len(), 1, "{cross_site:?} purged");
    }

    let same_origin = [("origin", "http://127.0.0.1:8080"), ("sec-fetch-site", "same-origin")];
    let (status, body, _) = call(&app, purge(&same_origin)).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert!(letters().await.expect("list").is_empty(), "the console's own form purges");
}
