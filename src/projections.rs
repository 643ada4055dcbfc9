//! The projections this binary knows, by name, for `keel projections rebuild`:
//! `streams`, the stream index (`keel_stream_index`): one row per stream with its
//! category, version, last event type and position.
//!
//! A service's own projections are registered with its runner
//! (`keel::runtime::ServiceRunner::projection`) and rebuilt by its binary:
//! `<service-binary> projections rebuild NAME` (e.g. `keel-users projections rebuild
//! users-orders`), on the same `KEEL_DATABASE_URL`. `keel projections list` shows them
//! too, from their checkpoints in the database, saying so.

use std::sync::Arc;

use anyhow::bail;
use async_trait::async_trait;
use keel_bus::HandlerError;
use keel_core::{CloudEvent, StreamId};
use keel_store::{Cursor, Projection, ProjectionRunner, RebuildProgress, Rebuilt, Tables};
use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection};

use crate::backends::Store;

/// Names of the projections built into this binary.
pub fn names() -> Vec<&'static str> {
    vec![StreamIndex::NAME]
}

/// The projections whose checkpoints are in the store but which this binary does not
/// know (a service's), with their checkpoints.
pub async fn services_projections(store: &Store) -> anyhow::Result<Vec<(String, Cursor)>> {
    let checkpoints = store.log().checkpoints().await?;
    Ok(checkpoints
        .into_iter()
        .filter_map(|(name, cursor, _)| {
            let name = name.strip_prefix("projection:")?.to_owned();
            (!names().contains(&name.as_str())).then_some((name, cursor))
        })
        .collect())
}

/// How to rebuild projection `name`, which is not built into this binary.
pub fn elsewhere(name: &str, known_in_store: bool) -> String {
    let owner = if known_in_store {
        format!("`{name}` is a service's projection (its checkpoint is in this database)")
    } else {
        format!("unknown projection `{name}` (this binary's: {})", names().join(", "))
    };
    format!(
        "{owner}: a service's projections are rebuilt by its own binary, on the same \
         KEEL_DATABASE_URL: `<service-binary> projections rebuild {name}` (e.g. \
         `keel-users projections rebuild users-orders`); `<service-binary> projections \
         list` lists them"
    )
}

/// Rebuilds projection `name` on `store` blue/green, reporting progress (see
/// `keel_store::projection`), or with `discard`, drops an interrupted rebuild's
/// generation.
pub async fn rebuild(
    store: &Store,
    name: &str,
    discard: bool,
    progress: impl FnMut(RebuildProgress) + Send,
) -> anyhow::Result<Option<Rebuilt>> {
    if name != StreamIndex::NAME {
        let in_store = services_projections(store).await?.iter().any(|(n, _)| n == name);
        bail!("{}", elsewhere(name, in_store));
    }
    macro_rules! on_runner {
        ($log:expr) => {{
            let runner = ProjectionRunner::new($log.clone(), Arc::new(StreamIndex));
            if discard {
                runner.discard_rebuild().await?;
                None
            } else {
                Some(runner.rebuild(progress).await?)
            }
        }};
    }
    Ok(match store {
        Store::Postgres(log) => on_runner!(log),
        Store::Sqlite(log) => on_runner!(log),
    })
}

/// The stream index.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamIndex;

impl StreamIndex {
    pub const NAME: &'static str = "streams";

    /// The table, as the migrations create it.
    const TABLE: &'static str = "keel_stream_index";

    /// The upsert into the generation `tables`, with the placeholders of a dialect
    /// (`$n` or `?`).
    fn upsert(tables: &Tables, placeholder: fn(usize) -> String) -> String {
        let p: Vec<String> = (1..=6).map(placeholder).collect();
        format!(
            "INSERT INTO {} (stream_id, category, version, last_type, last_position, updated_at)
             VALUES ({}, {}, {}, {}, {}, {})
             ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, last_type = excluded.last_type,
                 last_position = excluded.last_position, updated_at = excluded.updated_at",
            tables.name(Self::TABLE),
            p[0], p[1], p[2], p[3], p[4], p[5]
        )
    }

    /// The row for `event`: (stream, category, version, type, position).
    fn row(event: &CloudEvent) -> Result<(String, String, i64, String, i64), HandlerError> {
        let stream =
            StreamId::new(event.subject().unwrap_or_default()).map_err(HandlerError::permanent)?;
        let version = event.stream_version().map_or(0, |v| i64::try_from(v.0).unwrap_or(i64::MAX));
        let position = event.position().map_or(0, |p| i64::try_from(p.0).unwrap_or(i64::MAX));
        Ok((
            stream.to_string(),
            stream.category().to_owned(),
            version,
            event.ty().to_owned(),
            position,
        ))
    }
}

#[async_trait]
impl Projection<Postgres> for StreamIndex {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn tables(&self) -> &[&str] {
        &[Self::TABLE]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        tables: &Tables,
        event: &CloudEvent,
    ) -> Result<(), HandlerError> {
        let (stream, category, version, ty, position) = Self::row(event)?;
        sqlx::query(&Self::upsert(tables, |n| format!("${n}")))
            .bind(stream)
            .bind(category)
            .bind(version)
            .bind(ty)
            .bind(position)
            .bind(event.time().unwrap_or_else(chrono::Utc::now))
            .execute(conn)
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }
}

#[async_trait]
impl Projection<Sqlite> for StreamIndex {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn tables(&self) -> &[&str] {
        &[Self::TABLE]
    }

    async fn apply(
        &self,
        conn: &mut SqliteConnection,
        tables: &Tables,
        event: &CloudEvent,
    ) -> Result<(), HandlerError> {
        let (stream, category, version, ty, position) = Self::row(event)?;
        sqlx::query(&Self::upsert(tables, |_| "?".to_owned()))
            .bind(stream)
            .bind(category)
            .bind(version)
            .bind(ty)
            .bind(position)
            .bind(event.time().unwrap_or_else(chrono::Utc::now).to_rfc3339())
            .execute(conn)
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }
}
