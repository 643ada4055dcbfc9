//! Snapshots: the policy, and the `keel_snapshots` rows (the latest per stream).

use std::num::NonZeroU64;

use keel_core::{StreamId, StreamVersion};
use keel_sql::{Dialect, Tx, args};

use crate::aggregate::Aggregate;
use crate::stream::Reader;

/// When a [`crate::Repository`] stores snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Snapshots {
    /// Never: loads fold the whole stream and read no snapshot (the default).
    #[default]
    Off,
    /// Each time an append crosses a multiple of N events (in the append's
    /// transaction); loads start from the latest snapshot.
    Every(NonZeroU64),
}

impl Snapshots {
    /// Whether an append from version `before` to `after` takes a snapshot.
    pub(crate) fn due(self, before: StreamVersion, after: StreamVersion) -> bool {
        match self {
            Self::Off => false,
            Self::Every(n) => after.0 / n.get() > before.0 / n.get(),
        }
    }
}

/// What a load made of the stream's snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotUse {
    /// None was read: snapshots are off, or the stream has none.
    None,
    /// The state started from the snapshot at this version.
    Used(StreamVersion),
    /// The snapshot could not be read (why is given) and the state was folded from
    /// the first event; the next command stores a readable one.
    Discarded(String),
}

/// The stream's snapshot row when snapshots are on: the state it holds and its
/// version, or why it cannot be used.
pub(crate) async fn read<A: Aggregate>(
    reader: &mut Reader<'_>,
    stream: &StreamId,
) -> keel_sql::Result<(Option<(A, StreamVersion)>, SnapshotUse)> {
    let row: Option<(i64, i64, String)> = reader
        .fetch_optional(
            "SELECT version, snapshot_version, CAST(state AS TEXT) FROM keel_snapshots
             WHERE stream_id = $1",
            args![stream.as_str()],
        )
        .await?;
    let Some((version, format, state)) = row else { return Ok((None, SnapshotUse::None)) };
    let discarded = |why: String| {
        tracing::info!(%stream, version, "snapshot discarded, folding the stream instead: {why}");
        Ok((None, SnapshotUse::Discarded(why)))
    };
    if format != i64::from(A::SNAPSHOT_VERSION) {
        return discarded(format!(
            "its format is version {format}, the code reads version {}",
            A::SNAPSHOT_VERSION
        ));
    }
    let Ok(version) = u64::try_from(version) else {
        return discarded(format!("its stream version {version} is negative"));
    };
    match serde_json::from_str::<A>(&state) {
        Ok(state) => {
            let version = StreamVersion(version);
            Ok((Some((state, version)), SnapshotUse::Used(version)))
        }
        Err(e) => discarded(format!("its state does not deserialize: {e}")),
    }
}

/// Stores `state` at `version` as the stream's snapshot in `tx`, replacing an older
/// one. A state that does not serialize is logged and skipped: a snapshot only saves
/// time, and the command it follows must not fail for it.
pub(crate) async fn write<A: Aggregate>(
    tx: &mut Tx,
    stream: &StreamId,
    version: StreamVersion,
    state: &A,
) -> keel_sql::Result<bool> {
    let json = match serde_json::to_string(state) {
        Ok(json) => json,
        Err(e) => {
            tracing::warn!(%stream, %version, "snapshot skipped: the state does not serialize: {e}");
            return Ok(false);
        }
    };
    // The JSON column is written differently.
    let sql = match tx.dialect() {
        Dialect::Sqlite => UPSERT_SQLITE,
        Dialect::Postgres => UPSERT_POSTGRES,
    };
    let version = i64::try_from(version.0).unwrap_or(i64::MAX);
    tx.execute(sql, args![stream.as_str(), version, i64::from(A::SNAPSHOT_VERSION), json]).await?;
    Ok(true)
}

const UPSERT_SQLITE: &str = "
INSERT INTO keel_snapshots (stream_id, version, snapshot_version, state)
VALUES ($1, $2, $3, $4)
ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version,
    snapshot_version = excluded.snapshot_version, state = excluded.state,
    taken_at = CURRENT_TIMESTAMP
WHERE keel_snapshots.version <= excluded.version";

const UPSERT_POSTGRES: &str = "
INSERT INTO keel_snapshots (stream_id, version, snapshot_version, state)
VALUES ($1, $2, $3, CAST($4 AS JSONB))
ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version,
    snapshot_version = excluded.snapshot_version, state = excluded.state, taken_at = now()
WHERE keel_snapshots.version <= excluded.version";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_when_an_append_crosses_a_multiple() {
        let every = Snapshots::Every(NonZeroU64::MIN.saturating_add(2)); // 3
        let due = |a, b| every.due(StreamVersion(a), StreamVersion(b));
        assert!(!due(0, 2));
        assert!(due(2, 3));
        assert!(due(1, 4), "a batch across the multiple");
        assert!(!due(3, 5));
        assert!(due(5, 9), "a batch across two multiples takes one");
        assert!(!Snapshots::Off.due(StreamVersion(0), StreamVersion(1000)));
    }
}
