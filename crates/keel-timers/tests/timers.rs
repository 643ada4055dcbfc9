//! Timers against the real stores: SQLite always, PostgreSQL with the `integration`
//! feature. Each case is a function of a [`Store`] (a way to open another connection
//! to the same database, as another process would); a thin macro runs each per store.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keel_core::{CloudEvent, StreamId};
use keel_sql::{Db, args};
use keel_sqlite::SqliteEventLog;
use keel_testkit::util::{eventually_async, unique};
use keel_timers::{
    DEFAULT_DISPATCHER, Dispatcher, DispatcherOptions, Timer, TimersExt, cancel_in, schedule_in,
};

/// Where a case's database lives; [`Store::open`] connects to it again.
#[derive(Clone, Debug)]
enum Store {
    Sqlite(String),
    #[cfg(feature = "integration")]
    Postgres(String),
}

impl Store {
    fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(unique("keel-timers"));
        std::fs::create_dir_all(&dir).unwrap();
        Self::Sqlite(format!("sqlite://{}", dir.join("keel.db").display()))
    }

    #[cfg(feature = "integration")]
    async fn postgres() -> Self {
        Self::Postgres(keel_testkit::postgres::fresh_database("timers").await)
    }

    /// A new connection (pool) to the store. SQLite leases expire after a second, so
    /// the failover case does not wait the default 15 s.
    async fn open(&self) -> Db {
        match self {
            Self::Sqlite(url) => Db::Sqlite(
                SqliteEventLog::connect(url).await.unwrap().with_lease_ttl(Duration::from_secs(1)),
            ),
            #[cfg(feature = "integration")]
            Self::Postgres(url) => Db::connect(url).await.unwrap(),
        }
    }
}

fn message(n: u64) -> CloudEvent {
    CloudEvent::builder("test.timer_fired", "/timers-test")
        .json_data(&serde_json::json!({ "n": n }))
        .unwrap()
        .build()
        .unwrap()
}

async fn fired(db: &Db, key: &str) -> Vec<CloudEvent> {
    db.read_stream(&StreamId::new(format!("timer-{key}")).unwrap()).await.unwrap()
}

fn fast() -> DispatcherOptions {
    DispatcherOptions { page_size: 50, poll_interval: Duration::from_millis(200) }
}

/// Runs `dispatcher` in a task until the returned sender is dropped or sent to.
fn spawn(
    dispatcher: Arc<Dispatcher>,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        dispatcher
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (stop, task)
}

/// A timer fires when due (not before), exactly once, and a later one stays pending.
async fn fires_once_when_due(store: Store) {
    let db = store.open().await;
    let due = Utc::now() + chrono::Duration::milliseconds(800);
    db.schedule(&Timer::at("soon", due, message(1))).await.unwrap();
    db.schedule(&Timer::after("later", Duration::from_secs(3600), message(2))).await.unwrap();
    let dispatcher = Arc::new(Dispatcher::new(db.clone()).options(fast()));
    let (stop, task) = spawn(dispatcher.clone());
    eventually_async("the due timer to fire", || async { !fired(&db, "soon").await.is_empty() })
        .await;
    assert!(Utc::now() >= due, "fired before its due time");
    stop.send(()).unwrap();
    task.await.unwrap();
    // Nothing left to fire it again; the later one is still pending.
    assert_eq!(dispatcher.fire_due().await.unwrap(), 0);
    let events = fired(&db, "soon").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].ty(), "test.timer_fired");
    assert_eq!(events[0].data().map(|d| d.to_vec()), message(1).data().map(|d| d.to_vec()));
    assert!(fired(&db, "later").await.is_empty());
    assert_eq!(db.pending_timers(DEFAULT_DISPATCHER).await.unwrap(), 1);
}

/// Cancel by key: says whether it was pending; a cancel rolled back cancels nothing.
async fn cancel_by_key(store: Store) {
    let db = store.open().await;
    let past = Utc::now() - chrono::Duration::seconds(1);
    db.schedule(&Timer::at("gone", past, message(1))).await.unwrap();
    db.schedule(&Timer::at("kept", past, message(2))).await.unwrap();
    assert!(db.cancel("gone").await.unwrap());
    assert!(!db.cancel("gone").await.unwrap(), "a second cancel finds nothing pending");
    assert!(!db.cancel("never-scheduled").await.unwrap());
    let mut tx = db.begin().await.unwrap();
    assert!(cancel_in(&mut tx, "kept").await.unwrap());
    drop(tx);
    let dispatcher = Dispatcher::new(db.clone());
    assert_eq!(dispatcher.fire_due().await.unwrap(), 1);
    assert!(fired(&db, "gone").await.is_empty());
    assert_eq!(fired(&db, "kept").await.len(), 1);
    assert!(!db.cancel("kept").await.unwrap(), "a fired timer is no longer pending");
}

/// A due time in the past (and a zero delay) fires at once on a running dispatcher.
async fn past_fires_at_once(store: Store) {
    let db = store.open().await;
    let dispatcher = Arc::new(Dispatcher::new(db.clone()).options(fast()));
    let (stop, task) = spawn(dispatcher.clone());
    let mut active = dispatcher.watch_active();
    active.wait_for(|a| *a).await.unwrap();
    let long_ago = Utc::now() - chrono::Duration::days(1);
    db.schedule(&Timer::at("yesterday", long_ago, message(1))).await.unwrap();
    db.schedule(&Timer::after("now", Duration::ZERO, message(2))).await.unwrap();
    eventually_async("the past timers to fire", || async {
        fired(&db, "yesterday").await.len() == 1 && fired(&db, "now").await.len() == 1
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// A timer scheduled in a transaction that rolls back does not exist.
async fn rollback_schedules_nothing(store: Store) {
    let db = store.open().await;
    let past = Utc::now() - chrono::Duration::seconds(1);
    let mut tx = db.begin().await.unwrap();
    tx.execute("CREATE TABLE notes (id TEXT PRIMARY KEY)", args![]).await.unwrap();
    schedule_in(&mut tx, &Timer::at("rolled-back", past, message(1))).await.unwrap();
    drop(tx);
    assert_eq!(db.pending_timers(DEFAULT_DISPATCHER).await.unwrap(), 0);
    assert_eq!(Dispatcher::new(db.clone()).fire_due().await.unwrap(), 0);
    assert!(fired(&db, "rolled-back").await.is_empty());
    // The same timer in a committed transaction does.
    let mut tx = db.begin().await.unwrap();
    schedule_in(&mut tx, &Timer::at("committed", past, message(2))).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(Dispatcher::new(db.clone()).fire_due().await.unwrap(), 1);
    assert_eq!(fired(&db, "committed").await.len(), 1);
}

/// Scheduling a pending key again replaces it: only the new message fires, once.
async fn rescheduling_replaces(store: Store) {
    let db = store.open().await;
    let replaced = message(1);
    let replacement = message(2);
    db.schedule(&Timer::after("deadline", Duration::from_secs(3600), replaced)).await.unwrap();
    let past = Utc::now() - chrono::Duration::seconds(1);
    db.schedule(&Timer::at("deadline", past, replacement.clone())).await.unwrap();
    assert_eq!(db.pending_timers(DEFAULT_DISPATCHER).await.unwrap(), 1);
    assert_eq!(Dispatcher::new(db.clone()).fire_due().await.unwrap(), 1);
    let events = fired(&db, "deadline").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id(), replacement.id());
}

/// Timers of another dispatcher name, and a chosen stream.
async fn names_and_streams(store: Store) {
    let db = store.open().await;
    let past = Utc::now() - chrono::Duration::seconds(1);
    let stream = StreamId::new("reminder-42").unwrap();
    db.schedule(&Timer::at("r", past, message(1)).dispatcher("billing").stream(stream.clone()))
        .await
        .unwrap();
    assert_eq!(Dispatcher::new(db.clone()).fire_due().await.unwrap(), 0);
    assert_eq!(Dispatcher::named(db.clone(), "billing").fire_due().await.unwrap(), 1);
    assert_eq!(db.read_stream(&stream).await.unwrap().len(), 1);
    assert!(fired(&db, "r").await.is_empty());
}

/// Two running dispatchers on one store, plus two callers firing without the lease,
/// all at once: every timer's message is appended exactly once.
async fn concurrent_dispatchers_fire_each_timer_once(store: Store) {
    const TIMERS: u64 = 300;
    let db = store.open().await;
    let start = Utc::now();
    for n in 0..TIMERS {
        let due = start + chrono::Duration::milliseconds(i64::try_from(n * 5).unwrap());
        db.schedule(&Timer::at(format!("t{n}"), due, message(n))).await.unwrap();
    }
    let mut running = Vec::new();
    for _ in 0..2 {
        let dispatcher = Arc::new(Dispatcher::new(store.open().await).options(fast()));
        running.push(spawn(dispatcher));
    }
    let mut free = Vec::new();
    for _ in 0..2 {
        let dispatcher = Dispatcher::new(store.open().await).options(fast());
        free.push(tokio::spawn(async move {
            let mut total = 0;
            loop {
                match dispatcher.fire_due().await {
                    Ok(n) => total += n,
                    Err(e) if e.is_retryable() => {}
                    Err(e) => panic!("{e}"),
                }
                let pending = dispatcher_pending(&dispatcher).await;
                if pending == 0 {
                    return total;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    eventually_async("every timer to fire", || async {
        db.pending_timers(DEFAULT_DISPATCHER).await.unwrap() == 0
    })
    .await;
    for task in free {
        task.await.unwrap();
    }
    for (stop, task) in running {
        stop.send(()).unwrap();
        task.await.unwrap();
    }
    for n in 0..TIMERS {
        let events = fired(&db, &format!("t{n}")).await;
        assert_eq!(events.len(), 1, "timer t{n} fired {} times", events.len());
    }
    let all = db
        .fetch_optional::<(i64,)>(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM keel_events WHERE event_type = $1",
            args!["test.timer_fired"],
        )
        .await
        .unwrap();
    assert_eq!(all, Some((i64::try_from(TIMERS).unwrap(),)));
}

async fn dispatcher_pending(dispatcher: &Dispatcher) -> u64 {
    // The next due time is None exactly when nothing is pending.
    u64::from(dispatcher.next_due().await.unwrap().is_some())
}

/// The active dispatcher dies without a word (its runtime is torn down, as by a
/// crash); the standby takes the lease once it is free and fires what is due.
async fn standby_takes_over(store: Store) {
    let db = store.open().await;
    // The active one, in a runtime of its own (another "process").
    let (to_main, activated) = std::sync::mpsc::channel();
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    let first = store.clone();
    let process = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dispatcher = Arc::new(Dispatcher::new(first.open().await).options(fast()));
            let mut active = dispatcher.watch_active();
            let run = dispatcher.clone();
            tokio::spawn(async move { run.run(std::future::pending()).await });
            active.wait_for(|a| *a).await.unwrap();
            to_main.send(()).unwrap();
        });
        killed.recv().unwrap();
        // Every task, the lease's renewals among them, stops here without releasing.
        runtime.shutdown_background();
    });
    activated.recv().unwrap();
    let standby = Arc::new(Dispatcher::new(store.open().await).options(fast()));
    let (stop, task) = spawn(standby.clone());
    assert!(!standby.is_active(), "the standby took a lease that was held");
    kill.send(()).unwrap();
    process.join().unwrap();
    let past = Utc::now() - chrono::Duration::seconds(1);
    for n in 0..20 {
        db.schedule(&Timer::at(format!("after-crash-{n}"), past, message(n))).await.unwrap();
    }
    let mut active = standby.watch_active();
    active.wait_for(|a| *a).await.unwrap();
    eventually_async("the standby to fire", || async {
        db.pending_timers(DEFAULT_DISPATCHER).await.unwrap() == 0
    })
    .await;
    for n in 0..20 {
        assert_eq!(fired(&db, &format!("after-crash-{n}")).await.len(), 1);
    }
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// A message the log refuses for good (its event id is already in the log) does not
/// block the others: it is marked failed with the reason, the rest fire.
async fn a_refused_message_is_marked_failed(store: Store) {
    let db = store.open().await;
    let twice = message(1);
    let past = Utc::now() - chrono::Duration::seconds(1);
    db.schedule(&Timer::at("first", past, twice.clone())).await.unwrap();
    db.schedule(&Timer::at("second", past + chrono::Duration::milliseconds(1), twice))
        .await
        .unwrap();
    db.schedule(&Timer::at("fine", past + chrono::Duration::milliseconds(2), message(2)))
        .await
        .unwrap();
    assert_eq!(Dispatcher::new(db.clone()).fire_due().await.unwrap(), 3);
    assert_eq!(fired(&db, "first").await.len(), 1);
    assert!(fired(&db, "second").await.is_empty());
    assert_eq!(fired(&db, "fine").await.len(), 1);
    let failed: Option<(Option<String>,)> = db
        .fetch_optional("SELECT failed FROM keel_timers WHERE timer_key = $1", args!["second"])
        .await
        .unwrap();
    let reason = failed.and_then(|(r,)| r).expect("the refused timer is kept, marked failed");
    assert!(reason.contains("already in the log"), "{reason}");
    assert_eq!(db.pending_timers(DEFAULT_DISPATCHER).await.unwrap(), 0);
    // Scheduling the key again clears the failure (with a new message it fires).
    db.schedule(&Timer::at("second", past, message(3))).await.unwrap();
    assert_eq!(Dispatcher::new(db.clone()).fire_due().await.unwrap(), 1);
    assert_eq!(fired(&db, "second").await.len(), 1);
}

/// Bad input is refused before anything is written, naming the field.
async fn bad_timers_are_refused(store: Store) {
    let db = store.open().await;
    let error = db.schedule(&Timer::after("", Duration::ZERO, message(1))).await.unwrap_err();
    assert!(matches!(error, keel_timers::Error::InvalidTimer { field: "key", .. }), "{error}");
    let error = db
        .schedule(&Timer::after("k", Duration::ZERO, message(1)).dispatcher("a\u{7}b"))
        .await
        .unwrap_err();
    assert!(matches!(error, keel_timers::Error::InvalidTimer { field: "dispatcher", .. }));
    assert_eq!(db.pending_timers(DEFAULT_DISPATCHER).await.unwrap(), 0);
}

macro_rules! timer_cases {
    ($store:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case($store).await;
            }
        )*
    };
}

macro_rules! all_cases {
    ($store:expr) => {
        timer_cases!($store;
            fires_once_when_due,
            cancel_by_key,
            past_fires_at_once,
            rollback_schedules_nothing,
            rescheduling_replaces,
            names_and_streams,
            concurrent_dispatchers_fire_each_timer_once,
            standby_takes_over,
            a_refused_message_is_marked_failed,
            bad_timers_are_refused,
        );
    };
}

mod sqlite {
    use super::Store;
    all_cases!(Store::sqlite());
}

#[cfg(feature = "integration")]
mod postgres {
    use super::Store;
    all_cases!(Store::postgres().await);
}
