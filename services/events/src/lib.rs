//! The event log over HTTP, mounted by the gateway under `/api/events`:
//!
//! - `GET /api/events?from=POSITION&limit=N&type=T&stream=ID`: a page of the global log
//!   in subscription order, as CloudEvents JSON, with the `next` cursor to ask for the
//!   following page (`?after=CURSOR`): paging by cursor never skips an event that
//!   commits late, as paging by position could. `from` answers only positions above
//!   it; give it again with `after` to keep that floor on the following pages (on
//!   PostgreSQL, subscription order is by writer's transaction, so an event at or
//!   below `from` can still come after the cursor);
//! - `GET /api/events/streams/{id}?from=VERSION&limit=N&direction=backward`: one stream;
//! - `GET /api/events/live?from=POSITION`: a live tail as Server-Sent Events (`id:` is
//!   the cursor, so a reconnecting client resumes with `Last-Event-ID`); without
//!   `from` it starts after the head, and never shows a position at or below either.
//!
//! A query parameter a route does not take is refused (400 problem+json naming it),
//! as is a value of the wrong type: a misspelt paging parameter would otherwise
//! answer the first page for ever.
//!
//! The log holds names and e-mail addresses: with identities verified (the service
//! kit's [`Caller`]), every read needs the [`READER_ROLE`] or `admin` (401 without an
//! identity, 403 without the role).
//!
//! # Layout
//!
//! - `lib.rs`: [`app`], the handlers and [`ApiDoc`] (their OpenAPI description).

// `keel::http::Problem` (the problem+json answer, built at most once per request)
// is the error type of the HTTP paths; boxing it would only add allocations.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{Stream, StreamExt as _};
use keel::core::codec::to_structured;
use keel::core::{Position, StreamId, StreamVersion};
use keel::http::openapi::Shared;
use keel::http::openapi::{BadRequest, Forbidden, NotFound, Unauthorized};
use keel::http::{Caller, Problem, Query};
use keel::store::{
    Cursor, Direction, EventLog, LogFilter, StoreError, SubscribeOptions, subscribe,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, OpenApi as _, ToSchema};

/// The largest page a client may ask for.
pub const MAX_PAGE: usize = 1000;

/// The role (besides `admin`) that may read the log when identities are verified.
pub const READER_ROLE: &str = "events:read";

/// The API's OpenAPI document: its routes as the gateway exposes them; [`app`]
/// serves it at `/openapi.json`, where the gateway fetches it to merge.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    paths(page, stream, live),
    tags((name = "events", description = "The event log: the global log paged by cursor, one stream, a live tail")),
    modifiers(&Shared),
)]
pub struct ApiDoc;

/// The routes, over `log`.
pub fn app(log: Arc<dyn EventLog>) -> Router {
    Router::new()
        .route("/api/events", get(page))
        .route("/api/events/streams/{id}", get(stream))
        .route("/api/events/live", get(live))
        .route(keel::http::openapi::SERVICE_PATH, keel::http::openapi::route(&ApiDoc::openapi()))
        .with_state(log)
}

/// The paging parameters of the global log. Any other parameter is a 400.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Only events at positions above this one (default 0: from the start). Give it
    /// again with `after` to keep the floor on the following pages.
    #[param(minimum = 0)]
    from: Option<u64>,
    /// The `next` cursor of the previous page: the events after it, in subscription
    /// order (`epoch.txid.position`, as this API hands it out).
    after: Option<String>,
    /// The page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Only events of this CloudEvents type (such as `order.placed`).
    #[serde(rename = "type")]
    ty: Option<String>,
    /// Only the events of this stream (such as `order-0192...`).
    stream: Option<String>,
}

/// A CloudEvent in the JSON format (CloudEvents 1.0): the attributes, the
/// extensions (`topic`, `position`, `streamversion`, `causationid`,
/// `correlationid`, ...) as members, and `data` (or `data_base64`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
struct CloudEvent {
    specversion: String,
    id: String,
    source: String,
    #[schema(rename = "type")]
    ty: String,
    #[schema(required = false)]
    subject: String,
    #[schema(required = false, format = DateTime)]
    time: String,
    #[schema(required = false)]
    datacontenttype: String,
    #[schema(required = false)]
    dataschema: String,
    /// The event's JSON data (an object in the example system).
    #[schema(required = false, value_type = Object)]
    data: serde_json::Value,
    #[schema(required = false)]
    data_base64: String,
}

/// A page of the global log in subscription order.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the log; ask for the following one with `after=<next>`", body = PageBody),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
    security((), ("bearer_jwt" = [])),
)]
async fn page(
    State(log): State<Arc<dyn EventLog>>,
    caller: Caller,
    Query(query): Query<PageQuery>,
) -> Result<Response, Problem> {
    caller.authorize_role(READER_ROLE)?;
    let limit = limit(query.limit)?;
    let cursor = start(&*log, query.from, query.after.as_deref()).await?;
    let filter = filter(query.ty, query.stream, query.from)?;
    let page = log.read_after(cursor, &filter, limit).await.map_err(internal)?;
    let events = page.events.iter().map(|e| raw_json(&e.event)).collect::<Result<Vec<_>, _>>()?;
    let head = log.head().await.map_err(internal)?;
    Ok(Json(PageBody { events, next: page.next.to_string(), head: head.0 }).into_response())
}

/// A page of the global log; events are embedded as stored, not re-encoded.
#[derive(Serialize, ToSchema)]
struct PageBody {
    /// The events, in subscription order.
    #[schema(value_type = Vec<CloudEvent>)]
    events: Vec<Box<RawValue>>,
    /// Pass as `after` for the next page (the same cursor when the page is empty).
    next: String,
    /// The log's highest position now.
    head: u64,
}

/// Events of one stream.
#[derive(Serialize, ToSchema)]
struct StreamBody<'a> {
    /// The stream's id.
    stream: &'a str,
    /// The stream's version now (its number of events).
    version: u64,
    /// The events read, in the direction asked for.
    #[schema(value_type = Vec<CloudEvent>)]
    events: Vec<Box<RawValue>>,
}

/// The reading of one stream. Any other parameter is a 400.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// The first version to read (versions start at 1; default: the first forward,
    /// the last backward).
    #[param(minimum = 0)]
    from: Option<u64>,
    /// How many events, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `forward` (default) or `backward`.
    #[param(pattern = "^(forward|backward)$")]
    direction: Option<String>,
}

/// One stream's events.
#[utoipa::path(
    get,
    path = "/api/events/streams/{id}",
    tag = "events",
    params(("id" = String, Path, description = "The stream's id, `<category>-<id>` (such as `order-0192...`)"), StreamQuery),
    responses(
        (status = 200, description = "The stream's events", body = StreamBody<'static>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
    security((), ("bearer_jwt" = [])),
)]
async fn stream(
    State(log): State<Arc<dyn EventLog>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<StreamQuery>,
) -> Result<Response, Problem> {
    caller.authorize_role(READER_ROLE)?;
    let stream = StreamId::new(id).map_err(|e| Problem::invalid_field("id", e.to_string()))?;
    let limit = limit(query.limit)?;
    let direction = match query.direction.as_deref() {
        None | Some("forward") => Direction::Forward,
        Some("backward") => Direction::Backward,
        Some(other) => {
            return Err(Problem::invalid_field(
                "direction",
                format!("`{other}`: expected forward or backward"),
            ));
        }
    };
    let from = match (query.from, direction) {
        (Some(v), _) => StreamVersion(v),
        (None, Direction::Forward) => StreamVersion(1),
        (None, Direction::Backward) => StreamVersion(u64::MAX),
    };
    let version = log.stream_version(&stream).await.map_err(internal)?;
    if version == StreamVersion::NONE {
        return Err(Problem::not_found(format!("no stream {stream}")));
    }
    let events = log.read_stream(&stream, from, direction, limit).await.map_err(internal)?;
    let events = events.iter().map(raw_json).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(StreamBody { stream: stream.as_str(), version: version.0, events }).into_response())
}

/// The filter of the live tail. Any other parameter is a 400.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LiveQuery {
    /// Only events at positions above this one (default: the head now, so only new
    /// events); `Last-Event-ID` resumes after a cursor instead.
    #[param(minimum = 0)]
    from: Option<u64>,
    /// Only events of this CloudEvents type.
    #[serde(rename = "type")]
    ty: Option<String>,
    /// Only the events of this stream.
    stream: Option<String>,
}

/// A live tail of the log as Server-Sent Events: each event's `id:` is its cursor,
/// `event:` its type and `data:` the CloudEvent JSON; a comment every 15 s keeps the
/// connection open. It never ends by itself.
#[utoipa::path(
    get,
    path = "/api/events/live",
    tag = "events",
    params(
        LiveQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor (the `id:` of the last event received)"),
    ),
    responses(
        (status = 200, description = "The tail, as Server-Sent Events", content_type = "text/event-stream", body = String),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
    security((), ("bearer_jwt" = [])),
)]
async fn live(
    State(log): State<Arc<dyn EventLog>>,
    caller: Caller,
    headers: HeaderMap,
    Query(query): Query<LiveQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    caller.authorize_role(READER_ROLE)?;
    let resume = headers
        .get("last-event-id")
        .map(|v| v.to_str().map_err(|_| Problem::invalid_field("Last-Event-ID", "not a cursor")))
        .transpose()?;
    // Without `from` or `Last-Event-ID`, the tail starts after the head: only new
    // events. The position floor holds for the whole tail (and a resumed one).
    let from = match (resume, query.from) {
        (_, Some(from)) => from,
        (Some(_), None) => 0,
        (None, None) => log.head().await.map_err(internal)?.0,
    };
    let cursor = match resume {
        Some(after) => parse_cursor(after, "Last-Event-ID")?,
        None => start(&*log, Some(from), None).await?,
    };
    let filter = filter(query.ty, query.stream, (from > 0).then_some(from))?;
    let pages = subscribe(log, cursor, filter, SubscribeOptions::default());
    let events = pages.flat_map(|page| {
        let items: Vec<Result<SseEvent, Infallible>> = match page {
            Ok(page) => page
                .events
                .iter()
                .map(|e| {
                    let data = String::from_utf8_lossy(&to_structured(&e.event)).into_owned();
                    Ok(SseEvent::default().id(e.cursor.to_string()).event(e.event.ty()).data(data))
                })
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "live tail failed");
                vec![Ok(SseEvent::default().event("error").data(error.to_string()))]
            }
        };
        futures::stream::iter(items)
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn limit(asked: Option<usize>) -> Result<usize, Problem> {
    match asked {
        None => Ok(100),
        Some(0) => Err(Problem::invalid_field("limit", "must be at least 1")),
        Some(n) if n > MAX_PAGE => {
            Err(Problem::invalid_field("limit", format!("must be at most {MAX_PAGE}")))
        }
        Some(n) => Ok(n),
    }
}

/// Where a read starts: after a cursor a previous page returned, or just before the
/// first event above a position (with the position floor of [`filter`]).
async fn start(
    log: &dyn EventLog,
    from: Option<u64>,
    after: Option<&str>,
) -> Result<Cursor, Problem> {
    match after {
        Some(after) => parse_cursor(after, "after"),
        None => log.cursor_before(Position(from.unwrap_or(0))).await.map_err(internal),
    }
}

/// A cursor this API could have handed out: `epoch.txid.position`, where the epoch
/// and the transaction id are never negative and the position at least -1 (just
/// before position 0, as PostgreSQL's `cursor_before` may answer).
fn parse_cursor(text: &str, field: &str) -> Result<Cursor, Problem> {
    text.parse::<Cursor>()
        .ok()
        .filter(|c| c.epoch >= 0 && c.txid >= 0 && c.position >= -1)
        .ok_or_else(|| Problem::invalid_field(field, "not a cursor returned by this API"))
}

/// The filter of a read; `from` keeps positions at or below it out (subscription order
/// is not position order on PostgreSQL, so the cursor alone does not).
fn filter(
    ty: Option<String>,
    stream: Option<String>,
    from: Option<u64>,
) -> Result<LogFilter, Problem> {
    let stream = stream
        .map(StreamId::new)
        .transpose()
        .map_err(|e| Problem::invalid_field("stream", e.to_string()))?;
    Ok(LogFilter {
        types: ty.into_iter().collect(),
        stream,
        after_position: from.map(Position),
        ..LogFilter::default()
    })
}

/// The event as CloudEvents JSON, embedded without re-encoding.
fn raw_json(event: &keel::core::CloudEvent) -> Result<Box<RawValue>, Problem> {
    let text = String::from_utf8(to_structured(event)).map_err(|_| Problem::internal())?;
    RawValue::from_string(text).map_err(|_| Problem::internal())
}

fn internal(error: StoreError) -> Problem {
    tracing::error!(%error, "event log read failed");
    Problem::internal()
}
