//! `keel schema export` and `keel schema check`, and the skips `keel status` counts,
//! on SQLite. The README's hand-written `keel publish order.placed --data '{"total":12}'`
//! is the unreadable event: the check reports it (and fails), a projection with the
//! default policy skips and records it, and `keel status` shows the skip.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use async_trait::async_trait;
use keel_bus::HandlerError;
use keel_core::CloudEvent;
use keel_services_common::events::OrderPlaced;
use keel_sqlite::SqliteEventLog;
use keel_store::{Projection, ProjectionRunner, Tables};
use sqlx::{Sqlite, SqliteConnection};

struct Keel {
    dir: PathBuf,
    database_url: String,
}

impl Keel {
    fn sqlite() -> Self {
        let dir =
            std::env::temp_dir().join(format!("keel-schema-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self { database_url: format!("sqlite://{}/keel.db", dir.display()), dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .current_dir(&self.dir)
            .env("KEEL_DATABASE_URL", &self.database_url)
            .env_remove("KEEL_BUS_URL")
            .output()
            .expect("run keel")
    }

    fn json(&self, args: &[&str]) -> (bool, serde_json::Value) {
        let mut all = args.to_vec();
        all.push("--json");
        let output = self.run(&all);
        let stdout = String::from_utf8(output.stdout).expect("utf8");
        let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "keel {args:?}: no JSON ({e}): {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.success(), value)
    }
}

#[test]
fn export_prints_a_schema_per_event_type() {
    let keel = Keel::sqlite();
    let (ok, schemas) = keel.json(&["schema", "export"]);
    assert!(ok);
    let schemas = schemas.as_array().expect("an array");
    assert_eq!(schemas.len(), 10, "every event type of the example system");
    assert!(
        schemas.iter().any(|s| s["event_type"] == "order.deadline_passed"),
        "the orders saga's deadline event is in the catalog"
    );
    let placed = schemas.iter().find(|s| s["event_type"] == "order.placed").expect("order.placed");
    assert_eq!(placed["version"], 1);
    let required = placed["schema"]["required"].as_array().expect("required");
    for field in ["order_id", "user_id", "items"] {
        assert!(required.contains(&field.into()), "{placed}");
    }
}

/// Reads `order.placed` events as the users service does.
struct PlacedReader;

#[async_trait]
impl Projection<Sqlite> for PlacedReader {
    fn name(&self) -> &str {
        "placed-reader"
    }

    fn tables(&self) -> &[&str] {
        &[]
    }

    async fn apply(
        &self,
        _: &mut SqliteConnection,
        _: &Tables,
        event: &CloudEvent,
    ) -> Result<(), HandlerError> {
        if event.ty() == "order.placed" {
            let _: OrderPlaced = event.decode()?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_readme_bad_publish_and_status_counts_its_skip() {
    let keel = Keel::sqlite();
    let good = r#"{"order_id":"o-2","user_id":"u-1","items":[{"product_id":"p-1","quantity":1}]}"#;
    for (stream, data) in [("order-1", r#"{"total":12}"#), ("order-2", good)] {
        let output = keel.run(&["publish", "order.placed", "--stream", stream, "--data", data]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }

    let (ok, report) = keel.json(&["schema", "check"]);
    assert!(!ok, "unreadable events fail the check: {report}");
    assert_eq!(report["unreadable"], 1, "{report}");
    let group = report["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["type"] == "order.placed"))
        .expect("order.placed group");
    assert_eq!((group["events"].as_u64(), group["unreadable"].as_u64()), (Some(2), Some(1)));
    let reason = group["first_unreadable"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("missing field `order_id`"), "{reason}");

    // A projection with the default policy skips the event and records it.
    let log = Arc::new(SqliteEventLog::connect(&keel.database_url).await.expect("open"));
    let runner = ProjectionRunner::new(log.clone(), Arc::new(PlacedReader));
    assert_eq!(runner.catch_up().await.expect("the projection goes past it"), 2);
    drop(runner);
    drop(log);

    let (ok, status) = keel.json(&["status"]);
    assert!(ok);
    assert_eq!(status["skipped"]["projection:placed-reader"], 1, "{status}");
    let row = status["checkpoints"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == "projection:placed-reader"))
        .expect("the projection's checkpoint");
    assert_eq!(row["skipped"], 1, "{status}");
    let text = String::from_utf8(keel.run(&["status"]).stdout).expect("utf8");
    assert!(text.contains("1 event(s) skipped as unreadable"), "{text}");
}
