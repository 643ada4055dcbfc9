//! The upstream HTTP/1.1 client: a keep-alive pool whose connections have no task of
//! their own. The request's task drives its connection (hyper's `conn::http1`), first
//! while it waits for the response head and then from the response body, and the
//! body hands the connection back to the pool when it ends.
//!
//! Why not hyper-util's pooled client: it runs every connection in a task of its own,
//! hands each request and response across to it, and, for every response whose body
//! is still to stream, spawns one more task to put the connection back when it ends.
//! With one runtime per core all of that is bookkeeping without a purpose
//! (docs/benchmarks-gateway.md, fourth pass).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An idle connection older than this is closed. One an upstream times out sooner is
/// seen closed when it is taken out of the pool, or, if its close crosses the request
/// on the wire before anything was written, the request goes out on a new connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections are kept per upstream.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// Why an upstream call failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("the upstream base URL {0:?} is not an http://host[:port][/path] URL")]
    BaseUrl(String),
    #[error("connecting to the upstream: {0}")]
    Connect(#[source] std::io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// One upstream connection: the handle requests are sent through, and the connection
/// itself, which makes progress only while someone polls it.
struct Connection {
    sender: http1::SendRequest<Body>,
    driver: http1::Connection<TokioIo<TcpStream>, Body>,
}

impl Connection {
    /// Advances the connection's I/O; `true` once it has closed.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        self.driver.poll_without_shutdown(cx).is_ready()
    }

    /// Whether an idle connection can take a request now (it has not closed, and the
    /// previous exchange is over).
    fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        !self.drive(&mut cx) && matches!(self.sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }
}

struct Idle {
    connection: Box<Connection>,
    since: Instant,
}

/// One upstream instance, parsed once from its base URL, and its idle connections.
struct Upstream {
    base_url: Arc<str>,
    authority: Authority,
    /// The `Host` header sent to it.
    host: HeaderValue,
    /// The base URL's path without its trailing `/` (usually empty), put before every
    /// request's path.
    base_path: Arc<str>,
    idle: Vec<Idle>,
}

impl Upstream {
    fn parse(base_url: &str) -> Result<Self, UpstreamError> {
        let invalid = || UpstreamError::BaseUrl(base_url.to_owned());
        let uri: Uri = base_url.parse().map_err(|_| invalid())?;
        if uri.scheme() != Some(&Scheme::HTTP) || uri.query().is_some() {
            return Err(invalid());
        }
        let authority = uri.authority().cloned().ok_or_else(invalid)?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| invalid())?;
        Ok(Self {
            base_url: Arc::from(base_url),
            authority,
            host,
            base_path: uri.path().trim_end_matches('/').into(),
            idle: Vec::new(),
        })
    }

    /// Most recently used first: its upstream is least likely to have timed it out.
    fn checkout(&mut self) -> Option<Box<Connection>> {
        while let Some(mut entry) = self.idle.pop() {
            if entry.since.elapsed() < IDLE_TIMEOUT && entry.connection.is_reusable() {
                return Some(entry.connection);
            }
        }
        None
    }
}

/// What sending to an instance needs once the pool's lock is released.
struct Target {
    base_url: Arc<str>,
    authority: Authority,
    host: HeaderValue,
    base_path: Arc<str>,
}

/// Upstreams by base URL. A gateway talks to a handful of instances per worker, so a
/// list compared by the URL's bytes beats hashing it. An instance with no idle
/// connection is forgotten by the next sweep (instances come and go with discovery).
type Upstreams = Mutex<Vec<Upstream>>;

/// A keep-alive pool of upstream connections, by instance base URL. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct UpstreamPool {
    upstreams: Arc<Upstreams>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool").finish_non_exhaustive()
    }
}

impl UpstreamPool {
    /// A pool, with a task on the current runtime that closes idle connections that
    /// have expired or that the upstream closed, until the pool is dropped.
    pub(crate) fn new() -> Self {
        let pool = Self::default();
        let upstreams = Arc::downgrade(&pool.upstreams);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(upstreams) = upstreams.upgrade() else { return };
                sweep(&upstreams);
            }
        });
        pool
    }

    /// A connection to the instance at `base_url` (`http://host:port`, maybe with a
    /// path): an idle one from the pool, or a new one. An error here means nothing was
    /// sent, so the caller may send its request to another instance, whatever its
    /// method.
    pub(crate) async fn lease(&self, base_url: &str) -> Result<Lease<'_>, UpstreamError> {
        let (target, pooled) = self.with_upstream(base_url, |upstream| {
            let target = Target {
                base_url: upstream.base_url.clone(),
                authority: upstream.authority.clone(),
                host: upstream.host.clone(),
                base_path: upstream.base_path.clone(),
            };
            (target, upstream.checkout())
        })?;
        let (connection, reused) = pooled_or_new(pooled, &target.authority).await?;
        Ok(Lease { pool: self, target, connection, reused })
    }

    /// Runs `f` on the instance at `base_url`, known from now on if it was not.
    fn with_upstream<T>(
        &self,
        base_url: &str,
        f: impl FnOnce(&mut Upstream) -> T,
    ) -> Result<T, UpstreamError> {
        with_upstream(&self.upstreams, base_url, f)
    }
}

/// A connection to one instance, ready for one request.
pub(crate) struct Lease<'a> {
    pool: &'a UpstreamPool,
    target: Target,
    connection: Box<Connection>,
    /// Taken from the pool, so possibly closed by the upstream in the meantime.
    reused: bool,
}

impl Lease<'_> {
    /// Sends `req`, whose URI is the origin form (path and query) below the instance's
    /// base URL; its `Host` header is set to the instance's. The response body carries
    /// the connection and puts it back in the pool when it ends.
    pub(crate) async fn send(
        self,
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let Lease { pool, target, mut connection, mut reused } = self;
        if !target.base_path.is_empty() {
            let below = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let full = format!("{}{below}", target.base_path);
            *req.uri_mut() = full.parse().unwrap_or_else(|_| Uri::from_static("/"));
        }
        req.headers_mut().insert(http::header::HOST, target.host);
        loop {
            let mut response = std::pin::pin!(connection.sender.try_send_request(req));
            let mut open = true;
            let outcome = poll_fn(|cx| {
                if open && connection.drive(cx) {
                    // Closed: the response future now resolves with the reason.
                    open = false;
                }
                response.as_mut().poll(cx)
            })
            .await;
            match outcome {
                Ok(response) => {
                    return Ok(response.map(|body| UpstreamBody {
                        body,
                        connection: open.then_some(connection),
                        pool: Arc::downgrade(&pool.upstreams),
                        base_url: target.base_url,
                    }));
                }
                Err(mut error) => match error.take_message() {
                    // A pooled connection the upstream had closed, before anything
                    // was written: safe to send again, on another connection.
                    Some(unsent) if reused => {
                        req = unsent;
                        let pooled = pool.with_upstream(&target.base_url, Upstream::checkout)?;
                        (connection, reused) = pooled_or_new(pooled, &target.authority).await?;
                    }
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }
}

fn with_upstream<T>(
    upstreams: &Upstreams,
    base_url: &str,
    f: impl FnOnce(&mut Upstream) -> T,
) -> Result<T, UpstreamError> {
    let mut upstreams = lock(upstreams);
    let at = match upstreams.iter().position(|u| *u.base_url == *base_url) {
        Some(at) => at,
        None => {
            upstreams.push(Upstream::parse(base_url)?);
            upstreams.len() - 1
        }
    };
    Ok(f(&mut upstreams[at]))
}

fn lock(upstreams: &Upstreams) -> std::sync::MutexGuard<'_, Vec<Upstream>> {
    upstreams.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Closes the idle connections that expired or that the upstream closed, and forgets
/// the instances left with none (a connection coming back later makes its instance
/// known again).
fn sweep(upstreams: &Upstreams) {
    let mut upstreams = lock(upstreams);
    for upstream in upstreams.iter_mut() {
        upstream.idle.retain_mut(|entry| {
            entry.since.elapsed() < IDLE_TIMEOUT && entry.connection.is_reusable()
        });
    }
    upstreams.retain(|upstream| !upstream.idle.is_empty());
}

/// The pooled connection if there is one (`true`: it may have been closed meanwhile),
/// or a new one.
async fn pooled_or_new(
    pooled: Option<Box<Connection>>,
    authority: &Authority,
) -> Result<(Box<Connection>, bool), UpstreamError> {
    match pooled {
        Some(connection) => Ok((connection, true)),
        None => Ok((Box::new(connect(authority).await?), false)),
    }
}

async fn connect(authority: &Authority) -> Result<Connection, UpstreamError> {
    let port = authority.port_u16().unwrap_or(80);
    // An IPv6 literal comes bracketed, as in URIs.
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let stream = TcpStream::connect((host, port)).await.map_err(UpstreamError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (sender, driver) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
    Ok(Connection { sender, driver })
}

/// An upstream response body. It drives the connection it arrived on (when the
/// connection stays open after the head) and, once read to the end, puts the
/// connection back in the pool; dropped earlier, it closes the connection.
pub(crate) struct UpstreamBody {
    body: Incoming,
    connection: Option<Box<Connection>>,
    pool: Weak<Upstreams>,
    base_url: Arc<str>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(connection) = &mut this.connection
            && connection.drive(cx)
        {
            // Closed: whatever it read is in the body already.
            this.connection = None;
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if !self.body.is_end_stream() {
            return;
        }
        let (Some(connection), Some(pool)) = (self.connection.take(), self.pool.upgrade()) else {
            return;
        };
        // A connection that cannot take the next request yet is closed, not parked in
        // the pool where nothing would drive it. (The case in mind, a request body the
        // upstream answered early, hyper already ends by closing the connection, as
        // `a_connection_still_sending_its_request_body_is_not_pooled` sees; this is
        // the cheap guard for any other.)
        if !connection.sender.is_ready() {
            return;
        }
        let _ = with_upstream(&pool, &self.base_url, |upstream| {
            if upstream.idle.len() < MAX_IDLE_PER_UPSTREAM {
                upstream.idle.push(Idle { connection, since: Instant::now() });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use std::net::SocketAddr;

    use futures::StreamExt as _;
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// What the hand-written upstream does after answering a request.
    #[derive(Clone, Copy, PartialEq)]
    enum After {
        /// Waits for the next request on the same connection.
        KeepAlive,
        /// Closes the connection, without saying so in the response.
        Close,
    }

    /// An HTTP/1.1 upstream written by hand, so that tests decide exactly when
    /// connections close. Answers every request with `response`; counts connections.
    async fn upstream(response: &'static str, after: After) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if stream.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                            if after == After::Close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    fn get() -> Request<Body> {
        Request::get("/x").body(Body::empty()).expect("request")
    }

    async fn send(
        pool: &UpstreamPool,
        url: &str,
        req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        pool.lease(url).await?.send(req).await
    }

    async fn body_of(pool: &UpstreamPool, url: &str) -> Bytes {
        let response = send(pool, url, get()).await.expect("response");
        response.into_body().collect().await.expect("body").to_bytes()
    }

    const HELLO: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (url, accepted) = upstream(HELLO, After::KeepAlive).await;
        let pool = UpstreamPool::new();
        for _ in 0..5 {
            assert_eq!(body_of(&pool, &url).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_instance_the_sweep_forgot_takes_its_connection_back() {
        let (url, accepted) = upstream(HELLO, After::KeepAlive).await;
        let pool = UpstreamPool::new();
        let body = send(&pool, &url, get()).await.expect("response").into_body();
        // The only connection is in use: the sweep forgets the instance...
        sweep(&pool.upstreams);
        assert!(lock(&pool.upstreams).is_empty());
        // ...and the connection coming back makes it known again.
        assert_eq!(body.collect().await.expect("body").to_bytes(), "hello");
        assert_eq!(lock(&pool.upstreams).len(), 1);
        assert_eq!(body_of(&pool, &url).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let (url, accepted) = upstream(HELLO, After::Close).await;
        let pool = UpstreamPool::new();
        assert_eq!(body_of(&pool, &url).await, "hello");
        // Let the upstream's FIN arrive: the pooled connection must be seen closed.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(body_of(&pool, &url).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_upstream_saying_connection_close_is_not_pooled() {
        let response = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello";
        let (url, accepted) = upstream(response, After::KeepAlive).await;
        let pool = UpstreamPool::new();
        assert_eq!(body_of(&pool, &url).await, "hello");
        assert_eq!(body_of(&pool, &url).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        // Chunked, and the last chunk never comes.
        let response = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
        let (url, accepted) = upstream(response, After::KeepAlive).await;
        let pool = UpstreamPool::new();
        let mut body = send(&pool, &url, get()).await.expect("response").into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "hello");
        drop(body);
        let mut second = send(&pool, &url, get()).await.expect("response").into_body();
        assert_eq!(
            second.frame().await.expect("a frame").expect("data").into_data().expect("data"),
            "hello"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the half-read connection was reused");
    }

    #[tokio::test]
    async fn a_connection_still_sending_its_request_body_is_not_pooled() {
        // The upstream answers as soon as it has the head; the body never ends.
        let (url, accepted) = upstream(HELLO, After::KeepAlive).await;
        let pool = UpstreamPool::new();
        let (alive, let_go) = tokio::sync::oneshot::channel::<()>();
        let endless = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from("abc"))])
            .chain(futures::stream::pending())
            .map(move |chunk| {
                let _held_until_the_body_is_dropped = &alive;
                chunk
            });
        let upload = Request::post("/x").body(Body::from_stream(endless)).expect("request");
        let response = send(&pool, &url, upload).await.expect("response");
        assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "hello");
        // Closed at once, not parked in the pool holding the client's body.
        tokio::time::timeout(Duration::from_secs(2), let_go)
            .await
            .expect("the unfinished request body is dropped with its connection")
            .expect_err("nothing is sent");
        assert_eq!(body_of(&pool, &url).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the busy connection was reused");
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        drop(listener);
        let error = send(&UpstreamPool::new(), &url, get()).await.expect_err("nothing listens");
        assert!(matches!(error, UpstreamError::Connect(_)), "{error:?}");
    }

    /// The request head the upstream at a fresh listener receives for `path` sent
    /// to `base_url(addr)`.
    async fn head_received(mut base_url: impl FnMut(SocketAddr) -> String, path: &str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.expect("read");
                seen.extend_from_slice(&buf[..n]);
            }
            stream.write_all(HELLO.as_bytes()).await.expect("write");
            String::from_utf8(seen).expect("text")
        });
        let request = Request::get(path)
            .header("host", "client.example")
            .body(Body::empty())
            .expect("request");
        let response =
            send(&UpstreamPool::new(), &base_url(addr), request).await.expect("response");
        assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "hello");
        server.await.expect("server").to_ascii_lowercase()
    }

    #[tokio::test]
    async fn the_host_header_is_the_instance_and_the_uri_its_origin_form() {
        let mut addr = None;
        let seen = head_received(
            |a| {
                addr = Some(a);
                format!("http://{a}")
            },
            "/a/b?c=d",
        )
        .await;
        let addr = addr.expect("called");
        assert!(seen.starts_with("get /a/b?c=d http/1.1\r\n"), "{seen}");
        assert!(seen.contains(&format!("host: {addr}\r\n")), "{seen}");
    }

    #[tokio::test]
    async fn a_base_url_path_goes_before_the_request_path() {
        let seen = head_received(|a| format!("http://{a}/base/"), "/a?c=d").await;
        assert!(seen.starts_with("get /base/a?c=d http/1.1\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn a_base_url_that_is_not_http_is_an_error() {
        for bad in ["https://127.0.0.1:1", "127.0.0.1:1", "http://127.0.0.1:1/?q"] {
            let error = send(&UpstreamPool::new(), bad, get()).await.expect_err(bad);
            assert!(matches!(error, UpstreamError::BaseUrl(_)), "{bad}: {error:?}");
        }
    }
}
