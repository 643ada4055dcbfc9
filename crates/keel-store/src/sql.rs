//! The seam of SQL stores: work inside the caller's own transaction.

use std::future::Future;

use keel_core::{CloudEvent, ExpectedVersion, StreamId};

use crate::error::Result;
use crate::log::{AppendResult, Cursor, EventLog, LogEvent};
use crate::projection::RebuildState;

/// An [`EventLog`] in a SQL database, so a service can write its own state and its
/// events in one transaction, and a projection its read model and its checkpoint.
pub trait SqlEventLog: EventLog {
    /// The sqlx database (`sqlx::Sqlite`, `sqlx::Postgres`).
    type Db: sqlx::Database;

    /// The store's connection pool.
    fn pool(&self) -> &sqlx::Pool<Self::Db>;

    /// Starts a transaction suited to appending (SQLite: `BEGIN IMMEDIATE`).
    fn begin(&self) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>>> + Send;

    /// [`EventLog::append`] inside the caller's transaction. After the caller commits,
    /// [`SqlEventLog::notify_appended`] wakes subscribers at once (otherwise they
    /// notice at their next poll).
    ///
    /// ```no_run
    /// use keel_core::{CloudEvent, ExpectedVersion, StreamId};
    /// use keel_store::SqlEventLog;
    ///
    /// /// The service's own writes and the event commit together, or neither does.
    /// async fn ship<L: SqlEventLog>(log: &L, shipped: CloudEvent) -> Result<(), Box<dyn std::error::Error>> {
    ///     let mut tx = log.begin().await?;
    ///     // ... the service's own statements on `&mut *tx` ...
    ///     let stream = StreamId::new("order-42")?;
    ///     log.append_in(&mut *tx, &stream, ExpectedVersion::StreamExists, &[shipped]).await?;
    ///     tx.commit().await?;
    ///     log.notify_appended();
    ///     Ok(())
    /// }
    /// ```
    fn append_in(
        &self,
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[CloudEvent],
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// Stores a checkpoint inside the caller's transaction.
    fn save_checkpoint_in(
        &self,
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        name: &str,
        cursor: Cursor,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Moves a checkpoint inside the caller's transaction from `from`, where the caller
    /// last stored it (`None`: no checkpoint stored), to `to`: a compare-and-set. Fails
    /// with [`crate::StoreError::CheckpointMoved`] if another writer moved it
    /// meanwhile; the caller then rolls back. On PostgreSQL a concurrent mover's
    /// transaction is waited for, so of two writers moving from the same cursor only
    /// one commits.
    fn move_checkpoint_in(
        &self,
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        name: &str,
        from: Option<Cursor>,
        to: Cursor,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Deletes a checkpoint inside the caller's transaction.
    fn delete_checkpoint_in(
        &self,
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        name: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Records, inside the caller's transaction, that `subscriber` skipped `event`
    /// because it could not read it (`keel_skipped`; recording it again replaces the
    /// reason).
    fn record_skip_in(
        &self,
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        subscriber: &str,
        event: &LogEvent,
        reason: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Deletes the skip records of `subscriber` inside the caller's transaction (a
    /// rebuild starts over).
    fn clear_skips_in(
        &self,
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        subscriber: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Moves the skip records of `from` to `to` inside the caller's transaction,
    /// replacing those `to` had (a rebuilt generation's skips become the live one's).
    fn move_skips_in(
        &self,
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        from: &str,
        to: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Creates, inside the caller's transaction, the empty table `shadow` with the
    /// columns, constraints and indexes of the table `live` (dropping any `shadow`
    /// left from before): a new generation of a read model's table. PostgreSQL:
    /// `CREATE TABLE .. (LIKE .. INCLUDING ALL)`; SQLite: the live table's and
    /// indexes' `CREATE` statements from `sqlite_schema`, renamed.
    fn create_shadow_table_in(
        &self,
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        live: &str,
        shadow: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Replaces, inside the caller's transaction, the table `live` with `shadow`:
    /// drops `live` and renames `shadow` to `live` (readers see one or the other).
    fn swap_table_in(
        &self,
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        live: &str,
        shadow: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Drops `table` if it exists, inside the caller's transaction.
    fn drop_table_in(
        &self,
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        table: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The blue/green rebuilds in progress (`keel_rebuilds`): projection names and
    /// their states, by name.
    fn rebuilds(&self) -> impl Future<Output = Result<Vec<(String, RebuildState)>>> + Send;

    /// Records the state of `projection`'s rebuild inside the caller's transaction
    /// (`None`: no rebuild in progress any more).
    fn set_rebuild_in(
        &self,
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        projection: &str,
        state: Option<RebuildState>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Lets the caller's transaction commit without waiting for its write to reach
    /// the disk, for work that is done again after a crash anyway: a rebuild's pages.
    /// A crash may lose the last such commits, but whole and in order (each page with
    /// its checkpoint), so the rebuild resumes from an earlier page; a later ordinary
    /// commit (the switch) waits for them all. PostgreSQL: `SET LOCAL
    /// synchronous_commit = off`. The default does nothing (SQLite in WAL mode with
    /// `synchronous = NORMAL` does not wait for the disk at commit already).
    fn relax_commit_in(
        &self,
        conn: &mut <Self::Db as sqlx::Database>::Connection,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = conn;
        async { Ok(()) }
    }

    /// Tells subscribers that a transaction with appends has committed (to topics
    /// not known here: every subscriber is woken).
    fn notify_appended(&self);

    /// Tells subscribers that a transaction with appends to `topics` (and no others)
    /// has committed: only those topics' followers and whole-log subscribers are woken.
    fn notify_appended_to(&self, topics: &[&str]) {
        let _ = topics;
        self.notify_appended();
    }
}

/// `name` quoted as an SQL identifier (the same in both dialects).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// What [`SqlEventLog::swap_table_in`] does, written once: the statements are the same
/// in both dialects (`DROP TABLE`, `ALTER TABLE .. RENAME TO`), and both make DDL part
/// of the caller's transaction.
pub async fn swap_table<Db>(conn: &mut Db::Connection, live: &str, shadow: &str) -> Result<()>
where
    Db: sqlx::Database,
    for<'c> &'c mut Db::Connection: sqlx::Executor<'c, Database = Db>,
{
    use sqlx::Executor as _;
    let drop = format!("DROP TABLE {}", quote_ident(live));
    conn.execute(drop.as_str()).await?;
    let rename = format!("ALTER TABLE {} RENAME TO {}", quote_ident(shadow), quote_ident(live));
    conn.execute(rename.as_str()).await?;
    Ok(())
}

/// What [`SqlEventLog::drop_table_in`] does, written once (the same statement in both
/// dialects).
pub async fn drop_table<Db>(conn: &mut Db::Connection, table: &str) -> Result<()>
where
    Db: sqlx::Database,
    for<'c> &'c mut Db::Connection: sqlx::Executor<'c, Database = Db>,
{
    use sqlx::Executor as _;
    let drop = format!("DROP TABLE IF EXISTS {}", quote_ident(table));
    conn.execute(drop.as_str()).await?;
    Ok(())
}
