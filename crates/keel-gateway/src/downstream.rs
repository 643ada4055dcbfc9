//! The client's side of a proxied exchange: its request body on the way upstream
//! ([`ClientBody`], which tells a client fault from an upstream failure), its TCP
//! stream ([`ClientStream`], which turns hyper's bare automatic error answers into
//! problem documents) and the per-client connection count ([`ConnectionLimit`]).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use keel_service::Problem;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What became of a client's request body, as [`ClientBody`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// Malformed framing, or the connection ended before the body did.
    Broken,
    /// More bytes than the route's limit.
    TooLarge,
}

/// The error a [`ClientBody`] ends with when it outgrows its limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the route accepts")]
struct BodyTooLarge;

/// Shared between a [`ClientBody`] and the request that sent it upstream.
#[derive(Debug, Default)]
pub(crate) struct BodyWatch(AtomicU8);

/// The last poll of the client's body found nothing there yet.
const WAITING: u8 = 1;
const BROKEN: u8 = 2;
const TOO_LARGE: u8 = 4;

impl BodyWatch {
    /// Why the body failed, if it did.
    pub(crate) fn fault(&self) -> Option<BodyFault> {
        let state = self.0.load(Ordering::Relaxed);
        if state & TOO_LARGE != 0 {
            Some(BodyFault::TooLarge)
        } else if state & BROKEN != 0 {
            Some(BodyFault::Broken)
        } else {
            None
        }
    }

    /// Whether the upstream side was waiting for more of the body from the client (as
    /// opposed to the upstream not taking what it was given): a timeout then is the
    /// client's.
    pub(crate) fn is_waiting_for_client(&self) -> bool {
        self.0.load(Ordering::Relaxed) & WAITING != 0
    }

    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Relaxed);
    }
}

/// The client's request body, as sent upstream: counts bytes against the route's
/// limit (a chunked body has no length to check up front) and records in a
/// [`BodyWatch`] whether it broke, grew too large, or is being waited for.
///
/// Written by hand: `http_body_util::Limited` counts but cannot tell the request
/// afterwards whether a failed upstream call was the body's doing.
pub(crate) struct ClientBody {
    inner: Body,
    remaining: u64,
    watch: Arc<BodyWatch>,
}

impl ClientBody {
    pub(crate) fn new(inner: Body, limit: u64) -> (Self, Arc<BodyWatch>) {
        let watch = Arc::new(BodyWatch::default());
        (Self { inner, remaining: limit, watch: watch.clone() }, watch)
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                this.watch.set(WAITING);
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    if len > this.remaining {
                        this.watch.set(TOO_LARGE);
                        return Poll::Ready(Some(Err(axum::Error::new(BodyTooLarge))));
                    }
                    this.remaining -= len;
                }
                this.watch.set(0);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.watch.set(BROKEN);
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.watch.set(0);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection's stream. Everything passes through, except the bare answer
/// hyper writes by itself when it cannot parse a request (400, 414 or 431 with an
/// empty body, then it closes): that one is replaced by the same status with a
/// problem document, as every other error the gateway answers.
///
/// Written by hand because hyper has no hook for those answers. Recognising one is
/// safe: it is written as one piece at the start of a write, its head has nothing but
/// `content-length: 0`, `date` and `connection`, and every response the gateway
/// itself sends carries a `content-type` or an `x-request-id`. Checking costs one
/// comparison of the first bytes of each write.
pub(crate) struct ClientStream<S> {
    inner: S,
    /// A replacement being written, how much of it is out, and how many of hyper's
    /// bytes to report as written once it all is.
    replacing: Option<(Bytes, usize, usize)>,
}

impl<S> ClientStream<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner, replacing: None }
    }
}

impl<S: AsyncWrite + Unpin> ClientStream<S> {
    /// Writes the rest of the replacement; `Ready(n)` once it is out, `n` being the
    /// length of what hyper had asked to write.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((bytes, written, reported)) = &mut self.replacing else {
            return Poll::Ready(Ok(0));
        };
        while *written < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let reported = *reported;
        self.replacing = None;
        Poll::Ready(Ok(reported))
    }

    fn poll_write_checked(
        &mut self,
        cx: &mut Context<'_>,
        first: &[u8],
        total: usize,
        write: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.replacing.is_none()
            && first.len() == total
            && let Some(replacement) = problem_for_automatic_answer(first)
        {
            self.replacing = Some((replacement, 0, total));
        }
        if self.replacing.is_some() {
            return self.poll_replacement(cx);
        }
        write(Pin::new(&mut self.inner), cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_checked(cx, buf, buf.len(), |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        let total = bufs.iter().map(|b| b.len()).sum();
        self.get_mut()
            .poll_write_checked(cx, first, total, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replacing.is_some() {
            std::task::ready!(this.poll_replacement(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replacing.is_some() {
            std::task::ready!(this.poll_replacement(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The answers hyper writes by itself for requests it cannot parse, and what the
/// problem document says instead.
const AUTOMATIC: [(&[u8], &str); 3] = [
    (
        b"HTTP/1.1 400 Bad Request\r\n",
        "the request is not valid HTTP/1.1 (its request line, a header or its framing)",
    ),
    (b"HTTP/1.1 414 URI Too Long\r\n", "the request target is longer than the gateway accepts"),
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        "the request's headers are larger than the gateway accepts",
    ),
];

/// The replacement for `written` when it is one of hyper's automatic answers.
fn problem_for_automatic_answer(written: &[u8]) -> Option<Bytes> {
    // The cheap test first: nearly every write is a 2xx head or body bytes.
    if written.len() > 256 || !written.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let (status_line, detail) =
        AUTOMATIC.iter().find(|(status_line, _)| written.starts_with(status_line))?;
    let headers = written[status_line.len()..].strip_suffix(b"\r\n\r\n")?;
    let mut empty = false;
    let mut kept: Vec<&[u8]> = Vec::new();
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.eq_ignore_ascii_case(b"content-length: 0") {
            empty = true;
        } else if starts_with_ignore_case(line, b"date: ")
            || starts_with_ignore_case(line, b"connection: ")
        {
            kept.push(line);
        } else {
            return None;
        }
    }
    if !empty {
        return None;
    }
    let status = std::str::from_utf8(&status_line[9..12]).ok()?.parse::<u16>().ok()?;
    let status = http::StatusCode::from_u16(status).ok()?;
    let problem = Problem::new(status).with_detail(*detail);
    let body = serde_json::to_vec(&problem).ok()?;
    let mut out = Vec::with_capacity(written.len() + body.len() + 96);
    out.extend_from_slice(status_line);
    out.extend_from_slice(b"content-type: application/problem+json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    for line in kept {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Some(Bytes::from(out))
}

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Open connections per client IP, capped. Shared by every worker.
#[derive(Debug)]
pub(crate) struct ConnectionLimit {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl ConnectionLimit {
    pub(crate) fn new(max: u32) -> Arc<Self> {
        Arc::new(Self { max, open: Mutex::new(HashMap::new()) })
    }

    /// A slot for one more connection from `ip`, held until the connection ends;
    /// `None` when `ip` already has the most allowed.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut open = self.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot { limit: self.clone(), ip })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    limit: Arc<ConnectionLimit>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limit.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What a connection over the cap is told before it is closed.
pub(crate) fn too_many_connections() -> Bytes {
    let problem = Problem::new(http::StatusCode::TOO_MANY_REQUESTS)
        .with_detail("too many connections from this client");
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_answers_become_problems_and_nothing_else_does() {
        let bare = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\
            date: Sun, 06 Dec 2026 07:00:00 GMT\r\n\r\n";
        let replaced = problem_for_automatic_answer(bare).expect("replaced");
        let text = std::str::from_utf8(&replaced).expect("text");
        assert!(text.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{text}");
        assert!(text.contains("content-type: application/problem+json\r\n"), "{text}");
        assert!(text.contains("date: Sun, 06 Dec 2026 07:00:00 GMT\r\n"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{text}");
        let problem: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(problem["status"], 414);

        for kept in [
            // An upstream's own empty 400 carries the gateway's request id.
            &b"HTTP/1.1 400 Bad Request\r\nx-request-id: r\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ndate: x\r\n\r\n",
        ] {
            assert!(
                problem_for_automatic_answer(kept).is_none(),
                "{}",
                String::from_utf8_lossy(kept)
            );
        }
    }

    #[test]
    fn connection_slots_are_capped_per_ip_and_freed_on_drop() {
        let limit = ConnectionLimit::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = limit.admit(a).expect("first");
        let _second = limit.admit(a).expect("second");
        assert!(limit.admit(a).is_none());
        assert!(limit.admit(b).is_some());
        drop(first);
        assert!(limit.admit(a).is_some());
    }
}
