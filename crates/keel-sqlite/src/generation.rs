//! Blue/green generations of read-model tables (see `keel_store::projection`): a
//! shadow table made from the live table's `CREATE` statements in `sqlite_master`,
//! and the `keel_rebuilds` rows (the swap and the drop are `keel_store::sql`'s, the same
//! in both dialects).
//!
//! SQLite cannot rename an index, so a shadow index takes the live index's name with
//! `__keel_next` added, or removed when the live name has it: the names alternate from
//! one generation to the next instead of growing.

use chrono::Utc;
use keel_store::projection::RebuildState;
use keel_store::sql::quote_ident;
use keel_store::{Result, StoreError};
use sqlx::{SqliteConnection, SqlitePool};

const SUFFIX: &str = "__keel_next";

fn alternate(index: &str) -> String {
    index.strip_suffix(SUFFIX).map_or_else(|| format!("{index}{SUFFIX}"), str::to_owned)
}

/// `CREATE TABLE x (...)` as `CREATE TABLE "shadow" (...)`.
fn rename_table(sql: &str, shadow: &str) -> Option<String> {
    let open = sql.find('(')?;
    sql[..open]
        .trim_start()
        .to_ascii_uppercase()
        .starts_with("CREATE TABLE")
        .then(|| format!("CREATE TABLE {} {}", quote_ident(shadow), &sql[open..]))
}

/// `CREATE [UNIQUE] INDEX i ON t (...)` as the same index named `index` on `shadow`.
fn rename_index(sql: &str, index: &str, shadow: &str) -> Option<String> {
    let open = sql.find('(')?;
    let head = sql[..open].trim_start().to_ascii_uppercase();
    let unique = if head.starts_with("CREATE UNIQUE INDEX") {
        "UNIQUE "
    } else if head.starts_with("CREATE INDEX") {
        ""
    } else {
        return None;
    };
    Some(format!(
        "CREATE {unique}INDEX {} ON {} {}",
        quote_ident(index),
        quote_ident(shadow),
        &sql[open..]
    ))
}

pub(crate) async fn create_shadow(
    conn: &mut SqliteConnection,
    live: &str,
    shadow: &str,
) -> Result<()> {
    keel_store::sql::drop_table::<sqlx::Sqlite>(conn, shadow).await?;
    let table: Option<(String,)> =
        sqlx::query_as("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?")
            .bind(live)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((sql,)) = table else {
        return Err(StoreError::Config(format!(
            "table `{live}` does not exist: a projection's tables are created by the \
             service's migrations, and a rebuild makes a new generation of each"
        )));
    };
    let create = rename_table(&sql, shadow).ok_or_else(|| {
        StoreError::Config(format!("table `{live}`: cannot copy its definition `{sql}`"))
    })?;
    sqlx::query(&create).execute(&mut *conn).await?;
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master
         WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL ORDER BY name",
    )
    .bind(live)
    .fetch_all(&mut *conn)
    .await?;
    for (name, sql) in indexes {
        let create = rename_index(&sql, &alternate(&name), shadow).ok_or_else(|| {
            StoreError::Config(format!("index `{name}`: cannot copy its definition `{sql}`"))
        })?;
        sqlx::query(&create).execute(&mut *conn).await?;
    }
    Ok(())
}

pub(crate) async fn move_skips(conn: &mut SqliteConnection, from: &str, to: &str) -> Result<()> {
    sqlx::query("DELETE FROM keel_skipped WHERE subscriber = ?")
        .bind(to)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE keel_skipped SET subscriber = ? WHERE subscriber = ?")
        .bind(to)
        .bind(from)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(crate) async fn rebuilds(pool: &SqlitePool) -> Result<Vec<(String, RebuildState)>> {
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
    conn: &mut SqliteConnection,
    projection: &str,
    state: Option<RebuildState>,
) -> Result<()> {
    match state {
        Some(state) => sqlx::query(
            "INSERT INTO keel_rebuilds (projection, state, started_at) VALUES (?, ?, ?)
             ON CONFLICT (projection) DO UPDATE SET state = excluded.state",
        )
        .bind(projection)
        .bind(state.as_str())
        .bind(Utc::now().to_rfc3339()),
        None => sqlx::query("DELETE FROM keel_rebuilds WHERE projection = ?").bind(projection),
    }
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_renamed() {
        let table = "CREATE TABLE task_stats (id TEXT PRIMARY KEY, open INTEGER)";
        assert_eq!(
            rename_table(table, "task_stats__keel_next").as_deref(),
            Some("CREATE TABLE \"task_stats__keel_next\" (id TEXT PRIMARY KEY, open INTEGER)")
        );
        let index = "CREATE UNIQUE INDEX by_open ON task_stats (open) WHERE open > 0";
        assert_eq!(
            rename_index(index, &alternate("by_open"), "s").as_deref(),
            Some("CREATE UNIQUE INDEX \"by_open__keel_next\" ON \"s\" (open) WHERE open > 0")
        );
        assert_eq!(alternate("by_open__keel_next"), "by_open");
        assert_eq!(rename_table("CREATE VIEW v AS SELECT (1)", "s"), None);
    }
}
