//! A handler that panics is a transient failure like any other: its delivery is
//! redelivered (never acknowledged), dead-lettered after the last attempt, and the
//! consumer goes on with later messages, whether the panic comes from `poll_ready`,
//! from `call` before it returns its future, or from inside the future. A panic while
//! settling (a backend fault) gives the delivery back and does not stop the consumer.
//!
//! On the in-process bus; the conformance suite runs the same handler faults on every
//! backend.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use keel_bus::consumer::BatchOptions;
use keel_bus::{Backoff, Consumer, HandlerError, Message, RedeliveryPolicy, batch_fn, handler_fn};
use keel_core::bus::{DeadLetter, DeadLetterReason, DeadLetters, Settle};
use keel_core::{
    BusError, CloudEvent, Delivery, Payload, Publisher, Subscriber, Subscription, SubscriptionSpec,
};
use keel_memory::MemoryBus;

/// How long a test waits for something that must happen.
const PATIENCE: Duration = Duration::from_secs(30);

const TOPIC: &str = "t";
const GROUP: &str = "g";

/// Three attempts, quickly.
fn quick() -> RedeliveryPolicy {
    RedeliveryPolicy::new(3, Backoff::new(Duration::from_millis(5), Duration::from_millis(20)))
}

fn numbered(n: u64) -> CloudEvent {
    CloudEvent::builder("keel.test.numbered", "/keel-bus/tests")
        .json_data(&n)
        .expect("json")
        .build()
        .expect("valid event")
}

fn number(message: &Message) -> u64 {
    serde_json::from_slice(message.event().data().expect("data")).expect("a number")
}

async fn publish(bus: &MemoryBus, n: u64) {
    bus.publish(TOPIC, &[numbered(n)]).await.expect("publish");
}

/// Every handler call as `(number, attempt)`.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<(u64, u32)>>>);

impl Calls {
    fn push(&self, message: &Message) {
        self.0.lock().expect("not poisoned").push((number(message), message.attempt()));
    }
    fn attempts_of(&self, n: u64) -> Vec<u32> {
        let calls = self.0.lock().expect("not poisoned");
        calls.iter().filter(|(m, _)| *m == n).map(|(_, attempt)| *attempt).collect()
    }
}

/// Polls `condition` until it holds; panics naming `what` after [`PATIENCE`].
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn dead_letters(bus: &MemoryBus, what: &str, count: usize) -> Vec<DeadLetter> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let letters = bus.list(TOPIC, GROUP, 10).await.expect("list");
        if letters.len() >= count {
            return letters;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn event_of(letter: &DeadLetter) -> &CloudEvent {
    match &letter.payload {
        Payload::Event(event) => event,
        Payload::Undecodable(raw) => panic!("the dead letter lost its event: {raw:?}"),
    }
}

/// Where a poison message makes the handler panic.
#[derive(Clone, Copy, Debug)]
enum Where {
    /// In `call`, before it returns its future (`m.decode().unwrap()` in a closure).
    BeforeTheFuture,
    /// Inside the future.
    InTheFuture,
}

/// Message 0 panics on every attempt (where `at` says); the others succeed.
fn poison_handler(
    calls: &Calls,
    at: Where,
) -> impl tower::Service<
    Message,
    Response = (),
    Error = HandlerError,
    Future = impl Future<Output = Result<(), HandlerError>> + Send,
> + Clone
+ Send
+ 'static {
    let calls = calls.clone();
    handler_fn(move |message: Message| {
        calls.push(&message);
        let poisoned = number(&message) == 0;
        if poisoned && matches!(at, Where::BeforeTheFuture) {
            panic!("poison message (before the future)");
        }
        async move {
            if poisoned {
                panic!("poison message (in the future)");
            }
            Ok::<(), HandlerError>(())
        }
    })
}

/// The poison message is tried three times, dead-lettered with the panic as the
/// reason, and message 1, published after, is handled.
async fn single_consumer_survives(at: Where) {
    let bus = MemoryBus::new();
    let calls = Calls::default();
    let handle = Consumer::new(Arc::new(bus.clone()), SubscriptionSpec::new(TOPIC, GROUP))
        .redelivery(quick())
        .start(poison_handler(&calls, at))
        .await
        .expect("subscribe");
    publish(&bus, 0).await;
    let letters = dead_letters(&bus, "the poison message's dead letter", 1).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3, "{letters:?}");
    assert!(letters[0].reason.contains("handler panicked: poison message"), "{letters:?}");
    assert_eq!(event_of(&letters[0]).data(), numbered(0).data());
    assert_eq!(calls.attempts_of(0), [1, 2, 3], "three attempts, none acknowledged");
    publish(&bus, 1).await;
    until("the message after the poison one", || calls.attempts_of(1) == [1]).await;
    handle.stop().await.expect("the consumer ends cleanly when stopped");
}

#[tokio::test]
async fn handler_panicking_before_its_future_is_retried_then_dead_lettered() {
    single_consumer_survives(Where::BeforeTheFuture).await;
}

#[tokio::test]
async fn handler_panicking_in_its_future_is_retried_then_dead_lettered() {
    single_consumer_survives(Where::InTheFuture).await;
}

/// The consumer does not end by itself after a handler panic (it used to end with
/// `Ok(())`, its worker dead). Waiting a moment for an end that must not come cannot
/// fail on a slow machine; it can only miss a late end, which the other tests catch.
#[tokio::test]
async fn a_handler_panic_never_ends_the_consumer() {
    let bus = MemoryBus::new();
    let calls = Calls::default();
    let mut handle = Consumer::new(Arc::new(bus.clone()), SubscriptionSpec::new(TOPIC, GROUP))
        .redelivery(quick())
        .start(poison_handler(&calls, Where::BeforeTheFuture))
        .await
        .expect("subscribe");
    publish(&bus, 0).await;
    until("the first attempt", || !calls.attempts_of(0).is_empty()).await;
    let ended = tokio::time::timeout(Duration::from_millis(500), handle.join()).await;
    assert!(ended.is_err(), "the consumer ended by itself: {ended:?}");
    handle.stop().await.expect("the consumer ends cleanly when stopped");
}

/// A service whose `poll_ready` panics the first `panics` times it is asked.
#[derive(Clone)]
struct PanicsWhenPolled {
    panics: Arc<AtomicU32>,
    calls: Calls,
}

impl tower::Service<Message> for PanicsWhenPolled {
    type Response = ();
    type Error = HandlerError;
    type Future = std::future::Ready<Result<(), HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        let left = self.panics.load(Ordering::SeqCst);
        if left > 0 {
            self.panics.store(left - 1, Ordering::SeqCst);
            panic!("poll_ready panicked");
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        self.calls.push(&message);
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn handler_panicking_in_poll_ready_is_retried_then_dead_lettered() {
    let bus = MemoryBus::new();
    let calls = Calls::default();
    let handler = PanicsWhenPolled { panics: Arc::new(AtomicU32::new(3)), calls: calls.clone() };
    let handle = Consumer::new(Arc::new(bus.clone()), SubscriptionSpec::new(TOPIC, GROUP))
        .redelivery(quick())
        .start(handler)
        .await
        .expect("subscribe");
    publish(&bus, 0).await;
    let letters = dead_letters(&bus, "the dead letter", 1).await;
    assert_eq!(letters[0].attempts, 3, "{letters:?}");
    assert!(letters[0].reason.contains("handler panicked: poll_ready panicked"), "{letters:?}");
    publish(&bus, 1).await;
    until("the message after", || calls.attempts_of(1) == [1]).await;
    assert!(calls.attempts_of(0).is_empty(), "never called for the message it panicked on");
    handle.stop().await.expect("the consumer ends cleanly when stopped");
}

/// The batch holding the poison message panics on each of its three attempts and is
/// dead-lettered; message 1, published after, is handled.
async fn batch_consumer_survives(at: Where) {
    let bus = MemoryBus::new();
    let calls = Calls::default();
    let record = calls.clone();
    let handler = batch_fn(move |batch: Vec<Message>| {
        batch.iter().for_each(|message| record.push(message));
        let poisoned = batch.iter().any(|message| number(message) == 0);
        if poisoned && matches!(at, Where::BeforeTheFuture) {
            panic!("poison batch (before the future)");
        }
        async move {
            if poisoned {
                panic!("poison batch (in the future)");
            }
            Ok::<(), HandlerError>(())
        }
    });
    let options = BatchOptions { max_size: 10, max_wait: Duration::from_millis(5) };
    let handle = Consumer::new(Arc::new(bus.clone()), SubscriptionSpec::new(TOPIC, GROUP))
        .redelivery(quick())
        .start_batch(handler, options)
        .await
        .expect("subscribe");
    publish(&bus, 0).await;
    let letters = dead_letters(&bus, "the poison message's dead letter", 1).await;
    assert_eq!(letters[0].attempts, 3, "{letters:?}");
    assert!(letters[0].reason.contains("handler panicked: poison batch"), "{letters:?}");
    assert_eq!(calls.attempts_of(0), [1, 2, 3], "three attempts, none acknowledged");
    publish(&bus, 1).await;
    until("the message after the poison one", || calls.attempts_of(1) == [1]).await;
    handle.stop().await.expect("the consumer ends cleanly when stopped");
}

#[tokio::test]
async fn batch_handler_panicking_before_its_future_is_retried_then_dead_lettered() {
    batch_consumer_survives(Where::BeforeTheFuture).await;
}

#[tokio::test]
async fn batch_handler_panicking_in_its_future_is_retried_then_dead_lettered() {
    batch_consumer_survives(Where::InTheFuture).await;
}

/// Fails if a panicking handler's delivery were acknowledged: the handler panics on
/// the first attempt only, so only a redelivery can reach it again.
#[tokio::test]
async fn a_panicking_handlers_delivery_is_redelivered_not_acked() {
    for at in [Where::BeforeTheFuture, Where::InTheFuture] {
        let bus = MemoryBus::new();
        let calls = Calls::default();
        let record = calls.clone();
        let handler = handler_fn(move |message: Message| {
            record.push(&message);
            let first = message.attempt() == 1;
            if first && matches!(at, Where::BeforeTheFuture) {
                panic!("first attempt panics (before the future)");
            }
            async move {
                if first {
                    panic!("first attempt panics (in the future)");
                }
                Ok::<(), HandlerError>(())
            }
        });
        let handle = Consumer::new(Arc::new(bus.clone()), SubscriptionSpec::new(TOPIC, GROUP))
            .redelivery(quick())
            .start(handler)
            .await
            .expect("subscribe");
        publish(&bus, 0).await;
        until(&format!("a redelivery after a panic {at:?}"), || calls.attempts_of(0) == [1, 2])
            .await;
        handle.stop().await.expect("the consumer ends cleanly when stopped");
        assert!(
            bus.list(TOPIC, GROUP, 10).await.expect("list").is_empty(),
            "nothing dead-lettered"
        );
    }
}

/// A subscriber over the in-process bus whose next `ack` panics once `armed`: a
/// backend fault while settling.
struct AckPanics {
    bus: MemoryBus,
    armed: Arc<AtomicBool>,
}

#[async_trait]
impl Subscriber for AckPanics {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BusError> {
        let inner = self.bus.subscribe(spec).await?;
        Ok(Box::new(AckPanicsSubscription { inner, armed: self.armed.clone() }))
    }
}

struct AckPanicsSubscription {
    inner: Box<dyn Subscription>,
    armed: Arc<AtomicBool>,
}

#[async_trait]
impl Subscription for AckPanicsSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        let delivery = self.inner.next().await?;
        Some(delivery.map(|delivery| {
            let (payload, attempt, inner) = delivery.into_parts();
            let settle = AckPanicsSettle { inner, armed: self.armed.clone() };
            Delivery::new(payload, attempt, Box::new(settle))
        }))
    }

    async fn close(self: Box<Self>) -> Result<(), BusError> {
        self.inner.close().await
    }
}

struct AckPanicsSettle {
    inner: Box<dyn Settle>,
    armed: Arc<AtomicBool>,
}

#[async_trait]
impl Settle for AckPanicsSettle {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        assert!(!self.armed.swap(false, Ordering::SeqCst), "the backend panicked while acking");
        self.inner.ack().await
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        self.inner.nack(delay).await
    }

    async fn dead_letter(self: Box<Self>, reason: DeadLetterReason) -> Result<(), BusError> {
        self.inner.dead_letter(reason).await
    }
}

/// The delivery whose ack panicked goes back to the group (dropped unsettled) and
/// comes again; the consumer goes on.
#[tokio::test]
async fn a_panic_while_settling_neither_stops_the_consumer_nor_loses_the_delivery() {
    let bus = MemoryBus::new();
    let subscriber = AckPanics { bus: bus.clone(), armed: Arc::new(AtomicBool::new(true)) };
    let calls = Calls::default();
    let record = calls.clone();
    let handler = handler_fn(move |message: Message| {
        record.push(&message);
        async { Ok::<(), HandlerError>(()) }
    });
    let handle = Consumer::new(Arc::new(subscriber), SubscriptionSpec::new(TOPIC, GROUP))
        .redelivery(quick())
        .start(handler)
        .await
        .expect("subscribe");
    publish(&bus, 0).await;
    until("the message again after its ack panicked", || calls.attempts_of(0) == [1, 2]).await;
    publish(&bus, 1).await;
    until("the next message", || calls.attempts_of(1) == [1]).await;
    handle.stop().await.expect("the consumer ends cleanly when stopped");
}

#[tokio::test]
async fn a_panic_while_settling_a_batch_neither_stops_the_consumer_nor_loses_the_batch() {
    let bus = MemoryBus::new();
    let subscriber = AckPanics { bus: bus.clone(), armed: Arc::new(AtomicBool::new(true)) };
    let calls = Calls::default();
    let record = calls.clone();
    let handler = batch_fn(move |batch: Vec<Message>| {
        batch.iter().for_each(|message| record.push(message));
        async { Ok::<(), HandlerError>(()) }
    });
    let options = BatchOptions { max_size: 10, max_wait: Duration::from_millis(5) };
    let handle = Consumer::new(Arc::new(subscriber), SubscriptionSpec::new(TOPIC, GROUP))
        .redelivery(quick())
        .start_batch(handler, options)
        .await
        .expect("subscribe");
    publish(&bus, 0).await;
    until("the message again after its ack panicked", || calls.attempts_of(0) == [1, 2]).await;
    publish(&bus, 1).await;
    until("the next message", || calls.attempts_of(1) == [1]).await;
    handle.stop().await.expect("the consumer ends cleanly when stopped");
}
