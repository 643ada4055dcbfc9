//! The service runner against the real stores: a service registered with its
//! migrations, a route, a consumer and a projection serves the route, its consumer
//! sees the events the route appends, its projection applies them, and stopping drains
//! (the projection's checkpoint at the log's head, the listener closed); the binary's
//! `projections rebuild` rebuilds the projection from the log. On SQLite, and on
//! PostgreSQL with the `integration` feature.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use keel_bus::{HandlerError, Message};
use keel_core::{CloudEvent, ExpectedVersion, StreamId, SubscriptionSpec};
use keel_runtime::{Config, ServiceContext, ServiceRunner};
use keel_sql::{Conn, Db, Projection, Tx, args, start_inbox_consumer};
use keel_store::{Cursor, LogFilter};
use keel_testkit::util::eventually_async;

const NOTE_ADDED: &str = "note.added";

/// Counts the notes added: the projection under test.
struct NoteCounts;

#[async_trait::async_trait]
impl Projection for NoteCounts {
    fn name(&self) -> &str {
        "note-counts"
    }

    fn tables(&self) -> &[&str] {
        &["note_counts"]
    }

    fn filter(&self) -> LogFilter {
        LogFilter::topic("note")
    }

    async fn apply(&self, conn: &mut Conn<'_>, event: &CloudEvent) -> Result<(), HandlerError> {
        conn.execute(
            "INSERT INTO {note_counts} AS c (ty, n) VALUES ($1, 1)
             ON CONFLICT (ty) DO UPDATE SET n = c.n + 1",
            args![event.ty()],
        )
        .await?;
        Ok(())
    }
}

async fn migrate(db: Db) -> keel_sql::Result<()> {
    let mut tx = db.begin().await?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS note_counts (ty TEXT PRIMARY KEY, n BIGINT NOT NULL)",
        args![],
    )
    .await?;
    tx.execute("CREATE TABLE IF NOT EXISTS notes_seen (id TEXT PRIMARY KEY)", args![]).await?;
    tx.commit().await
}

/// `POST /api/notes/{id}` appends `note.added` to `note-{id}`; `GET /api/counts` reads
/// the projection.
fn routes(context: &ServiceContext) -> Router {
    async fn add(State(db): State<Db>, UrlPath(id): UrlPath<String>) -> StatusCode {
        let event = CloudEvent::builder(NOTE_ADDED, "/tests/notes")
            .json_data(&serde_json::json!({ "id": id }))
            .unwrap()
            .build()
            .unwrap();
        let mut tx = db.begin().await.unwrap();
        let stream = StreamId::new(format!("note-{id}")).unwrap();
        tx.append(&stream, ExpectedVersion::NoStream, &[event]).await.unwrap();
        tx.commit().await.unwrap();
        StatusCode::CREATED
    }
    async fn counts(State(db): State<Db>) -> String {
        count(&db, "SELECT n FROM note_counts WHERE ty = $1", args![NOTE_ADDED]).await.to_string()
    }
    Router::new()
        .route("/api/notes/{id}", post(add))
        .route("/api/counts", get(counts))
        .with_state(context.db.clone())
}

/// The consumer: marks each note it sees, in the inbox's transaction.
async fn seen(message: Message, mut tx: Tx) -> Result<Tx, HandlerError> {
    tx.execute("INSERT INTO notes_seen (id) VALUES ($1)", args![message.event().id()]).await?;
    Ok(tx)
}

async fn count(db: &Db, sql: &str, args: Vec<keel_sql::Arg>) -> i64 {
    let row: Option<(i64,)> = db.fetch_optional(sql, args).await.unwrap();
    row.map_or(0, |(n,)| n)
}

fn runner(config: Config) -> ServiceRunner {
    ServiceRunner::new("notes")
        .config(config)
        .migrations(migrate)
        .projection(NoteCounts)
        .consumers(|context| async move {
            let spec = SubscriptionSpec::new("note", "notes-seen");
            let consumer = start_inbox_consumer(&context.db, context.bus.clone(), spec, 2, seen);
            consumer.await.map(|consumer| vec![consumer])
        })
        .routes(routes)
}

fn config(database_url: &str) -> Config {
    let env = |key: &str| match key {
        "KEEL_DATABASE_URL" => Some(database_url.to_owned()),
        "KEEL_LISTEN_ADDR" => Some("127.0.0.1:0".to_owned()),
        _ => None,
    };
    Config::from_sources(Path::new("/nonexistent/keel.toml"), env).unwrap()
}

async fn add_notes(base: &str, ids: &[&str]) {
    let http = reqwest::Client::new();
    for id in ids {
        let added = http.post(format!("{base}/api/notes/{id}")).send().await.unwrap();
        assert_eq!(added.status(), 201);
    }
}

/// Waits until the consumer has seen `n` notes and the projection counted `n`.
async fn both_see(db: &Db, base: &str, n: i64) {
    eventually_async("the consumer sees the notes", || async {
        count(db, "SELECT COUNT(*) FROM notes_seen", args![]).await == n
    })
    .await;
    let http = reqwest::Client::new();
    eventually_async("the projection applies the notes", || async {
        let counts = http.get(format!("{base}/api/counts")).send().await.unwrap();
        counts.text().await.unwrap() == n.to_string()
    })
    .await;
}

async fn exercise(database_url: &str) {
    let running = runner(config(database_url)).start().await.unwrap();
    let base = format!("http://{}", running.local_addr());
    add_notes(&base, &["a", "b", "c"]).await;
    let http = reqwest::Client::new();
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert!(health.status().is_success(), "the service kit's /health");
    let db = Db::connect(database_url).await.unwrap();
    both_see(&db, &base, 3).await;
    running.stop().await.unwrap();
    assert!(http.get(format!("{base}/health")).send().await.is_err(), "the listener is closed");

    // Started again, the consumer and the projection go on from where they stopped:
    // nothing is applied twice (the count would pass 4).
    let running = runner(config(database_url)).start().await.unwrap();
    let base = format!("http://{}", running.local_addr());
    add_notes(&base, &["d"]).await;
    both_see(&db, &base, 4).await;
    running.stop().await.unwrap();
    let head = db.log().head().await.unwrap();
    let checkpoint = db.log().checkpoint("projection:note-counts").await.unwrap();
    assert_eq!(checkpoint.map(|c: Cursor| c.log_position()), Some(head), "at the head");

    // The binary's subcommand rebuilds the projection from the log, without serving.
    let mut tx = db.begin().await.unwrap();
    tx.execute("UPDATE note_counts SET n = 99", args![]).await.unwrap();
    tx.commit().await.unwrap();
    let rebuild = ["notes", "projections", "rebuild", "note-counts"];
    runner(config(database_url)).run_with_args(rebuild).await.unwrap();
    let n = count(&db, "SELECT n FROM note_counts WHERE ty = $1", args![NOTE_ADDED]).await;
    assert_eq!(n, 4, "rebuilt from the four events");
    let replay = ["notes", "replay", "--into", "projection:note-counts"];
    runner(config(database_url)).run_with_args(replay).await.unwrap();
    let n = count(&db, "SELECT n FROM note_counts WHERE ty = $1", args![NOTE_ADDED]).await;
    assert_eq!(n, 4, "replayed into the projection");

    let unknown = ["notes", "projections", "rebuild", "nope"];
    let error = runner(config(database_url)).run_with_args(unknown).await.unwrap_err();
    assert!(error.to_string().contains("(its projections: note-counts)"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_on_sqlite_serves_consumes_projects_drains_and_rebuilds() {
    let dir = std::env::temp_dir().join(keel_testkit::util::unique("keel-runner"));
    std::fs::create_dir_all(&dir).unwrap();
    exercise(&format!("sqlite://{}/keel.db", dir.display())).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_on_postgres_serves_consumes_projects_drains_and_rebuilds() {
    exercise(&keel_testkit::postgres::fresh_database("runner").await).await;
}

/// A rebuild beside a running replica: the replica keeps serving the read model and
/// switches the new generation in; `--wait` returns once it did. `--discard` with
/// nothing to discard says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_beside_a_running_replica_is_switched_in_by_it() {
    let dir = std::env::temp_dir().join(keel_testkit::util::unique("keel-runner-held"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/keel.db", dir.display());
    let running = runner(config(&url)).start().await.unwrap();
    let base = format!("http://{}", running.local_addr());
    add_notes(&base, &["a", "b"]).await;
    let http = reqwest::Client::new();
    eventually_async("the projection is active (it applied the notes)", || async {
        let counts = http.get(format!("{base}/api/counts")).send().await.unwrap();
        counts.text().await.unwrap() == "2"
    })
    .await;
    let db = Db::connect(&url).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.execute("UPDATE note_counts SET n = 99", args![]).await.unwrap();
    tx.commit().await.unwrap();
    let rebuild = ["notes", "projections", "rebuild", "note-counts", "--wait"];
    runner(config(&url)).run_with_args(rebuild).await.unwrap();
    let counts = http.get(format!("{base}/api/counts")).send().await.unwrap();
    assert_eq!(counts.text().await.unwrap(), "2", "switched in by the running replica");
    add_notes(&base, &["c"]).await;
    eventually_async("the replica to follow the log after the switch", || async {
        let counts = http.get(format!("{base}/api/counts")).send().await.unwrap();
        counts.text().await.unwrap() == "3"
    })
    .await;
    let discard = ["notes", "projections", "rebuild", "note-counts", "--discard"];
    runner(config(&url)).run_with_args(discard).await.unwrap();
    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
