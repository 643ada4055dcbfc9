//! `tasks`: the service of the guide (docs/guide.md), a task list whose changes are
//! events and whose statistics are a read model kept from them.

use keel::core::{Event, StreamId};
use keel::http::Problem;
use serde::{Deserialize, Serialize};

/// A task was added to the list.
#[derive(Debug, Event, Serialize, Deserialize)]
#[event(type = "task.added", key = task_id)]
struct TaskAdded {
    task_id: String,
    title: String,
}

/// A task was done.
#[derive(Debug, Event, Serialize, Deserialize)]
#[event(type = "task.completed", key = task_id)]
struct TaskCompleted {
    task_id: String,
}

/// Every task's events go to its own stream, `task-<id>`; the stream's category,
/// `task`, is the bus topic subscribers ask for.
fn stream(task_id: &str) -> Result<StreamId, Problem> {
    StreamId::new(format!("task-{task_id}"))
        .map_err(|e| Problem::invalid_field("/id", e.to_string()))
}

use keel::sql::{Db, args};

/// Creates the service's table and its read model if they are not there yet.
async fn create_tables(db: &Db) -> keel::sql::Result<()> {
    let mut tx = db.begin().await?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS tasks
         (id TEXT PRIMARY KEY, title TEXT NOT NULL, done BIGINT NOT NULL DEFAULT 0)",
        args![],
    )
    .await?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS task_stats
         (id TEXT PRIMARY KEY, open BIGINT NOT NULL, done BIGINT NOT NULL)",
        args![],
    )
    .await?;
    tx.commit().await
}

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use keel::core::{EventId, ExpectedVersion};
use keel::http::{Fields, Json, JsonBody, request_context};
use keel::sql::envelope;
use serde_json::{Value, json};

/// The CloudEvents `source` of this service's events.
const SOURCE: &str = "/services/tasks";

/// `POST /tasks {"title"}` -> 201 `{"id", "title"}`: the row and `task.added` commit
/// together.
async fn add_task(
    State(db): State<Db>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let mut fields = Fields::new(&body);
    let title = fields.string("/title", 200);
    fields.finish()?;
    let Some(title) = title else { return Err(Problem::internal()) };

    let task_id = EventId::new().to_string();
    let event = TaskAdded { task_id: task_id.clone(), title: title.clone() };
    let mut tx = db.begin().await?;
    tx.execute("INSERT INTO tasks (id, title) VALUES ($1, $2)", args![&task_id, &title]).await?;
    let envelope = envelope(&event, SOURCE, &request_context(&headers))?;
    tx.append(&stream(&task_id)?, ExpectedVersion::NoStream, &[envelope]).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": task_id, "title": title }))))
}

/// `POST /tasks/{id}/complete` -> 204: marks the task done and appends
/// `task.completed`, once (completing a done task again changes nothing).
async fn complete_task(
    State(db): State<Db>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
) -> Result<StatusCode, Problem> {
    let mut tx = db.begin().await?;
    let changed =
        tx.execute("UPDATE tasks SET done = 1 WHERE id = $1 AND done = 0", args![&task_id]).await?;
    if changed == 0 {
        let found: Option<(String,)> =
            tx.fetch_optional("SELECT id FROM tasks WHERE id = $1", args![&task_id]).await?;
        return match found {
            Some(_) => Ok(StatusCode::NO_CONTENT),
            None => Err(Problem::not_found(format!("no task `{task_id}`"))),
        };
    }
    let event =
        envelope(&TaskCompleted { task_id: task_id.clone() }, SOURCE, &request_context(&headers))?;
    tx.append(&stream(&task_id)?, ExpectedVersion::StreamExists, &[event]).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

use keel::bus::{HandlerError, Message};
use keel::sql::Tx;

/// The consumer group (and the read model's name).
const STATS_GROUP: &str = "task-stats";

/// Applies one task event to `task_stats`, in the inbox's transaction.
async fn apply_stats(message: Message, mut tx: Tx) -> Result<Tx, HandlerError> {
    let ty = message.event().ty();
    let (open, done): (i64, i64) = if ty == TaskAdded::TYPE {
        let _added: TaskAdded = message.decode()?;
        (1, 0)
    } else if ty == TaskCompleted::TYPE {
        let _completed: TaskCompleted = message.decode()?;
        (-1, 1)
    } else {
        return Ok(tx);
    };
    tx.execute(
        "INSERT INTO task_stats (id, open, done) VALUES ('all', $1, $2)
         ON CONFLICT (id) DO UPDATE
         SET open = task_stats.open + excluded.open, done = task_stats.done + excluded.done",
        args![open, done],
    )
    .await?;
    Ok(tx)
}

/// `GET /stats` -> `{"open", "done"}`.
async fn stats(State(db): State<Db>) -> Result<Json<Value>, Problem> {
    let row: Option<(i64, i64)> =
        db.fetch_optional("SELECT open, done FROM task_stats WHERE id = 'all'", args![]).await?;
    let (open, done) = row.unwrap_or((0, 0));
    Ok(Json(json!({ "open": open, "done": done })))
}

use keel::bus::layer::Inbox as _;
use keel::store::{Cursor, LogFilter};

/// Rebuilds `task_stats` from the log; returns how many events it applied.
async fn rebuild_stats(db: &Db) -> anyhow::Result<u64> {
    let mut reset = db.begin().await?;
    reset.execute("DELETE FROM task_stats", args![]).await?;
    reset.execute("DELETE FROM keel_inbox WHERE group_name = $1", args![STATS_GROUP]).await?;
    reset.commit().await?;

    let (log, inbox) = (db.log(), db.inbox());
    let filter = LogFilter::topic("task");
    let (topic, group): (std::sync::Arc<str>, std::sync::Arc<str>) =
        ("task".into(), STATS_GROUP.into());
    let (mut cursor, mut applied) = (Cursor::START, 0);
    loop {
        let page = log.read_after(cursor, &filter, 500).await?;
        if page.events.is_empty() && page.next == cursor {
            return Ok(applied);
        }
        for stored in page.events {
            let message = Message::new(stored.event, 1, topic.clone(), group.clone());
            let Some(tx) = inbox.begin(STATS_GROUP, message.event().id()).await? else { continue };
            inbox.commit(apply_stats(message, tx).await?).await?;
            applied += 1;
        }
        cursor = page.next;
    }
}

use axum::Router;
use axum::routing::{get, post};
use keel::core::SubscriptionSpec;
use keel::http::body_limit;
use keel::runtime::{ServiceParts, run_service};
use keel::sql::start_inbox_consumer;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("rebuild") {
        let config = keel::runtime::Config::load()?;
        let db = Db::connect(&config.database_url).await?;
        create_tables(&db).await?;
        let applied = rebuild_stats(&db).await?;
        println!("rebuilt {STATS_GROUP} from {applied} event(s)");
        return Ok(());
    }
    run_service("tasks", |context| async move {
        create_tables(&context.db).await?;
        let spec = SubscriptionSpec::new("task", STATS_GROUP)
            .types([TaskAdded::TYPE, TaskCompleted::TYPE]);
        let consumer =
            start_inbox_consumer(&context.db, context.bus.clone(), spec, 1, apply_stats).await?;
        let router = Router::new()
            .route("/tasks", post(add_task))
            .route("/tasks/{id}/complete", post(complete_task))
            .route("/stats", get(stats))
            .layer(body_limit())
            .with_state(context.db);
        Ok(ServiceParts { router, consumers: vec![consumer] })
    })
    .await
}
