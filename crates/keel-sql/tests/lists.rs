//! List arguments (`Arg::TextList`, `Arg::IntList`) on both stores: a page of rows in
//! one statement, through a transaction and through a projection's `apply_batch`.
//! SQLite on every run, PostgreSQL with the `integration` feature.

#![allow(clippy::unwrap_used)]

use keel_bus::HandlerError;
use keel_core::{CloudEvent, ExpectedVersion, StreamId};
use keel_sql::{Conn, Db, Dialect, Projection, ProjectionSpec, args};

/// Texts JSON and SQL both have to escape, to show they arrive as they were sent.
const AWKWARD: [&str; 4] = ["plain", "it's \"quoted\"", "back\\slash, comma", "ünï 🦀"];

async fn sqlite() -> Db {
    let path = std::env::temp_dir().join(format!("keel-sql-lists-{}.db", uuid::Uuid::now_v7()));
    Db::connect(&format!("sqlite://{}", path.display())).await.unwrap()
}

#[cfg(feature = "integration")]
async fn postgres() -> Db {
    Db::connect(&keel_testkit::postgres::fresh_database("lists").await).await.unwrap()
}

/// The upsert of `(key, n)` pairs given as two lists, in each dialect's words.
fn upsert_pairs(dialect: Dialect, table: &str) -> String {
    match dialect {
        Dialect::Postgres => format!(
            "INSERT INTO {table} AS t (key, n) SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (key) DO UPDATE SET n = t.n + excluded.n"
        ),
        Dialect::Sqlite => format!(
            "INSERT INTO {table} AS t (key, n)
             SELECT k.value, $2 ->> k.key FROM json_each($1) AS k WHERE true
             ON CONFLICT (key) DO UPDATE SET n = t.n + excluded.n"
        ),
    }
}

async fn rows(db: &Db, table: &str) -> Vec<(String, i64)> {
    db.fetch_all(&format!("SELECT key, n FROM {table} ORDER BY key"), args![]).await.unwrap()
}

async fn lists_bind_a_page_of_rows_in_one_statement(db: Db) {
    let mut tx = db.begin().await.unwrap();
    tx.execute("CREATE TABLE pairs (key TEXT PRIMARY KEY, n BIGINT NOT NULL)", args![])
        .await
        .unwrap();
    let keys: Vec<String> = AWKWARD.iter().map(|s| (*s).to_owned()).collect();
    let sql = upsert_pairs(tx.dialect(), "pairs");
    let touched = tx.execute(&sql, args![keys.clone(), vec![1_i64, 2, 3, 4]]).await.unwrap();
    assert_eq!(touched, 4);
    // Again, onto the same keys, and an empty page, which writes nothing.
    tx.execute(&sql, args![keys, vec![10_i64, 20, 30, 40]]).await.unwrap();
    assert_eq!(tx.execute(&sql, args![Vec::<String>::new(), Vec::<i64>::new()]).await.unwrap(), 0);
    tx.commit().await.unwrap();
    let mut want: Vec<(String, i64)> =
        AWKWARD.iter().zip([11, 22, 33, 44]).map(|(k, n)| ((*k).to_owned(), n)).collect();
    want.sort();
    assert_eq!(rows(&db, "pairs").await, want);
}

/// Events per key (the event's data), a page in one upsert over list arguments.
struct PerStream;

#[async_trait::async_trait]
impl Projection for PerStream {
    fn name(&self) -> &str {
        "per-stream"
    }

    fn tables(&self) -> &[&str] {
        &["per_stream"]
    }

    async fn apply(&self, conn: &mut Conn<'_>, event: &CloudEvent) -> Result<(), HandlerError> {
        self.apply_batch(conn, &[event]).await
    }

    async fn apply_batch(
        &self,
        conn: &mut Conn<'_>,
        events: &[&CloudEvent],
    ) -> Result<(), HandlerError> {
        let mut counts = std::collections::BTreeMap::<String, i64>::new();
        for event in events {
            let key = String::from_utf8_lossy(event.data().map_or(&[][..], |d| &d[..]));
            *counts.entry(key.into_owned()).or_default() += 1;
        }
        let (keys, added): (Vec<String>, Vec<i64>) = counts.into_iter().unzip();
        let sql = upsert_pairs(conn.dialect(), "{per_stream}");
        conn.execute(&sql, args![keys, added]).await?;
        Ok(())
    }
}

async fn a_projection_writes_its_pages_with_lists_live_and_rebuilt(db: Db) {
    let mut tx = db.begin().await.unwrap();
    tx.execute("CREATE TABLE per_stream (key TEXT PRIMARY KEY, n BIGINT NOT NULL)", args![])
        .await
        .unwrap();
    for (i, name) in AWKWARD.iter().enumerate() {
        let stream = StreamId::new(format!("s-{i}")).unwrap();
        let events: Vec<CloudEvent> = (0..=i)
            .map(|_| {
                CloudEvent::builder("note.added", "/test")
                    .data("text/plain", *name)
                    .build()
                    .unwrap()
            })
            .collect();
        tx.append(&stream, ExpectedVersion::NoStream, &events).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut want: Vec<(String, i64)> =
        AWKWARD.iter().zip(1..).map(|(k, n)| ((*k).to_owned(), n)).collect();
    want.sort();

    // Pages of 3 events: several statements, a key split across pages.
    let spec = ProjectionSpec::new(PerStream).batch_size(3);
    assert_eq!(spec.catch_up(&db).await.unwrap(), 10);
    assert_eq!(rows(&db, "per_stream").await, want);
    let rebuilt = spec.rebuild(&db, |_| {}).await.unwrap();
    assert!(rebuilt.switched);
    assert_eq!(rows(&db, "per_stream").await, want, "the rebuilt generation equals the live one");
}

mod sqlite {
    #[tokio::test]
    async fn lists_bind_a_page_of_rows_in_one_statement() {
        super::lists_bind_a_page_of_rows_in_one_statement(super::sqlite().await).await;
    }

    #[tokio::test]
    async fn a_projection_writes_its_pages_with_lists_live_and_rebuilt() {
        super::a_projection_writes_its_pages_with_lists_live_and_rebuilt(super::sqlite().await)
            .await;
    }
}

#[cfg(feature = "integration")]
mod postgres {
    #[tokio::test]
    async fn lists_bind_a_page_of_rows_in_one_statement() {
        super::lists_bind_a_page_of_rows_in_one_statement(super::postgres().await).await;
    }

    #[tokio::test]
    async fn a_projection_writes_its_pages_with_lists_live_and_rebuilt() {
        super::a_projection_writes_its_pages_with_lists_live_and_rebuilt(super::postgres().await)
            .await;
    }
}
