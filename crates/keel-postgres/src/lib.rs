//! Keel's PostgreSQL event log.
//!
//! Appends are one SQL statement (optimistic concurrency through the unique
//! `(stream_id, stream_version)` index, events inserted from arrays), standalone or
//! inside the caller's transaction.
//! Subscriptions never skip an event although concurrent writers commit out of
//! position order: each event stores its writer's transaction id, readers only take
//! rows whose transaction is older than the snapshot's `xmin` (so every transaction
//! that could still add rows before them has finished), and they order and checkpoint
//! by `(epoch, transaction id, position)` (DESIGN 2.2). Appends that would make a
//! stream's later version sort before an earlier one are refused as a retryable
//! [`keel_store::StoreError::WriteOrder`]. The epoch grows when the database is
//! restored into another cluster, whose transaction ids start lower, and again when it
//! is restored back into a cluster it lived in before (always above every epoch in
//! the log).
//!
//! Layout:
//! - `lib.rs`: [`PgEventLog`]: connecting, migrating, registering the epoch, and the
//!   [`keel_store::EventLog`] and [`keel_store::SqlEventLog`] implementations.
//! - [`append`]: the append statement and how a refused append is explained.
//! - [`read`]: row decoding and the read queries.
//! - [`notify`]: wake-ups: a coalescing `NOTIFY` sender outside the appending
//!   transaction, and a `LISTEN`ing task that feeds [`keel_store::EventLog::changes`].
//! - [`lease`]: leases as session advisory locks on a dedicated connection.
//!
//! A namespace (`KEEL_NAMESPACE`, [`PgOptions::namespace`]) is a schema of its own:
//! created if missing, the only schema on each connection's `search_path` (so the
//! migrations, Keel's queries and the service's own run inside it), with its own
//! notification channel ([`channel`]) and lease keys.
//! - [`inbox`]: [`PgInbox`], the transactional inbox for `keel_bus`.
//! - `relay_dead_letters`: the relay's dead letters as rows.
//! - `skipped`: the events projections skipped as unreadable, as rows.
//! - `generation`: blue/green rebuilds' shadow tables, their swap, and `keel_rebuilds`.
#![warn(missing_docs)]

pub mod append;
mod generation;
pub mod inbox;
pub mod lease;
pub mod notify;
pub mod read;
mod relay_dead_letters;
mod skipped;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use keel_core::envelope::ext;
use keel_core::{CloudEvent, ExpectedVersion, Namespace, Position, StreamId, StreamVersion};
use keel_store::{
    AppendResult, Changes, Cursor, Direction, EventLog, Lease, LogEvent, LogFilter, LogQuery, Page,
    RelayDeadLetter, Result, Skipped, SqlEventLog, StoreError,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool, Postgres};
use tokio::sync::{Semaphore, watch};

pub use inbox::PgInbox;

/// The migrations of Keel's tables. They ignore migrations they do not know, so a
/// service can keep its own migrations in the same database.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// How the log talks to PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgOptions {
    /// The pool's maximum number of connections.
    pub max_connections: u32,
    /// Send `NOTIFY keel_events` after standalone appends (outside their transaction,
    /// coalesced), so subscribers in other processes wake at once.
    pub notify: bool,
    /// `LISTEN` for other processes' appends (otherwise subscribers poll).
    pub listen: bool,
    /// Apply the migrations when connecting.
    pub migrate: bool,
    /// The deployment's namespace (`KEEL_NAMESPACE`): Keel's tables (and the
    /// service's, migrated through the same pool) live in the PostgreSQL schema of
    /// that name, created if missing and first and only on every connection's
    /// `search_path`; notifications and leases are kept apart from other namespaces
    /// in the same database. The default uses the connection's own `search_path`
    /// (normally `public`), as before namespaces.
    pub namespace: Namespace,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            notify: true,
            listen: true,
            migrate: true,
            namespace: Namespace::none(),
        }
    }
}

/// The notification channel (of the default namespace; see [`channel`]).
pub const CHANNEL: &str = "keel_events";

/// The notification channel of `namespace`: [`CHANNEL`], or `keel_events.<namespace>`.
pub fn channel(namespace: &Namespace) -> String {
    match namespace.as_str() {
        None => CHANNEL.to_owned(),
        Some(ns) => format!("{CHANNEL}.{ns}"),
    }
}

/// The PostgreSQL event log. Cheap to clone.
#[derive(Clone)]
pub struct PgEventLog {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    namespace: Namespace,
    epoch: i64,
    changes: Arc<Changes>,
    notifier: Option<notify::Notifier>,
    _listener: Option<notify::TaskGuard>,
    /// The one place in the pool's queue that requests' transactions share (see
    /// [`PgEventLog::begin_request`]).
    requests: Semaphore,
}

impl std::fmt::Debug for PgEventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventLog").field("epoch", &self.inner.epoch).finish_non_exhaustive()
    }
}

impl PgEventLog {
    /// Connects to `url` (`postgres://...`), creates the namespace's schema if
    /// missing, migrates and starts the wake-up tasks.
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self> {
        let mut connect: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Config(format!("KEEL_DATABASE_URL `{}`: {e}", redact(url))))?;
        if let Some(schema) = options.namespace.schema() {
            create_schema(&connect, schema).await?;
            // A startup parameter, so every connection of the pool (and the listener's,
            // and a lease's detached one) has it, reconnections included.
            connect = connect.options([("search_path", format!("\"{schema}\""))]);
        }
        // A log handle is bound to one cluster: its epoch is cached, so a connection
        // to another cluster (a restore swapped in under the same address) is refused
        // until the process restarts and registers the new cluster's epoch.
        let cluster = {
            let mut conn = sqlx::PgConnection::connect_with(&connect).await?;
            let id = system_identifier(&mut conn).await?;
            let _ = conn.close().await;
            id
        };
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                let cluster = cluster.clone();
                Box::pin(async move {
                    let id = system_identifier(conn).await?;
                    if id == cluster {
                        Ok(())
                    } else {
                        Err(sqlx::Error::Configuration(
                            format!("the database moved to another cluster ({cluster} -> {id}); restart to register it").into(),
                        ))
                    }
                })
            })
            .connect_with(connect)
            .await?;
        Self::from_pool(pool, options).await
    }

    /// Uses an existing pool (shared with the service's own queries). The epoch is
    /// read once: the pool must not be pointed at another cluster while in use
    /// ([`PgEventLog::connect`] guards its own pool against that). With a namespace,
    /// the pool's connections must already have its schema as their current schema
    /// (as [`PgEventLog::connect`] sets them up); a pool that does not is refused.
    pub async fn from_pool(pool: PgPool, options: PgOptions) -> Result<Self> {
        if let Some(schema) = options.namespace.schema() {
            let current: Option<String> =
                sqlx::query_scalar("SELECT current_schema()").fetch_one(&pool).await?;
            if current.as_deref() != Some(schema) {
                return Err(StoreError::Config(format!(
                    "namespace `{schema}`: the pool's current schema is {current:?}, not \
                     `{schema}` (set search_path to it on every connection)"
                )));
            }
        }
        if options.migrate {
            migrator().run(&pool).await?;
        }
        let epoch = register_epoch(&pool).await?;
        let changes = Arc::new(Changes::default());
        let listener = if options.listen {
            Some(notify::listen(pool.clone(), channel(&options.namespace), changes.clone()).await?)
        } else {
            None
        };
        let notifier = options
            .notify
            .then(|| notify::Notifier::start(pool.clone(), channel(&options.namespace)));
        let namespace = options.namespace;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                namespace,
                epoch,
                changes,
                notifier,
                _listener: listener,
                requests: Semaphore::new(1),
            }),
        })
    }

    /// The namespace whose schema the log lives in.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    /// The epoch of the cluster this process runs in.
    pub fn epoch(&self) -> i64 {
        self.inner.epoch
    }

    /// Starts a transaction for a request: new work from outside (an HTTP request
    /// placing an order), as opposed to work already in the log (a consumer's inbox
    /// transaction, the bus's progress, a projection's page, a due timer), which starts
    /// with [`SqlEventLog::begin`].
    ///
    /// Requests' transactions all share one place in the queue for the pool's
    /// connections: while one waits for a connection, the next waits behind it, outside
    /// the queue. With every connection busy, a freed one then goes to the work in
    /// flight before all but one waiting request, so the consumers settle what was
    /// accepted before more is accepted, however many clients send requests. The
    /// pool's queue is first come, first served, so requests are never starved.
    pub async fn begin_request(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        let _place = self.inner.requests.acquire().await.map_err(|_| sqlx::Error::PoolClosed)?;
        Ok(self.inner.pool.begin().await?)
    }

    /// Wakes this process's subscribers of `topics` (everyone for `None`), and other
    /// processes' through a notification.
    fn appended(&self, topics: Option<&[&str]>) {
        match topics {
            Some(topics) => self.inner.changes.appended(topics.iter().copied()),
            None => self.inner.changes.appended_anywhere(),
        }
        if let Some(notifier) = &self.inner.notifier {
            notifier.poke(topics);
        }
    }
}

/// Creates `schema` unless it exists (several processes may race to create it).
async fn create_schema(connect: &PgConnectOptions, schema: &str) -> Result<()> {
    async fn exists(conn: &mut PgConnection, schema: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(conn)
            .await
    }
    let mut conn = sqlx::PgConnection::connect_with(connect).await?;
    if !exists(&mut conn, schema).await? {
        let created = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(&mut conn)
            .await;
        // A concurrent CREATE SCHEMA IF NOT EXISTS can still fail on the unique index.
        if let Err(error) = created
            && !exists(&mut conn, schema).await?
        {
            return Err(error.into());
        }
    }
    let _ = conn.close().await;
    Ok(())
}

async fn system_identifier(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT system_identifier::text FROM pg_control_system()")
        .fetch_one(conn)
        .await
}

/// Registers this cluster in `keel_epochs` and returns its epoch.
///
/// A cluster gets a new epoch, above every epoch in the log, when the database comes
/// into it by a restore: the first time it sees the database, and again when the
/// database comes back after living in another cluster (fail-back). Then a higher
/// epoch is registered or written anywhere in the log than the cluster's own: its old
/// epoch would sort everything it appends now before what the other cluster wrote.
/// The cluster's row moves to the new epoch (its old events keep theirs).
async fn register_epoch(pool: &PgPool) -> Result<i64> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('keel_epochs', 0))")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "WITH top AS (
             SELECT GREATEST((SELECT max(epoch) FROM keel_epochs),
                             (SELECT max(epoch) FROM keel_events),
                             (SELECT max(epoch) FROM keel_checkpoints)) AS epoch)
         INSERT INTO keel_epochs (system_identifier, epoch)
         SELECT (SELECT system_identifier::text FROM pg_control_system()),
                COALESCE(top.epoch, -1) + 1
         FROM top
         ON CONFLICT (system_identifier) DO UPDATE
         SET epoch = excluded.epoch, registered_at = now()
         WHERE keel_epochs.epoch < excluded.epoch - 1",
    )
    .execute(&mut *tx)
    .await?;
    let epoch: Option<i64> = sqlx::query_scalar("SELECT keel_epoch()").fetch_one(&mut *tx).await?;
    tx.commit().await?;
    epoch.ok_or_else(|| StoreError::Config("could not register this cluster's epoch".into()))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[async_trait]
impl EventLog for PgEventLog {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[CloudEvent],
    ) -> Result<AppendResult> {
        // The append refuses an invalid topic too, before writing anything.
        let topics: Vec<String> =
            events.iter().map(|e| keel_store::topic_of(stream, e)).collect::<Result<_>>()?;
        let result =
            append::standalone(&self.inner.pool, self.inner.epoch, stream, expected, events)
                .await?;
        self.appended(Some(&topics.iter().map(String::as_str).collect::<Vec<_>>()));
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<CloudEvent>> {
        read::stream(&self.inner.pool, stream, from, direction, limit).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT max(stream_version) FROM keel_events WHERE stream_id = $1")
                .bind(stream.as_str())
                .fetch_one(&self.inner.pool)
                .await?;
        Ok(StreamVersion(version.and_then(|v| u64::try_from(v).ok()).unwrap_or(0)))
    }

    async fn categories(&self) -> Result<Vec<keel_store::Category>> {
        read::categories(&self.inner.pool).await
    }

    async fn streams(
        &self,
        category: Option<&str>,
        limit: usize,
    ) -> Result<Vec<keel_store::StreamSummary>> {
        read::streams(&self.inner.pool, category, limit).await
    }

    async fn event_by_id(&self, id: &str) -> Result<Option<LogEvent>> {
        read::by_id(&self.inner.pool, id).await
    }

    async fn caused_by(&self, id: &str, limit: usize) -> Result<Vec<LogEvent>> {
        read::by_extension(&self.inner.pool, ext::CAUSATION_ID, id, limit).await
    }

    async fn correlated(&self, id: &str, limit: usize) -> Result<Vec<LogEvent>> {
        read::by_extension(&self.inner.pool, ext::CORRELATION_ID, id, limit).await
    }

    async fn read_all(&self, query: &LogQuery) -> Result<Vec<LogEvent>> {
        read::all(&self.inner.pool, query).await
    }

    fn replay(&self, query: LogQuery) -> BoxStream<'_, Result<Vec<LogEvent>>> {
        read::replay(self.inner.pool.clone(), query)
    }

    async fn head(&self) -> Result<Position> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM keel_events")
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(Position(u64::try_from(head).unwrap_or(0)))
    }

    async fn read_after(&self, cursor: Cursor, filter: &LogFilter, limit: usize) -> Result<Page> {
        read::after(&self.inner.pool, self.inner.epoch, cursor, filter, limit).await
    }

    async fn count_after(&self, cursor: Cursor, up_to: Position) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM keel_events
             WHERE (epoch, transaction_id, position) > ($1, $2, $3) AND position <= $4",
        )
        .bind(cursor.epoch)
        .bind(cursor.txid)
        .bind(cursor.position)
        .bind(i64::try_from(up_to.0).unwrap_or(i64::MAX))
        .fetch_one(&self.inner.pool)
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn cursor_before(&self, position: Position) -> Result<Cursor> {
        read::cursor_before(&self.inner.pool, self.inner.epoch, position).await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn topic_changes(&self, topic: &str) -> watch::Receiver<u64> {
        self.inner.changes.subscribe_topic(topic)
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<Cursor>> {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT epoch, transaction_id, position FROM keel_checkpoints WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.inner.pool)
        .await?;
        Ok(row.map(|(epoch, txid, position)| Cursor { epoch, txid, position }))
    }

    async fn save_checkpoint(&self, name: &str, cursor: Cursor) -> Result<()> {
        let mut conn = self.inner.pool.acquire().await?;
        save_checkpoint(&mut conn, name, cursor).await
    }

    async fn checkpoints(&self) -> Result<Vec<(String, Cursor, DateTime<Utc>)>> {
        let rows: Vec<(String, i64, i64, i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT name, epoch, transaction_id, position, updated_at FROM keel_checkpoints ORDER BY name",
        )
        .fetch_all(&self.inner.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, epoch, txid, position, at)| (name, Cursor { epoch, txid, position }, at))
            .collect())
    }

    async fn try_lease(&self, name: &str) -> Result<Option<Box<dyn Lease>>> {
        lease::try_lease(&self.inner.pool, &self.inner.namespace, name).await
    }

    async fn skipped_counts(&self) -> Result<Vec<(String, u64)>> {
        skipped::counts(&self.inner.pool).await
    }

    async fn skipped(&self, subscriber: Option<&str>, limit: usize) -> Result<Vec<Skipped>> {
        skipped::list(&self.inner.pool, subscriber, limit).await
    }

    async fn save_relay_dead_letter(&self, letter: &RelayDeadLetter) -> Result<()> {
        relay_dead_letters::save(&self.inner.pool, letter).await
    }

    async fn relay_dead_letters(
        &self,
        relay: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RelayDeadLetter>> {
        relay_dead_letters::list(&self.inner.pool, relay, limit).await
    }

    async fn delete_relay_dead_letter(&self, relay: &str, position: Position) -> Result<bool> {
        relay_dead_letters::delete(&self.inner.pool, relay, position).await
    }

    async fn purge_relay_dead_letters(&self, relay: &str) -> Result<u64> {
        relay_dead_letters::purge(&self.inner.pool, relay).await
    }
}

async fn save_checkpoint(conn: &mut PgConnection, name: &str, cursor: Cursor) -> Result<()> {
    sqlx::query(
        "INSERT INTO keel_checkpoints (name, epoch, transaction_id, position, updated_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (name) DO UPDATE
         SET epoch = excluded.epoch, transaction_id = excluded.transaction_id,
             position = excluded.position, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(cursor.epoch)
    .bind(cursor.txid)
    .bind(cursor.position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl SqlEventLog for PgEventLog {
    type Db = Postgres;

    fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        Ok(self.inner.pool.begin().await?)
    }

    async fn append_in(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[CloudEvent],
    ) -> Result<AppendResult> {
        append::in_transaction(conn, self.inner.epoch, stream, expected, events).await
    }

    async fn save_checkpoint_in(
        &self,
        conn: &mut PgConnection,
        name: &str,
        cursor: Cursor,
    ) -> Result<()> {
        save_checkpoint(conn, name, cursor).await
    }

    async fn move_checkpoint_in(
        &self,
        conn: &mut PgConnection,
        name: &str,
        from: Option<Cursor>,
        to: Cursor,
    ) -> Result<()> {
        let moved = match from {
            None => sqlx::query(
                "INSERT INTO keel_checkpoints (name, epoch, transaction_id, position, updated_at)
                 VALUES ($1, $2, $3, $4, now())
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(to.epoch)
            .bind(to.txid)
            .bind(to.position),
            Some(from) => sqlx::query(
                "UPDATE keel_checkpoints
                 SET epoch = $2, transaction_id = $3, position = $4, updated_at = now()
                 WHERE name = $1 AND (epoch, transaction_id, position) = ($5, $6, $7)",
            )
            .bind(name)
            .bind(to.epoch)
            .bind(to.txid)
            .bind(to.position)
            .bind(from.epoch)
            .bind(from.txid)
            .bind(from.position),
        }
        .execute(&mut *conn)
        .await?;
        if moved.rows_affected() == 1 {
            Ok(())
        } else {
            Err(StoreError::CheckpointMoved { name: name.to_owned() })
        }
    }

    async fn delete_checkpoint_in(&self, conn: &mut PgConnection, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM keel_checkpoints WHERE name = $1")
            .bind(name)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn record_skip_in(
        &self,
        conn: &mut PgConnection,
        subscriber: &str,
        event: &LogEvent,
        reason: &str,
    ) -> Result<()> {
        skipped::record(conn, subscriber, event, reason).await
    }

    async fn clear_skips_in(&self, conn: &mut PgConnection, subscriber: &str) -> Result<()> {
        skipped::clear(conn, subscriber).await
    }

    async fn move_skips_in(&self, conn: &mut PgConnection, from: &str, to: &str) -> Result<()> {
        generation::move_skips(conn, from, to).await
    }

    async fn create_shadow_table_in(
        &self,
        conn: &mut PgConnection,
        live: &str,
        shadow: &str,
    ) -> Result<()> {
        generation::create_shadow(conn, live, shadow).await
    }

    async fn swap_table_in(&self, conn: &mut PgConnection, live: &str, shadow: &str) -> Result<()> {
        keel_store::sql::swap_table::<Postgres>(conn, live, shadow).await
    }

    async fn drop_table_in(&self, conn: &mut PgConnection, table: &str) -> Result<()> {
        keel_store::sql::drop_table::<Postgres>(conn, table).await
    }

    async fn rebuilds(&self) -> Result<Vec<(String, keel_store::projection::RebuildState)>> {
        generation::rebuilds(&self.inner.pool).await
    }

    async fn set_rebuild_in(
        &self,
        conn: &mut PgConnection,
        projection: &str,
        state: Option<keel_store::projection::RebuildState>,
    ) -> Result<()> {
        generation::set_rebuild(conn, projection, state).await
    }

    async fn relax_commit_in(&self, conn: &mut PgConnection) -> Result<()> {
        sqlx::query("SET LOCAL synchronous_commit = off").execute(conn).await?;
        Ok(())
    }

    fn notify_appended(&self) {
        self.appended(None);
    }

    fn notify_appended_to(&self, topics: &[&str]) {
        self.appended(Some(topics));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://keel:secret@db:5432/keel"),
            "postgres://keel:***@db:5432/keel"
        );
        assert_eq!(super::redact("postgres://db/keel"), "postgres://db/keel");
    }
}
