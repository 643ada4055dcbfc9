//! The abuse suite (issue 17's acceptance): a real `keel up` process, with auth off and
//! on, fed the classes of bad input an outside attack run tried, over raw sockets where
//! framing matters. Every answer must be a 4xx `application/problem+json` (never a 5xx,
//! never a hang; the one exception is RFC 9112's 501 for an unknown transfer coding), nothing may be written, client faults must not open a breaker, and
//! after 20,000 hostile requests the metrics page and the process's memory must stay
//! bounded.
//!
//! On SQLite in every tier; on Postgres (where NUL bytes and unique violations used to
//! answer 500) with the `integration` feature.
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const SECRET: &str = "abuse-suite-secret-0123456789";

/// A `keel up` process in a fresh directory, killed when dropped.
struct System {
    child: Child,
    dir: PathBuf,
    gateway: String,
    addr: String,
    http: reqwest::Client,
    auth: bool,
}

impl Drop for System {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl System {
    async fn start(auth: bool, env: &[(&str, String)]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("keel-abuse-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.join("keel-up.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
        command
            .arg("up")
            .current_dir(&dir)
            .env_remove("KEEL_DATABASE_URL")
            .env_remove("KEEL_BUS_URL")
            .env_remove("KEEL_CONSUL_URL")
            .env_remove("KEEL_JWT_SECRET")
            .env_remove("KEEL_IDENTITY_SECRET")
            .env("KEEL_GATEWAY_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if auth {
            command.env("KEEL_JWT_SECRET", SECRET);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start keel up");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let addr = format!("127.0.0.1:{port}");
        let mut system = Self { child, dir, gateway: format!("http://{addr}"), addr, http, auth };
        system.wait_ready().await;
        system
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        for path in ["/api/users/none", "/api/products/none", "/api/orders/none"] {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("keel up exited with {status}: {}", self.log());
                }
                let answered = self.http.get(format!("{}{path}", self.gateway)).send().await;
                if answered.is_ok_and(|r| r.status() == 404) {
                    break;
                }
                assert!(Instant::now() < deadline, "{path} never answered: {}", self.log());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("keel-up.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway)
    }

    /// A request with the given subject's bearer token when auth is on.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        as_subject: &str,
    ) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        if self.auth { request.bearer_auth(token(as_subject, &[])) } else { request }
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        if self.auth { request.bearer_auth(token("root", &["admin"])) } else { request }
    }

    /// The log's head position, read as an admin.
    async fn head(&self) -> u64 {
        let response =
            self.admin(reqwest::Method::GET, "/api/events?limit=1").send().await.unwrap();
        assert_eq!(response.status(), 200, "reading the log head");
        let body: Value = response.json().await.unwrap();
        body["head"].as_u64().unwrap_or(0)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn token(subject: &str, roles: &[&str]) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({ "sub": subject, "roles": roles, "exp": now + 600, "iat": now });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// What a raw exchange answered: the status and the head's lines.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
}

impl Raw {
    fn content_type(&self) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type").then(|| value.trim())
        })
    }
}

/// Sends `bytes` on a fresh connection (then half-closes it when `close_write`), and
/// reads the answer's head. A connection closed without an answer is status 0.
fn raw(addr: &str, bytes: &[u8], close_write: bool) -> Raw {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    // A server may answer (and close) before reading all of a large request.
    let _ = stream.write_all(bytes);
    if close_write {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buffer[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(error) => {
                assert!(!answer.is_empty(), "no answer: {error}");
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Raw { status, head }
}

/// Every class of malformed HTTP/1.1 the attack run tried, as raw bytes.
fn framing_cases(addr: &str) -> Vec<(&'static str, Vec<u8>, bool)> {
    let host = format!("Host: {addr}\r\n");
    let mut cases: Vec<(&'static str, Vec<u8>, bool)> = vec![
        (
            "malformed chunk size",
            format!("POST /api/users HTTP/1.1\r\n{host}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n").into_bytes(),
            true,
        ),
        (
            "body shorter than its Content-Length",
            format!("POST /api/users HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{{\"name\":").into_bytes(),
            true,
        ),
        ("no Host header", b"GET /api/users/x HTTP/1.1\r\n\r\n".to_vec(), false),
        (
            "two Host headers",
            format!("GET /api/users/x HTTP/1.1\r\n{host}Host: evil.example\r\n\r\n").into_bytes(),
            false,
        ),
        (
            "Transfer-Encoding gzip, chunked",
            format!("POST /api/users HTTP/1.1\r\n{host}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n").into_bytes(),
            false,
        ),
        (
            "Expect other than 100-continue",
            format!("POST /api/users HTTP/1.1\r\n{host}Content-Type: application/json\r\nExpect: the-unexpected\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes(),
            false,
        ),
        ("TRACE", format!("TRACE /api/users HTTP/1.1\r\n{host}\r\n").into_bytes(), false),
        (
            "Content-Length and Transfer-Encoding together",
            format!("POST /api/users HTTP/1.1\r\n{host}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes(),
            false,
        ),
        (
            "two different Content-Lengths",
            format!("POST /api/users HTTP/1.1\r\n{host}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}").into_bytes(),
            false,
        ),
        (
            "control byte in a header value",
            format!("GET /api/users/x HTTP/1.1\r\n{host}X-Bad: a\x01b\r\n\r\n").into_bytes(),
            false,
        ),
        (
            "header section too large",
            format!("GET /api/users/x HTTP/1.1\r\n{host}X-Big: {}\r\n\r\n", "a".repeat(200 * 1024)).into_bytes(),
            false,
        ),
        (
            "request target too long",
            format!("GET /api/users/{} HTTP/1.1\r\n{host}\r\n", "a".repeat(100 * 1024)).into_bytes(),
            false,
        ),
    ];
    let body = "x".repeat(3 * 1024 * 1024);
    cases.push((
        "body over the limit",
        format!("POST /api/users HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes(),
        false,
    ));
    cases
}

/// Bad requests over HTTP: (what, method, path, content type, body).
fn input_cases() -> Vec<(&'static str, &'static str, &'static str, &'static str, String)> {
    let json = "application/json";
    vec![
        (
            "NUL in a name",
            "POST",
            "/api/users",
            json,
            r#"{"name":"a\u0000b","email":"nul@example.com"}"#.into(),
        ),
        (
            "NUL in an e-mail",
            "POST",
            "/api/users",
            json,
            r#"{"name":"Nul","email":"n\u0000@example.com"}"#.into(),
        ),
        (
            "NUL in a product name",
            "POST",
            "/api/products",
            json,
            r#"{"name":"\u0000","price_cents":1,"stock":1}"#.into(),
        ),
        ("NUL in a path id", "GET", "/api/users/%00", json, String::new()),
        ("NUL in an order id", "GET", "/api/orders/%00", json, String::new()),
        ("NUL in a type filter", "GET", "/api/events?type=%00", json, String::new()),
        ("a cursor of negatives", "GET", "/api/events?after=-1.-1.-1", json, String::new()),
        (
            "duplicate JSON keys",
            "POST",
            "/api/users",
            json,
            r#"{"name":"A","name":"B","email":"dup@example.com"}"#.into(),
        ),
        (
            "an unknown field",
            "POST",
            "/api/users",
            json,
            r#"{"name":"A","email":"unknown@example.com","admin":true}"#.into(),
        ),
        (
            "a non-UTF-8 charset",
            "POST",
            "/api/users",
            "application/json; charset=iso-8859-1",
            r#"{"name":"A","email":"latin@example.com"}"#.into(),
        ),
        ("not JSON at all", "POST", "/api/users", json, "name=A".into()),
        ("a truncated document", "POST", "/api/users", json, r#"{"name":"A","email":"#.into()),
        ("an empty body", "POST", "/api/users", json, String::new()),
        (
            "no content type",
            "POST",
            "/api/users",
            "",
            r#"{"name":"A","email":"ct@example.com"}"#.into(),
        ),
        (
            "a text content type",
            "POST",
            "/api/users",
            "text/plain",
            r#"{"name":"A","email":"tp@example.com"}"#.into(),
        ),
        ("a missing field", "POST", "/api/users", json, r#"{"name":"A"}"#.into()),
        (
            "a wrong type",
            "POST",
            "/api/products",
            json,
            r#"{"name":"P","price_cents":"free","stock":1}"#.into(),
        ),
        (
            "a negative price",
            "POST",
            "/api/products",
            json,
            r#"{"name":"P","price_cents":-1,"stock":1}"#.into(),
        ),
        (
            "a huge stock",
            "POST",
            "/api/products",
            json,
            r#"{"name":"P","price_cents":1,"stock":1e300}"#.into(),
        ),
        (
            "a fractional stock",
            "POST",
            "/api/products",
            json,
            r#"{"name":"P","price_cents":1,"stock":1.5}"#.into(),
        ),
        (
            "an order with no items",
            "POST",
            "/api/orders",
            json,
            r#"{"user_id":"u","items":[]}"#.into(),
        ),
        (
            "an order of a zero quantity",
            "POST",
            "/api/orders",
            json,
            r#"{"user_id":"u","items":[{"product_id":"p","quantity":0}]}"#.into(),
        ),
        ("a JSON array", "POST", "/api/users", json, "[]".into()),
        (
            "deeply nested JSON",
            "POST",
            "/api/users",
            json,
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        ),
        ("a path with dot segments", "GET", "/api/users/../../etc/passwd", json, String::new()),
        ("an invented method", "FROB", "/api/users", json, String::new()),
        ("a method a route does not take", "DELETE", "/api/products", json, String::new()),
        ("an unknown route", "GET", "/api/nothing-here", json, String::new()),
    ]
}

fn is_problem(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| ct.starts_with("application/problem+json"))
}

/// Sends `what` through reqwest and checks the answer is a 4xx problem.
async fn expect_problem(response: reqwest::Response, what: &str, failures: &mut Vec<String>) {
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = response.text().await.unwrap_or_default();
    if !(400..500).contains(&status) || !is_problem(content_type.as_deref()) {
        failures.push(format!("{what}: {status} {content_type:?} {body:.200}"));
    }
}

async fn abuse(system: &System) {
    let mut failures = Vec::new();

    // Something to act on: Alice's user, a product, Alice's order.
    let alice = system
        .request(reqwest::Method::POST, "/api/users", "alice")
        .json(&json!({"name": "Alice", "email": format!("alice-{}@example.com", uuid::Uuid::now_v7().simple())}))
        .send()
        .await
        .unwrap();
    assert_eq!(alice.status(), 201, "{}", system.log());
    let alice: Value = alice.json().await.unwrap();
    let alice_id = alice["id"].as_str().unwrap().to_owned();
    let product = system
        .admin(reqwest::Method::POST, "/api/products")
        .json(&json!({"name": "Mug", "price_cents": 1250, "stock": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(product.status(), 201, "{}", system.log());
    let product: Value = product.json().await.unwrap();
    let product_id = product["id"].as_str().unwrap().to_owned();
    let order = system
        .request(reqwest::Method::POST, "/api/orders", "alice")
        .header("idempotency-key", "alice-order-1")
        .json(&json!({"user_id": alice_id, "items": [{"product_id": product_id, "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert!(matches!(order.status().as_u16(), 201 | 202), "{}", system.log());
    let order: Value = order.json().await.unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();

    // Let the order settle, so the head only moves if something bad is written.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response =
            system.request(reqwest::Method::GET, &format!("/api/orders/{order_id}"), "alice");
        let body: Value = response.send().await.unwrap().json().await.unwrap();
        if body["status"] != "pending" {
            break;
        }
        assert!(Instant::now() < deadline, "the order never settled: {}", system.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let head_before = system.head().await;

    // 1. Framing, over raw sockets, five times each (five was enough to open a breaker).
    for _ in 0..5 {
        for (what, bytes, close_write) in framing_cases(&system.addr) {
            let answer = raw(&system.addr, &bytes, close_write);
            // RFC 9112 6.1: a transfer coding the server does not know is a 501.
            let expected = if what.starts_with("Transfer-Encoding") { 501..502 } else { 400..500 };
            let ok = expected.contains(&answer.status) && is_problem(answer.content_type());
            if !ok {
                failures.push(format!("{what}: {} {:?}", answer.status, answer.content_type()));
            }
        }
    }

    // 2. Bad input over HTTP, three times each.
    for _ in 0..3 {
        for (what, method, path, content_type, body) in input_cases() {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = system.admin(method, path);
            if !content_type.is_empty() {
                request = request.header("content-type", content_type);
            }
            if !body.is_empty() {
                request = request.body(body);
            }
            match request.send().await {
                Ok(response) => expect_problem(response, what, &mut failures).await,
                Err(error) => failures.push(format!("{what}: no answer: {error}")),
            }
        }
    }

    // 3. Other people's resources and forged identities.
    if system.auth {
        let bob_cancels = system
            .request(reqwest::Method::POST, &format!("/api/orders/{order_id}/cancel"), "bob")
            .send()
            .await
            .unwrap();
        expect_problem(bob_cancels, "Bob cancels Alice's order", &mut failures).await;
        let bob_orders_for_alice = system
            .request(reqwest::Method::POST, "/api/orders", "bob")
            .json(
                &json!({"user_id": alice_id, "items": [{"product_id": product_id, "quantity": 1}]}),
            )
            .send()
            .await
            .unwrap();
        expect_problem(bob_orders_for_alice, "Bob orders for Alice", &mut failures).await;
        let bob_replays_alices_key = system
            .request(reqwest::Method::POST, "/api/orders", "bob")
            .header("idempotency-key", "alice-order-1")
            .json(
                &json!({"user_id": alice_id, "items": [{"product_id": product_id, "quantity": 1}]}),
            )
            .send()
            .await
            .unwrap();
        let status = bob_replays_alices_key.status().as_u16();
        let body: Value = bob_replays_alices_key.json().await.unwrap_or(Value::Null);
        if body["id"] == order_id.as_str() || status < 400 {
            failures.push(format!("Bob got Alice's stored answer: {status} {body}"));
        }
        let anonymous_log = system.http.get(system.url("/api/events")).send().await.unwrap();
        expect_problem(anonymous_log, "reading the log anonymously", &mut failures).await;
        let forged = [
            ("an alg=none token", {
                // {"alg":"none","typ":"JWT"}, the admin's claims, no signature.
                let claims = token("root", &["admin"]).split('.').nth(1).unwrap().to_owned();
                format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.")
            }),
            ("a token signed with another key", {
                let claims = json!({"sub": "root", "roles": ["admin"], "exp": 4_000_000_000u64});
                jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                    &claims,
                    &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret-at-all"),
                )
                .unwrap()
            }),
            ("a subject of 10 kB", token(&"s".repeat(10_000), &[])),
        ];
        for (what, token) in forged {
            let response = system
                .http
                .post(system.url("/api/products"))
                .bearer_auth(token)
                .json(&json!({"name": "Forged", "price_cents": 1, "stock": 1}))
                .send()
                .await
                .unwrap();
            expect_problem(response, what, &mut failures).await;
        }
        let spoofed = system
            .http
            .post(system.url("/api/products"))
            .header("x-keel-subject", "root")
            .header("x-keel-identity", "forged")
            .json(&json!({"name": "Spoofed", "price_cents": 1, "stock": 1}))
            .send()
            .await
            .unwrap();
        expect_problem(spoofed, "a client-sent identity", &mut failures).await;
    }

    let head_after = system.head().await;
    if head_after != head_before {
        failures.push(format!("bad input wrote {} event(s)", head_after - head_before));
    }

    // 4. No breaker was opened by any of it: every route still answers.
    let user = system
        .request(reqwest::Method::GET, &format!("/api/users/{alice_id}"), "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(user.status(), 200, "users after the attack: {}", system.log());
    let created = system
        .admin(reqwest::Method::POST, "/api/products")
        .json(&json!({"name": "After", "price_cents": 1, "stock": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "products after the attack: {}", system.log());

    // 5. A propagated header is bounded before it is stored.
    let tracestate =
        (0..64).map(|i| format!("k{i}=v{}", "x".repeat(100))).collect::<Vec<_>>().join(",");
    let traced = system
        .admin(reqwest::Method::POST, "/api/products")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("tracestate", tracestate)
        .json(&json!({"name": "Traced", "price_cents": 1, "stock": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 201);
    let last = system
        .admin(reqwest::Method::GET, "/api/events?limit=1000")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let stored =
        last["events"].as_array().unwrap().iter().rev().find(|e| e["type"] == "product.created");
    let stored_state = stored.and_then(|e| e["tracestate"].as_str()).unwrap_or_default();
    if stored_state.len() > 512 {
        failures.push(format!("a tracestate of {} bytes was stored", stored_state.len()));
    }

    assert!(
        failures.is_empty(),
        "{} answer(s) were wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// 20,000 hostile requests (invented methods, random paths and ids, random query
/// strings); then the metrics page and the process's memory must stay bounded.
async fn flood(system: &System) {
    let metrics = || async {
        system.http.get(system.url("/_keel/metrics")).send().await.unwrap().text().await.unwrap()
    };
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", system.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    // Warm up with the same mix, so what is measured is growth, not first use.
    let send_batch = |from: usize, to: usize| async move {
        let mut tasks = Vec::new();
        for worker in 0..16 {
            let http = system.http.clone();
            let gateway = system.gateway.clone();
            tasks.push(tokio::spawn(async move {
                let mut five_hundreds = 0;
                for i in (from + worker..to).step_by(16) {
                    let method = match i % 4 {
                        0 => format!("M{i}"),
                        1 => "GET".to_owned(),
                        2 => "POST".to_owned(),
                        _ => format!("X-{i}"),
                    };
                    let path = match i % 3 {
                        0 => format!("/api/users/{i}?q{i}={i}"),
                        1 => format!("/nowhere/{i}"),
                        _ => format!("/api/products/{i}/deeper/{i}"),
                    };
                    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                    if let Ok(response) =
                        http.request(method, format!("{gateway}{path}")).send().await
                        && response.status().is_server_error()
                    {
                        five_hundreds += 1;
                    }
                }
                five_hundreds
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        total
    };
    assert_eq!(send_batch(0, 2_000).await, 0, "5xx answers during the warm-up");
    let metrics_before = metrics().await.len();
    let rss_before = rss();
    assert_eq!(send_batch(2_000, 22_000).await, 0, "5xx answers to hostile requests");
    let metrics_after = metrics().await.len();
    let rss_after = rss();
    assert!(
        metrics_after <= metrics_before + 16 * 1024,
        "/_keel/metrics grew from {metrics_before} to {metrics_after} bytes"
    );
    assert!(
        rss_after <= rss_before + 64 * 1024 * 1024,
        "memory grew from {} to {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
}

async fn suite(auth: bool, env: &[(&str, String)]) {
    let system = System::start(auth, env).await;
    abuse(&system).await;
    flood(&system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abuse_sqlite_auth_off() {
    suite(false, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abuse_sqlite_auth_on() {
    suite(true, &[]).await;
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abuse_postgres_auth_on() {
    let database = keel_testkit::postgres::fresh_database("abuse").await;
    suite(true, &[("KEEL_DATABASE_URL", database)]).await;
}
