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

/// Creates the service's tables if they are not there yet.
async fn create_tables(db: Db) -> keel::sql::Result<()> {
    let mut tx = db.begin().await?;
    for table in [
        "CREATE TABLE IF NOT EXISTS tasks
         (id TEXT PRIMARY KEY, title TEXT NOT NULL, done BIGINT NOT NULL DEFAULT 0)",
        "CREATE TABLE IF NOT EXISTS task_emails (event_id TEXT PRIMARY KEY, text TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS task_stats
         (id TEXT PRIMARY KEY, open BIGINT NOT NULL, done BIGINT NOT NULL)",
    ] {
        tx.execute(table, args![]).await?;
    }
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
    let mut tx = db.begin_request().await?;
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
    let mut tx = db.begin_request().await?;
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

use keel::bus::{ConsumerHandle, HandlerError, Message};
use keel::core::{BusError, SubscriptionSpec};
use keel::runtime::ServiceContext;
use keel::sql::{Tx, start_inbox_consumer};

/// Writes a congratulation for a completed task, once (a real service would hand the
/// row to a mailer).
async fn congratulate(message: Message, mut tx: Tx) -> Result<Tx, HandlerError> {
    let completed: TaskCompleted = message.decode()?;
    let task: Option<(String,)> = tx
        .fetch_optional("SELECT title FROM tasks WHERE id = $1", args![&completed.task_id])
        .await?;
    let Some((title,)) = task else {
        return Err(HandlerError::permanent(format!("no task `{}`", completed.task_id)));
    };
    tx.execute(
        "INSERT INTO task_emails (event_id, text) VALUES ($1, $2)",
        args![message.event().id(), format!("Well done: {title}")],
    )
    .await?;
    Ok(tx)
}

/// The service's consumers, started by the runner (which stops them at shutdown).
async fn start_consumers(context: ServiceContext) -> Result<Vec<ConsumerHandle>, BusError> {
    let spec = SubscriptionSpec::new("task", "task-emails").types([TaskCompleted::TYPE]);
    Ok(vec![start_inbox_consumer(&context.db, context.bus, spec, 1, congratulate).await?])
}

use keel::CloudEvent;
use keel::sql::{Conn, Projection};
use keel::store::LogFilter;

/// `task_stats`: how many tasks are open and how many done.
struct TaskStats;

#[keel::async_trait]
impl Projection for TaskStats {
    fn name(&self) -> &str {
        "task-stats"
    }

    fn tables(&self) -> &[&str] {
        &["task_stats"]
    }

    fn filter(&self) -> LogFilter {
        LogFilter::topic("task")
    }

    async fn apply(&self, conn: &mut Conn<'_>, event: &CloudEvent) -> Result<(), HandlerError> {
        let (open, done): (i64, i64) = if event.ty() == TaskAdded::TYPE {
            (1, 0)
        } else if event.ty() == TaskCompleted::TYPE {
            (-1, 1)
        } else {
            return Ok(());
        };
        conn.execute(
            "INSERT INTO {task_stats} AS s (id, open, done) VALUES ('all', $1, $2)
             ON CONFLICT (id) DO UPDATE
             SET open = s.open + excluded.open, done = s.done + excluded.done",
            args![open, done],
        )
        .await?;
        Ok(())
    }
}

/// `GET /stats` -> `{"open", "done"}`.
async fn stats(State(db): State<Db>) -> Result<Json<Value>, Problem> {
    let row: Option<(i64, i64)> =
        db.fetch_optional("SELECT open, done FROM task_stats WHERE id = 'all'", args![]).await?;
    let (open, done) = row.unwrap_or((0, 0));
    Ok(Json(json!({ "open": open, "done": done })))
}

/// `GET /emails` -> the congratulations written so far, oldest first.
async fn emails(State(db): State<Db>) -> Result<Json<Value>, Problem> {
    let rows: Vec<(String,)> =
        db.fetch_all("SELECT text FROM task_emails ORDER BY event_id", args![]).await?;
    Ok(Json(json!(rows.into_iter().map(|(text,)| text).collect::<Vec<_>>())))
}

use axum::Router;
use axum::routing::{get, post};
use keel::http::body_limit;
use keel::runtime::ServiceRunner;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ServiceRunner::new("tasks")
        .migrations(create_tables)
        .routes(|context: &ServiceContext| {
            Router::new()
                .route("/tasks", post(add_task))
                .route("/tasks/{id}/complete", post(complete_task))
                .route("/stats", get(stats))
                .route("/emails", get(emails))
                .layer(body_limit())
                .with_state(context.db.clone())
        })
        .consumers(start_consumers)
        .projection(TaskStats)
        .run()
        .await
}
