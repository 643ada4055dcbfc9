//! The proxy through real loopback sockets: paths, queries, bodies, headers, errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{CHUNK, client, closed_port_url, gateway, json, pattern, problem, raw, upstream};
use keel_gateway::{CorsConfig, Gateway, GatewayConfig, PerCoreListeners, RouteConfig};
use keel_registry::{InProcessRegistry, Instance, Registration, Registry};

fn route(prefix: &str, url: &str) -> RouteConfig {
    RouteConfig::to_upstreams(prefix, vec![url.to_owned()])
}

#[tokio::test]
async fn sub_paths_and_query_strings_reach_the_upstream_intact() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/api/users", &up.url()))).await;
    let body = json(
        client()
            .get(format!("{gw}/api/users/7/orders?x=1&y=%20a%2Fb&x=2&empty="))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["path"], "/api/users/7/orders");
    assert_eq!(body["query"], "x=1&y=%20a%2Fb&x=2&empty=");
    let body = json(client().get(format!("{gw}/api/users")).send().await.unwrap()).await;
    assert_eq!(body["path"], "/api/users");
    assert_eq!(body["query"], serde_json::Value::Null);
    let missing = client().get(format!("{gw}/api/usersX")).send().await.unwrap();
    let missing = problem(missing, 404).await;
    assert_eq!(missing["detail"], "no route matches this path");
}

#[tokio::test]
async fn longest_prefix_wins_and_strip_prefix_removes_it() {
    let a = upstream().await;
    let b = upstream().await;
    let config = GatewayConfig::default()
        .route(route("/", &a.url()))
        .route(route("/svc", &b.url()).strip_prefix(true));
    let gw = gateway(config).await;
    let body = json(client().get(format!("{gw}/svc/a/b?q=1")).send().await.unwrap()).await;
    assert_eq!(body["path"], "/a/b");
    assert_eq!(body["query"], "q=1");
    let body = json(client().get(format!("{gw}/svc")).send().await.unwrap()).await;
    assert_eq!(body["path"], "/");
    assert_eq!(b.seen.requests.lock().unwrap().len(), 2);
    let body = json(client().get(format!("{gw}/svcX/c")).send().await.unwrap()).await;
    assert_eq!(body["path"], "/svcX/c");
    assert_eq!(a.seen.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_method_the_route_does_not_list_gets_405_with_allow() {
    let up = upstream().await;
    let gw =
        gateway(GatewayConfig::default().route(route("/r", &up.url()).methods(&["GET", "PUT"])))
            .await;
    assert_eq!(client().get(format!("{gw}/r/x")).send().await.unwrap().status(), 200);
    let refused = client().post(format!("{gw}/r/x")).body("x").send().await.unwrap();
    assert_eq!(refused.headers()["allow"], "GET, PUT");
    problem(refused, 405).await;
    assert_eq!(up.seen.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_50_mib_chunked_upload_and_download_stream_through() {
    const SIZE: u64 = 50 * 1024 * 1024;
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().max_body_bytes(SIZE).route(route("/big", &up.url())))
        .await;
    let chunks = (0..SIZE / CHUNK as u64)
        .map(|i| Ok::<_, std::io::Error>(Bytes::from(pattern(i * CHUNK as u64, CHUNK))));
    let response = client()
        .post(format!("{gw}/big/upload"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), format!("ok {SIZE}"));
    let headers = up.seen.requests.lock().unwrap()[0].clone();
    assert_eq!(headers["transfer-encoding"], "chunked");

    let mut response = client().get(format!("{gw}/big/download?n={SIZE}")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    let mut offset = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        assert!(chunk[..] == pattern(offset, chunk.len())[..], "mismatch at {offset}");
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, SIZE);
}

#[tokio::test]
async fn the_first_upload_chunk_reaches_the_upstream_before_the_client_finishes() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/s", &up.url()))).await;
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, std::io::Error>>();
    let request = tokio::spawn(
        client().post(format!("{gw}/s/first-chunk")).body(reqwest::Body::wrap_stream(rx)).send(),
    );
    tx.unbounded_send(Ok(Bytes::from(pattern(0, 1000)))).unwrap();
    // Only once the upstream has seen the first chunk is the rest sent: a gateway that
    // buffered the body would wait here forever (bounded so that the test fails instead).
    tokio::time::timeout(Duration::from_secs(30), up.seen.first_chunk.notified())
        .await
        .expect("the first chunk never reached the upstream while the upload was open");
    tx.unbounded_send(Ok(Bytes::from(pattern(1000, 500)))).unwrap();
    drop(tx);
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.text().await.unwrap(), "ok 1500");
}

#[tokio::test]
async fn the_first_download_chunk_reaches_the_client_before_the_upstream_finishes() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/s", &up.url()))).await;
    let mut response = client().get(format!("{gw}/s/stream-down")).send().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), response.chunk())
        .await
        .expect("the first chunk never reached the client while the download was open")
        .unwrap();
    assert_eq!(first.as_deref(), Some(&b"first;"[..]));
    up.seen.release_download.notify_one();
    assert_eq!(response.chunk().await.unwrap().as_deref(), Some(&b"second"[..]));
    assert!(response.chunk().await.unwrap().is_none());
}

#[tokio::test]
async fn per_core_workers_answer_and_drain_in_flight_requests_on_shutdown() {
    let up = upstream().await;
    let gateway =
        Gateway::without_registry(GatewayConfig::default().route(route("/s", &up.url()))).unwrap();
    let workers = std::num::NonZeroUsize::new(3).unwrap();
    let listeners = PerCoreListeners::bind("127.0.0.1:0".parse().unwrap(), workers).unwrap();
    if cfg!(target_os = "linux") {
        assert_eq!(listeners.workers(), 3);
    }
    let addr = listeners.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(gateway.serve_per_core(listeners, async {
        let _ = stopped.await;
    }));

    // A new client (so a new connection) per request: the kernel spreads them.
    for i in 0..12 {
        let response = client().get(format!("http://{addr}/s/n/{i}?q={i}")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body = json(response).await;
        assert_eq!(body["path"], format!("/s/n/{i}"));
        assert_eq!(body["headers"]["x-forwarded-for"][0], "127.0.0.1");
    }

    // A download in flight when shutdown starts still finishes.
    let mut response = client().get(format!("http://{addr}/s/stream-down")).send().await.unwrap();
    assert_eq!(response.chunk().await.unwrap().as_deref(), Some(&b"first;"[..]));
    stop.send(()).unwrap();
    // The listeners close first: wait until a new connection is refused.
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    up.seen.release_download.notify_one();
    assert_eq!(response.chunk().await.unwrap().as_deref(), Some(&b"second"[..]));
    assert!(response.chunk().await.unwrap().is_none());
    served.await.unwrap().unwrap();
}

#[test]
fn per_core_listeners_refuse_a_port_already_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let workers = std::num::NonZeroUsize::new(2).unwrap();
    let error = PerCoreListeners::bind(addr, workers).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    drop(taken);
    let listeners = PerCoreListeners::bind(addr, workers).unwrap();
    // A second gateway on the same port is refused too, not quietly let in.
    let error = PerCoreListeners::bind(addr, workers).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    drop(listeners);
}

#[tokio::test]
async fn non_json_bodies_pass_byte_for_byte() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/m", &up.url()))).await;
    let bytes: Vec<u8> =
        (0..300_000u32).map(|i| u8::try_from(i.wrapping_mul(7919) % 256).unwrap()).collect();
    for content_type in ["application/octet-stream", "text/csv; charset=latin1", "image/png"] {
        let response = client()
            .post(format!("{gw}/m/mirror"))
            .header("content-type", content_type)
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], content_type);
        assert_eq!(response.headers()["content-length"], "300000");
        assert!(response.bytes().await.unwrap()[..] == bytes[..]);
    }
    // Invalid JSON labelled as JSON is not the gateway's business either.
    let response = client()
        .post(format!("{gw}/m/mirror"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "{not json");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/h", &up.url()))).await;
    let request = "GET /h/echo HTTP/1.1\r\nHost: public.example:8080\r\n\
        Connection: close, X-Hop-Secret\r\nX-Hop-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
        TE: trailers\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\n\
        Trailer: X-T\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\
        X-Kept: yes\r\n\r\n";
    let response = raw(&gw, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let headers = up.seen.requests.lock().unwrap()[0].clone();
    for name in [
        "x-hop-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "trailer",
        "connection",
    ] {
        assert!(!headers.contains_key(name), "{name} reached the upstream");
    }
    assert_eq!(headers["x-kept"], "yes");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "public.example:8080");
    assert_eq!(headers["host"], up.addr.to_string());

    let response = client().get(format!("{gw}/h/hop")).send().await.unwrap();
    assert!(!response.headers().contains_key("x-upstream-hop"));
    assert!(!response.headers().contains_key("keep-alive"));
    assert_eq!(response.headers()["x-upstream-kept"], "1");
}

#[tokio::test]
async fn conflicting_content_length_and_transfer_encoding_never_reach_the_upstream() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/c", &up.url()))).await;
    let smuggle = "POST /c/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\
        Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /c/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let response = raw(&gw, smuggle.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 "), "{response}");
    let seen = up.seen.requests.lock().unwrap().clone();
    for headers in &seen {
        assert!(
            !(headers.contains_key("content-length") && headers.contains_key("transfer-encoding")),
            "the upstream saw both: {headers:?}"
        );
    }
    // A second Content-Length that disagrees is refused too.
    let double = "POST /c/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 6\r\n\
        Connection: close\r\n\r\nabcdef";
    let response = raw(&gw, double.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        up.seen
            .requests
            .lock()
            .unwrap()
            .iter()
            .all(|h| h.get_all("content-length").iter().count() <= 1)
    );
}

#[tokio::test]
async fn request_id_and_traceparent_are_propagated() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/t", &up.url()))).await;
    let response = client()
        .get(format!("{gw}/t/x"))
        .header("x-request-id", "req-42")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let body = json(response).await;
    assert_eq!(body["headers"]["x-request-id"][0], "req-42");
    let traceparent = body["headers"]["traceparent"][0].as_str().unwrap();
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(!traceparent.contains("00f067aa0ba902b7"));

    let response = client().get(format!("{gw}/t/x")).send().await.unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = json(response).await;
    assert_eq!(body["headers"]["x-request-id"][0], id.as_str());
    assert_eq!(id.len(), 36);
    assert!(
        keel_core::TraceContext::parse(body["headers"]["traceparent"][0].as_str().unwrap()).is_ok()
    );
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let up = upstream().await;
    let gw =
        gateway(GatewayConfig::default().max_body_bytes(1000).route(route("/l", &up.url()))).await;
    let declared =
        client().post(format!("{gw}/l/upload")).body(pattern(0, 1001)).send().await.unwrap();
    problem(declared, 413).await;
    assert!(up.seen.requests.lock().unwrap().is_empty());
    let chunks = (0..10u64).map(|i| Ok::<_, std::io::Error>(Bytes::from(pattern(i * 200, 200))));
    let chunked = client()
        .post(format!("{gw}/l/upload"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    problem(chunked, 413).await;
    let fits = client().post(format!("{gw}/l/upload")).body(pattern(0, 1000)).send().await.unwrap();
    assert_eq!(fits.text().await.unwrap(), "ok 1000");
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let up = upstream().await;
    let gw =
        gateway(GatewayConfig::default().route(route("/rl", &up.url()).rate_limit(1, 2))).await;
    let mut limited = None;
    for _ in 0..20 {
        let response = client().get(format!("{gw}/rl/x")).send().await.unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("20 requests at 1/s with a burst of 2 were never limited");
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    problem(limited, 429).await;
}

#[tokio::test]
async fn upstream_failures_map_to_502_503_504() {
    let up = upstream().await;
    let config = GatewayConfig::default()
        .route(route("/dead", &closed_port_url().await))
        .route(route("/slow", &up.url()).timeout_ms(200));
    let gw = gateway(config).await;
    problem(client().get(format!("{gw}/dead/x")).send().await.unwrap(), 502).await;
    problem(client().get(format!("{gw}/slow/slow")).send().await.unwrap(), 504).await;

    let registry = Arc::new(InProcessRegistry::new());
    let config = GatewayConfig::default().route(RouteConfig::to_service("/orders", "orders-none"));
    let gw = format!("http://{}", common::serve(Gateway::new(config, registry).unwrap()).await);
    problem(client().get(format!("{gw}/orders/1")).send().await.unwrap(), 503).await;
}

#[tokio::test]
async fn the_breaker_opens_after_the_threshold_and_answers_503() {
    let up = upstream().await;
    let config = GatewayConfig::default().route(route("/b", &up.url()).breaker(3, 60_000));
    let gw = gateway(config).await;
    for _ in 0..3 {
        assert_eq!(client().get(format!("{gw}/b/status/500")).send().await.unwrap().status(), 500);
    }
    problem(client().get(format!("{gw}/b/status/500")).send().await.unwrap(), 503).await;
    assert_eq!(up.seen.requests.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn idempotent_requests_are_retried_on_another_instance() {
    let up = upstream().await;
    let dead = closed_port_url().await;
    let config = GatewayConfig::default()
        .route(RouteConfig::to_upstreams("/r", vec![dead, up.url()]).retries(2));
    let gw = gateway(config).await;
    for _ in 0..6 {
        assert_eq!(client().get(format!("{gw}/r/x")).send().await.unwrap().status(), 200);
    }
}

#[tokio::test]
async fn any_method_goes_to_another_instance_when_one_cannot_be_reached() {
    // No retries configured, and POST with a body: still, a refused connection means
    // nothing was sent, so the request goes to the live instance.
    let up = upstream().await;
    let dead = closed_port_url().await;
    let config = GatewayConfig::default()
        .route(RouteConfig::to_upstreams("/r", vec![dead, up.url()]).breaker(1000, 60_000));
    let gw = gateway(config).await;
    for n in 0..8 {
        let response = client()
            .post(format!("{gw}/r/mirror"))
            .body(format!("order {n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {n}");
        assert_eq!(response.text().await.unwrap(), format!("order {n}"), "the body went along");
    }
    assert_eq!(up.seen.requests.lock().unwrap().len(), 8, "each request reached the live one once");
}

#[tokio::test]
async fn service_routes_follow_the_registry() {
    let up = upstream().await;
    let registry = InProcessRegistry::new();
    let service = format!("svc-{}", uuid::Uuid::new_v4());
    registry
        .register(&Registration {
            instance: Instance {
                id: format!("{service}-1"),
                service: service.clone(),
                address: "127.0.0.1".into(),
                port: up.addr.port(),
                tags: vec![],
                meta: Default::default(),
            },
            check: None,
        })
        .await
        .unwrap();
    let config = GatewayConfig::default().route(RouteConfig::to_service("/svc", service));
    let gw = format!(
        "http://{}",
        common::serve(Gateway::new(config, Arc::new(registry)).unwrap()).await
    );
    let mut status = 0;
    for _ in 0..100 {
        status = client().get(format!("{gw}/svc/x")).send().await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
}

#[tokio::test]
async fn admin_endpoints_answer() {
    let up = upstream().await;
    let gw = gateway(GatewayConfig::default().route(route("/adm", &up.url()))).await;
    client().get(format!("{gw}/adm/x")).send().await.unwrap();
    let health = client().get(format!("{gw}/_keel/health")).send().await.unwrap();
    assert_eq!(json(health).await["status"], "ok");
    let routes = json(client().get(format!("{gw}/_keel/routes")).send().await.unwrap()).await;
    assert_eq!(routes[0]["prefix"], "/adm");
    assert_eq!(routes[0]["instances"][0]["breaker"], "closed");
    let metrics =
        client().get(format!("{gw}/_keel/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keel_gateway_requests_total"), "{metrics}");
    problem(client().get(format!("{gw}/_keel/nope")).send().await.unwrap(), 404).await;
}

#[tokio::test]
async fn cors_preflights_are_answered_by_the_gateway() {
    let up = upstream().await;
    let gw = gateway(
        GatewayConfig::default().cors(CorsConfig::permissive()).route(route("/c", &up.url())),
    )
    .await;
    let response = client()
        .request(reqwest::Method::OPTIONS, format!("{gw}/c/x"))
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let response = client()
        .get(format!("{gw}/c/x"))
        .header("origin", "http://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert!(up.seen.requests.lock().unwrap().len() == 1);
}

#[tokio::test]
async fn the_router_serves_the_same_gateway() {
    let up = upstream().await;
    let gateway =
        Gateway::without_registry(GatewayConfig::default().route(route("/x", &up.url()))).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = gateway.router().into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let body = json(client().get(format!("http://{addr}/x/y?z=1")).send().await.unwrap()).await;
    assert_eq!(body["path"], "/x/y");
    assert_eq!(body["headers"]["x-forwarded-for"][0], "127.0.0.1");
}

#[tokio::test]
async fn service_routes_without_a_registry_are_a_config_error() {
    let config = GatewayConfig::default().route(RouteConfig::to_service("/a", "a"));
    let error = Gateway::without_registry(config).unwrap_err();
    assert_eq!(error.key(), Some("routes[0].service"));
}
