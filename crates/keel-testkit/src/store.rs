//! The store conformance suite: every event store passes the same cases.
//!
//! The concurrency cases script transactions in separate tasks with delays, so on a
//! store with concurrent writers (PostgreSQL) they commit out of position order, and on
//! a single-writer store (SQLite) they simply queue; either way a subscriber must see
//! every committed event exactly once and every stream in version order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures::StreamExt as _;
use keel_core::{CloudEvent, ExpectedVersion, Position, StreamId, StreamVersion};
use keel_store::{
    Cursor, Direction, EventLog, LogEvent, LogFilter, LogQuery, SqlEventLog, StoreError,
    SubscribeOptions, subscribe,
};

use crate::util::{eventually, unique};

/// What a store's test file provides.
pub trait StoreFactory: Send + Sync + 'static {
    type Log: SqlEventLog;

    /// A new, empty, migrated store.
    fn log(&self) -> impl Future<Output = Arc<Self::Log>> + Send;

    /// Makes the open transaction take its transaction id now (PostgreSQL:
    /// `pg_current_xact_id()`); a no-op where ids do not exist.
    fn take_transaction_id<'c>(
        &'c self,
        conn: &'c mut <<Self::Log as SqlEventLog>::Db as sqlx::Database>::Connection,
    ) -> impl Future<Output = ()> + Send + 'c;
}

/// Generates one `#[tokio::test]` per case for `factory`.
#[macro_export]
macro_rules! store_conformance {
    ($factory:expr) => {
        $crate::store_conformance!(@cases $factory;
            expected_version_rules,
            concurrent_appenders_to_one_stream,
            out_of_order_commits_and_a_rollback_while_polling,
            older_transaction_takes_a_higher_position,
            stream_inversion_is_refused_or_held_back,
            rounds_of_concurrent_appenders_with_delayed_commits,
            reads_streams_forward_and_backward,
            reads_the_log_from_a_position_and_from_a_time,
            ten_thousand_event_batch,
            replay_streams_the_log_in_position_order,
            unknown_types_come_back_as_raw_envelopes,
            subscription_from_a_position,
            checkpoints_and_leases,
            checkpoints_compare_and_set,
            duplicate_event_ids_are_refused,
            relay_publishes_the_log_in_order,
            relay_fails_over_to_a_standby,
            old_versions_read_back_upcast,
            causal_lineage
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let factory = $factory;
                $crate::store::$case(&factory).await;
            }
        )*
    };
}

fn stream(name: &str) -> StreamId {
    StreamId::new(name).expect("valid stream id")
}

fn numbered(n: u64) -> CloudEvent {
    CloudEvent::builder("keel.test.numbered", "/keel/testkit")
        .json_data(&serde_json::json!({ "n": n }))
        .expect("json")
        .build()
        .expect("valid")
}

/// A subscriber that records everything it sees, from the start of the log.
struct Recorder {
    seen: Arc<Mutex<Vec<LogEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    fn start<L: EventLog>(log: &Arc<L>) -> Self {
        let log: Arc<dyn EventLog> = log.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let options = SubscribeOptions {
            batch_size: 7,
            poll_interval: Duration::from_millis(10),
            ..SubscribeOptions::default()
        };
        let task = tokio::spawn(async move {
            let mut pages = subscribe(log, Cursor::START, LogFilter::default(), options);
            while let Some(page) = pages.next().await {
                if let Ok(page) = page {
                    sink.lock().expect("not poisoned").extend(page.events);
                }
            }
        });
        Self { seen, task }
    }

    fn ids(&self) -> Vec<String> {
        self.seen.lock().expect("not poisoned").iter().map(|e| e.event.id().to_owned()).collect()
    }

    /// Waits until exactly `expected` has been seen (each once), then checks that
    /// nothing else comes and that every stream is in version order.
    async fn expect_exactly(self, expected: &HashSet<String>) {
        eventually("the subscriber to see every committed event", || {
            let ids: HashSet<String> = self.ids().into_iter().collect();
            expected.is_subset(&ids)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.task.abort();
        let seen = self.seen.lock().expect("not poisoned").clone();
        let ids: Vec<String> = seen.iter().map(|e| e.event.id().to_owned()).collect();
        let distinct: HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(ids.len(), distinct.len(), "no event seen twice");
        assert_eq!(&distinct, expected, "exactly the committed events");
        let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for event in &seen {
            let subject = event.event.subject().expect("subject").to_owned();
            versions
                .entry(subject)
                .or_default()
                .push(event.event.stream_version().expect("version").0);
        }
        for (stream, versions) in versions {
            let expected: Vec<u64> = (1..=versions.len() as u64).collect();
            assert_eq!(versions, expected, "stream {stream} in version order");
        }
        let cursors: Vec<Cursor> = seen.iter().map(|e| e.cursor).collect();
        assert!(cursors.windows(2).all(|w| w[0] < w[1]), "cursors increase");
    }
}

/// Reads one event after `cursor`, waiting while writers elsewhere hold the store's
/// horizon back.
async fn read_some(log: &dyn EventLog, cursor: Cursor) -> keel_store::Page {
    let deadline = tokio::time::Instant::now() + crate::util::PATIENCE;
    loop {
        let page = log.read_after(cursor, &LogFilter::default(), 1).await.expect("read");
        if !page.events.is_empty() {
            return page;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing to read after {cursor}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn expected_version_rules<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let s = stream(&unique("rules"));
    let first = log
        .append(&s, ExpectedVersion::NoStream, &[numbered(1), numbered(2)])
        .await
        .expect("new stream");
    assert_eq!(first.version, StreamVersion(2));
    assert_eq!(first.positions.len(), 2);
    assert!(first.positions[0] < first.positions[1]);
    match log.append(&s, ExpectedVersion::NoStream, &[numbered(3)]).await {
        Err(StoreError::VersionConflict { actual, expected, .. }) => {
            assert_eq!(actual, StreamVersion(2));
            assert_eq!(expected, ExpectedVersion::NoStream);
        }
        other => panic!("NoStream on an existing stream must conflict: {other:?}"),
    }
    match log.append(&s, ExpectedVersion::Exact(StreamVersion(1)), &[numbered(3)]).await {
        Err(error @ StoreError::VersionConflict { .. }) => {
            assert!(error.is_conflict());
            assert!(error.to_string().contains("expected version 1"), "{error}");
        }
        other => panic!("a stale exact version must conflict: {other:?}"),
    }
    let third = log
        .append(&s, ExpectedVersion::Exact(StreamVersion(2)), &[numbered(3)])
        .await
        .expect("exact");
    assert_eq!(third.version, StreamVersion(3));
    let fourth =
        log.append(&s, ExpectedVersion::StreamExists, &[numbered(4)]).await.expect("exists");
    assert_eq!(fourth.version, StreamVersion(4));
    let fifth = log.append(&s, ExpectedVersion::Any, &[numbered(5)]).await.expect("any");
    assert_eq!(fifth.version, StreamVersion(5));
    let missing = stream(&unique("missing"));
    assert!(matches!(
        log.append(&missing, ExpectedVersion::StreamExists, &[numbered(1)]).await,
        Err(StoreError::VersionConflict { actual: StreamVersion(0), .. })
    ));
    assert!(matches!(
        log.append(&missing, ExpectedVersion::Exact(StreamVersion(3)), &[numbered(1)]).await,
        Err(StoreError::VersionConflict { .. })
    ));
    assert_eq!(log.stream_version(&missing).await.expect("version"), StreamVersion::NONE);
    assert_eq!(log.stream_version(&s).await.expect("version"), StreamVersion(5));
    assert!(matches!(
        log.append(&s, ExpectedVersion::Any, &[]).await,
        Err(StoreError::InvalidEvent(_))
    ));
}

pub async fn concurrent_appenders_to_one_stream<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let s = stream(&unique("contended"));
    let mut tasks = Vec::new();
    for writer in 0..8_u64 {
        let (log, s) = (log.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            for attempt in 0..10_u64 {
                let current = log.stream_version(&s).await.expect("version");
                let event = numbered(writer * 100 + attempt);
                match log
                    .append(&s, ExpectedVersion::Exact(current), std::slice::from_ref(&event))
                    .await
                {
                    Ok(result) => wins.push((result.version, event.id().to_owned())),
                    Err(error) if error.is_conflict() => {}
                    Err(error) => panic!("unexpected error: {error}"),
                }
            }
            wins
        }));
    }
    let mut wins = Vec::new();
    for task in tasks {
        wins.extend(task.await.expect("writer"));
    }
    let versions: HashSet<u64> = wins.iter().map(|(v, _)| v.0).collect();
    assert_eq!(versions.len(), wins.len(), "each version won by exactly one writer");
    let final_version = log.stream_version(&s).await.expect("version");
    assert_eq!(final_version.0, wins.len() as u64);
    let events =
        log.read_stream(&s, StreamVersion(1), Direction::Forward, 1000).await.expect("read");
    let by_version: HashMap<u64, String> = wins.into_iter().map(|(v, id)| (v.0, id)).collect();
    for event in events {
        let version = event.stream_version().expect("version").0;
        assert_eq!(
            by_version.get(&version).map(String::as_str),
            Some(event.id()),
            "version {version} holds its winner"
        );
    }
}

/// Runs `body` in a transaction of its own on `log`: begin, optionally take an id,
/// wait, append, wait, then commit or roll back.
struct Script {
    take_id: bool,
    before_append: Duration,
    before_end: Duration,
    commit: bool,
}

async fn scripted<F: StoreFactory>(
    f: &F,
    log: &Arc<F::Log>,
    s: &StreamId,
    events: &[CloudEvent],
    script: Script,
) -> Result<(), StoreError> {
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut tx = log.begin().await.expect("begin");
    if script.take_id {
        f.take_transaction_id(&mut tx).await;
    }
    tokio::time::sleep(script.before_append).await;
    log.append_in(&mut tx, s, ExpectedVersion::Any, events).await?;
    tokio::time::sleep(script.before_end).await;
    if script.commit {
        tx.commit().await.expect("commit");
        log.notify_appended();
    } else {
        tx.rollback().await.expect("rollback");
    }
    Ok(())
}

pub async fn out_of_order_commits_and_a_rollback_while_polling<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let recorder = Recorder::start(&log);
    let (a, b, c) = (stream(&unique("a")), stream(&unique("b")), stream(&unique("c")));
    let (ea, eb, ec) = (vec![numbered(1), numbered(2)], vec![numbered(3)], vec![numbered(4)]);
    let ms = Duration::from_millis;
    // On concurrent stores: a takes the lowest position and commits last; b rolls back.
    let (ra, rb, rc) = tokio::join!(
        scripted(
            f,
            &log,
            &a,
            &ea,
            Script { take_id: false, before_append: ms(0), before_end: ms(400), commit: true }
        ),
        scripted(
            f,
            &log,
            &b,
            &eb,
            Script { take_id: false, before_append: ms(50), before_end: ms(150), commit: false }
        ),
        scripted(
            f,
            &log,
            &c,
            &ec,
            Script { take_id: false, before_append: ms(100), before_end: ms(0), commit: true }
        ),
    );
    ra.expect("a");
    rb.expect("b");
    rc.expect("c");
    let expected: HashSet<String> = ea.iter().chain(&ec).map(|e| e.id().to_owned()).collect();
    recorder.expect_exactly(&expected).await;
}

pub async fn older_transaction_takes_a_higher_position<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let recorder = Recorder::start(&log);
    let (old, young) = (stream(&unique("old")), stream(&unique("young")));
    let (e_old, e_young) = (vec![numbered(1)], vec![numbered(2)]);
    let ms = Duration::from_millis;
    // The older transaction appends after the younger one (higher position) and
    // commits first; the younger commits late.
    let (r_old, r_young) = tokio::join!(
        scripted(
            f,
            &log,
            &old,
            &e_old,
            Script { take_id: true, before_append: ms(150), before_end: ms(0), commit: true }
        ),
        async {
            tokio::time::sleep(ms(30)).await;
            scripted(
                f,
                &log,
                &young,
                &e_young,
                Script { take_id: true, before_append: ms(0), before_end: ms(500), commit: true },
            )
            .await
        },
    );
    r_old.expect("old");
    r_young.expect("young");
    let expected: HashSet<String> =
        e_old.iter().chain(&e_young).map(|e| e.id().to_owned()).collect();
    recorder.expect_exactly(&expected).await;
}

pub async fn stream_inversion_is_refused_or_held_back<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let recorder = Recorder::start(&log);
    let s = stream(&unique("inverted"));
    let first = numbered(1);
    let second = numbered(2);
    let (log_a, log_b) = (log.clone(), log.clone());
    let (s_a, s_b) = (s.clone(), s.clone());
    // A takes its transaction id first, then waits; B appends to the stream and
    // commits; then A appends the stream's next version.
    let late_writer = async {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = log_a.begin().await.expect("begin");
            f.take_transaction_id(&mut tx).await;
            if attempt == 1 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            match log_a
                .append_in(&mut tx, &s_a, ExpectedVersion::Any, std::slice::from_ref(&second))
                .await
            {
                Ok(result) => {
                    tx.commit().await.expect("commit");
                    log_a.notify_appended();
                    return (result, attempt);
                }
                Err(error) if error.is_retryable() && attempt < 5 => {
                    tx.rollback().await.expect("rollback");
                }
                Err(error) => panic!("late writer failed: {error}"),
            }
        }
    };
    let early_writer = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        log_b.append(&s_b, ExpectedVersion::Any, std::slice::from_ref(&first)).await
    };
    let ((late, _attempts), early) = tokio::join!(late_writer, early_writer);
    let early = early.expect("early append");
    // Concurrent stores order the early writer first (the late one is refused and
    // retries); single-writer stores let the late writer, which began first, go first.
    let mut versions = [early.version, late.version];
    versions.sort();
    assert_eq!(versions, [StreamVersion(1), StreamVersion(2)]);
    let expected: HashSet<String> = [first.id().to_owned(), second.id().to_owned()].into();
    recorder.expect_exactly(&expected).await;
}

pub async fn rounds_of_concurrent_appenders_with_delayed_commits<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let recorder = Recorder::start(&log);
    let committed = Arc::new(Mutex::new(HashSet::new()));
    let streams: Vec<StreamId> = (0..4).map(|i| stream(&unique(&format!("round{i}")))).collect();
    for round in 0..8_u64 {
        let mut writers = Vec::new();
        for writer in 0..6_u64 {
            let (log, committed) = (log.clone(), committed.clone());
            // Half the writers share streams across rounds; half write their own.
            let s = if writer % 2 == 0 {
                streams[usize::try_from(writer / 2).unwrap_or(0)].clone()
            } else {
                stream(&unique("solo"))
            };
            writers.push(async move {
                let events: Vec<CloudEvent> = (0..=(round + writer) % 3)
                    .map(|i| numbered(round * 100 + writer * 10 + i))
                    .collect();
                let delay = Duration::from_millis((round * 7 + writer * 13) % 40);
                let commit = (round + writer) % 5 != 0;
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let mut tx = log.begin().await.expect("begin");
                    match log.append_in(&mut tx, &s, ExpectedVersion::Any, &events).await {
                        Ok(_) => {
                            tokio::time::sleep(delay).await;
                            if commit {
                                tx.commit().await.expect("commit");
                                log.notify_appended();
                                committed
                                    .lock()
                                    .expect("not poisoned")
                                    .extend(events.iter().map(|e| e.id().to_owned()));
                            } else {
                                tx.rollback().await.expect("rollback");
                            }
                            return;
                        }
                        Err(error) if error.is_retryable() && attempts < 20 => {
                            tx.rollback().await.expect("rollback");
                        }
                        Err(error) => panic!("append failed: {error}"),
                    }
                }
            });
        }
        futures::future::join_all(writers).await;
    }
    let expected = committed.lock().expect("not poisoned").clone();
    assert!(!expected.is_empty());
    recorder.expect_exactly(&expected).await;
}

pub async fn reads_streams_forward_and_backward<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let s = stream(&unique("paged"));
    let events: Vec<CloudEvent> = (1..=10).map(numbered).collect();
    log.append(&s, ExpectedVersion::NoStream, &events).await.expect("append");
    let other = stream(&unique("other"));
    log.append(&other, ExpectedVersion::Any, &[numbered(99)]).await.expect("append");
    let forward = log.read_stream(&s, StreamVersion(4), Direction::Forward, 3).await.expect("read");
    let versions: Vec<u64> = forward.iter().map(|e| e.stream_version().expect("v").0).collect();
    assert_eq!(versions, [4, 5, 6]);
    assert_eq!(forward[0].id(), events[3].id());
    assert!(forward.iter().all(|e| e.subject() == Some(s.as_str())));
    let backward =
        log.read_stream(&s, StreamVersion(u64::MAX), Direction::Backward, 4).await.expect("read");
    let versions: Vec<u64> = backward.iter().map(|e| e.stream_version().expect("v").0).collect();
    assert_eq!(versions, [10, 9, 8, 7]);
    let none = log
        .read_stream(&stream(&unique("nothing")), StreamVersion(1), Direction::Forward, 10)
        .await
        .expect("read");
    assert!(none.is_empty());
    let head = log.head().await.expect("head");
    assert_eq!(
        Some(head),
        log.read_all(&LogQuery { limit: 100, ..LogQuery::default() })
            .await
            .expect("all")
            .last()
            .and_then(|e| e.event.position())
    );
}

pub async fn reads_the_log_from_a_position_and_from_a_time<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let s = stream(&unique("timed"));
    let times = [
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("time"),
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).single().expect("time"),
        Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).single().expect("time"),
    ];
    let events: Vec<CloudEvent> = times
        .iter()
        .map(|t| {
            CloudEvent::builder("keel.test.timed", "/keel/testkit").time(*t).build().expect("valid")
        })
        .collect();
    let appended = log.append(&s, ExpectedVersion::NoStream, &events).await.expect("append");
    let typed = stream(&unique("typed"));
    log.append(&typed, ExpectedVersion::NoStream, &[numbered(1)]).await.expect("append");
    let since = LogQuery { since: Some(times[1]), stream: Some(s.clone()), ..LogQuery::default() };
    let found: Vec<String> =
        log.read_all(&since).await.expect("read").iter().map(|e| e.event.id().to_owned()).collect();
    assert_eq!(found, [events[1].id(), events[2].id()]);
    let from = LogQuery { from: appended.positions[0], ..LogQuery::default() };
    let after_first: Vec<String> =
        log.read_all(&from).await.expect("read").iter().map(|e| e.event.id().to_owned()).collect();
    assert_eq!(after_first.len(), 3, "two timed events and the typed one");
    assert_eq!(after_first[0], events[1].id());
    let by_type = LogQuery { types: vec!["keel.test.numbered".into()], ..LogQuery::default() };
    let typed_only = log.read_all(&by_type).await.expect("read");
    assert_eq!(typed_only.len(), 1);
    assert_eq!(typed_only[0].event.subject(), Some(typed.as_str()));
    let paged = LogQuery { limit: 2, ..LogQuery::default() };
    assert_eq!(log.read_all(&paged).await.expect("read").len(), 2);
}

pub async fn ten_thousand_event_batch<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let s = stream(&unique("big"));
    let events: Vec<CloudEvent> = (0..10_000).map(numbered).collect();
    let result = log.append(&s, ExpectedVersion::NoStream, &events).await.expect("append 10,000");
    assert_eq!(result.version, StreamVersion(10_000));
    assert_eq!(result.positions.len(), 10_000);
    assert!(result.positions.windows(2).all(|w| w[0] < w[1]));
    let recorder = Recorder::start(&log);
    let expected: HashSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    recorder.expect_exactly(&expected).await;
    let last =
        log.read_stream(&s, StreamVersion(u64::MAX), Direction::Backward, 1).await.expect("read");
    assert_eq!(last[0].id(), events[9_999].id());
}

/// What a replay with `query` yields, flattened, keeping only `streams`' events.
async fn replayed(log: &dyn EventLog, query: LogQuery, streams: &[&StreamId]) -> Vec<LogEvent> {
    let limit = query.limit;
    let mut batches = log.replay(query);
    let mut events = Vec::new();
    while let Some(batch) = batches.next().await {
        let batch = batch.expect("replay");
        assert!(!batch.is_empty(), "a replay yields no empty batch");
        assert!(batch.len() <= limit.max(1), "a batch holds at most `limit` events");
        events.extend(batch);
    }
    events.retain(|e| streams.iter().any(|s| e.event.subject() == Some(s.as_str())));
    events
}

fn ids(events: &[LogEvent]) -> Vec<String> {
    events.iter().map(|e| e.event.id().to_owned()).collect()
}

pub async fn replay_streams_the_log_in_position_order<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let (a, b) = (stream(&unique("replay-a")), stream(&unique("replay-b")));
    let (mut appended, mut b_events) = (Vec::new(), Vec::new());
    for round in 0..5_u64 {
        let batch: Vec<CloudEvent> = (0..round + 1).map(|n| numbered(round * 10 + n)).collect();
        log.append(&a, ExpectedVersion::Any, &batch).await.expect("append a");
        appended.extend(batch);
        let single = numbered(100 + round);
        log.append(&b, ExpectedVersion::Any, std::slice::from_ref(&single))
            .await
            .expect("append b");
        appended.push(single.clone());
        b_events.push(single);
    }
    let everything = LogQuery { limit: 4, ..LogQuery::default() };
    let all = replayed(&*log, everything, &[&a, &b]).await;
    assert_eq!(ids(&all), ids_of(&appended), "every event, in append (= position) order");
    let positions: Vec<Position> = all.iter().filter_map(|e| e.event.position()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions increase: {positions:?}");
    assert!(all.iter().all(|e| e.topic == "replay"), "the stream category is the topic");

    let from = LogQuery { from: positions[5], limit: 2, ..LogQuery::default() };
    assert_eq!(ids(&replayed(&*log, from, &[&a, &b]).await), ids_of(&appended[6..]));
    let only_b = LogQuery { stream: Some(b.clone()), limit: 100, ..LogQuery::default() };
    assert_eq!(ids(&replayed(&*log, only_b, &[&b]).await), ids_of(&b_events));
    let other_type = LogQuery { types: vec!["keel.test.other".into()], ..LogQuery::default() };
    assert!(replayed(&*log, other_type, &[&a, &b]).await.is_empty());

    // A replay dropped half-way leaves the log usable.
    let mut abandoned = log.replay(LogQuery { limit: 1, ..LogQuery::default() });
    assert!(abandoned.next().await.is_some());
    drop(abandoned);
    for _ in 0..3 {
        log.append(&b, ExpectedVersion::Any, &[numbered(999)]).await.expect("append after");
        let again = LogQuery { stream: Some(b.clone()), ..LogQuery::default() };
        assert!(!replayed(&*log, again, &[&b]).await.is_empty());
    }
}

fn ids_of(events: &[CloudEvent]) -> Vec<String> {
    events.iter().map(|e| e.id().to_owned()).collect()
}

#[derive(Debug, serde::Serialize, serde::Deserialize, keel_core::Event)]
#[event(type = "keel.test.known", crate = keel_core)]
struct Known {
    n: u32,
}

pub async fn unknown_types_come_back_as_raw_envelopes<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let s = stream(&unique("mixed"));
    let foreign = CloudEvent::builder("com.example.something-else", "urn:other:system")
        .data("application/xml", "<a>1</a>")
        .extension("customext", "kept")
        .extension("flag", true)
        .dataschema("https://example.com/schema.xsd")
        .build()
        .expect("valid");
    log.append(&s, ExpectedVersion::NoStream, std::slice::from_ref(&foreign))
        .await
        .expect("append");
    let back =
        log.read_stream(&s, StreamVersion(1), Direction::Forward, 1).await.expect("read").remove(0);
    assert_eq!(back.id(), foreign.id());
    assert_eq!(back.ty(), foreign.ty());
    assert_eq!(back.source(), foreign.source());
    assert_eq!(back.datacontenttype(), Some("application/xml"));
    assert_eq!(back.data(), foreign.data());
    assert_eq!(back.dataschema(), foreign.dataschema());
    assert_eq!(back.extension("customext"), foreign.extension("customext"));
    assert_eq!(back.extension("flag"), foreign.extension("flag"));
    assert_eq!(back.time(), foreign.time().map(truncate_to_micros));
    assert!(matches!(back.decode::<Known>(), Err(keel_core::DecodeError::UnexpectedType { .. })));
}

/// Stores keep microseconds (PostgreSQL's `timestamptz` precision).
fn truncate_to_micros(t: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    Utc.timestamp_micros(t.timestamp_micros()).single().expect("in range")
}

pub async fn subscription_from_a_position<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let s = stream(&unique("from"));
    let events: Vec<CloudEvent> = (1..=6).map(numbered).collect();
    let appended = log.append(&s, ExpectedVersion::NoStream, &events).await.expect("append");
    let from = appended.positions[2];
    let cursor = log.cursor_before(from).await.expect("cursor");
    let filter = LogFilter { after_position: Some(from), ..LogFilter::default() };
    let options = SubscribeOptions { stop_when_caught_up: true, ..SubscribeOptions::default() };
    let log_dyn: Arc<dyn EventLog> = log.clone();
    let pages: Vec<_> = subscribe(log_dyn, cursor, filter, options).collect().await;
    let ids: Vec<String> = pages
        .into_iter()
        .flat_map(|p| p.expect("page").events)
        .map(|e| e.event.id().to_owned())
        .collect();
    assert_eq!(ids, events[3..].iter().map(|e| e.id().to_owned()).collect::<Vec<_>>());
    assert_eq!(log.count_after(Cursor::START, Position(u64::MAX)).await.expect("count"), 6);
    assert!(from > Position::START);
}

pub async fn checkpoints_and_leases<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let name = unique("relay");
    assert_eq!(log.checkpoint(&name).await.expect("load"), None);
    let appended = log
        .append(&stream(&unique("cp")), ExpectedVersion::Any, &[numbered(1), numbered(2)])
        .await
        .expect("append");
    assert_eq!(appended.positions.len(), 2);
    let cursor = read_some(&*log, Cursor::START).await.events[0].cursor;
    log.save_checkpoint(&name, cursor).await.expect("save");
    assert_eq!(log.checkpoint(&name).await.expect("load"), Some(cursor));
    let later = read_some(&*log, cursor).await.events[0].cursor;
    assert!(later > cursor);
    let mut tx = log.begin().await.expect("begin");
    log.save_checkpoint_in(&mut tx, &name, later).await.expect("save in tx");
    tx.rollback().await.expect("rollback");
    assert_eq!(
        log.checkpoint(&name).await.expect("load"),
        Some(cursor),
        "rolled back with the transaction"
    );
    assert!(
        log.checkpoints().await.expect("all").iter().any(|(n, c, _)| n == &name && *c == cursor)
    );

    let mut lease = log.try_lease(&name).await.expect("lease").expect("free");
    assert!(lease.renew().await);
    assert!(lease.renew_interval() > Duration::ZERO);
    assert!(log.try_lease(&name).await.expect("lease").is_none(), "exclusive");
    assert!(log.try_lease(&unique("other")).await.expect("lease").is_some(), "per name");
    lease.release().await;
    let again = log.try_lease(&name).await.expect("lease");
    assert!(again.is_some(), "free again after release");
}

/// `move_checkpoint_in` moves a checkpoint only from where the caller says it is; of
/// two writers moving it from the same place at the same time, one commits.
pub async fn checkpoints_compare_and_set<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let name = unique("projection");
    log.append(
        &stream(&unique("cas")),
        ExpectedVersion::Any,
        &[numbered(1), numbered(2), numbered(3)],
    )
    .await
    .expect("append");
    let first = read_some(&*log, Cursor::START).await.events[0].cursor;
    let second = read_some(&*log, first).await.events[0].cursor;
    let third = read_some(&*log, second).await.events[0].cursor;
    let moved =
        |result: keel_store::Result<()>| matches!(result, Err(StoreError::CheckpointMoved { .. }));

    let mut tx = log.begin().await.expect("begin");
    log.move_checkpoint_in(&mut tx, &name, None, first).await.expect("from nothing stored");
    tx.commit().await.expect("commit");
    assert_eq!(log.checkpoint(&name).await.expect("load"), Some(first));
    let mut tx = log.begin().await.expect("begin");
    assert!(moved(log.move_checkpoint_in(&mut tx, &name, None, second).await), "it exists");
    assert!(
        moved(log.move_checkpoint_in(&mut tx, &name, Some(second), third).await),
        "it is not there"
    );
    tx.rollback().await.expect("rollback");

    // Two writers from `first`: the second waits for the first and finds it moved.
    let mut tx = log.begin().await.expect("begin");
    log.move_checkpoint_in(&mut tx, &name, Some(first), second).await.expect("first writer");
    let racer = {
        let log = log.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let mut tx = log.begin().await.expect("begin");
            let result = log.move_checkpoint_in(&mut tx, &name, Some(first), third).await;
            if result.is_ok() {
                tx.commit().await.expect("commit");
            }
            result
        })
    };
    tx.commit().await.expect("commit");
    let raced = racer.await.expect("task");
    assert!(moved(raced), "the second writer is refused");
    assert_eq!(log.checkpoint(&name).await.expect("load"), Some(second));
}

pub async fn duplicate_event_ids_are_refused<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let event = numbered(1);
    log.append(&stream(&unique("dup")), ExpectedVersion::Any, std::slice::from_ref(&event))
        .await
        .expect("first");
    let again = log
        .append(&stream(&unique("dup")), ExpectedVersion::Any, std::slice::from_ref(&event))
        .await;
    assert!(matches!(again, Err(StoreError::DuplicateEvent { .. })), "{again:?}");
}

/// Appends `per_stream` events to each of `streams` keyed streams, interleaved, and
/// returns the events by stream in order.
async fn keyed_history<L: EventLog>(
    log: &L,
    streams: usize,
    per_stream: u64,
) -> BTreeMap<String, Vec<String>> {
    let names: Vec<StreamId> = (0..streams).map(|_| stream(&unique("order"))).collect();
    let mut history: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in 0..per_stream {
        for s in &names {
            let event = CloudEvent::builder("keel.test.numbered", "/keel/testkit")
                .json_data(&serde_json::json!({ "n": n }))
                .expect("json")
                .partition_key(s.as_str())
                .build()
                .expect("valid");
            log.append(s, ExpectedVersion::Any, std::slice::from_ref(&event))
                .await
                .expect("append");
            history.entry(s.to_string()).or_default().push(event.id().to_owned());
        }
    }
    history
}

/// Collects every event published to `topic` on `bus`, in arrival order.
async fn bus_collector(
    bus: &keel_memory::MemoryBus,
    topic: &str,
) -> (Arc<Mutex<Vec<CloudEvent>>>, keel_bus::ConsumerHandle) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let handler = keel_bus::handler_fn(move |message: keel_bus::Message| {
        let sink = sink.clone();
        async move {
            sink.lock().expect("not poisoned").push(message.into_event());
            Ok::<(), keel_bus::HandlerError>(())
        }
    });
    let handle = keel_bus::Consumer::new(
        Arc::new(bus.clone()),
        keel_core::SubscriptionSpec::new(topic, "collector"),
    )
    .start(handler)
    .await
    .expect("subscribe");
    (seen, handle)
}

/// Per partition key: every event arrived, and the first arrivals are in stream order
/// (a failover may repeat a tail, never reorder what came first).
fn assert_delivered_in_order(history: &BTreeMap<String, Vec<String>>, arrived: &[CloudEvent]) {
    let mut firsts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for event in arrived {
        if seen.insert(event.id().to_owned()) {
            let key = event.partition_key().expect("keyed").to_owned();
            firsts.entry(key).or_default().push(event.id().to_owned());
        }
    }
    assert_eq!(&firsts, history, "every event, in order per key");
}

pub async fn relay_publishes_the_log_in_order<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let history = keyed_history(&*log, 5, 40).await;
    let bus = keel_memory::MemoryBus::new();
    let (arrived, handle) = bus_collector(&bus, "order").await;
    let options = keel_store::RelayOptions {
        batch_size: 16,
        subscribe: SubscribeOptions {
            poll_interval: Duration::from_millis(20),
            ..SubscribeOptions::default()
        },
        ..keel_store::RelayOptions::default()
    };
    let relay = keel_store::Relay::new(log.clone(), Arc::new(bus.clone()), "main").options(options);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));
    eventually("the relay to publish all 200 events", || {
        arrived.lock().expect("not poisoned").len() >= 200
    })
    .await;
    // Appends after the relay caught up are published too.
    let more = keyed_history(&*log, 1, 3).await;
    eventually("the live tail", || arrived.lock().expect("not poisoned").len() >= 203).await;
    let _ = stop.send(());
    task.await.expect("relay task").expect("relay");
    handle.stop().await.expect("stop");
    let arrived = arrived.lock().expect("not poisoned").clone();
    assert_eq!(arrived.len(), 203, "each event published once when nothing fails");
    let mut all = history;
    all.extend(more);
    assert_delivered_in_order(&all, &arrived);
    let checkpoint = log
        .checkpoint(&keel_store::Relay::checkpoint_name("main"))
        .await
        .expect("load")
        .expect("saved");
    assert_eq!(
        log.count_after(checkpoint, Position(u64::MAX)).await.expect("count"),
        0,
        "checkpoint at the end"
    );
    assert!(arrived.iter().all(|e| e.position().is_some() && e.stream_version().is_some()));
}

pub async fn relay_fails_over_to_a_standby<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let bus = keel_memory::MemoryBus::new();
    let (arrived, handle) = bus_collector(&bus, "order").await;
    let options = keel_store::RelayOptions {
        batch_size: 5,
        standby_poll: Duration::from_millis(50),
        subscribe: SubscribeOptions {
            poll_interval: Duration::from_millis(20),
            ..SubscribeOptions::default()
        },
        ..keel_store::RelayOptions::default()
    };
    let start = |log: Arc<F::Log>| {
        let relay = keel_store::Relay::new(log, Arc::new(bus.clone()), "failover").options(options);
        tokio::spawn(relay.run(std::future::pending()))
    };
    let active = start(log.clone());
    eventually_lease_taken(&*log).await;
    let standby = start(log.clone());
    let history = keyed_history(&*log, 4, 50).await;
    eventually("the active relay to be mid-stream", || {
        arrived.lock().expect("not poisoned").len() >= 20
    })
    .await;
    // The active relay dies as a killed process would: no clean release.
    active.abort();
    let _ = active.await;
    eventually("the standby to publish everything", || {
        let ids: HashSet<String> =
            arrived.lock().expect("not poisoned").iter().map(|e| e.id().to_owned()).collect();
        ids.len() == 200
    })
    .await;
    standby.abort();
    handle.stop().await.expect("stop");
    assert_delivered_in_order(&history, &arrived.lock().expect("not poisoned"));
}

/// Waits until some relay holds the failover lease.
async fn eventually_lease_taken<L: EventLog>(log: &L) {
    let name = keel_store::Relay::checkpoint_name("failover");
    let deadline = tokio::time::Instant::now() + crate::util::PATIENCE;
    loop {
        match log.try_lease(&name).await.expect("lease") {
            None => return,
            Some(lease) => lease.release().await,
        }
        assert!(tokio::time::Instant::now() < deadline, "no relay took the lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Events a version-1 deployment wrote come back, through stream reads (as aggregates
/// load them) and replay, as the version-2 code's values; an event from a newer
/// deployment is kept as it is and fails to decode as a future version.
pub async fn old_versions_read_back_upcast<F: StoreFactory>(f: &F) {
    use crate::upcasting::{PlacedV2, assert_future, expected, v1, v3};
    let log = f.log().await;
    let s = stream(&unique("placed"));
    let written = [v1("o-1", 12), v1("o-2", 3)];
    log.append(&s, ExpectedVersion::NoStream, &written).await.expect("append v1");
    let current = PlacedV2 { order: "o-3".into(), total_cents: 9 };
    let current_event =
        CloudEvent::from_event(&current, "/keel/testkit").expect("json").build().expect("valid");
    log.append(&s, ExpectedVersion::Exact(StreamVersion(2)), &[current_event, v3("o-4")])
        .await
        .expect("append v2 and v3");
    let want = vec![expected("o-1", 12), expected("o-2", 3), current];

    let read = log.read_stream(&s, StreamVersion(1), Direction::Forward, 10).await.expect("read");
    assert_eq!(read.len(), 4);
    let decoded: Vec<PlacedV2> =
        read[..3].iter().map(|e| e.decode::<PlacedV2>().expect("decodes at v2")).collect();
    assert_eq!(decoded, want, "a stream read (aggregate loading) sees v2");
    assert_future(&read[3]);

    let replay =
        replayed(&*log, LogQuery { stream: Some(s.clone()), ..LogQuery::default() }, &[&s]).await;
    let decoded: Vec<PlacedV2> =
        replay[..3].iter().map(|e| e.event.decode::<PlacedV2>().expect("decodes at v2")).collect();
    assert_eq!(decoded, want, "replay sees v2");
    assert_future(&replay[3].event);
}

/// An event caused by `cause` (or, without one, by the request `correlation`).
fn caused(ty: &str, correlation: &str, cause: Option<&CloudEvent>) -> CloudEvent {
    let mut builder = CloudEvent::builder(ty, "/keel/testkit")
        .extension(keel_core::envelope::ext::CORRELATION_ID, correlation);
    if let Some(cause) = cause {
        builder = builder.extension(keel_core::envelope::ext::CAUSATION_ID, cause.id());
    }
    builder.build().expect("valid")
}

/// A request places an order, which reserves stock and sends a mail; the reservation
/// confirms the order. `keel why` on each finds its causes and effects, through the
/// stores' own lookups (by id, by `causationid`, by `correlationid`).
pub async fn causal_lineage<F: StoreFactory>(f: &F) {
    let log = f.log().await;
    let request = unique("req");
    let order = stream(&unique("order"));
    let product = stream(&unique("product"));
    let placed = caused("order.placed", &request, None);
    let reserved = caused("stock.reserved", &request, Some(&placed));
    let mailed = caused("mail.sent", &request, Some(&placed));
    let confirmed = caused("order.confirmed", &request, Some(&reserved));
    let unrelated = caused("order.placed", &unique("req"), None);
    log.append(&order, ExpectedVersion::Any, std::slice::from_ref(&placed)).await.expect("append");
    log.append(&product, ExpectedVersion::Any, &[reserved.clone(), unrelated.clone()])
        .await
        .expect("append");
    log.append(&order, ExpectedVersion::Any, &[mailed.clone(), confirmed.clone()])
        .await
        .expect("append");

    let ids = |events: &[LogEvent]| -> Vec<String> {
        events.iter().map(|e| e.event.id().to_owned()).collect()
    };
    let found = log.event_by_id(reserved.id()).await.expect("by id").expect("found");
    assert_eq!(found.event.subject(), Some(product.as_str()));
    assert!(log.event_by_id("no-such-event").await.expect("by id").is_none());
    let direct = log.caused_by(placed.id(), 10).await.expect("caused by");
    assert_eq!(ids(&direct), [reserved.id(), mailed.id()], "in log order");
    assert_eq!(log.caused_by(placed.id(), 1).await.expect("caused by").len(), 1, "limited");
    assert_eq!(log.correlated(&request, 10).await.expect("correlated").len(), 4);

    let why = keel_store::lineage(&*log, confirmed.id()).await.expect("lineage").expect("found");
    assert_eq!(ids(&why.causes), [placed.id(), reserved.id()], "first cause first");
    assert_eq!(why.origin.as_deref(), Some(request.as_str()), "the request started it");
    assert_eq!(why.correlation_id.as_deref(), Some(request.as_str()));
    assert!(why.caused.is_empty());
    assert_eq!(why.correlated.len(), 4, "the unrelated request is not in it");
    let text = why.to_string();
    assert!(text.contains(&format!("* order.confirmed  {order}@3")), "{text}");

    let root = keel_store::lineage(&*log, placed.id()).await.expect("lineage").expect("found");
    assert!(root.causes.is_empty());
    let tree: Vec<(String, Vec<String>)> = root
        .caused
        .iter()
        .map(|c| {
            (
                c.event.event.id().to_owned(),
                c.caused.iter().map(|d| d.event.event.id().to_owned()).collect(),
            )
        })
        .collect();
    assert_eq!(
        tree,
        [
            (reserved.id().to_owned(), vec![confirmed.id().to_owned()]),
            (mailed.id().to_owned(), vec![]),
        ]
    );
    let json = root.to_json();
    assert_eq!(json["caused"][0]["caused"][0]["type"], "order.confirmed");
    assert_eq!(json["origin"], request.as_str());
    assert!(keel_store::lineage(&*log, "no-such-event").await.expect("lineage").is_none());

    // The console's stream list: categories, and the streams of one.
    let categories = log.categories().await.expect("categories");
    let counts: Vec<(&str, u64, u64)> =
        categories.iter().map(|c| (c.name.as_str(), c.streams, c.events)).collect();
    assert_eq!(counts, [("order", 1, 3), ("product", 1, 2)]);
    let orders = log.streams(Some("order"), 10).await.expect("streams");
    assert_eq!(orders.len(), 1);
    assert_eq!((orders[0].stream.as_str(), orders[0].version), (order.as_str(), 3));
    assert_eq!(log.streams(None, 10).await.expect("streams").len(), 2);
    assert_eq!(log.streams(None, 1).await.expect("streams").len(), 1, "limited");
    assert!(log.streams(Some("ord"), 10).await.expect("streams").is_empty(), "whole category");
}
