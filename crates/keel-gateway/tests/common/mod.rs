//! A loopback upstream that shows what reached it, and a gateway in front of it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use keel_gateway::{Gateway, GatewayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub const CHUNK: usize = 64 * 1024;

/// Byte `i` of every test stream: `i % 251`, so a shifted or dropped chunk shows.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| u8::try_from((offset + i) % 251).unwrap()).collect()
}

#[derive(Default)]
pub struct Seen {
    /// Headers of every request the upstream received, in order.
    pub requests: Mutex<Vec<http::HeaderMap>>,
    /// Notified when a `/first-chunk` upload's first bytes arrive.
    pub first_chunk: Notify,
    /// A `/stream-down` download waits for this before sending the rest.
    pub release_download: Notify,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts the upstream. Paths ending in:
/// - `/upload`: checks the body against [`pattern`], answers `ok <len>` or `mismatch at <n>`
/// - `/first-chunk`: as `/upload`, and notifies `seen.first_chunk` on the first bytes
/// - `/download`: streams `?n=` bytes of [`pattern`] in 64 KiB chunks
/// - `/stream-down`: one chunk, then waits for `seen.release_download`, then one more
/// - `/count`: reads the whole body, answers `ok <len>`
/// - `/mirror`: answers the request body as is, with the request's content type
/// - `/status/NNN`: that status; `/slow`: answers after 5 s
/// - `/hop`: answers with hop-by-hop headers of its own
/// - anything else: JSON with method, path, query and headers
pub async fn upstream() -> Upstream {
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new().fallback(handle).with_state(seen.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Upstream { addr, seen }
}

async fn handle(State(seen): State<Arc<Seen>>, req: Request) -> Response {
    seen.requests.lock().unwrap().push(req.headers().clone());
    let path = req.uri().path().to_owned();
    if path.ends_with("/upload") || path.ends_with("/first-chunk") {
        let notify = path.ends_with("/first-chunk");
        let mut stream = req.into_body().into_data_stream();
        let mut offset = 0u64;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { return text(400, "body error".into()) };
            if notify && offset == 0 && !chunk.is_empty() {
                seen.first_chunk.notify_one();
            }
            if chunk[..] != pattern(offset, chunk.len())[..] {
                return text(200, format!("mismatch at {offset}"));
            }
            offset += chunk.len() as u64;
        }
        return text(200, format!("ok {offset}"));
    }
    if path.ends_with("/download") {
        let n: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("n="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let chunks = (0..n.div_ceil(CHUNK as u64)).map(move |i| {
            let offset = i * CHUNK as u64;
            let len = usize::try_from((n - offset).min(CHUNK as u64)).unwrap();
            Ok::<_, std::io::Error>(Bytes::from(pattern(offset, len)))
        });
        return Response::builder()
            .header("content-type", "application/octet-stream")
            .body(Body::from_stream(futures::stream::iter(chunks)))
            .unwrap();
    }
    if path.ends_with("/stream-down") {
        let seen = seen.clone();
        let stream = async_stream(seen);
        return Response::new(Body::from_stream(stream));
    }
    if path.ends_with("/count") {
        // Reads the whole body before answering (400 if it breaks).
        return match req.into_body().collect().await {
            Ok(body) => text(200, format!("ok {}", body.to_bytes().len())),
            Err(_) => text(400, "body error".into()),
        };
    }
    if path.ends_with("/mirror") {
        let content_type = req.headers().get("content-type").cloned();
        let mut response = Response::new(req.into_body());
        if let Some(ct) = content_type {
            response.headers_mut().insert("content-type", ct);
        }
        return response;
    }
    if let Some(code) = path.rsplit_once("/status/").and_then(|(_, c)| c.parse::<u16>().ok()) {
        return text(code, "status as asked".into());
    }
    if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(5)).await;
        return text(200, "late".into());
    }
    if path.ends_with("/hop") {
        return Response::builder()
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-upstream-kept", "1")
            .body(Body::from("hop"))
            .unwrap();
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(value.to_str().unwrap_or("?").to_owned());
    }
    let body = serde_json::json!({
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "headers": headers,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn async_stream(seen: Arc<Seen>) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold(0u8, move |step| {
        let seen = seen.clone();
        async move {
            match step {
                0 => Some((Ok(Bytes::from_static(b"first;")), 1)),
                1 => {
                    seen.release_download.notified().await;
                    Some((Ok(Bytes::from_static(b"second")), 2))
                }
                _ => None,
            }
        }
    })
}

fn text(status: u16, body: String) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Body::from(body))
        .unwrap()
}

/// Serves `gateway` on a loopback port until the test ends.
pub async fn serve(gateway: Gateway) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gateway.serve(listener, std::future::pending()));
    addr
}

/// A gateway with static routes only, served on a loopback port; returns its base URL.
pub async fn gateway(config: GatewayConfig) -> String {
    format!("http://{}", serve(Gateway::without_registry(config).unwrap()).await)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Sends raw bytes and reads until the server closes (send `Connection: close`).
pub async fn raw(base: &str, request: &[u8]) -> String {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// What a raw exchange answered: the status and the head's lines, lower-cased names.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Asserts a problem document with `status`.
    pub fn assert_problem(&self, status: u16) {
        assert_eq!(self.status, status, "{}\r\n\r\n{}", self.head, self.body);
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{}", self.head);
        let body: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {}", self.body);
        });
        assert_eq!(body["status"], status);
    }
}

/// Sends `bytes` on a new connection, half-closes it when `close_write`, and reads one
/// answer (its head, and a body of the length it declares). A connection closed with
/// no answer is status 0.
pub async fn exchange(base: &str, bytes: &[u8], close_write: bool) -> RawAnswer {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = stream.write_all(bytes).await;
    if close_write {
        let _ = stream.shutdown().await;
    }
    read_answer(&mut stream).await
}

/// Reads one answer from `stream` (bounded by 20 s, so that a hang fails the test).
pub async fn read_answer(stream: &mut TcpStream) -> RawAnswer {
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0usize);
                if seen.len() >= end + 4 + length {
                    return (
                        head,
                        String::from_utf8_lossy(&seen[end + 4..end + 4 + length]).into_owned(),
                    );
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    return (String::from_utf8_lossy(&seen).into_owned(), String::new());
                }
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    let (head, body) =
        tokio::time::timeout(Duration::from_secs(20), read).await.expect("no answer within 20 s");
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    RawAnswer { status, head, body }
}

/// A port nothing listens on.
pub async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

pub async fn json(response: reqwest::Response) -> serde_json::Value {
    response.json().await.unwrap()
}

pub async fn problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    body
}

pub async fn collect(body: Body) -> Bytes {
    body.collect().await.unwrap().to_bytes()
}
