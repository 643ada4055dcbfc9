//! The gateway under hostile clients (issue 17): client faults are 4xx problems and
//! never count against an upstream's breaker; RFC 9112's framing rules; hyper's own
//! error answers as problems; the per-client connection cap. Raw sockets wherever the
//! bytes on the wire matter.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{RawAnswer, client, exchange, gateway, json, read_answer, upstream};
use keel_gateway::{GatewayConfig, RouteConfig};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

fn route(prefix: &str, url: &str) -> RouteConfig {
    RouteConfig::to_upstreams(prefix, vec![url.to_owned()])
}

/// The breaker state `/_keel/routes` shows for the first instance of `prefix`.
async fn breaker(gw: &str, prefix: &str) -> String {
    let routes = json(client().get(format!("{gw}/_keel/routes")).send().await.unwrap()).await;
    let route = routes.as_array().unwrap().iter().find(|r| r["prefix"] == prefix).unwrap();
    route["instances"][0]["breaker"].as_str().unwrap().to_owned()
}

fn host(gw: &str) -> String {
    format!("Host: {}\r\n", gw.trim_start_matches("http://"))
}

/// A gateway with `/b` to one echoing upstream whose breaker opens after 2 failures.
async fn breakable() -> (String, common::Upstream) {
    let up = upstream().await;
    let config =
        GatewayConfig::default().route(route("/b", &up.url()).breaker(2, 60_000).timeout_ms(1_000));
    (gateway(config).await, up)
}

/// After `attack`, the route still answers and its breaker is closed.
async fn still_serves(gw: &str) {
    assert_eq!(breaker(gw, "/b").await, "closed");
    let response = client().get(format!("{gw}/b/after")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn malformed_chunked_bodies_are_400_and_never_open_the_breaker() {
    let (gw, _up) = breakable().await;
    let request = format!(
        "POST /b/count HTTP/1.1\r\n{}Transfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n",
        host(&gw)
    );
    for _ in 0..5 {
        exchange(&gw, request.as_bytes(), true).await.assert_problem(400);
    }
    still_serves(&gw).await;
}

#[tokio::test]
async fn bodies_short_of_their_content_length_are_400_and_never_open_the_breaker() {
    let (gw, _up) = breakable().await;
    let request =
        format!("POST /b/count HTTP/1.1\r\n{}Content-Length: 50\r\n\r\n{{\"name\":", host(&gw));
    for _ in 0..5 {
        // The client gives up (half-closes) before the body is complete.
        exchange(&gw, request.as_bytes(), true).await.assert_problem(400);
    }
    still_serves(&gw).await;
}

#[tokio::test]
async fn a_body_that_stalls_is_408_and_never_opens_the_breaker() {
    let (gw, _up) = breakable().await;
    let request =
        format!("POST /b/count HTTP/1.1\r\n{}Content-Length: 50\r\n\r\n{{\"name\":", host(&gw));
    for _ in 0..3 {
        // The client keeps the connection open and never sends the rest.
        let answer = exchange(&gw, request.as_bytes(), false).await;
        answer.assert_problem(408);
        assert_eq!(answer.header("connection"), Some("close"));
    }
    still_serves(&gw).await;
}

#[tokio::test]
async fn an_upstream_4xx_never_counts_against_its_breaker() {
    let (gw, up) = breakable().await;
    for status in [400, 404, 409, 422, 429] {
        let response = client().get(format!("{gw}/b/status/{status}")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
    }
    still_serves(&gw).await;
    assert_eq!(up.seen.requests.lock().unwrap().len(), 6);
}

#[tokio::test]
async fn a_get_is_not_retried_on_the_one_instance_that_just_failed_it() {
    let up = upstream().await;
    let config =
        GatewayConfig::default().route(route("/b", &up.url()).retries(1).breaker(5, 60_000));
    let gw = gateway(config).await;
    for _ in 0..3 {
        let response = client().get(format!("{gw}/b/status/500")).send().await.unwrap();
        assert_eq!(response.status(), 500);
    }
    assert_eq!(up.seen.requests.lock().unwrap().len(), 3, "one attempt per GET");
    // Three failures of five: the route still serves.
    still_serves(&gw).await;
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_always_413() {
    let up = upstream().await;
    let gw = gateway(
        GatewayConfig::default()
            .max_body_bytes(1000)
            .route(route("/b", &up.url()).breaker(2, 60_000)),
    )
    .await;
    let chunk = "x".repeat(600);
    let request = format!(
        "POST /b/count HTTP/1.1\r\n{}Transfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n",
        host(&gw)
    );
    for _ in 0..5 {
        exchange(&gw, request.as_bytes(), false).await.assert_problem(413);
    }
    still_serves(&gw).await;
}

#[tokio::test]
async fn a_request_without_exactly_one_host_is_400() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/b", &up.url()))).await;
    exchange(&gw, b"GET /b/x HTTP/1.1\r\n\r\n", false).await.assert_problem(400);
    let two = format!("GET /b/x HTTP/1.1\r\n{}Host: evil.example\r\n\r\n", host(&gw));
    exchange(&gw, two.as_bytes(), false).await.assert_problem(400);
    // HTTP/1.0 needs none.
    let answer = exchange(&gw, b"GET /b/x HTTP/1.0\r\n\r\n", false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(up.seen.requests.lock().unwrap().len() == 1);
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_501() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/b", &up.url()))).await;
    for coding in ["gzip, chunked", "chunked, chunked", "deflate,chunked"] {
        let request = format!(
            "POST /b/upload HTTP/1.1\r\n{}Transfer-Encoding: {coding}\r\n\r\n0\r\n\r\n",
            host(&gw)
        );
        exchange(&gw, request.as_bytes(), false).await.assert_problem(501);
    }
    assert!(up.seen.requests.lock().unwrap().is_empty());
    let chunked = format!(
        "POST /b/upload HTTP/1.1\r\n{}Transfer-Encoding: Chunked\r\n\r\n1\r\n\0\r\n0\r\n\r\n",
        host(&gw)
    );
    assert_eq!(exchange(&gw, chunked.as_bytes(), false).await.body, "ok 1");
}

#[tokio::test]
async fn expectations_other_than_100_continue_are_417() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/b", &up.url()))).await;
    let request = format!(
        "POST /b/upload HTTP/1.1\r\n{}Expect: the-unexpected\r\nContent-Length: 1\r\n\r\n\0",
        host(&gw)
    );
    exchange(&gw, request.as_bytes(), false).await.assert_problem(417);
    assert!(up.seen.requests.lock().unwrap().is_empty());
    // 100-continue is answered by the gateway and not passed on.
    let mut stream = TcpStream::connect(gw.trim_start_matches("http://")).await.unwrap();
    let head = format!(
        "POST /b/upload HTTP/1.1\r\n{}Expect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        host(&gw)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let interim = read_answer(&mut stream).await;
    assert_eq!(interim.status, 100, "{interim:?}");
    stream.write_all(b"\0").await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok 1"), "{answer:?}");
    assert!(!up.seen.requests.lock().unwrap()[0].contains_key("expect"));
}

#[tokio::test]
async fn trace_and_connect_are_refused() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/", &up.url()))).await;
    let trace = format!("TRACE /b/x HTTP/1.1\r\n{}\r\n", host(&gw));
    let answer = exchange(&gw, trace.as_bytes(), false).await;
    answer.assert_problem(405);
    assert!(answer.header("allow").is_some_and(|allow| !allow.contains("TRACE")));
    let connect = format!("CONNECT example.com:443 HTTP/1.1\r\n{}\r\n", host(&gw));
    exchange(&gw, connect.as_bytes(), false).await.assert_problem(405);
    assert!(up.seen.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn client_sent_forwarded_and_x_real_ip_are_not_passed_on() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/b", &up.url()))).await;
    let body = json(
        client()
            .get(format!("{gw}/b/x"))
            .header("forwarded", "for=203.0.113.9;proto=https")
            .header("x-real-ip", "203.0.113.9")
            .header("x-keel-identity", "forged")
            .send()
            .await
            .unwrap(),
    )
    .await;
    for name in ["forwarded", "x-real-ip", "x-keel-identity", "x-keel-subject"] {
        assert!(body["headers"].get(name).is_none(), "{name} reached the upstream: {body}");
    }
    assert_eq!(body["headers"]["x-forwarded-for"][0], "127.0.0.1");
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_problem_documents() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/b", &up.url()))).await;
    let host = host(&gw);
    let cases: [(&str, String, u16); 4] = [
        (
            "two different Content-Lengths",
            format!(
                "POST /b/x HTTP/1.1\r\n{host}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"
            ),
            400,
        ),
        (
            "a control byte in a header",
            format!("GET /b/x HTTP/1.1\r\n{host}X-Bad: a\x01b\r\n\r\n"),
            400,
        ),
        (
            "a 100 KiB request target",
            format!("GET /b/{} HTTP/1.1\r\n{host}\r\n", "a".repeat(100 * 1024)),
            414,
        ),
        (
            "200 KiB of headers",
            format!("GET /b/x HTTP/1.1\r\n{host}X-Big: {}\r\n\r\n", "a".repeat(200 * 1024)),
            431,
        ),
    ];
    for (what, request, status) in cases {
        let answer: RawAnswer = exchange(&gw, request.as_bytes(), false).await;
        assert_eq!(answer.status, status, "{what}: {answer:?}");
        answer.assert_problem(status);
    }
    assert!(up.seen.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn connections_over_the_per_client_cap_get_429_until_one_closes() {
    let up = upstream().await;
    let gw = gateway(
        GatewayConfig::default().max_connections_per_client(2).route(route("/b", &up.url())),
    )
    .await;
    let addr = gw.trim_start_matches("http://").to_owned();
    let request = format!("GET /b/x HTTP/1.1\r\n{}\r\n", host(&gw));
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        assert_eq!(read_answer(&mut stream).await.status, 200);
        open.push(stream);
    }
    let answer = exchange(&gw, request.as_bytes(), false).await;
    answer.assert_problem(429);
    assert_eq!(answer.header("retry-after"), Some("1"));
    drop(open.pop());
    // The slot is freed once the gateway has seen the close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = exchange(&gw, request.as_bytes(), false).await;
        if answer.status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot was never freed: {answer:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
