//! The repository: load an aggregate, execute a command on it, append what it decided.

use std::marker::PhantomData;
use std::num::NonZeroU64;
use std::time::Duration;

use keel_bus::layer::current_context;
use keel_core::{Backoff, CloudEvent, ExpectedVersion, Position, StreamId, StreamVersion};
use keel_sql::{Db, Tx};
use keel_store::StoreError;

use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::snapshot::{self, SnapshotUse, Snapshots};
use crate::stream::{Reader, fold_stream};

/// How often a command is tried when another writer appends to its stream first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retry {
    /// Tries in all (at least 1).
    pub attempts: u32,
    /// The wait before each new try.
    pub backoff: Backoff,
}

impl Default for Retry {
    /// 10 tries, waiting 2 ms doubling up to 200 ms (with jitter).
    fn default() -> Self {
        Self {
            attempts: 10,
            backoff: Backoff::new(Duration::from_millis(2), Duration::from_millis(200)),
        }
    }
}

/// An aggregate as its stream (and snapshot) left it.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The version of the stream it was folded up to (`StreamVersion::NONE`: no
    /// stream yet).
    pub version: StreamVersion,
    /// Whether it started from a snapshot.
    pub snapshot: SnapshotUse,
}

/// What executing a command did.
#[derive(Clone, Debug)]
pub struct Executed<A> {
    /// The state after the new events.
    pub state: A,
    /// The stream's version after them (unchanged when the command decided none).
    pub version: StreamVersion,
    /// The appended envelopes (empty when the command decided no event).
    pub events: Vec<CloudEvent>,
    /// Their positions in the log.
    pub positions: Vec<Position>,
    /// Whether a snapshot was stored with them.
    pub snapshot_taken: bool,
    /// How many tries it took (more than 1 after version conflicts).
    pub attempts: u32,
}

/// Loads aggregates of type `A` from the log and executes commands on them. Cheap to
/// clone.
///
/// A command runs as: load (the latest snapshot when snapshots are on, then the
/// events after it), [`Aggregate::handle`], append the new events expecting the
/// version it loaded, store a snapshot when one is due, all in one transaction. If
/// another writer appended first, the command is tried again on the new state (up to
/// [`Retry::attempts`] tries, waiting [`Retry::backoff`] between them).
pub struct Repository<A> {
    db: Db,
    snapshots: Snapshots,
    retry: Retry,
    source: String,
    aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            snapshots: self.snapshots,
            retry: self.retry,
            source: self.source.clone(),
            aggregate: PhantomData,
        }
    }
}

impl<A> std::fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &std::any::type_name::<A>())
            .field("snapshots", &self.snapshots)
            .field("retry", &self.retry)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The end of one try: done, or a conflict worth another try.
enum Attempt<A> {
    Done(Executed<A>),
    Conflict(keel_sql::Error),
}

/// The savepoint that lets a conflict inside the caller's transaction be tried again
/// without aborting it (a unique violation aborts a PostgreSQL transaction).
const SAVEPOINT: &str = "keel_aggregate_command";

impl<A: Aggregate> Repository<A> {
    /// A repository over `db`: no snapshots, [`Retry::default`], events from source
    /// `/CATEGORY`.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            snapshots: Snapshots::Off,
            retry: Retry::default(),
            source: format!("/{}", A::CATEGORY),
            aggregate: PhantomData,
        }
    }

    /// Sets the snapshot policy.
    #[must_use]
    pub fn snapshots(mut self, snapshots: Snapshots) -> Self {
        self.snapshots = snapshots;
        self
    }

    /// Stores a snapshot every `n` events (0: never).
    #[must_use]
    pub fn snapshot_every(self, n: u64) -> Self {
        self.snapshots(NonZeroU64::new(n).map_or(Snapshots::Off, Snapshots::Every))
    }

    /// Sets how conflicts are retried.
    #[must_use]
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the CloudEvents `source` of the events appended (default `/CATEGORY`).
    #[must_use]
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The stream of aggregate `id`.
    pub fn stream_id(&self, id: &str) -> Result<StreamId, A::Error> {
        A::stream_id(id).map_err(|source| Error::InvalidId { id: id.to_owned(), source })
    }

    /// Loads aggregate `id` (a state at `StreamVersion::NONE` when it has no stream).
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, A::Error> {
        let stream = self.stream_id(id)?;
        self.load_from(&mut Reader::Db(&self.db), &stream).await
    }

    /// Loads aggregate `id` inside `tx` (seeing what `tx` wrote).
    pub async fn load_in(&self, tx: &mut Tx, id: &str) -> Result<Loaded<A>, A::Error> {
        let stream = self.stream_id(id)?;
        self.load_from(&mut Reader::Tx(tx), &stream).await
    }

    async fn load_from(
        &self,
        reader: &mut Reader<'_>,
        stream: &StreamId,
    ) -> Result<Loaded<A>, A::Error> {
        let (start, snapshot) = match self.snapshots {
            Snapshots::Off => (None, SnapshotUse::None),
            Snapshots::Every(_) => snapshot::read::<A>(reader, stream).await?,
        };
        let (mut state, from) = start.unwrap_or_default();
        let version = fold_stream(reader, stream, &mut state, from).await?;
        Ok(Loaded { state, version, snapshot })
    }

    /// Executes `command` on aggregate `id` in a transaction of its own, trying again
    /// in a new transaction after a version conflict (and after a transient database
    /// error before the commit).
    pub async fn execute(&self, id: &str, command: &A::Command) -> Result<Executed<A>, A::Error> {
        let stream = self.stream_id(id)?;
        let mut attempt = 1;
        loop {
            let mut tx = self.db.begin().await?;
            let retry = match self.attempt(&mut tx, &stream, command, attempt).await {
                Ok(Attempt::Done(executed)) => {
                    if !executed.events.is_empty() {
                        tx.commit().await?;
                    }
                    return Ok(executed);
                }
                Ok(Attempt::Conflict(e)) => e,
                Err(Error::Sql(e)) if e.is_retryable() => e,
                Err(e) => return Err(e),
            };
            drop(tx); // rolls back
            attempt = self.next_attempt(attempt, &stream, retry).await?;
        }
    }

    /// Executes `command` on aggregate `id` inside the caller's transaction: the events
    /// (and a due snapshot) commit or roll back with the caller's own writes.
    ///
    /// A version conflict that a new read can resolve (another transaction committed
    /// an append meanwhile) is tried again inside `tx`, from a savepoint, so `tx`
    /// stays usable. One that needs a new transaction (PostgreSQL's write-order
    /// refusal: the stream's last writer is younger than `tx`) is returned with
    /// [`Error::is_retryable`] true: roll back and run the whole transaction again.
    /// On any error the command's own reads and writes are undone and `tx` can go on.
    pub async fn execute_in(
        &self,
        tx: &mut Tx,
        id: &str,
        command: &A::Command,
    ) -> Result<Executed<A>, A::Error> {
        let stream = self.stream_id(id)?;
        let mut attempt = 1;
        loop {
            tx.execute(&format!("SAVEPOINT {SAVEPOINT}"), Vec::new()).await?;
            let outcome = self.attempt(tx, &stream, command, attempt).await;
            if !matches!(outcome, Ok(Attempt::Done(_))) {
                tx.execute(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"), Vec::new()).await?;
            }
            tx.execute(&format!("RELEASE SAVEPOINT {SAVEPOINT}"), Vec::new()).await?;
            let retry = match outcome {
                Ok(Attempt::Done(executed)) => return Ok(executed),
                Ok(Attempt::Conflict(e)) if retryable_in_transaction(&e) => e,
                Ok(Attempt::Conflict(e)) => return Err(Error::Sql(e)),
                Err(e) => return Err(e),
            };
            attempt = self.next_attempt(attempt, &stream, retry).await?;
        }
    }

    /// Waits before try `attempt + 1`, or gives up with `error` after the last try.
    async fn next_attempt(
        &self,
        attempt: u32,
        stream: &StreamId,
        error: keel_sql::Error,
    ) -> Result<u32, A::Error> {
        if attempt >= self.retry.attempts {
            tracing::warn!(%stream, attempt, "command gave up after conflicts: {error}");
            return Err(Error::Sql(error));
        }
        tracing::debug!(%stream, attempt, "command conflicted, trying again: {error}");
        tokio::time::sleep(self.retry.backoff.delay(attempt)).await;
        Ok(attempt + 1)
    }

    /// One try in `tx`: load, handle, append, snapshot.
    async fn attempt(
        &self,
        tx: &mut Tx,
        stream: &StreamId,
        command: &A::Command,
        attempt: u32,
    ) -> Result<Attempt<A>, A::Error> {
        let loaded = self.load_from(&mut Reader::Tx(tx), stream).await?;
        let decided = loaded.state.handle(command).map_err(Error::Rejected)?;
        let mut state = loaded.state;
        if decided.is_empty() {
            return Ok(Attempt::Done(Executed {
                state,
                version: loaded.version,
                events: Vec::new(),
                positions: Vec::new(),
                snapshot_taken: false,
                attempts: attempt,
            }));
        }
        let envelopes = decided.iter().map(|e| self.envelope(e)).collect::<Result<Vec<_>, _>>()?;
        let expected = if loaded.version == StreamVersion::NONE {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(loaded.version)
        };
        let appended = match tx.append(stream, expected, &envelopes).await {
            Ok(appended) => appended,
            Err(e) if e.is_conflict() => return Ok(Attempt::Conflict(e)),
            Err(e) => return Err(e.into()),
        };
        for event in &decided {
            state.apply(event);
        }
        let snapshot_taken =
            if self.snapshot_due(&loaded.snapshot, loaded.version, appended.version) {
                snapshot::write(tx, stream, appended.version, &state).await?
            } else {
                false
            };
        Ok(Attempt::Done(Executed {
            state,
            version: appended.version,
            events: envelopes,
            positions: appended.positions,
            snapshot_taken,
            attempts: attempt,
        }))
    }

    /// A snapshot is due when the append crossed a multiple of N, or when the stream
    /// has N events or more and no readable snapshot (snapshots just turned on, or the
    /// one stored was discarded).
    fn snapshot_due(
        &self,
        used: &SnapshotUse,
        before: StreamVersion,
        after: StreamVersion,
    ) -> bool {
        match self.snapshots {
            Snapshots::Off => false,
            Snapshots::Every(n) => {
                self.snapshots.due(before, after)
                    || (!matches!(used, SnapshotUse::Used(_)) && after.0 >= n.get())
            }
        }
    }

    /// The envelope of a new event, stamped with the current context (actor, trace,
    /// correlation, causation) when there is one.
    fn envelope(&self, event: &A::Event) -> Result<CloudEvent, A::Error> {
        let builder = CloudEvent::from_event(event, self.source.clone())
            .map_err(|e| Error::Encode(keel_sql::Error::Json(e)))?;
        let mut envelope =
            builder.build().map_err(|e| Error::Encode(keel_sql::Error::Event(e.to_string())))?;
        if let Some(context) = current_context() {
            context.apply(&mut envelope);
        }
        Ok(envelope)
    }
}

/// Conflicts a new read inside the same transaction can resolve: the expected version
/// was stale, or a concurrent writer of the same version committed first. A younger
/// last writer (write order) stays younger for the rest of this transaction.
fn retryable_in_transaction(error: &keel_sql::Error) -> bool {
    matches!(
        error,
        keel_sql::Error::Store(
            StoreError::VersionConflict { .. } | StoreError::ConcurrentAppend { .. }
        )
    )
}
