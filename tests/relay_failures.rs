//! The relay when something fails, on SQLite with a bus written for the test: an
//! event the bus refuses for good (it becomes a relay dead letter and the relay goes
//! on), errors about the bus (retried, never dead-lettered), a publish that hangs or
//! fails before the broker confirms (the checkpoint waits), and store errors in the
//! active phase (the lease is released at once). The same against real brokers is in
//! `relay_brokers.rs`.
#![allow(clippy::unwrap_used)]

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use keel_core::{
    BusError, CloudEvent, ExpectedVersion, Position, Publisher, StreamId, StreamVersion,
};
use keel_sqlite::SqliteEventLog;
use keel_store::{
    AppendResult, Cursor, Direction, EventLog, Lease, LogEvent, LogFilter, LogQuery, Page, Relay,
    RelayDeadLetter, RelayOptions, StoreError, SubscribeOptions,
};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a case waits for what must happen before calling it lost.
const PATIENCE: Duration = Duration::from_secs(30);

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::now_v7().simple().to_string()[18..])
}

async fn sqlite() -> Arc<SqliteEventLog> {
    let dir = std::env::temp_dir().join(unique("keel-relay-"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/keel.db", dir.display());
    Arc::new(SqliteEventLog::connect(&url).await.unwrap())
}

/// Appends one event to `stream` and returns it as the log has it.
async fn append(log: &dyn EventLog, stream: &str, n: u64) -> CloudEvent {
    let stream = StreamId::new(stream).unwrap();
    let event = CloudEvent::builder("relay.test", "/tests/relay")
        .json_data(&serde_json::json!({ "n": n }))
        .unwrap()
        .build()
        .unwrap();
    log.append(&stream, ExpectedVersion::Any, std::slice::from_ref(&event)).await.unwrap();
    event
}

fn options() -> RelayOptions {
    RelayOptions {
        batch_size: 4,
        standby_poll: Duration::from_millis(50),
        max_backoff: Duration::from_millis(100),
        subscribe: SubscribeOptions {
            poll_interval: Duration::from_millis(20),
            ..SubscribeOptions::default()
        },
    }
}

/// A running relay, stopped cleanly by `stop`.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<keel_store::Result<()>>,
}

impl Running {
    fn start(log: Arc<dyn EventLog>, bus: Arc<dyn Publisher>, name: &str) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let relay = Relay::new(log, bus, name).options(options());
        let task = tokio::spawn(relay.run(async move {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Waits (polling) until `condition` holds; panics naming `what` after `patience`.
async fn wait_for<F, Fut>(what: &str, patience: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out after {patience:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the relay's checkpoint has passed every event in the log.
async fn caught_up(log: &dyn EventLog, relay: &str) -> bool {
    match log.checkpoint(&Relay::checkpoint_name(relay)).await.unwrap() {
        Some(cursor) => log.count_after(cursor, Position(u64::MAX)).await.unwrap() == 0,
        None => false,
    }
}

// ---------------------------------------------------------------------------------
// A bus written for the test.

/// A publisher that confirms what it is given, except: events whose id is poisoned
/// (refused as unpublishable, after the events before them in the batch went out, as
/// a real producer may), scripted errors returned first, and a hold that makes every
/// publish hang before it confirms.
struct TestBus {
    state: Mutex<BusState>,
    hold: watch::Sender<bool>,
    calls: AtomicUsize,
}

#[derive(Default)]
struct BusState {
    /// What was confirmed, in order, with its topic.
    confirmed: Vec<(String, CloudEvent)>,
    poisoned: HashSet<String>,
    errors: VecDeque<BusError>,
}

impl TestBus {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(BusState::default()),
            hold: watch::channel(false).0,
            calls: AtomicUsize::new(0),
        })
    }

    fn poison(&self, id: &str) {
        self.state.lock().unwrap().poisoned.insert(id.to_owned());
    }

    fn cure(&self) {
        self.state.lock().unwrap().poisoned.clear();
    }

    fn fail_with(&self, errors: impl IntoIterator<Item = BusError>) {
        self.state.lock().unwrap().errors.extend(errors);
    }

    fn errors_left(&self) -> usize {
        self.state.lock().unwrap().errors.len()
    }

    /// The ids of what was confirmed, each once, in the order first confirmed.
    fn first_arrivals(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let state = self.state.lock().unwrap();
        state
            .confirmed
            .iter()
            .filter(|(_, e)| seen.insert(e.id().to_owned()))
            .map(|(_, e)| e.id().to_owned())
            .collect()
    }
}

#[async_trait]
impl Publisher for TestBus {
    async fn publish(&self, topic: &str, events: &[CloudEvent]) -> Result<(), BusError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut hold = self.hold.subscribe();
        let _ = hold.wait_for(|held| !*held).await;
        let mut state = self.state.lock().unwrap();
        if let Some(error) = state.errors.pop_front() {
            return Err(error);
        }
        for event in events {
            if state.poisoned.contains(event.id()) {
                return Err(BusError::Unpublishable(format!(
                    "test: event {} is larger than the broker accepts",
                    event.id()
                )));
            }
            state.confirmed.push((topic.to_owned(), event.clone()));
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), BusError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// A store that fails where the test says.

/// Which store call fails, once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    SaveCheckpoint,
    ReadAfter,
    SaveDeadLetter,
}

/// The SQLite log, with one injected transient failure, and a watch on the rule that
/// the relay's checkpoint passes a dead-lettered event only once its record exists.
struct FlakyLog {
    inner: Arc<SqliteEventLog>,
    fault: Mutex<Option<Fault>>,
    failed_at: Mutex<Option<Instant>>,
    /// Position of an event the bus refuses: a checkpoint at or past it must find its
    /// dead-letter record already committed.
    poison: Mutex<Option<Position>>,
    /// When set: a checkpoint must find every event up to it confirmed by this bus or
    /// recorded as a relay dead letter.
    confirmed_by: Mutex<Option<Arc<TestBus>>>,
    violations: AtomicUsize,
}

impl FlakyLog {
    fn new(inner: Arc<SqliteEventLog>, fault: Option<Fault>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            fault: Mutex::new(fault),
            failed_at: Mutex::new(None),
            poison: Mutex::new(None),
            confirmed_by: Mutex::new(None),
            violations: AtomicUsize::new(0),
        })
    }

    fn fail(&self, here: Fault) -> keel_store::Result<()> {
        let mut fault = self.fault.lock().unwrap();
        if *fault == Some(here) {
            *fault = None;
            *self.failed_at.lock().unwrap() = Some(Instant::now());
            // What a busy or briefly unreachable database gives: a retryable error.
            return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
        }
        Ok(())
    }

    fn failed_at(&self) -> Option<Instant> {
        *self.failed_at.lock().unwrap()
    }
}

#[async_trait]
impl EventLog for FlakyLog {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[CloudEvent],
    ) -> keel_store::Result<AppendResult> {
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> keel_store::Result<Vec<CloudEvent>> {
        self.inner.read_stream(stream, from, direction, limit).await
    }

    async fn stream_version(&self, stream: &StreamId) -> keel_store::Result<StreamVersion> {
        self.inner.stream_version(stream).await
    }

    async fn read_all(&self, query: &LogQuery) -> keel_store::Result<Vec<LogEvent>> {
        self.inner.read_all(query).await
    }

    fn replay(&self, query: LogQuery) -> BoxStream<'_, keel_store::Result<Vec<LogEvent>>> {
        self.inner.replay(query)
    }

    async fn head(&self) -> keel_store::Result<Position> {
        self.inner.head().await
    }

    async fn read_after(
        &self,
        cursor: Cursor,
        filter: &LogFilter,
        limit: usize,
    ) -> keel_store::Result<Page> {
        let page = self.inner.read_after(cursor, filter, limit).await?;
        // Fail a read that has something to relay, as a dropped connection would.
        if !page.events.is_empty() {
            self.fail(Fault::ReadAfter)?;
        }
        Ok(page)
    }

    async fn count_after(&self, cursor: Cursor, up_to: Position) -> keel_store::Result<u64> {
        self.inner.count_after(cursor, up_to).await
    }

    async fn cursor_before(&self, position: Position) -> keel_store::Result<Cursor> {
        self.inner.cursor_before(position).await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes()
    }

    async fn checkpoint(&self, name: &str) -> keel_store::Result<Option<Cursor>> {
        self.inner.checkpoint(name).await
    }

    async fn save_checkpoint(&self, name: &str, cursor: Cursor) -> keel_store::Result<()> {
        self.fail(Fault::SaveCheckpoint)?;
        let poison = *self.poison.lock().unwrap();
        if let Some(poison) = poison
            && cursor.log_position() >= poison
        {
            let letters = self.inner.relay_dead_letters(None, usize::MAX).await?;
            if !letters.iter().any(|l| l.position == poison) {
                self.violations.fetch_add(1, Ordering::SeqCst);
            }
        }
        let bus = self.confirmed_by.lock().unwrap().clone();
        if let Some(bus) = bus {
            let confirmed: HashSet<String> = bus.first_arrivals().into_iter().collect();
            let dead: HashSet<String> = self
                .inner
                .relay_dead_letters(None, usize::MAX)
                .await?
                .into_iter()
                .map(|l| l.event_id)
                .collect();
            let query = LogQuery { limit: usize::MAX, ..LogQuery::default() };
            let passed = self.inner.read_all(&query).await?;
            let unconfirmed = passed
                .iter()
                .filter(|e| e.cursor.position <= cursor.position)
                .filter(|e| !confirmed.contains(e.event.id()) && !dead.contains(e.event.id()))
                .count();
            if unconfirmed > 0 {
                self.violations.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.inner.save_checkpoint(name, cursor).await
    }

    async fn checkpoints(&self) -> keel_store::Result<Vec<(String, Cursor, DateTime<Utc>)>> {
        self.inner.checkpoints().await
    }

    async fn try_lease(&self, name: &str) -> keel_store::Result<Option<Box<dyn Lease>>> {
        self.inner.try_lease(name).await
    }

    async fn save_relay_dead_letter(&self, letter: &RelayDeadLetter) -> keel_store::Result<()> {
        self.fail(Fault::SaveDeadLetter)?;
        self.inner.save_relay_dead_letter(letter).await
    }

    async fn relay_dead_letters(
        &self,
        relay: Option<&str>,
        limit: usize,
    ) -> keel_store::Result<Vec<RelayDeadLetter>> {
        self.inner.relay_dead_letters(relay, limit).await
    }

    async fn delete_relay_dead_letter(
        &self,
        relay: &str,
        position: Position,
    ) -> keel_store::Result<bool> {
        self.inner.delete_relay_dead_letter(relay, position).await
    }

    async fn purge_relay_dead_letters(&self, relay: &str) -> keel_store::Result<u64> {
        self.inner.purge_relay_dead_letters(relay).await
    }
}

// ---------------------------------------------------------------------------------
// Item 5: one poison event no longer stops the relay.

/// Events on two topics, the third of which the bus refuses for good.
async fn history_with_poison(log: &dyn EventLog) -> (Vec<CloudEvent>, CloudEvent) {
    let mut events = Vec::new();
    for n in 0..8 {
        let stream = if n % 3 == 2 { "invoice-1" } else { "order-1" };
        events.push(append(log, stream, n).await);
    }
    let poison = events[2].clone();
    (events, poison)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_becomes_a_relay_dead_letter_and_the_relay_goes_on() {
    let metrics = keel_telemetry::prometheus().clone();
    let log = sqlite().await;
    let bus = TestBus::new();
    let relay = unique("poison");
    let (events, poison) = history_with_poison(&*log).await;
    bus.poison(poison.id());
    let running = Running::start(log.clone(), bus.clone(), &relay);

    wait_for("the relay to pass the poison event", PATIENCE, || caught_up(&*log, &relay)).await;
    // Every other event went out, each topic's in log order (the relay publishes the
    // topics of a page side by side).
    let arrivals = bus.first_arrivals();
    assert_eq!(arrivals.len(), events.len() - 1, "{arrivals:?}");
    // As `history_with_poison` appends them: every third event is an invoice's.
    for invoices in [true, false] {
        let sent: Vec<String> = (0..events.len())
            .filter(|&n| (n % 3 == 2) == invoices && events[n].id() != poison.id())
            .map(|n| events[n].id().to_owned())
            .collect();
        let arrived: Vec<String> =
            arrivals.iter().filter(|id| sent.contains(id)).cloned().collect();
        assert_eq!(arrived, sent);
    }
    // The poison event is recorded with the reason.
    let letters = log.relay_dead_letters(Some(&relay), 10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.event_id, poison.id());
    assert_eq!(Some(letter.position), poison_position(&*log, poison.id()).await);
    assert_eq!(letter.topic, "invoice");
    assert!(letter.reason.contains("larger than the broker accepts"), "{}", letter.reason);
    let rendered = metrics.render();
    let counted = format!("keel_relay_dead_letters_total{{relay=\"{relay}\"}} 1");
    assert!(rendered.contains(&counted), "no `{counted}` in:\n{rendered}");

    // The relay goes on with what comes next.
    let later = append(&*log, "invoice-1", 100).await;
    wait_for("a later event on the poison's topic", PATIENCE, || {
        let arrived = bus.first_arrivals().contains(&later.id().to_owned());
        async move { arrived }
    })
    .await;

    // Once the bus can take it, a retry publishes it and removes the record.
    bus.cure();
    let retried =
        keel_store::relay_dlq::retry(&*log, &*bus, &relay, letter.position).await.unwrap();
    assert!(retried);
    assert!(bus.first_arrivals().contains(&poison.id().to_owned()));
    assert!(log.relay_dead_letters(Some(&relay), 10).await.unwrap().is_empty());
    assert!(!keel_store::relay_dlq::retry(&*log, &*bus, &relay, letter.position).await.unwrap());
    running.stop().await;
}

async fn poison_position(log: &dyn EventLog, id: &str) -> Option<Position> {
    let all = log.read_all(&LogQuery::default()).await.unwrap();
    all.iter().find(|e| e.event.id() == id).map(|e| e.cursor.log_position())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_about_the_bus_are_retried_and_never_dead_lettered() {
    let log = sqlite().await;
    let bus = TestBus::new();
    let relay = unique("transient");
    let mut events = Vec::new();
    for n in 0..6 {
        events.push(append(&*log, "order-1", n).await);
    }
    // Nothing here is the events' fault: a broken connection, a broker that does not
    // answer, a full queue, a refused account, a closed producer.
    bus.fail_with([
        BusError::Connection("test: connection reset".into()),
        BusError::Timeout("test: no confirm".into()),
        BusError::Backpressure("test: all channels busy".into()),
        BusError::Rejected("test: negative confirm, the queue is full".into()),
        BusError::Config("test: access refused to the topic".into()),
        BusError::Closed,
    ]);
    let running = Running::start(log.clone(), bus.clone(), &relay);
    wait_for("the relay to get through the failures", PATIENCE, || caught_up(&*log, &relay)).await;
    assert_eq!(bus.errors_left(), 0);
    let ids: Vec<String> = events.iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(bus.first_arrivals(), ids, "every event, in order");
    assert!(log.relay_dead_letters(None, 10).await.unwrap().is_empty(), "nothing dead-lettered");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_passes_a_dead_letter_only_once_its_record_is_committed() {
    let sqlite = sqlite().await;
    let log = FlakyLog::new(sqlite.clone(), Some(Fault::SaveDeadLetter));
    let bus = TestBus::new();
    let relay = unique("dlqfirst");
    let (events, poison) = history_with_poison(&*log).await;
    bus.poison(poison.id());
    *log.poison.lock().unwrap() = poison_position(&*log, poison.id()).await;
    let running = Running::start(log.clone(), bus.clone(), &relay);
    wait_for("the relay to pass the poison event", PATIENCE, || caught_up(&*log, &relay)).await;
    assert!(log.failed_at().is_some(), "the dead-letter write failed once");
    assert_eq!(log.violations.load(Ordering::SeqCst), 0, "a checkpoint passed an unrecorded event");
    assert_eq!(log.relay_dead_letters(Some(&relay), 10).await.unwrap().len(), 1);
    assert_eq!(bus.first_arrivals().len(), events.len() - 1);
    running.stop().await;
}

// ---------------------------------------------------------------------------------
// Checkpoint only after the broker's confirm.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_waits_for_a_publish_that_hangs_or_fails() {
    let log = FlakyLog::new(sqlite().await, None);
    let bus = TestBus::new();
    // Every checkpoint the relay stores is checked against what the bus confirmed.
    *log.confirmed_by.lock().unwrap() = Some(bus.clone());
    let relay = unique("confirm");
    let mut events = Vec::new();
    for n in 0..6 {
        events.push(append(&*log, if n % 2 == 0 { "order-1" } else { "order-2" }, n).await);
    }
    let checkpoint = || {
        let log = log.clone();
        let name = Relay::checkpoint_name(&relay);
        async move { log.checkpoint(&name).await.unwrap() }
    };

    // The broker takes the first publish and never confirms it.
    bus.hold.send_replace(true);
    let running = Running::start(log.clone(), bus.clone(), &relay);
    wait_for("the relay to publish", PATIENCE, || {
        let called = bus.calls.load(Ordering::SeqCst) > 0;
        async move { called }
    })
    .await;
    // A relay that stored its checkpoint before the confirm would have done so by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(checkpoint().await, None, "checkpoint stored while the publish hangs");

    // Then the broker fails the publish it held and the next ones.
    bus.fail_with((0..3).map(|_| BusError::Connection("test: connection lost".into())));
    bus.hold.send_replace(false);

    // Then it recovers: everything goes out in log order, then the checkpoint moves.
    wait_for("the relay to catch up", PATIENCE, || caught_up(&*log, &relay)).await;
    assert_eq!(bus.errors_left(), 0);
    let ids: Vec<String> = events.iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(bus.first_arrivals(), ids, "every event, in log order");
    assert_eq!(
        log.violations.load(Ordering::SeqCst),
        0,
        "a checkpoint was stored past events the bus had not confirmed"
    );
    running.stop().await;
}

// ---------------------------------------------------------------------------------
// Item 7: every way out of the active phase releases the lease.

/// SQLite's lease: a holder that stops renewing keeps it this long.
const SQLITE_LEASE: Duration = Duration::from_secs(15);

async fn a_store_error_releases_the_lease(fault: Fault) {
    let sqlite = sqlite().await;
    let log = FlakyLog::new(sqlite.clone(), Some(fault));
    let bus = TestBus::new();
    let relay = unique("lease");
    let mut events = Vec::new();
    for n in 0..3 {
        events.push(append(&*log, "order-1", n).await);
    }
    let running = Running::start(log.clone(), bus.clone(), &relay);
    wait_for("the injected store error", PATIENCE, || {
        let failed = log.failed_at().is_some();
        async move { failed }
    })
    .await;
    let failed_at = log.failed_at().unwrap();
    // Active again long before a lease left behind would expire.
    let patience = SQLITE_LEASE * 2 / 3;
    loop {
        if caught_up(&*log, &relay).await {
            break;
        }
        assert!(
            failed_at.elapsed() < patience,
            "the relay was not active again within {patience:?} of a {fault:?} error \
             (a lease left behind lasts {SQLITE_LEASE:?} on SQLite)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<String> = events.iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(bus.first_arrivals(), ids);
    running.stop().await;
    // Stopped cleanly: the lease is free.
    let lease = sqlite.try_lease(&Relay::checkpoint_name(&relay)).await.unwrap();
    assert!(lease.is_some(), "the stopped relay left its lease behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_checkpoint_save_releases_the_lease() {
    a_store_error_releases_the_lease(Fault::SaveCheckpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_releases_the_lease() {
    a_store_error_releases_the_lease(Fault::ReadAfter).await;
}

// ---------------------------------------------------------------------------------
// `keel status` and `keel dlq --relay`.

fn keel(database_url: &str, bus_url: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keel"));
    command
        .args(args)
        .current_dir(std::env::temp_dir())
        .env("KEEL_DATABASE_URL", database_url)
        .env_remove("KEEL_BUS_URL");
    if let Some(url) = bus_url {
        command.env("KEEL_BUS_URL", url);
    }
    command.output().unwrap()
}

fn keel_json(database_url: &str, bus_url: Option<&str>, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = keel(database_url, bus_url, &all);
    assert!(output.status.success(), "keel {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_dead_letters_through_the_command_line() {
    let dir = std::env::temp_dir().join(unique("keel-relay-cli-"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/keel.db", dir.display());
    let log = Arc::new(SqliteEventLog::connect(&url).await.unwrap());
    let bus = TestBus::new();
    let (events, poison) = history_with_poison(&*log).await;
    bus.poison(poison.id());
    let running = Running::start(log.clone(), bus.clone(), "main");
    wait_for("the relay to pass the poison event", PATIENCE, || caught_up(&*log, "main")).await;
    running.stop().await;
    let position = poison_position(&*log, poison.id()).await.unwrap().0.to_string();

    let status = keel_json(&url, None, &["status"]);
    assert_eq!(status["relay_dead_letters"], 1, "{status}");
    let row = status["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "relay:main")
        .cloned()
        .unwrap();
    assert_eq!(row["dead_letters"], 1, "{row}");
    assert_eq!(row["lag"], 0, "{row}");
    let text = keel(&url, None, &["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("1 relay dead letter(s)"));

    let listed = keel_json(&url, None, &["dlq", "list", "--relay", "main"]);
    let rows = listed["dead_letters"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["id"], position.as_str());
    assert_eq!(rows[0]["event_id"], poison.id());
    assert!(rows[0]["reason"].as_str().unwrap().contains("larger than the broker accepts"));

    let shown = keel_json(&url, None, &["dlq", "show", &position, "--relay", "main"]);
    assert_eq!(shown["message"]["id"], poison.id(), "{shown}");
    assert_eq!(shown["message"]["data"]["n"], 2, "{shown}");

    // Bad input says what is wrong.
    for (args, expected) in [
        (&["dlq", "show", "nope", "--relay", "main"][..], "not a relay dead letter id"),
        (&["dlq", "show", "99999", "--relay", "main"][..], "no dead letter 99999 of relay main"),
        (&["dlq", "list"][..], "--topic"),
        (&["dlq", "list", "--relay", "main", "--topic", "t"][..], "cannot be used with"),
        (&["dlq", "retry", &position, "--relay", "main"][..], "needs KEEL_BUS_URL"),
        (&["replay", "--into", "group:orders"][..], "expected group:TOPIC:GROUP"),
        (&["replay", "--into", "group:orders:g"][..], "needs KEEL_BUS_URL"),
    ] {
        let output = keel(&url, None, args);
        assert!(!output.status.success(), "keel {args:?} should fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "keel {args:?}: {stderr}");
    }

    // Retry publishes the event again through KEEL_BUS_URL and removes the record.
    let retried =
        keel_json(&url, Some("memory://"), &["dlq", "retry", &position, "--relay", "main"]);
    assert_eq!(retried["retried"], position.as_str());
    assert!(log.relay_dead_letters(None, 10).await.unwrap().is_empty());

    // Purge removes every record of the relay.
    let letter = RelayDeadLetter::new(
        "main",
        &log.read_all(&LogQuery::default()).await.unwrap()[0],
        "test: refused",
    );
    log.save_relay_dead_letter(&letter).await.unwrap();
    let purged = keel_json(&url, None, &["dlq", "purge", "--relay", "main"]);
    assert_eq!(purged["purged"], 1);
    assert!(log.relay_dead_letters(None, 10).await.unwrap().is_empty());
    assert_eq!(events.len(), 8);
}
