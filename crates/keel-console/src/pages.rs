//! One handler per page and action. Pages read query parameters (an unknown one is a
//! 400 naming it); actions are form posts answered with a redirect back to the page,
//! which shows what was done.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, NaiveDateTime, Utc};
use http::StatusCode;
use keel_core::codec::to_structured;
use keel_core::{CloudEvent, DeadLetterId, Payload, Position, StreamId, StreamVersion};
use keel_service::Problem;
use keel_store::{Caused, Direction, LogEvent, LogQuery};

use crate::html::{button, esc, link, page, table, url};
use crate::{BASE, Console, GroupRef};

/// Rows per page of events.
const PAGE: usize = 100;

type Shared = Arc<Console>;
type Params = Query<HashMap<String, String>>;

pub(crate) fn router(console: Shared) -> Router {
    let at = |path: &str| format!("{BASE}{path}");
    // The actions change state: a cross-site form post (CSRF) is refused, since
    // loopback clients need no token and a browser on the operator's machine is one.
    let actions = Router::new()
        .route(&at("/dead-letters/retry"), post(retry_dead_letter))
        .route(&at("/dead-letters/retry-all"), post(retry_all_dead_letters))
        .route(&at("/dead-letters/purge"), post(purge_dead_letters))
        .route(&at("/projections/rebuild"), post(rebuild_projection))
        .route(&at("/relays/retry"), post(retry_relay_dead_letter))
        .route(&at("/relays/purge"), post(purge_relay_dead_letters))
        .route_layer(axum::middleware::from_fn(same_origin_only));
    Router::new()
        .route("/", get(home))
        .route("/_keel", get(home))
        .route(BASE, get(home))
        .route(&at("/"), get(overview))
        .route(&at("/streams"), get(streams))
        .route(&at("/stream"), get(stream))
        .route(&at("/log"), get(log))
        .route(&at("/event"), get(event))
        .route(&at("/groups"), get(groups))
        .route(&at("/dead-letters"), get(dead_letters))
        .route(&at("/projections"), get(projections))
        .route(&at("/relays"), get(relays))
        .route(&at("/api/lineage"), get(lineage_json))
        .merge(actions)
        .with_state(console)
}

/// Refuses a request a browser made from another site: `Sec-Fetch-Site` other than
/// `same-origin` or `none` (typed or bookmarked); from an older browser without it, an
/// `Origin` whose host is not the request's `Host` (a proxy that rewrites `Host` is
/// fine for current browsers, which send `Sec-Fetch-Site`). Clients that send neither
/// header (curl, scripts) are not browsers and pass.
async fn same_origin_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let cross_site = match (text("sec-fetch-site"), text("origin")) {
        (Some(site), _) => site != "same-origin" && site != "none",
        (None, Some(origin)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            text("host") != Some(origin_host)
        }
        (None, None) => false,
    };
    if cross_site {
        return Problem::new(StatusCode::FORBIDDEN)
            .with_detail("a console action must come from the console's own pages (cross-site request refused)")
            .into_response();
    }
    next.run(request).await
}

/// `/`, `/_keel` and `/_keel/console` lead to the overview.
async fn home() -> Redirect {
    Redirect::to(&format!("{BASE}/"))
}

/// Why a page could not be shown: the caller's fault (a problem naming the field), or
/// the store's or bus's (logged; the page says which part failed).
enum Failure {
    Caller(Problem),
    Backend(&'static str, String),
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Self::Caller(problem) => problem.into_response(),
            Self::Backend(what, error) => {
                tracing::warn!(%error, "console: {what} failed");
                Problem::new(StatusCode::BAD_GATEWAY)
                    .with_detail(format!("{what} failed: see the log"))
                    .into_response()
            }
        }
    }
}

type PageResult = Result<Html<String>, Failure>;

fn store_failed(error: impl std::fmt::Display) -> Failure {
    Failure::Backend("reading the store", error.to_string())
}

fn bus_failed(error: impl std::fmt::Display) -> Failure {
    Failure::Backend("asking the bus", error.to_string())
}

/// The query parameters, refusing any not in `allowed` (a pager that misspells one
/// would otherwise loop).
fn params<'a>(
    Query(params): &'a Params,
    allowed: &[&str],
) -> Result<&'a HashMap<String, String>, Failure> {
    match params.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(Failure::Caller(Problem::invalid_field(
            unknown.clone(),
            format!("unknown parameter (this page takes: {})", allowed.join(", ")),
        ))),
        None => Ok(params),
    }
}

/// A non-empty parameter or form field.
fn field<'a>(values: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    values.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn required<'a>(values: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Failure> {
    field(values, name).ok_or_else(|| Failure::Caller(Problem::invalid_field(name, "is required")))
}

fn number(values: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Failure> {
    field(values, name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                Failure::Caller(Problem::invalid_field(name, "must be a whole number"))
            })
        })
        .transpose()
}

/// A time: RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` in UTC (what a browser's
/// `datetime-local` input sends).
fn time(values: &HashMap<String, String>, name: &str) -> Result<Option<DateTime<Utc>>, Failure> {
    let Some(text) = field(values, name) else { return Ok(None) };
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|t| Some(t.and_utc()))
        .ok_or_else(|| {
            Failure::Caller(Problem::invalid_field(
                name,
                "must be a time such as 2026-12-06T09:00:00Z (UTC without a zone)",
            ))
        })
}

/// The `notice` an action left for the page it redirects to.
fn notice(values: &HashMap<String, String>) -> String {
    field(values, "notice")
        .map(|n| format!("<p class=\"ok\" id=\"notice\">{}</p>", esc(n)))
        .unwrap_or_default()
}

fn back(path: &str, query: &[(&str, &str)]) -> Response {
    Redirect::to(&url(path, query)).into_response()
}

fn event_link(event: &CloudEvent) -> String {
    link(&url("/event", &[("id", event.id())]), event.ty())
}

fn stream_link(stream: &str) -> String {
    link(&url("/stream", &[("id", stream)]), stream)
}

fn time_of(event: &CloudEvent) -> String {
    event.time().map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()).unwrap_or_default()
}

/// Rows of events: position, time, stream@version, type (a link to the event), id.
fn event_rows(events: &[LogEvent]) -> Vec<Vec<String>> {
    events
        .iter()
        .map(|e| {
            let stream = e.event.subject().unwrap_or("-");
            vec![
                e.cursor.position.to_string(),
                esc(&time_of(&e.event)),
                format!("{}@{}", stream_link(stream), e.event.stream_version().map_or(0, |v| v.0)),
                event_link(&e.event),
                format!("<code>{}</code>", esc(e.event.id())),
            ]
        })
        .collect()
}

const EVENT_HEADERS: [&str; 5] = ["position", "time", "stream@version", "type", "id"];

async fn overview(State(console): State<Shared>, query: Params) -> PageResult {
    params(&query, &[])?;
    let log = &console.log;
    let head = log.head().await.map_err(store_failed)?;
    let categories = log.categories().await.map_err(store_failed)?;
    let checkpoints = log.checkpoints().await.map_err(store_failed)?;
    let count = |prefix: &str| checkpoints.iter().filter(|(n, _, _)| n.starts_with(prefix)).count();
    let rows = vec![
        vec!["store".into(), esc(&console.store)],
        vec!["bus".into(), esc(&console.bus)],
        vec!["head".into(), format!("position {head}")],
        vec![link(&url("/streams", &[]), "stream categories"), categories.len().to_string()],
        vec![link(&url("/groups", &[]), "consumer groups (log bus)"), count("bus:").to_string()],
        vec![link(&url("/projections", &[]), "projections"), count("projection:").to_string()],
        vec![link(&url("/relays", &[]), "relays"), count("relay:").to_string()],
    ];
    Ok(page("Overview", &table(&["", ""], &rows, &[])))
}

async fn streams(State(console): State<Shared>, query: Params) -> PageResult {
    let query = params(&query, &["category"])?;
    match field(query, "category") {
        None => {
            let categories = console.log.categories().await.map_err(store_failed)?;
            let rows: Vec<Vec<String>> = categories
                .iter()
                .map(|c| {
                    vec![
                        link(&url("/streams", &[("category", c.name.as_str())]), &c.name),
                        c.streams.to_string(),
                        c.events.to_string(),
                    ]
                })
                .collect();
            let body = if rows.is_empty() {
                "<p class=\"muted\">The log is empty.</p>".to_owned()
            } else {
                table(&["category", "streams", "events"], &rows, &[1, 2])
            };
            Ok(page("Streams by category", &body))
        }
        Some(category) => {
            let streams = console.log.streams(Some(category), 1000).await.map_err(store_failed)?;
            let rows: Vec<Vec<String>> = streams
                .iter()
                .map(|s| {
                    vec![stream_link(&s.stream), s.version.to_string(), s.last_position.to_string()]
                })
                .collect();
            let mut body = table(&["stream", "version", "last position"], &rows, &[1, 2]);
            if streams.len() == 1000 {
                body.push_str("<p class=\"muted\">The first 1000 streams.</p>");
            }
            Ok(page(&format!("Streams of {category}"), &body))
        }
    }
}

async fn stream(State(console): State<Shared>, query: Params) -> PageResult {
    let query = params(&query, &["id", "from"])?;
    let id = required(query, "id")?;
    let stream = StreamId::new(id)
        .map_err(|e| Failure::Caller(Problem::invalid_field("id", e.to_string())))?;
    let from = number(query, "from")?.unwrap_or(1);
    let events = console
        .log
        .read_stream(&stream, StreamVersion(from), Direction::Forward, PAGE)
        .await
        .map_err(store_failed)?;
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.stream_version().map_or(0, |v| v.0).to_string(),
                e.position().map_or(0, |p| p.0).to_string(),
                esc(&time_of(e)),
                event_link(e),
                format!("<code>{}</code>", esc(e.id())),
            ]
        })
        .collect();
    let mut body = table(&["version", "position", "time", "type", "id"], &rows, &[0, 1]);
    if events.is_empty() {
        body = "<p class=\"muted\">No events (from this version on).</p>".to_owned();
    }
    if events.len() == PAGE {
        let next = (from + PAGE as u64).to_string();
        body.push_str(&link(&url("/stream", &[("id", id), ("from", next.as_str())]), "next page"));
    }
    Ok(page(&format!("Stream {id}"), &body))
}

async fn log(State(console): State<Shared>, query: Params) -> PageResult {
    let query = params(&query, &["type", "since", "from"])?;
    let ty = field(query, "type").unwrap_or_default();
    let since = time(query, "since")?;
    let from = number(query, "from")?.unwrap_or(0);
    let types = if ty.is_empty() { Vec::new() } else { vec![ty.to_owned()] };
    let log_query =
        LogQuery { from: Position(from), since, types, limit: PAGE, ..LogQuery::default() };
    let events = console.log.read_all(&log_query).await.map_err(store_failed)?;
    let since_text = field(query, "since").unwrap_or_default();
    let mut body = format!(
        "<form class=\"filters\" method=\"get\" action=\"{}\">\
         <label>type <input name=\"type\" id=\"filter-type\" value=\"{}\" placeholder=\"order.placed\"></label>\
         <label>since <input name=\"since\" id=\"filter-since\" value=\"{}\" placeholder=\"2026-12-06T09:00:00Z\"></label>\
         <label>after position <input name=\"from\" size=\"8\" value=\"{}\"></label>\
         <button type=\"submit\" id=\"filter\">Filter</button></form>",
        esc(&url("/log", &[])),
        esc(ty),
        esc(since_text),
        if from == 0 { String::new() } else { from.to_string() }
    );
    if events.is_empty() {
        body.push_str("<p class=\"muted\">No events match.</p>");
    } else {
        body.push_str(&table(&EVENT_HEADERS, &event_rows(&events), &[0]));
    }
    if let (true, Some(last)) = (events.len() == PAGE, events.last()) {
        let next = last.cursor.position.to_string();
        let query = [("type", ty), ("since", since_text), ("from", next.as_str())];
        let query: Vec<(&str, &str)> = query.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        body.push_str(&link(&url("/log", &query), "next page"));
    }
    Ok(page("Log", &body))
}

/// A lineage node as a list item: the event (linked) and what it caused.
fn caused_tree(nodes: &[Caused]) -> String {
    if nodes.is_empty() {
        return String::new();
    }
    let mut html = String::from("<ul class=\"tree\">");
    for node in nodes {
        let _ =
            write!(html, "<li>{}{}</li>", lineage_label(&node.event), caused_tree(&node.caused));
    }
    html.push_str("</ul>");
    html
}

fn lineage_label(event: &LogEvent) -> String {
    let e = &event.event;
    format!(
        "{} <span class=\"muted\">{}@{} · #{} · {}</span>",
        event_link(e),
        esc(e.subject().unwrap_or("-")),
        e.stream_version().map_or(0, |v| v.0),
        event.cursor.position,
        esc(&time_of(e))
    )
}

async fn event(State(console): State<Shared>, query: Params) -> PageResult {
    let query = params(&query, &["id"])?;
    let id = required(query, "id")?;
    let lineage =
        keel_store::lineage(&*console.log, id).await.map_err(store_failed)?.ok_or_else(|| {
            Failure::Caller(
                Problem::new(StatusCode::NOT_FOUND).with_detail(format!("no event {id}")),
            )
        })?;
    let e = &lineage.event.event;
    let mut rows = vec![
        vec!["id".into(), format!("<code>{}</code>", esc(e.id()))],
        vec!["type".into(), esc(e.ty())],
        vec!["source".into(), esc(e.source())],
        vec!["stream".into(), stream_link(e.subject().unwrap_or("-"))],
        vec!["topic".into(), esc(&lineage.event.topic)],
        vec!["time".into(), esc(&time_of(e))],
    ];
    for (name, value) in e.extensions() {
        rows.push(vec![esc(name), format!("<code>{}</code>", esc(&value.to_string()))]);
    }
    let data = match e.data() {
        Some(bytes) if e.data_is_json() => serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned()),
        Some(bytes) => format!("({} bytes of {})", bytes.len(), e.datacontenttype().unwrap_or("?")),
        None => "(no data)".to_owned(),
    };
    let mut body = table(&["attribute", "value"], &rows, &[]);
    let _ = write!(body, "<h2>Data</h2><pre id=\"data\">{}</pre>", esc(&data));

    body.push_str("<h2>Causal lineage</h2><div id=\"lineage\">");
    let mut tree = format!(
        "<li><span class=\"self\">{}</span>{}</li>",
        lineage_label(&lineage.event),
        caused_tree(&lineage.caused)
    );
    for cause in lineage.causes.iter().rev() {
        tree = format!("<li>{}<ul class=\"tree\">{tree}</ul></li>", lineage_label(cause));
    }
    if let Some(origin) = &lineage.origin {
        tree = format!(
            "<li>origin <code>{}</code> <span class=\"muted\">(a request or message outside the log)</span><ul class=\"tree\">{tree}</ul></li>",
            esc(origin)
        );
    }
    let _ = write!(body, "<ul class=\"tree\">{tree}</ul>");
    if lineage.caused.is_empty() {
        body.push_str("<p class=\"muted\">It caused nothing (yet).</p>");
    }
    if lineage.truncated {
        body.push_str("<p class=\"warn\">The lineage was cut short: it is very large.</p>");
    }
    body.push_str("</div>");
    if let Some(correlation) = &lineage.correlation_id {
        let _ = write!(
            body,
            "<h2>Correlation <code>{}</code>: {} event(s)</h2>",
            esc(correlation),
            lineage.correlated.len()
        );
        body.push_str(&table(&EVENT_HEADERS, &event_rows(&lineage.correlated), &[0]));
    }
    body.push_str(&link(&url("/api/lineage", &[("id", id)]), "as JSON"));
    Ok(page(&format!("Event {}", e.ty()), &body))
}

async fn lineage_json(State(console): State<Shared>, query: Params) -> Result<Response, Failure> {
    let query = params(&query, &["id"])?;
    let id = required(query, "id")?;
    match keel_store::lineage(&*console.log, id).await.map_err(store_failed)? {
        Some(lineage) => Ok(Json(lineage.to_json()).into_response()),
        None => Err(Failure::Caller(
            Problem::new(StatusCode::NOT_FOUND).with_detail(format!("no event {id}")),
        )),
    }
}

/// Every group the backend lists and the console was told about, sorted.
async fn all_groups(console: &Console) -> Result<Vec<GroupRef>, Failure> {
    let mut groups = console.groups.clone();
    if let Some(lag) = &console.lag {
        groups.extend(lag.groups().await.map_err(bus_failed)?);
    }
    groups.sort();
    groups.dedup();
    Ok(groups)
}

async fn groups(State(console): State<Shared>, query: Params) -> PageResult {
    let query = params(&query, &[])?;
    let _ = query;
    let mut rows = Vec::new();
    for group in all_groups(&console).await? {
        let status = match &console.lag {
            Some(lag) => lag.status(&group.topic, &group.group).await.map_err(bus_failed)?,
            None => crate::GroupStatus::default(),
        };
        let dead = match (status.dead_letters, &console.dead_letters) {
            (Some(count), _) => Some(count),
            (None, Some(bus)) => {
                Some(bus.list(&group.topic, &group.group, 10_000).await.map_err(bus_failed)?.len()
                    as u64)
            }
            (None, None) => None,
        };
        let lag = match status.lag {
            Some(lag) if status.at_least => format!("{lag}+"),
            Some(lag) => lag.to_string(),
            None => "?".to_owned(),
        };
        let dead = match dead {
            Some(0) => "0".to_owned(),
            Some(n) => format!("<span class=\"warn\">{n}</span>"),
            None => "?".to_owned(),
        };
        let letters = url(
            "/dead-letters",
            &[("topic", group.topic.as_str()), ("group", group.group.as_str())],
        );
        rows.push(vec![
            esc(&group.topic),
            esc(&group.group),
            lag,
            dead,
            link(&letters, "dead letters"),
        ]);
    }
    let body = if rows.is_empty() {
        "<p class=\"muted\">No consumer groups known yet.</p>".to_owned()
    } else {
        table(&["topic", "group", "lag", "dead letters", ""], &rows, &[2, 3])
    };
    let bus = format!("<p class=\"muted\">Bus: {}</p>", esc(&console.bus));
    Ok(page("Consumer groups", &(bus + &body)))
}

fn dead_letter_bus(console: &Console) -> Result<&Arc<dyn keel_core::DeadLetters>, Failure> {
    console.dead_letters.as_ref().ok_or_else(|| {
        Failure::Caller(
            Problem::new(StatusCode::NOT_FOUND)
                .with_detail("this console was started without a bus to manage dead letters"),
        )
    })
}

async fn dead_letters(State(console): State<Shared>, query: Params) -> PageResult {
    let query = params(&query, &["topic", "group", "notice"])?;
    let topic = required(query, "topic")?;
    let group = required(query, "group")?;
    let bus = dead_letter_bus(&console)?;
    let letters = bus.list(topic, group, 500).await.map_err(bus_failed)?;
    let fields = [("topic", topic), ("group", group)];
    let mut body = notice(query);
    if letters.is_empty() {
        body.push_str("<p class=\"muted\" id=\"empty\">No dead letters.</p>");
    } else {
        let _ = write!(
            body,
            "<p>{} dead letter(s) {} {}</p>",
            letters.len(),
            button("/dead-letters/retry-all", &fields, "Retry all", "retry-all"),
            button("/dead-letters/purge", &fields, "Purge", "purge")
        );
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|letter| {
            let message = match &letter.payload {
                Payload::Event(event) => {
                    String::from_utf8_lossy(&to_structured(event)).into_owned()
                }
                Payload::Undecodable(raw) => {
                    format!("undecodable ({}): {}", raw.error, String::from_utf8_lossy(&raw.body))
                }
            };
            let pretty = serde_json::from_str::<serde_json::Value>(&message)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(message);
            let mut fields = fields.to_vec();
            fields.push(("id", letter.id.0.as_str()));
            vec![
                format!("<code>{}</code>", esc(&letter.id.0)),
                esc(&letter.dead_lettered_at.to_rfc3339()),
                letter.attempts.to_string(),
                esc(&letter.reason),
                format!("<details><summary>show</summary><pre>{}</pre></details>", esc(&pretty)),
                button("/dead-letters/retry", &fields, "Retry", &format!("retry-{}", letter.id.0)),
            ]
        })
        .collect();
    if !rows.is_empty() {
        body.push_str(&table(
            &["id", "dead-lettered at", "attempts", "reason", "message", ""],
            &rows,
            &[2],
        ));
    }
    Ok(page(&format!("Dead letters of {topic}/{group}"), &body))
}

type FormFields = Form<HashMap<String, String>>;

async fn retry_dead_letter(
    State(console): State<Shared>,
    Form(form): FormFields,
) -> Result<Response, Failure> {
    let (topic, group, id) =
        (required(&form, "topic")?, required(&form, "group")?, required(&form, "id")?);
    let bus = dead_letter_bus(&console)?;
    let retried =
        bus.retry(topic, group, &DeadLetterId(id.to_owned())).await.map_err(bus_failed)?;
    let notice = if retried {
        format!("sent {id} back to {topic}/{group}")
    } else {
        format!("no dead letter {id} (already retried?)")
    };
    Ok(back("/dead-letters", &[("topic", topic), ("group", group), ("notice", notice.as_str())]))
}

async fn retry_all_dead_letters(
    State(console): State<Shared>,
    Form(form): FormFields,
) -> Result<Response, Failure> {
    let (topic, group) = (required(&form, "topic")?, required(&form, "group")?);
    let bus = dead_letter_bus(&console)?;
    let letters = bus.list(topic, group, usize::MAX).await.map_err(bus_failed)?;
    let mut retried = 0;
    for letter in &letters {
        if bus.retry(topic, group, &letter.id).await.map_err(bus_failed)? {
            retried += 1;
        }
    }
    let notice = format!("sent {retried} dead letter(s) back to {topic}/{group}");
    Ok(back("/dead-letters", &[("topic", topic), ("group", group), ("notice", notice.as_str())]))
}

async fn purge_dead_letters(
    State(console): State<Shared>,
    Form(form): FormFields,
) -> Result<Response, Failure> {
    let (topic, group) = (required(&form, "topic")?, required(&form, "group")?);
    let bus = dead_letter_bus(&console)?;
    let purged = bus.purge(topic, group).await.map_err(bus_failed)?;
    let notice = format!("purged {purged} dead letter(s) of {topic}/{group}");
    Ok(back("/dead-letters", &[("topic", topic), ("group", group), ("notice", notice.as_str())]))
}

async fn projections(State(console): State<Shared>, query: Params) -> PageResult {
    let query = params(&query, &["notice"])?;
    let log = &console.log;
    let skipped: HashMap<String, u64> =
        log.skipped_counts().await.map_err(store_failed)?.into_iter().collect();
    let rebuildable = console.rebuild.as_ref().map(|r| r.names()).unwrap_or_default();
    let mut names: Vec<String> = rebuildable.clone();
    let mut positions = HashMap::new();
    for (name, cursor, updated) in log.checkpoints().await.map_err(store_failed)? {
        if let Some(projection) = name.strip_prefix("projection:") {
            let lag = log.count_after(cursor, Position(u64::MAX)).await.map_err(store_failed)?;
            positions.insert(projection.to_owned(), (cursor.position, lag, updated));
            names.push(projection.to_owned());
        }
    }
    names.sort();
    names.dedup();
    let status = console.rebuilds_snapshot();
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|name| {
            let (position, lag, updated) = match positions.get(name) {
                Some((position, lag, updated)) => {
                    (position.to_string(), lag.to_string(), updated.to_rfc3339())
                }
                None => ("-".into(), "-".into(), "never".into()),
            };
            let action = if rebuildable.contains(name) {
                button(
                    "/projections/rebuild",
                    &[("name", name.as_str())],
                    "Rebuild",
                    &format!("rebuild-{name}"),
                )
            } else {
                "<span class=\"muted\">rebuilt by its service's binary</span>".to_owned()
            };
            vec![
                esc(name),
                position,
                lag,
                skipped.get(&format!("projection:{name}")).copied().unwrap_or(0).to_string(),
                esc(&updated),
                esc(status.get(name).map_or("", String::as_str)),
                action,
            ]
        })
        .collect();
    let mut body = notice(query);
    if rows.is_empty() {
        body.push_str("<p class=\"muted\">No projections yet.</p>");
    } else {
        body.push_str(&table(
            &["projection", "position", "lag", "skipped", "updated", "last rebuild", ""],
            &rows,
            &[1, 2, 3],
        ));
    }
    Ok(page("Projections", &body))
}

async fn rebuild_projection(
    State(console): State<Shared>,
    Form(form): FormFields,
) -> Result<Response, Failure> {
    let name = required(&form, "name")?.to_owned();
    let Some(rebuild) = console.rebuild.clone() else {
        return Err(Failure::Caller(Problem::invalid_field(
            "name",
            "this console rebuilds nothing",
        )));
    };
    if !rebuild.names().contains(&name) {
        return Err(Failure::Caller(Problem::invalid_field(
            "name",
            format!("`{name}` is not a projection this console can rebuild"),
        )));
    }
    console.set_rebuild(&name, "running".to_owned());
    let spawned = console.clone();
    let task_name = name.clone();
    tokio::spawn(async move {
        let outcome = match rebuild.rebuild(&task_name).await {
            Ok(applied) => format!("done at {}: {applied} event(s)", Utc::now().to_rfc3339()),
            Err(error) => format!("failed: {error}"),
        };
        spawned.set_rebuild(&task_name, outcome);
    });
    let notice = format!("rebuilding {name} (this page shows when it is done)");
    Ok(back("/projections", &[("notice", notice.as_str())]))
}

async fn relays(State(console): State<Shared>, query: Params) -> PageResult {
    let query = params(&query, &["notice"])?;
    let log = &console.log;
    let letters = log.relay_dead_letters(None, 500).await.map_err(store_failed)?;
    let mut rows = Vec::new();
    for (name, cursor, updated) in log.checkpoints().await.map_err(store_failed)? {
        let Some(relay) = name.strip_prefix("relay:") else { continue };
        let lag = log.count_after(cursor, Position(u64::MAX)).await.map_err(store_failed)?;
        let dead = letters.iter().filter(|l| l.relay == relay).count();
        rows.push(vec![
            esc(relay),
            cursor.position.to_string(),
            if lag == 0 { "0".into() } else { format!("<span class=\"warn\">{lag}</span>") },
            dead.to_string(),
            esc(&updated.to_rfc3339()),
        ]);
    }
    let mut body = notice(query);
    if rows.is_empty() {
        body.push_str(
            "<p class=\"muted\">No relay has run on this log (with the log itself as the bus, \
             nothing needs relaying).</p>",
        );
    } else {
        body.push_str(&table(
            &["relay", "position", "lag", "dead letters", "updated"],
            &rows,
            &[1, 2, 3],
        ));
    }
    if !letters.is_empty() {
        body.push_str("<h2>Relay dead letters (events the bus could never take)</h2>");
        let rows: Vec<Vec<String>> = letters
            .iter()
            .map(|l| {
                let position = l.position.0.to_string();
                let retry = if console.publisher.is_some() {
                    button(
                        "/relays/retry",
                        &[("relay", l.relay.as_str()), ("position", position.as_str())],
                        "Publish again",
                        &format!("relay-retry-{position}"),
                    )
                } else {
                    String::new()
                };
                vec![
                    esc(&l.relay),
                    position.clone(),
                    link(&url("/event", &[("id", l.event_id.as_str())]), &l.event_type),
                    esc(&l.topic),
                    esc(&l.reason),
                    esc(&l.dead_lettered_at.to_rfc3339()),
                    format!(
                        "{retry} {}",
                        button(
                            "/relays/purge",
                            &[("relay", l.relay.as_str())],
                            "Purge relay's",
                            "relay-purge",
                        )
                    ),
                ]
            })
            .collect();
        body.push_str(&table(
            &["relay", "position", "type", "topic", "reason", "at", ""],
            &rows,
            &[1],
        ));
    }
    Ok(page("Relays", &body))
}

async fn retry_relay_dead_letter(
    State(console): State<Shared>,
    Form(form): FormFields,
) -> Result<Response, Failure> {
    let relay = required(&form, "relay")?;
    let position = number(&form, "position")?
        .ok_or_else(|| Failure::Caller(Problem::invalid_field("position", "is required")))?;
    let Some(bus) = &console.publisher else {
        return Err(Failure::Caller(Problem::invalid_field(
            "relay",
            "this console has no bus to publish to",
        )));
    };
    let retried = keel_store::relay_dlq::retry(&*console.log, &**bus, relay, Position(position))
        .await
        .map_err(bus_failed)?;
    let notice = if retried {
        format!("published position {position} again")
    } else {
        format!("no dead letter at position {position} of relay {relay}")
    };
    Ok(back("/relays", &[("notice", notice.as_str())]))
}

async fn purge_relay_dead_letters(
    State(console): State<Shared>,
    Form(form): FormFields,
) -> Result<Response, Failure> {
    let relay = required(&form, "relay")?;
    let purged = console.log.purge_relay_dead_letters(relay).await.map_err(store_failed)?;
    Ok(back(
        "/relays",
        &[("notice", format!("purged {purged} dead letter(s) of relay {relay}").as_str())],
    ))
}
