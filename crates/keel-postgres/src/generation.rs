//! Blue/green generations of read-model tables (see `keel_store::projection`): a
//! shadow table made `LIKE` the live one, and the `keel_rebuilds` rows (the swap and
//! the drop are `keel_store::sql`'s, the same in both dialects).
//!
//! `LIKE .. INCLUDING ALL` copies columns, defaults, constraints, indexes and identity
//! columns (not foreign keys, not triggers). The shadow's indexes get names PostgreSQL
//! chooses from the shadow table's name, and keep them after the swap. A `serial`
//! column's default names the live table's sequence, which dropping the live table
//! drops with it: read models use identity columns (or none).

use keel_store::projection::RebuildState;
use keel_store::sql::quote_ident;
use keel_store::{Result, StoreError};
use sqlx::{PgConnection, PgPool};

pub(crate) async fn create_shadow(conn: &mut PgConnection, live: &str, shadow: &str) -> Result<()> {
    keel_store::sql::drop_table::<sqlx::Postgres>(conn, shadow).await?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = $1)",
    )
    .bind(live)
    .fetch_one(&mut *conn)
    .await?;
    if !exists {
        return Err(StoreError::Config(format!(
            "table `{live}` does not exist: a projection's tables are created by the \
             service's migrations, and a rebuild makes a new generation of each"
        )));
    }
    sqlx::query(&format!(
        "CREATE TABLE {} (LIKE {} INCLUDING ALL)",
        quote_ident(shadow),
        quote_ident(live)
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(crate) async fn move_skips(conn: &mut PgConnection, from: &str, to: &str) -> Result<()> {
    sqlx::query("DELETE FROM keel_skipped WHERE subscriber = $1")
        .bind(to)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE keel_skipped SET subscriber = $1 WHERE subscriber = $2")
        .bind(to)
        .bind(from)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(crate) async fn rebuilds(pool: &PgPool) -> Result<Vec<(String, RebuildState)>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT projection, state FROM keel_rebuilds ORDER BY projection")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, state)| Some((name, RebuildState::parse(&state)?)))
        .collect())
}

pub(crate) async fn set_rebuild(
    conn: &mut PgConnection,
    projection: &str,
    state: Option<RebuildState>,
) -> Result<()> {
    match state {
        Some(state) => sqlx::query(
            "INSERT INTO keel_rebuilds (projection, state) VALUES ($1, $2)
             ON CONFLICT (projection) DO UPDATE SET state = excluded.state",
        )
        .bind(projection)
        .bind(state.as_str()),
        None => sqlx::query("DELETE FROM keel_rebuilds WHERE projection = $1").bind(projection),
    }
    .execute(conn)
    .await?;
    Ok(())
}
