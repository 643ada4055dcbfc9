//! Projections (read model and checkpoint in one transaction, rebuild by replay, one
//! active runner) and the transactional inbox, against the real PostgreSQL.
#![cfg(feature = "integration")]

mod common;

/// Terminates the backend that holds the lease's advisory lock (a dropped connection,
/// as after a network failure): PostgreSQL releases the lock at once.
async fn break_lease(log: &keel_postgres::PgEventLog, name: &str) {
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 1
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND ((classid::bigint << 32) | objid::bigint)
               = hashtextextended('keel.lease.' || $1, 0)",
    )
    .bind(name)
    .fetch_all(common::pool(log))
    .await
    .expect("terminate the lease's connection");
    assert_eq!(terminated, vec![true], "one connection held the lease");
}

keel_testkit::projection_conformance! {
    db: sqlx::Postgres,
    log: keel_postgres::PgEventLog,
    fresh_log: common::fresh_log().await,
    inbox: keel_postgres::PgInbox,
    upsert: "INSERT INTO {counts} AS c (stream_id, events, last_version) VALUES ($1, 1, $2)
             ON CONFLICT (stream_id) DO UPDATE
             SET events = c.events + 1, last_version = excluded.last_version",
    insert_effect: "INSERT INTO effects (event_id) VALUES ($1)",
    break_lease: break_lease,
}

/// A rebuild's pages commit without waiting for the disk (a crash only sends the
/// rebuild back to an earlier page of its own), the live model's pages wait for it.
#[tokio::test]
async fn a_rebuilds_pages_commit_without_waiting_for_the_disk_and_live_pages_wait() {
    use std::sync::{Arc, Mutex};

    use keel_bus::HandlerError;
    use keel_core::{CloudEvent, ExpectedVersion, StreamId};
    use keel_store::{EventLog, Projection, ProjectionRunner, Tables};

    /// Records, per event, the `synchronous_commit` its page's transaction runs with.
    struct Commits(Arc<Mutex<Vec<String>>>);

    #[async_trait::async_trait]
    impl Projection<sqlx::Postgres> for Commits {
        fn name(&self) -> &str {
            "commits"
        }

        fn tables(&self) -> &[&str] {
            &["commits"]
        }

        async fn apply(
            &self,
            conn: &mut sqlx::PgConnection,
            tables: &Tables,
            event: &CloudEvent,
        ) -> Result<(), HandlerError> {
            let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
                .fetch_one(&mut *conn)
                .await
                .map_err(HandlerError::transient)?;
            sqlx::query(&tables.expand("INSERT INTO {commits} (id) VALUES ($1)"))
                .bind(event.id())
                .execute(&mut *conn)
                .await
                .map_err(HandlerError::transient)?;
            self.0.lock().expect("commits").push(setting);
            Ok(())
        }
    }

    let log = Arc::new(common::fresh_log().await);
    sqlx::query("CREATE TABLE commits (id TEXT PRIMARY KEY)")
        .execute(common::pool(&log))
        .await
        .expect("table");
    let stream = StreamId::new("commits-1").expect("stream");
    let events: Vec<CloudEvent> = (0..3)
        .map(|_| CloudEvent::builder("test.noted", "/test").build().expect("event"))
        .collect();
    log.append(&stream, ExpectedVersion::Any, &events).await.expect("append");

    let commits = Arc::new(Mutex::new(Vec::new()));
    let runner = ProjectionRunner::new(log.clone(), Arc::new(Commits(commits.clone())));
    assert_eq!(runner.catch_up().await.expect("catch up"), 3);
    assert_eq!(std::mem::take(&mut *commits.lock().expect("commits")), ["on"; 3]);

    let rebuilt = runner.rebuild(|_| {}).await.expect("rebuild");
    assert!(rebuilt.switched);
    assert_eq!(std::mem::take(&mut *commits.lock().expect("commits")), ["off"; 3]);

    // The setting is the transaction's own: the next live page waits for the disk again.
    let another = CloudEvent::builder("test.noted", "/test").build().expect("event");
    log.append(&stream, ExpectedVersion::Any, &[another]).await.expect("append");
    assert_eq!(runner.catch_up().await.expect("catch up"), 1);
    assert_eq!(*commits.lock().expect("commits"), ["on"]);
}

/// Requests' transactions share one place in the queue for the pool's connections:
/// with every connection busy and six requests already waiting, a consumer's inbox
/// transaction that arrives after them waits for at most one of them, not for all six
/// (first come, first served would put it last, and the consumers would fall behind
/// the clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_in_flight_waits_behind_one_request_at_most() {
    use keel_postgres::{PgEventLog, PgInbox, PgOptions};
    use keel_store::SqlEventLog as _;
    use keel_testkit::queueing;

    let url = common::fresh_database().await;
    let options =
        PgOptions { max_connections: 2, listen: false, notify: false, ..PgOptions::default() };
    let log = std::sync::Arc::new(PgEventLog::connect(&url, options).await.expect("connect"));
    let inbox = PgInbox::new(common::pool(&log).clone());
    // Both connections held; one comes free, the other stays held until the end.
    let (first, second) = (log.begin().await.expect("held"), log.begin().await.expect("held"));
    queueing::work_in_flight_waits_behind_one_request_at_most(
        || {
            let log = log.clone();
            async move { log.begin_request().await }
        },
        inbox,
        async move { first.commit().await.expect("commit") },
    )
    .await;
    second.commit().await.expect("commit");
}
