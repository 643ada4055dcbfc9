//! A console on a real SQLite log with the log bus: a causal chain (an order placed
//! causes stock reserved, which causes the order confirmed), a consumer group whose
//! handler refuses orders while the "warehouse" is offline (so one lands in its dead
//! letters), a projection's and a relay's checkpoints.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use keel_bus::{Consumer, ConsumerHandle, HandlerError, Message, handler_fn};
use keel_console::{Console, LogBusGroups, Rebuild};
use keel_core::envelope::ext;
use keel_core::{Bus, CloudEvent, ExpectedVersion, StreamId, SubscriptionSpec};
use keel_sqlite::SqliteEventLog;
use keel_store::{Cursor, EventLog};

pub const TOPIC: &str = "order";
pub const GROUP: &str = "shipping";

pub struct Fixture {
    pub log: Arc<SqliteEventLog>,
    pub bus: Arc<dyn Bus>,
    pub console: Console,
    /// The order placed (the first cause), stock reserved and order confirmed.
    pub placed: CloudEvent,
    pub reserved: CloudEvent,
    pub confirmed: CloudEvent,
    /// The event ids the shipping group handled.
    pub handled: Arc<Mutex<Vec<String>>>,
    /// While set, the shipping group refuses every order (dead-lettering it).
    pub offline: Arc<AtomicBool>,
    pub consumer: ConsumerHandle,
}

fn event(
    ty: &str,
    correlation: &str,
    cause: Option<&CloudEvent>,
    data: serde_json::Value,
) -> CloudEvent {
    let mut builder = CloudEvent::builder(ty, "/shop")
        .extension(ext::CORRELATION_ID, correlation)
        .json_data(&data)
        .expect("json");
    if let Some(cause) = cause {
        builder = builder.extension(ext::CAUSATION_ID, cause.id());
    }
    builder.build().expect("valid")
}

/// Counts the log's events: the demo projection's "rebuild".
struct CountEvents(Arc<SqliteEventLog>);

#[async_trait]
impl Rebuild for CountEvents {
    fn names(&self) -> Vec<String> {
        vec!["order-summaries".to_owned()]
    }

    async fn rebuild(&self, _name: &str) -> Result<u64, String> {
        let head = self.0.head().await.map_err(|e| e.to_string())?;
        Ok(head.0)
    }
}

pub async fn fixture() -> Fixture {
    let dir = std::env::temp_dir().join("keel-console-tests");
    let path = dir.join(format!("{}.db", uuid::Uuid::now_v7().simple()));
    let log = Arc::new(
        SqliteEventLog::connect(&format!("sqlite://{}", path.display())).await.expect("open"),
    );
    let bus: Arc<dyn Bus> = Arc::new(keel_logbus::open(log.clone()).await.expect("log bus"));

    let handled = Arc::new(Mutex::new(Vec::new()));
    let offline = Arc::new(AtomicBool::new(true));
    let (seen, refusing) = (handled.clone(), offline.clone());
    let handler = handler_fn(move |message: Message| {
        let (seen, refusing) = (seen.clone(), refusing.clone());
        async move {
            if refusing.load(Ordering::SeqCst) {
                return Err(HandlerError::permanent("the warehouse is offline"));
            }
            seen.lock().expect("not poisoned").push(message.event().id().to_owned());
            Ok(())
        }
    });
    let spec = SubscriptionSpec::new(TOPIC, GROUP).types(["order.placed"]);
    let consumer = Consumer::new(bus.clone(), spec).start(handler).await.expect("consume");

    let correlation = format!("req-{}", uuid::Uuid::now_v7().simple());
    let placed =
        event("order.placed", &correlation, None, serde_json::json!({"order": "o-1", "items": 2}));
    let reserved =
        event("stock.reserved", &correlation, Some(&placed), serde_json::json!({"order": "o-1"}));
    let confirmed = event(
        "order.confirmed",
        &correlation,
        Some(&reserved),
        serde_json::json!({"order": "o-1"}),
    );
    let order = StreamId::new("order-o1").expect("stream");
    let stock = StreamId::new("stock-o1").expect("stream");
    log.append(&order, ExpectedVersion::NoStream, std::slice::from_ref(&placed))
        .await
        .expect("append");
    log.append(&stock, ExpectedVersion::NoStream, std::slice::from_ref(&reserved))
        .await
        .expect("append");
    log.append(
        &order,
        ExpectedVersion::Exact(keel_core::StreamVersion(1)),
        std::slice::from_ref(&confirmed),
    )
    .await
    .expect("append");
    let head = log.head().await.expect("head");
    log.save_checkpoint("projection:order-summaries", Cursor { position: 2, ..Cursor::START })
        .await
        .expect("checkpoint");
    log.save_checkpoint(
        "relay:main",
        Cursor { position: i64::try_from(head.0).expect("small"), ..Cursor::START },
    )
    .await
    .expect("checkpoint");

    // The order lands in the group's dead letters.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while bus.list(TOPIC, GROUP, 10).await.expect("list").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the order was never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let console = Console::new(log.clone())
        .describe_store(format!("sqlite://{}", path.display()))
        .describe_bus("the event log itself (log bus)")
        .dead_letters(bus.clone())
        .group_lag(Arc::new(LogBusGroups::new(log.clone())))
        .rebuild(Arc::new(CountEvents(log.clone())));
    Fixture { log, bus, console, placed, reserved, confirmed, handled, offline, consumer }
}

impl Fixture {
    /// Waits until the shipping group has handled `id`.
    pub async fn handled_eventually(&self, id: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.handled.lock().expect("not poisoned").iter().any(|h| h == id) {
            assert!(tokio::time::Instant::now() < deadline, "the group never handled {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
