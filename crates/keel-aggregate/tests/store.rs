//! The repository against real stores: SQLite on every run, PostgreSQL with the
//! `integration` feature. Each case is a function of a fresh database; the modules at
//! the bottom run them per store.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Account, Command, Deposited, deposit, open};
use keel_aggregate::{Error, Repository, SnapshotUse};
use keel_core::{CloudEvent, ExpectedVersion, StreamId, StreamVersion};
use keel_sql::{Db, args};

/// A fresh SQLite database in a file of its own (several connections, as in a service).
async fn sqlite() -> Db {
    let path = std::env::temp_dir().join(format!("keel-aggregate-{}.db", uuid::Uuid::now_v7()));
    Db::connect(&format!("sqlite://{}", path.display())).await.unwrap()
}

/// A fresh PostgreSQL database.
#[cfg(feature = "integration")]
async fn postgres() -> Db {
    Db::connect(&keel_testkit::postgres::fresh_database("aggregate").await).await.unwrap()
}

fn stream(id: &str) -> StreamId {
    StreamId::new(format!("account-{id}")).unwrap()
}

fn versions(events: &[CloudEvent]) -> Vec<u64> {
    events.iter().map(|e| e.stream_version().unwrap().0).collect()
}

/// Commands append with versions in order; a refused one writes nothing; a load
/// folds the stream.
async fn commands_append_in_order_and_load_folds(db: Db) {
    let accounts = Repository::<Account>::new(db.clone());
    let opened = accounts.execute("a", &open("a")).await.unwrap();
    assert_eq!((opened.version, opened.attempts), (StreamVersion(1), 1));
    for cents in [10, 20, 30] {
        accounts.execute("a", &deposit(cents)).await.unwrap();
    }
    let refused = accounts.execute("a", &Command::Withdraw { cents: 61 }).await.unwrap_err();
    assert_eq!(
        refused.rejection(),
        Some(&common::AccountError::Insufficient { balance: 60, wanted: 61 })
    );
    let events = db.read_stream(&stream("a")).await.unwrap();
    assert_eq!(versions(&events), [1, 2, 3, 4]);
    assert_eq!(events[1].ty(), "account.deposited");
    assert_eq!(events[1].source(), "/account");
    assert_eq!(events[1].partition_key(), Some("a"));
    let loaded = accounts.load("a").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (60, StreamVersion(4)));
    assert_eq!(loaded.snapshot, SnapshotUse::None);
    let nothing = accounts.load("nobody").await.unwrap();
    assert_eq!((nothing.state, nothing.version), (Account::default(), StreamVersion::NONE));
}

/// Two handlers on one stream: the second appends while the first's transaction is
/// open. Both succeed, in order. On PostgreSQL the second reads before the first
/// commits, conflicts on the version and is tried again (`expect_retry`); on SQLite it
/// waits for the write lock instead.
async fn concurrent_handlers_both_succeed_in_order(db: Db, expect_retry: bool) {
    let accounts = Repository::<Account>::new(db.clone());
    accounts.execute("c", &open("c")).await.unwrap();
    let mut first = db.begin().await.unwrap();
    let mine = accounts.execute_in(&mut first, "c", &deposit(1)).await.unwrap();
    assert_eq!(mine.version, StreamVersion(2));
    let second = tokio::spawn({
        let accounts = accounts.clone();
        async move { accounts.execute("c", &deposit(2)).await.unwrap() }
    });
    if expect_retry {
        wait_for_a_blocked_insert(&db).await;
    }
    first.commit().await.unwrap();
    let second = second.await.unwrap();
    assert_eq!(second.version, StreamVersion(3));
    assert_eq!(second.state.balance, 3, "the retry handled the command on the winner's state");
    if expect_retry {
        assert_eq!(second.attempts, 2);
    }
    let events = db.read_stream(&stream("c")).await.unwrap();
    assert_eq!(versions(&events), [1, 2, 3]);
    let cents: Vec<i64> =
        events[1..].iter().map(|e| e.decode::<Deposited>().unwrap().cents).collect();
    assert_eq!(cents, [1, 2]);
}

/// Many handlers at once on one stream: every command lands exactly once.
async fn many_concurrent_commands_all_land(db: Db) {
    let accounts = Repository::<Account>::new(db.clone());
    accounts.execute("m", &open("m")).await.unwrap();
    let mut tasks = Vec::new();
    for cents in 1..=20 {
        let accounts = accounts.clone();
        tasks.push(tokio::spawn(async move { accounts.execute("m", &deposit(cents)).await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let loaded = accounts.load("m").await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (StreamVersion(21), (1..=20).sum()));
}

/// The same inside callers' transactions: a conflict is tried again from a savepoint,
/// and the caller's own write commits with the events.
async fn a_conflict_inside_the_callers_transaction_is_tried_again(db: Db, expect_retry: bool) {
    create_audit(&db).await;
    let accounts = Repository::<Account>::new(db.clone());
    accounts.execute("t", &open("t")).await.unwrap();
    let mut first = db.begin().await.unwrap();
    accounts.execute_in(&mut first, "t", &deposit(1)).await.unwrap();
    let second = tokio::spawn({
        let accounts = accounts.clone();
        let db = db.clone();
        async move {
            let mut tx = db.begin().await.unwrap();
            tx.execute("INSERT INTO audit (what) VALUES ($1)", args!["second"]).await.unwrap();
            let executed = accounts.execute_in(&mut tx, "t", &deposit(2)).await.unwrap();
            tx.commit().await.unwrap();
            executed
        }
    });
    if expect_retry {
        wait_for_a_blocked_insert(&db).await;
    }
    first.commit().await.unwrap();
    let second = second.await.unwrap();
    assert_eq!((second.version, second.state.balance), (StreamVersion(3), 3));
    if expect_retry {
        assert_eq!(second.attempts, 2);
    }
    let audit: Vec<(String,)> = db.fetch_all("SELECT what FROM audit", Vec::new()).await.unwrap();
    assert_eq!(audit, [("second".to_owned(),)]);
}

/// Snapshots every 3 events, in the append's transaction; a load starts from the
/// latest and equals a load from the events alone.
async fn snapshots_every_n_and_load_from_them(db: Db) {
    let accounts = Repository::<Account>::new(db.clone()).snapshot_every(3);
    let mut taken = Vec::new();
    let opened = accounts.execute("s", &open("s")).await.unwrap();
    assert!(!opened.snapshot_taken);
    for cents in 1..=7 {
        let executed = accounts.execute("s", &deposit(cents)).await.unwrap();
        if executed.snapshot_taken {
            taken.push(executed.version.0);
        }
    }
    assert_eq!(taken, [3, 6]);
    let row: Option<(i64, i64)> = db
        .fetch_optional(
            "SELECT version, snapshot_version FROM keel_snapshots WHERE stream_id = $1",
            args!["account-s"],
        )
        .await
        .unwrap();
    assert_eq!(row, Some((6, 1)));
    let from_snapshot = accounts.load("s").await.unwrap();
    assert_eq!(from_snapshot.snapshot, SnapshotUse::Used(StreamVersion(6)));
    let from_events = Repository::<Account>::new(db.clone()).load("s").await.unwrap();
    assert_eq!(from_events.snapshot, SnapshotUse::None);
    assert_eq!(from_snapshot.state, from_events.state);
    assert_eq!(from_snapshot.version, from_events.version);
    assert_eq!(from_events.state.balance, 28);

    // The load really starts from the stored state (events 1..=6 are not read again).
    let mut tx = db.begin().await.unwrap();
    tx.execute("UPDATE keel_snapshots SET version = 7 WHERE stream_id = $1", args!["account-s"])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let skipped = accounts.load("s").await.unwrap();
    // Version 7 is the deposit of 6: the load took it as already in the state.
    assert_eq!(skipped.state.balance, 28 - 6, "the load started after version 7");
}

/// A snapshot the code cannot read (another format version, or a state that does not
/// deserialize) is discarded: the state comes from the events, and the next command
/// stores a readable one.
async fn a_bad_snapshot_is_discarded(db: Db, unreadable_state_sql: &str) {
    let accounts = Repository::<Account>::new(db.clone()).snapshot_every(2);
    accounts.execute("b", &open("b")).await.unwrap();
    for cents in [5, 6, 7] {
        accounts.execute("b", &deposit(cents)).await.unwrap();
    }
    let truth = Repository::<Account>::new(db.clone()).load("b").await.unwrap();

    let mut tx = db.begin().await.unwrap();
    tx.execute("UPDATE keel_snapshots SET snapshot_version = 99", Vec::new()).await.unwrap();
    tx.commit().await.unwrap();
    let loaded = accounts.load("b").await.unwrap();
    assert!(
        matches!(&loaded.snapshot, SnapshotUse::Discarded(why) if why.contains("version 99")),
        "{:?}",
        loaded.snapshot
    );
    assert_eq!((loaded.state, loaded.version), (truth.state.clone(), truth.version));

    let mut tx = db.begin().await.unwrap();
    tx.execute("UPDATE keel_snapshots SET snapshot_version = 1", Vec::new()).await.unwrap();
    tx.execute(unreadable_state_sql, Vec::new()).await.unwrap();
    tx.commit().await.unwrap();
    let loaded = accounts.load("b").await.unwrap();
    assert!(
        matches!(&loaded.snapshot, SnapshotUse::Discarded(why) if why.contains("deserialize")),
        "{:?}",
        loaded.snapshot
    );
    assert_eq!(loaded.state, truth.state);

    let repaired = accounts.execute("b", &deposit(1)).await.unwrap();
    assert!(repaired.snapshot_taken, "a command after a discarded snapshot stores a new one");
    let loaded = accounts.load("b").await.unwrap();
    assert_eq!(loaded.snapshot, SnapshotUse::Used(StreamVersion(5)));
    assert_eq!(loaded.state.balance, truth.state.balance + 1);
}

/// The events and the snapshot are written in the caller's transaction: a rollback
/// leaves nothing, a commit keeps the caller's row and the events together. A refused
/// command leaves the transaction usable.
async fn the_append_is_in_the_callers_transaction(db: Db) {
    create_audit(&db).await;
    let accounts = Repository::<Account>::new(db.clone()).snapshot_every(1);

    let mut tx = db.begin().await.unwrap();
    tx.execute("INSERT INTO audit (what) VALUES ($1)", args!["open r"]).await.unwrap();
    let executed = accounts.execute_in(&mut tx, "r", &open("r")).await.unwrap();
    assert!(executed.snapshot_taken);
    let inside = accounts.load_in(&mut tx, "r").await.unwrap();
    assert_eq!(inside.version, StreamVersion(1), "the transaction sees its own append");
    drop(tx);
    assert_eq!(accounts.load("r").await.unwrap().version, StreamVersion::NONE);
    assert!(db.read_stream(&stream("r")).await.unwrap().is_empty());
    let counts: Option<(i64, i64)> = db
        .fetch_optional(
            "SELECT (SELECT COUNT(*) FROM audit), (SELECT COUNT(*) FROM keel_snapshots)",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(counts, Some((0, 0)));

    let mut tx = db.begin().await.unwrap();
    tx.execute("INSERT INTO audit (what) VALUES ($1)", args!["open r"]).await.unwrap();
    accounts.execute_in(&mut tx, "r", &open("r")).await.unwrap();
    let refused = accounts.execute_in(&mut tx, "r", &open("r")).await.unwrap_err();
    assert!(matches!(refused, Error::Rejected(common::AccountError::AlreadyOpen)), "{refused}");
    accounts.execute_in(&mut tx, "r", &deposit(4)).await.unwrap();
    tx.commit().await.unwrap();
    let loaded = accounts.load("r").await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (StreamVersion(2), 4));
    assert_eq!(loaded.snapshot, SnapshotUse::Used(StreamVersion(2)));
    let audit: Vec<(String,)> = db.fetch_all("SELECT what FROM audit", Vec::new()).await.unwrap();
    assert_eq!(audit.len(), 1);
}

/// An event the aggregate cannot decode stops the load with an error naming it.
async fn an_undecodable_event_is_a_clear_error(db: Db) {
    let accounts = Repository::<Account>::new(db.clone());
    accounts.execute("u", &open("u")).await.unwrap();
    let stray = CloudEvent::builder("account.frozen", "/elsewhere").build().unwrap();
    let id = stray.id().to_owned();
    db.log().append(&stream("u"), ExpectedVersion::Any, &[stray]).await.unwrap();
    let error = accounts.load("u").await.unwrap_err();
    assert!(
        matches!(&error, Error::Decode { version, event_id, .. } if *version == StreamVersion(2) && *event_id == id),
        "{error}"
    );
    let error = accounts.execute("u", &deposit(1)).await.unwrap_err();
    assert!(matches!(error, Error::Decode { .. }), "{error}");
    let bad_id = accounts.load("u\n").await.unwrap_err();
    assert!(matches!(&bad_id, Error::InvalidId { id, .. } if id == "u\n"), "{bad_id}");
}

async fn create_audit(db: &Db) {
    let mut tx = db.begin().await.unwrap();
    tx.execute("CREATE TABLE audit (what TEXT NOT NULL)", Vec::new()).await.unwrap();
    tx.commit().await.unwrap();
}

/// Waits until a PostgreSQL backend on this database waits for a lock (the second
/// writer's insert waiting on the first's uncommitted version).
#[cfg_attr(not(feature = "integration"), allow(dead_code))]
async fn wait_for_a_blocked_insert(db: &Db) {
    for _ in 0..1000 {
        let waiting: Option<(i64,)> = db
            .fetch_optional(
                "SELECT COUNT(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                Vec::new(),
            )
            .await
            .unwrap();
        if waiting.is_some_and(|(n,)| n > 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the second writer never waited for the first");
}

mod sqlite {
    use super::*;

    const UNREADABLE: &str = "UPDATE keel_snapshots SET state = '{\"balance\": \"lots\"}'";

    #[tokio::test]
    async fn commands_append_in_order_and_load_folds() {
        super::commands_append_in_order_and_load_folds(sqlite().await).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_handlers_both_succeed_in_order() {
        super::concurrent_handlers_both_succeed_in_order(sqlite().await, false).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_commands_all_land() {
        super::many_concurrent_commands_all_land(sqlite().await).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conflict_inside_the_callers_transaction_is_tried_again() {
        super::a_conflict_inside_the_callers_transaction_is_tried_again(sqlite().await, false)
            .await;
    }
    #[tokio::test]
    async fn snapshots_every_n_and_load_from_them() {
        super::snapshots_every_n_and_load_from_them(sqlite().await).await;
    }
    #[tokio::test]
    async fn a_bad_snapshot_is_discarded() {
        super::a_bad_snapshot_is_discarded(sqlite().await, UNREADABLE).await;
    }
    #[tokio::test]
    async fn the_append_is_in_the_callers_transaction() {
        super::the_append_is_in_the_callers_transaction(sqlite().await).await;
    }
    /// In memory, SQLite has one connection, which the caller's transaction holds:
    /// the command must read inside it.
    #[tokio::test]
    async fn the_append_is_in_the_callers_transaction_in_memory() {
        let db = Db::connect("sqlite::memory:").await.unwrap();
        super::the_append_is_in_the_callers_transaction(db).await;
    }
    #[tokio::test]
    async fn an_undecodable_event_is_a_clear_error() {
        super::an_undecodable_event_is_a_clear_error(sqlite().await).await;
    }
}

#[cfg(feature = "integration")]
mod postgres {
    use super::*;

    const UNREADABLE: &str =
        "UPDATE keel_snapshots SET state = CAST('{\"balance\": \"lots\"}' AS JSONB)";

    #[tokio::test]
    async fn commands_append_in_order_and_load_folds() {
        super::commands_append_in_order_and_load_folds(postgres().await).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_handlers_both_succeed_in_order() {
        super::concurrent_handlers_both_succeed_in_order(postgres().await, true).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_commands_all_land() {
        super::many_concurrent_commands_all_land(postgres().await).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conflict_inside_the_callers_transaction_is_tried_again() {
        super::a_conflict_inside_the_callers_transaction_is_tried_again(postgres().await, true)
            .await;
    }
    #[tokio::test]
    async fn snapshots_every_n_and_load_from_them() {
        super::snapshots_every_n_and_load_from_them(postgres().await).await;
    }
    #[tokio::test]
    async fn a_bad_snapshot_is_discarded() {
        super::a_bad_snapshot_is_discarded(postgres().await, UNREADABLE).await;
    }
    #[tokio::test]
    async fn the_append_is_in_the_callers_transaction() {
        super::the_append_is_in_the_callers_transaction(postgres().await).await;
    }
    #[tokio::test]
    async fn an_undecodable_event_is_a_clear_error() {
        super::an_undecodable_event_is_a_clear_error(postgres().await).await;
    }
}
