//! Hello, events: the whole loop of Keel in one file.
//!
//! `POST /greetings/{name}` appends a typed `greeting.sent` event to the embedded
//! SQLite log; a consumer on the log bus handles each event once (through the store's
//! inbox) and keeps a read model, `hello_counts`, that `GET /greetings/{name}` serves.
//!
//! ```text
//! cargo run -p keel-example-hello-events
//! curl -X POST localhost:PORT/greetings/Ada -d 'Hello'
//! curl localhost:PORT/greetings/Ada        # {"name":"Ada","greetings":1,"last":"Hello"}
//! ```
//!
//! Settings are Keel's (`KEEL_DATABASE_URL`, default `sqlite://keel-data/keel.db`;
//! `KEEL_LISTEN_ADDR`, default a free loopback port). Ctrl-C stops it cleanly.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use keel::bus::layer::EventContext;
use keel::bus::{HandlerError, Message};
use keel::core::{Event, ExpectedVersion, StreamId, SubscriptionSpec};
use keel::http::{Json, Problem};
use keel::sql::{Db, Tx, args, envelope, start_inbox_consumer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The event: someone greeted `name`. Its stream is `greeting-<name>`, so its bus topic
/// (the stream's category) is `greeting`.
#[derive(Debug, Event, Serialize, Deserialize)]
#[event(type = "greeting.sent", key = name)]
struct Greeted {
    name: String,
    text: String,
}

/// Publish: append the event to the log (its own transaction here; a service would
/// write its state in the same one).
async fn greet(
    State(db): State<Db>,
    Path(name): Path<String>,
    text: String,
) -> Result<StatusCode, Problem> {
    let text = if text.trim().is_empty() { "Hello".to_owned() } else { text };
    let stream = StreamId::new(format!("greeting-{name}"))
        .map_err(|e| Problem::invalid_field("/name", e.to_string()))?;
    let event = envelope(&Greeted { name, text }, "/examples/hello", &EventContext::default())?;
    let mut tx = db.begin().await?;
    tx.append(&stream, ExpectedVersion::Any, &[event]).await?;
    tx.commit().await?;
    Ok(StatusCode::ACCEPTED)
}

/// Consume: each event once, in the inbox's transaction with the read model's row.
async fn count(message: Message, mut tx: Tx) -> Result<Tx, HandlerError> {
    let greeted: Greeted = message.decode()?;
    tx.execute(
        "INSERT INTO hello_counts (name, greetings, last) VALUES ($1, 1, $2)
         ON CONFLICT (name) DO UPDATE
         SET greetings = hello_counts.greetings + 1, last = excluded.last",
        args![greeted.name, greeted.text],
    )
    .await?;
    Ok(tx)
}

/// Read: the read model over HTTP.
async fn read(State(db): State<Db>, Path(name): Path<String>) -> Result<Json<Value>, Problem> {
    let row: Option<(i64, String)> = db
        .fetch_optional("SELECT greetings, last FROM hello_counts WHERE name = $1", args![&name])
        .await?;
    let (greetings, last) =
        row.ok_or_else(|| Problem::not_found(format!("nobody greeted {name}")))?;
    Ok(Json(json!({ "name": name, "greetings": greetings, "last": last })))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = keel::runtime::Config::load()?;
    let db = Db::connect_in(&config.database_url, &config.namespace).await?;
    let mut tx = db.begin().await?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS hello_counts
         (name TEXT PRIMARY KEY, greetings BIGINT NOT NULL, last TEXT NOT NULL)",
        args![],
    )
    .await?;
    tx.commit().await?;

    // The log itself is the bus (or the broker of KEEL_BUS_URL, fed by `keel relay`).
    // Keep it until the end: dropping the last handle stops feeding its groups.
    let (bus, _) = keel::runtime::system_bus(&config, &db).await?;
    let spec = SubscriptionSpec::new("greeting", "hello-counts").types([Greeted::TYPE]);
    let consumer = start_inbox_consumer(&db, bus.clone(), spec, 1, count).await?;

    let app = Router::new().route("/greetings/{name}", get(read).post(greet)).with_state(db);
    let listener = tokio::net::TcpListener::bind(config.listen_addr).await?;
    println!("hello-events listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).with_graceful_shutdown(keel::runtime::shutdown_signal()).await?;
    consumer.stop().await?;
    bus.close().await?;
    Ok(())
}
