//! The upstream HTTP/1.1 client: a small keep-alive pool per upstream authority of
//! `hyper::client::conn::http1` connections, each driven by the task of the request
//! that uses it (no connection task, no hand-off between tasks).
//!
//! Hand-written rather than hyper-util's legacy `Client`: that client hands every
//! request to a spawned per-connection task through a channel and spawns another task
//! per request to put the connection back in its pool, so one proxied request wakes
//! three tasks, often on different worker threads; at proxy rates that plumbing was
//! most of the gateway's cost. Here the request's task (the one hyper's server runs the
//! handler in) polls the upstream connection itself, while waiting for the response head
//! and then from the response body ([`PooledBody`]). The connection goes back to its
//! pool when the response body ends, and a pooled connection that turns out to be
//! closed before the request was written is replaced by a fresh one, as the legacy
//! client did.

use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::Body as _;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service as _;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections kept per upstream; more are closed when they come back.
const MAX_IDLE_PER_UPSTREAM: usize = 256;
/// Idle connections older than this are closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub(crate) struct UpstreamClient {
    connector: HttpConnector,
    pools: Arc<Pools>,
}

#[derive(Default)]
struct Pools {
    by_authority: Mutex<HashMap<Authority, Pool>>,
}

struct Pool {
    /// `Host` for requests to this upstream (port only when not 80, as hyper-util does).
    host: HeaderValue,
    /// Most recently used last.
    idle: VecDeque<Upstream>,
}

/// One upstream connection: the request side and the connection state machine, which
/// whoever uses the connection polls (nothing polls an idle one).
struct Upstream {
    sender: SendRequest<Body>,
    connection: Pin<Box<Connection<TokioIo<TcpStream>, Body>>>,
    idle_since: Instant,
}

impl Upstream {
    /// Drives the connection; `true` once it has ended (then it must not be polled again).
    fn poll_connection(&mut self, cx: &mut Context<'_>) -> bool {
        match self.connection.as_mut().poll(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "upstream connection ended with an error");
                true
            }
            Poll::Pending => false,
        }
    }
}

impl UpstreamClient {
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        Self { connector, pools: Arc::default() }
    }

    /// Sends `req` (absolute `http://` URI) to its upstream; the response body streams
    /// from the upstream connection, which returns to the pool when the body ends.
    pub(crate) async fn request(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, BoxError> {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        if parts.scheme.as_ref() != Some(&Scheme::HTTP) {
            return Err("only http:// upstreams are supported".into());
        }
        let authority = parts.authority.take().ok_or("the upstream URI has no authority")?;
        parts.scheme = None;
        *req.uri_mut() = Uri::from_parts(parts)?;
        let host = self.pools.host(&authority)?;
        req.headers_mut().insert(header::HOST, host);
        loop {
            let (mut upstream, reused) = match self.pools.checkout(&authority).await {
                Some(upstream) => (upstream, true),
                None => (self.connect(&authority).await?, false),
            };
            let mut sent = pin!(upstream.sender.try_send_request(req));
            let mut ended = false;
            let result = poll_fn(|cx| {
                if !ended && upstream.poll_connection(cx) {
                    ended = true;
                }
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(response) => {
                    let pools = Arc::clone(&self.pools);
                    return Ok(response.map(|inner| PooledBody {
                        inner,
                        ended: false,
                        pools,
                        authority,
                        upstream: (!ended).then_some(upstream),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection closed before the request went out: not
                    // sent, so it is safe to send again on another connection.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Upstream, BoxError> {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query("/")
            .build()?;
        let io: TokioIo<TcpStream> = self.connector.clone().call(uri).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        Ok(Upstream { sender, connection: Box::pin(connection), idle_since: Instant::now() })
    }
}

impl Pools {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Authority, Pool>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.by_authority.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn host(&self, authority: &Authority) -> Result<HeaderValue, BoxError> {
        let mut pools = self.lock();
        if let Some(pool) = pools.get(authority) {
            return Ok(pool.host.clone());
        }
        let host = match authority.port_u16() {
            Some(port) if port != 80 => {
                HeaderValue::from_str(&format!("{}:{port}", authority.host()))?
            }
            _ => HeaderValue::from_str(authority.host())?,
        };
        pools.insert(authority.clone(), Pool { host: host.clone(), idle: VecDeque::new() });
        Ok(host)
    }

    /// The most recently used idle connection that is still open and accepts a
    /// request after one poll (one still busy finishing an earlier exchange, e.g. an
    /// upload the upstream answered early, is closed rather than waited for).
    async fn checkout(&self, authority: &Authority) -> Option<Upstream> {
        loop {
            let mut upstream = self.lock().get_mut(authority)?.idle.pop_back()?;
            if upstream.idle_since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            let ready = poll_fn(|cx| {
                if upstream.poll_connection(cx) {
                    return Poll::Ready(false);
                }
                Poll::Ready(matches!(upstream.sender.poll_ready(cx), Poll::Ready(Ok(()))))
            })
            .await;
            if ready {
                return Some(upstream);
            }
        }
    }

    fn put_back(&self, authority: &Authority, mut upstream: Upstream) {
        let now = Instant::now();
        upstream.idle_since = now;
        let mut pools = self.lock();
        if let Some(pool) = pools.get_mut(authority) {
            while pool.idle.front().is_some_and(|u| now.duration_since(u.idle_since) > IDLE_TIMEOUT)
            {
                pool.idle.pop_front();
            }
            if pool.idle.len() < MAX_IDLE_PER_UPSTREAM {
                pool.idle.push_back(upstream);
            }
        }
    }
}

/// An upstream response body. Polling it also drives its upstream connection; once it
/// has been read to its end, the connection goes back to the pool (dropped earlier,
/// the connection is closed).
pub(crate) struct PooledBody {
    inner: Incoming,
    ended: bool,
    pools: Arc<Pools>,
    authority: Authority,
    /// `None` once the connection has ended.
    upstream: Option<Upstream>,
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(upstream) = this.upstream.as_mut()
            && upstream.poll_connection(cx)
        {
            this.upstream = None;
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if (self.ended || self.inner.is_end_stream())
            && let Some(upstream) = self.upstream.take()
        {
            self.pools.put_back(&self.authority, upstream);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An upstream that answers every request on a connection with `hello`, then
    /// closes the connection when `close_after_one` is set; counts connections.
    async fn upstream(close_after_one: bool) -> (Authority, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let closed = Arc::new(AtomicUsize::new(0));
        let closed_counter = Arc::clone(&closed);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let closed = Arc::clone(&closed_counter);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&seen[..end]).to_string();
                            seen.drain(..end + 4);
                            let host = head
                                .lines()
                                .find_map(|l| l.strip_prefix("host: "))
                                .unwrap_or("none")
                                .to_owned();
                            let body = format!("hello {host}");
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            stream.write_all(reply.as_bytes()).await.unwrap();
                            if close_after_one {
                                drop(stream);
                                closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                });
            }
        });
        (authority, accepted, closed)
    }

    async fn get(client: &UpstreamClient, authority: &Authority) -> String {
        let req = Request::get(format!("http://{authority}/x")).body(Body::empty()).unwrap();
        let response = client.request(req).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn connections_are_reused_and_carry_the_host() {
        let (authority, accepted, _) = upstream(false).await;
        let client = UpstreamClient::new();
        for _ in 0..3 {
            assert_eq!(get(&client, &authority).await, format!("hello {authority}"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_replaced() {
        let (authority, accepted, closed) = upstream(true).await;
        let client = UpstreamClient::new();
        assert_eq!(get(&client, &authority).await, format!("hello {authority}"));
        // Wait until the upstream has closed the pooled connection (nothing polls an
        // idle connection, so the gateway only finds out when it takes it again).
        while closed.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(get(&client, &authority).await, format!("hello {authority}"));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn non_http_upstreams_are_refused() {
        let client = UpstreamClient::new();
        let req = Request::get("https://127.0.0.1:1/x").body(Body::empty()).unwrap();
        assert!(client.request(req).await.is_err());
    }
}
