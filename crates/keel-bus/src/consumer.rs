//! Running a handler for a consumer group.
//!
//! The consumer pulls deliveries from a subscription and hands each to one of
//! `concurrency` workers, chosen by partition key, so different keys run in parallel
//! and one key strictly in sequence. Each outcome settles the delivery:
//!
//! | handler result | settle |
//! |---|---|
//! | `Ok` | ack |
//! | transient error, attempts left | nack with backoff (the broker redelivers) |
//! | transient error on the last attempt, or permanent error | dead-letter with the error |
//! | message did not decode (not a CloudEvent, or an unreadable error: data that does not decode after upcasting, a future schema version) | the [`Unreadable`] policy: dead-letter at once (default), skip, or stop |
//! | delivered after its last attempt, never settled (the process died handling it) | dead-letter without handling |
//! | handler panicked (in `poll_ready`, in `call` before it returns its future, or in the future) | treated as a transient error |
//!
//! Skipped events are acked, logged and counted in `keel_events_skipped_total`
//! (labels `subscriber` = `group:TOPIC:GROUP`, `reason`); a consumer stopped by the
//! policy gives the event back to the group and ends with an error naming it.
//!
//! A panic while settling (a backend fault) drops the delivery unsettled, which gives
//! it back to the group; it is logged and the consumer goes on. Should a worker still
//! end while the consumer runs, the consumer stops and ends with an error, never with
//! `Ok(())`.

use std::any::Any;
use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use keel_core::bus::{DeadLetterReason, Settle};
use keel_core::{BusError, Delivery, Payload, Subscriber, Subscription, SubscriptionSpec};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};

use crate::message::{HandlerError, Message};
use keel_core::Backoff;

/// How often a message is delivered before it is dead-lettered, and how long the
/// broker waits before each redelivery.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RedeliveryPolicy {
    /// Deliveries in all, the first included (1 = never redeliver).
    pub max_attempts: u32,
    /// Delay before each redelivery, by attempt.
    pub backoff: Backoff,
}

impl Default for RedeliveryPolicy {
    fn default() -> Self {
        Self { max_attempts: 5, backoff: Backoff::default() }
    }
}

impl RedeliveryPolicy {
    /// At most `max_attempts` deliveries (at least 1), redelivered after `backoff`.
    pub fn new(max_attempts: u32, backoff: Backoff) -> Self {
        Self { max_attempts: max_attempts.max(1), backoff }
    }
}

/// What a consumer or projection does with an event it cannot read: data that does not
/// decode (also after upcasting), a schema version newer than the code's, a type it
/// does not know ([`HandlerError::unreadable`], which every `DecodeError` becomes).
///
/// Consumers default to [`Unreadable::DeadLetter`]: the dead-letter queue keeps the
/// event and the reason, and `keel dlq retry` brings it back once the code can read
/// it. Projections default to [`Unreadable::Skip`] (see `keel_store::Projection`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unreadable {
    /// Record the event (log, metric and, for projections, the store's skipped
    /// table) and go on.
    Skip,
    /// Dead-letter it with the reason and go on. A projection, which has no queue,
    /// treats this as [`Unreadable::Skip`].
    #[default]
    DeadLetter,
    /// Stop: a consumer gives the event back to the group and ends with an error; a
    /// projection keeps retrying the page, so its read model stops at the event.
    Stop,
}

impl Unreadable {
    /// The policy's name, as configuration and logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::DeadLetter => "dead_letter",
            Self::Stop => "stop",
        }
    }
}

impl std::str::FromStr for Unreadable {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(Self::Skip),
            "dead_letter" | "dead-letter" => Ok(Self::DeadLetter),
            "stop" => Ok(Self::Stop),
            other => Err(format!("`{other}` is not a policy (expected skip, dead_letter or stop)")),
        }
    }
}

/// Counts a skipped event in `keel_events_skipped_total{subscriber, reason}`.
pub fn count_skip(subscriber: &str, reason: &'static str) {
    metrics::counter!(
        "keel_events_skipped_total",
        "subscriber" => subscriber.to_owned(),
        "reason" => reason,
    )
    .increment(1);
}

/// How a batch consumer gathers its batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOptions {
    /// At most this many messages per handler call.
    pub max_size: usize,
    /// Wait at most this long after the first message for the batch to fill.
    pub max_wait: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self { max_size: 100, max_wait: Duration::from_millis(20) }
    }
}

/// Runs a handler for one member of a consumer group. See the module docs.
///
/// ```no_run
/// use std::sync::Arc;
/// use keel_bus::{Consumer, HandlerError, Message, handler_fn};
/// use keel_core::{BusError, Subscriber, SubscriptionSpec};
///
/// async fn bill(bus: Arc<dyn Subscriber>) -> Result<(), BusError> {
///     // Group `billing` gets every `order.placed` event of topic `orders`.
///     let spec = SubscriptionSpec::new("orders", "billing").types(["order.placed"]);
///     let handle = Consumer::new(bus, spec)
///         .concurrency(4)
///         .start(handler_fn(|message: Message| async move {
///             println!("order {} (attempt {})", message.event().id(), message.attempt());
///             Ok::<(), HandlerError>(())
///         }))
///         .await?;
///     // Later, at shutdown: stop taking messages, finish those in hand, leave the group.
///     handle.stop().await
/// }
/// ```
pub struct Consumer {
    subscriber: Arc<dyn Subscriber>,
    spec: SubscriptionSpec,
    policy: RedeliveryPolicy,
    unreadable: Unreadable,
    concurrency: usize,
    depth_every: Duration,
}

/// How often a consumer reads its group's depth into its gauges, by default.
pub const DEPTH_INTERVAL: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("spec", &self.spec)
            .field("policy", &self.policy)
            .field("unreadable", &self.unreadable)
            .field("concurrency", &self.concurrency)
            .field("depth_every", &self.depth_every)
            .finish_non_exhaustive()
    }
}

/// Labels shared by a consumer's workers.
#[derive(Clone)]
struct Labels {
    topic: Arc<str>,
    group: Arc<str>,
    policy: RedeliveryPolicy,
    unreadable: Unreadable,
    /// Set (with the reason) when the [`Unreadable::Stop`] policy stops the consumer.
    halt: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

impl Labels {
    fn subscriber(&self) -> String {
        format!("group:{}:{}", self.topic, self.group)
    }
}

impl Consumer {
    /// A consumer of `spec` (topic, group, types, prefetch) on `subscriber`, with the
    /// default redelivery policy, dead-lettering unreadable events, one message at a time.
    pub fn new(subscriber: Arc<dyn Subscriber>, spec: SubscriptionSpec) -> Self {
        Self {
            subscriber,
            spec,
            policy: RedeliveryPolicy::default(),
            unreadable: Unreadable::default(),
            concurrency: 1,
            depth_every: DEPTH_INTERVAL,
        }
    }

    /// How often the group's depth ([`Subscriber::depth`]) is read into the gauges
    /// `keel_consumer_lag_messages` and `keel_dead_letters` while the consumer runs
    /// (default [`DEPTH_INTERVAL`]).
    #[must_use]
    pub fn depth_every(mut self, every: Duration) -> Self {
        self.depth_every = every.max(Duration::from_millis(10));
        self
    }

    /// What to do with events the handler cannot read (default: dead-letter).
    #[must_use]
    pub fn on_unreadable(mut self, policy: Unreadable) -> Self {
        self.unreadable = policy;
        self
    }

    /// Handle up to `n` messages at once, never two of the same partition key.
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How often a failed message is redelivered, and after what delay (default: 5
    /// attempts, 100 ms doubling to 30 s).
    #[must_use]
    pub fn redelivery(mut self, policy: RedeliveryPolicy) -> Self {
        self.policy = policy;
        self
    }

    fn labels(&self) -> Labels {
        Labels {
            topic: self.spec.topic.as_str().into(),
            group: self.spec.group.as_str().into(),
            policy: self.policy,
            unreadable: self.unreadable,
            halt: Arc::new(tokio::sync::watch::Sender::new(None)),
        }
    }

    /// Subscribes, then handles messages in a background task until the handle is
    /// stopped or the bus closes. Returns once the subscription is in place.
    pub async fn start<S>(self, handler: S) -> Result<ConsumerHandle, BusError>
    where
        S: Service<Message, Response = (), Error = HandlerError> + Clone + Send + 'static,
        S::Future: Send,
    {
        let subscription = self.subscriber.subscribe(self.spec.clone()).await?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let stop = async move {
            let _ = stop_rx.await;
        };
        let labels = self.labels();
        let drive = drive(subscription, handler, labels.clone(), self.concurrency, stop);
        let task = tokio::spawn(holding(self.subscriber, labels, self.depth_every, drive));
        Ok(ConsumerHandle { stop: Some(stop_tx), task })
    }

    /// Like [`Consumer::start`], with a batch handler: each call gets up to
    /// `options.max_size` messages, which are settled together.
    pub async fn start_batch<S>(
        mut self,
        handler: S,
        options: BatchOptions,
    ) -> Result<ConsumerHandle, BusError>
    where
        S: Service<Vec<Message>, Response = (), Error = HandlerError> + Send + 'static,
        S::Future: Send,
    {
        let max_size = u32::try_from(options.max_size.max(1)).unwrap_or(u32::MAX);
        self.spec.prefetch = self.spec.prefetch.max(max_size);
        let subscription = self.subscriber.subscribe(self.spec.clone()).await?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let stop = async move {
            let _ = stop_rx.await;
        };
        let labels = self.labels();
        let drive = drive_batches(subscription, handler, labels.clone(), options, stop);
        let task = tokio::spawn(holding(self.subscriber, labels, self.depth_every, drive));
        Ok(ConsumerHandle { stop: Some(stop_tx), task })
    }

    /// Handles messages until `shutdown` completes or the bus closes.
    pub async fn run<S>(
        self,
        handler: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), BusError>
    where
        S: Service<Message, Response = (), Error = HandlerError> + Clone + Send + 'static,
        S::Future: Send,
    {
        let subscription = self.subscriber.subscribe(self.spec.clone()).await?;
        let labels = self.labels();
        let drive = drive(subscription, handler, labels.clone(), self.concurrency, shutdown);
        holding(self.subscriber, labels, self.depth_every, drive).await
    }
}

/// Runs `drive` while holding `subscriber`: a consumer keeps its bus alive, since some
/// buses (the log bus) stop feeding their groups when their last handle is dropped, and
/// a program that moved its bus into the consumer would otherwise get nothing, silently.
/// Meanwhile the group's depth is sampled every `every`.
async fn holding(
    subscriber: Arc<dyn Subscriber>,
    labels: Labels,
    every: Duration,
    drive: impl Future<Output = Result<(), BusError>>,
) -> Result<(), BusError> {
    let sampling = sample_depth(&*subscriber, &labels, every);
    let result = tokio::select! {
        result = drive => result,
        never = sampling => match never {},
    };
    drop(subscriber);
    result
}

/// Reads the group's depth into `keel_consumer_lag_messages{topic, group}` and
/// `keel_dead_letters{topic, group}` every `every`, for ever. A failed reading is
/// logged at debug level and leaves the gauges as they were; a reading is given at most
/// `every` (and never less than a second) to answer.
async fn sample_depth(
    subscriber: &dyn Subscriber,
    labels: &Labels,
    every: Duration,
) -> std::convert::Infallible {
    let (topic, group) = (labels.topic.to_string(), labels.group.to_string());
    let lag = metrics::gauge!("keel_consumer_lag_messages", "topic" => topic.clone(), "group" => group.clone());
    let dead =
        metrics::gauge!("keel_dead_letters", "topic" => topic.clone(), "group" => group.clone());
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let limit = every.max(Duration::from_secs(1));
        match tokio::time::timeout(limit, subscriber.depth(&topic, &group)).await {
            Ok(Ok(depth)) => {
                #[allow(clippy::cast_precision_loss, reason = "a gauge is a float")]
                {
                    if let Some(n) = depth.lag {
                        lag.set(n as f64);
                    }
                    if let Some(n) = depth.dead_letters {
                        dead.set(n as f64);
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, %topic, %group, "could not read the group's depth");
            }
            Err(_) => tracing::debug!(%topic, %group, "reading the group's depth timed out"),
        }
    }
}

/// A running consumer.
#[derive(Debug)]
pub struct ConsumerHandle {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), BusError>>,
}

impl ConsumerHandle {
    /// Stops taking messages, lets the handlers finish what they hold, leaves the group.
    pub async fn stop(mut self) -> Result<(), BusError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join().await
    }

    /// Waits until the consumer ends on its own (the bus closed).
    pub async fn join(&mut self) -> Result<(), BusError> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(BusError::Backend(Box::new(e))),
        }
    }

    /// Stops the consumer abruptly, as a crash would: unsettled deliveries go back to
    /// the group.
    pub fn abort(self) {
        self.task.abort();
    }
}

async fn drive<S>(
    mut subscription: Box<dyn Subscription>,
    handler: S,
    labels: Labels,
    concurrency: usize,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), BusError>
where
    S: Service<Message, Response = (), Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut halted = labels.halt.subscribe();
    let mut lanes = Vec::with_capacity(concurrency);
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (tx, rx) = mpsc::channel::<Delivery>(64);
        lanes.push(tx);
        workers.push(tokio::spawn(work(rx, handler.clone(), labels.clone())));
    }
    let mut round_robin = 0usize;
    loop {
        let next = tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = halted.changed() => break,
            next = subscription.next() => next,
        };
        let delivery = match next {
            None => break,
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                tracing::warn!(%error, topic = %labels.topic, group = %labels.group, "subscription error");
                if !error.is_retryable() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(delivery) = dead_letter_if_undecodable(delivery, &labels).await else { continue };
        let Some(delivery) = dead_letter_if_exhausted(delivery, &labels).await else { continue };
        let lane = match delivery.partition_key() {
            Some(key) => lane_of(key, concurrency),
            None => {
                round_robin = round_robin.wrapping_add(1);
                round_robin % concurrency
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = halted.changed() => break,
            // Fails only if the worker ended; the delivery, dropped, goes back to the group.
            sent = lanes[lane].send(delivery) => if sent.is_err() { break },
        }
    }
    drop(lanes);
    let mut outcome = Ok(());
    for worker in workers {
        if let Err(error) = worker.await {
            tracing::error!(%error, topic = %labels.topic, group = %labels.group, "a consumer worker died");
            outcome = Err(BusError::Backend(format!("a consumer worker died: {error}").into()));
        }
    }
    let closed = subscription.close().await;
    if let Some(reason) = labels.halt.borrow().clone() {
        outcome = outcome.and(Err(BusError::Backend(reason.into())));
    }
    outcome.and(closed)
}

fn lane_of(key: &str, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    usize::try_from(hasher.finish() % (lanes as u64)).unwrap_or(0)
}

/// Dead-letters a delivery that did not decode; gives back the others.
async fn dead_letter_if_undecodable(delivery: Delivery, labels: &Labels) -> Option<Delivery> {
    let Payload::Undecodable(raw) = delivery.payload() else { return Some(delivery) };
    let error = format!("undecodable message: {}", raw.error);
    match labels.unreadable {
        Unreadable::DeadLetter => {}
        Unreadable::Skip => {
            skip(labels, "not_a_cloudevent", &error);
            if let Err(error) = delivery.ack().await {
                tracing::warn!(%error, "could not ack a skipped message");
            }
            return None;
        }
        Unreadable::Stop => {
            halt(labels, &error);
            if let Err(error) = delivery.nack(Duration::ZERO).await {
                tracing::warn!(%error, "could not give back an unreadable message");
            }
            return None;
        }
    }
    let reason = DeadLetterReason { error, attempts: delivery.attempt() };
    tracing::warn!(topic = %labels.topic, group = %labels.group, error = %reason.error, "dead-lettering an undecodable message");
    record(labels, "dead_letter");
    if let Err(error) = delivery.dead_letter(reason).await {
        tracing::warn!(%error, "could not dead-letter an undecodable message");
    }
    None
}

/// Dead-letters, without handling it again, a delivery that arrives after its last
/// attempt: one the handler never settled, because the process died while handling it
/// (backends that persist attempts, such as the log bus, count such deliveries). Gives
/// back the others.
async fn dead_letter_if_exhausted(delivery: Delivery, labels: &Labels) -> Option<Delivery> {
    let attempt = delivery.attempt();
    if attempt <= labels.policy.max_attempts {
        return Some(delivery);
    }
    let reason = DeadLetterReason {
        error: format!(
            "delivered {attempt} times, more than the {} attempts allowed, without being \
             settled: the process may have died while handling it",
            labels.policy.max_attempts
        ),
        attempts: attempt,
    };
    tracing::warn!(topic = %labels.topic, group = %labels.group, attempt, "dead-lettering a message no handler ever settled");
    record(labels, "dead_letter");
    if let Err(error) = delivery.dead_letter(reason).await {
        tracing::warn!(%error, "could not dead-letter an exhausted message");
    }
    None
}

async fn work<S>(mut deliveries: mpsc::Receiver<Delivery>, mut handler: S, labels: Labels)
where
    S: Service<Message, Response = (), Error = HandlerError> + Send + 'static,
    S::Future: Send,
{
    while let Some(delivery) = deliveries.recv().await {
        if labels.halt.borrow().is_some() {
            // Stopped (the stop policy): what the lane still holds is not handled;
            // dropped unsettled, it goes back to the group in order.
            drop(delivery);
            continue;
        }
        let handled =
            AssertUnwindSafe(handle(&mut handler, delivery, &labels)).catch_unwind().await;
        if let Err(panic) = handled {
            settle_panicked(&labels, &*panic);
        }
    }
}

/// Handles one delivery and settles it.
async fn handle<S>(handler: &mut S, delivery: Delivery, labels: &Labels)
where
    S: Service<Message, Response = (), Error = HandlerError>,
{
    let (payload, attempt, settle) = delivery.into_parts();
    let Payload::Event(event) = payload else { return };
    let message = Message::new(event, attempt, labels.topic.clone(), labels.group.clone());
    let started = std::time::Instant::now();
    let result = call(handler, message).await;
    record_duration(labels, started, &result);
    settle_outcome(settle, attempt, result, labels).await;
}

/// Calls the handler, turning a panic anywhere in it (in `poll_ready`, in `call` before
/// it returns its future, or in the future) into a transient error.
async fn call<R, S>(handler: &mut S, request: R) -> Result<(), HandlerError>
where
    S: Service<R, Response = (), Error = HandlerError>,
{
    let called = async { handler.ready().await?.call(request).await };
    AssertUnwindSafe(called).catch_unwind().await.unwrap_or_else(|panic| {
        Err(HandlerError::transient(format!("handler panicked: {}", panic_text(&*panic))))
    })
}

/// Logs a panic that escaped a handler call (so it came from settling, a backend
/// fault). The delivery was dropped unsettled, which gives it back to the group.
fn settle_panicked(labels: &Labels, panic: &(dyn Any + Send)) {
    tracing::error!(
        panic = panic_text(panic),
        topic = %labels.topic,
        group = %labels.group,
        "panic while settling; the delivery goes back to the group"
    );
}

fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

async fn settle_outcome(
    settle: Box<dyn Settle>,
    attempt: u32,
    result: Result<(), HandlerError>,
    labels: &Labels,
) {
    let settled = match result {
        Ok(()) => {
            record(labels, "ack");
            settle.ack().await
        }
        Err(error) if error.is_unreadable() && labels.unreadable == Unreadable::Skip => {
            skip(labels, error.unreadable_reason(), &error.to_string());
            settle.ack().await
        }
        Err(error) if error.is_unreadable() && labels.unreadable == Unreadable::Stop => {
            halt(labels, &error.to_string());
            settle.nack(Duration::ZERO).await
        }
        Err(error) if error.is_permanent() || attempt >= labels.policy.max_attempts => {
            tracing::warn!(%error, attempt, topic = %labels.topic, group = %labels.group, "dead-lettering a message");
            record(labels, "dead_letter");
            settle
                .dead_letter(DeadLetterReason { error: error.to_string(), attempts: attempt })
                .await
        }
        Err(error) => {
            let delay = labels.policy.backoff.delay(attempt);
            tracing::debug!(%error, attempt, ?delay, "handler failed; redelivering later");
            record(labels, "retry");
            settle.nack(delay).await
        }
    };
    if let Err(error) = settled {
        tracing::warn!(%error, topic = %labels.topic, group = %labels.group, "could not settle a delivery");
    }
}

/// Records a skipped event: a warning, the consumed and skipped counters.
fn skip(labels: &Labels, reason: &'static str, error: &str) {
    tracing::warn!(topic = %labels.topic, group = %labels.group, reason, error, "skipping an unreadable message");
    record(labels, "skip");
    count_skip(&labels.subscriber(), reason);
}

/// Stops the consumer (the [`Unreadable::Stop`] policy), with the reason.
fn halt(labels: &Labels, error: &str) {
    let reason = format!(
        "consumer of group {} on {} stopped on an unreadable message (policy: stop): {error}",
        labels.group, labels.topic
    );
    tracing::error!(topic = %labels.topic, group = %labels.group, error, "stopping on an unreadable message");
    record(labels, "stop");
    labels.halt.send_if_modified(|halted| {
        if halted.is_none() {
            *halted = Some(reason);
            true
        } else {
            false
        }
    });
}

/// Records one handler call (a batch is one call) in
/// `keel_handler_duration_seconds{topic, group, outcome}`, `outcome` `ok` or `error`.
fn record_duration(
    labels: &Labels,
    started: std::time::Instant,
    result: &Result<(), HandlerError>,
) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::histogram!(
        "keel_handler_duration_seconds",
        "topic" => labels.topic.to_string(),
        "group" => labels.group.to_string(),
        "outcome" => outcome,
    )
    .record(started.elapsed().as_secs_f64());
}

fn record(labels: &Labels, outcome: &'static str) {
    metrics::counter!(
        "keel_consumed_total",
        "topic" => labels.topic.to_string(),
        "group" => labels.group.to_string(),
        "outcome" => outcome,
    )
    .increment(1);
}

async fn drive_batches<S>(
    mut subscription: Box<dyn Subscription>,
    mut handler: S,
    labels: Labels,
    options: BatchOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), BusError>
where
    S: Service<Vec<Message>, Response = (), Error = HandlerError> + Send + 'static,
    S::Future: Send,
{
    let mut shutdown = std::pin::pin!(shutdown);
    'outer: loop {
        let first = tokio::select! {
            biased;
            () = &mut shutdown => break,
            next = subscription.next() => next,
        };
        let mut pending = Vec::with_capacity(options.max_size);
        match first {
            None => break,
            Some(Ok(delivery)) => pending.push(delivery),
            Some(Err(error)) => {
                tracing::warn!(%error, "subscription error");
                if !error.is_retryable() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let deadline = tokio::time::Instant::now() + options.max_wait;
        while pending.len() < options.max_size {
            match tokio::time::timeout_at(deadline, subscription.next()).await {
                Ok(Some(Ok(delivery))) => pending.push(delivery),
                Ok(None) => {
                    // The bus closed: handle what we hold, then stop.
                    handle_batch(&mut handler, pending, &labels).await;
                    break 'outer;
                }
                Ok(Some(Err(_))) | Err(_) => break,
            }
        }
        handle_batch(&mut handler, pending, &labels).await;
    }
    subscription.close().await
}

/// Handles one batch and settles it; a panic while settling is logged (the unsettled
/// deliveries go back to the group) and the consumer goes on.
async fn handle_batch<S>(handler: &mut S, pending: Vec<Delivery>, labels: &Labels)
where
    S: Service<Vec<Message>, Response = (), Error = HandlerError>,
{
    let handled = AssertUnwindSafe(run_batch(handler, pending, labels)).catch_unwind().await;
    if let Err(panic) = handled {
        settle_panicked(labels, &*panic);
    }
}

async fn run_batch<S>(handler: &mut S, pending: Vec<Delivery>, labels: &Labels)
where
    S: Service<Vec<Message>, Response = (), Error = HandlerError>,
{
    let mut messages = Vec::with_capacity(pending.len());
    let mut settles = Vec::with_capacity(pending.len());
    for delivery in pending {
        let Some(delivery) = dead_letter_if_undecodable(delivery, labels).await else { continue };
        let Some(delivery) = dead_letter_if_exhausted(delivery, labels).await else { continue };
        let (payload, attempt, settle) = delivery.into_parts();
        if let Payload::Event(event) = payload {
            messages.push(Message::new(event, attempt, labels.topic.clone(), labels.group.clone()));
            settles.push((settle, attempt));
        }
    }
    if messages.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let result = call(handler, messages).await;
    record_duration(labels, started, &result);
    for (settle, attempt) in settles {
        let result = match &result {
            Ok(()) => Ok(()),
            Err(error) if error.is_unreadable() => Err(HandlerError::unreadable(error.to_string())),
            Err(error) if error.is_permanent() => Err(HandlerError::permanent(error.to_string())),
            Err(error) => Err(HandlerError::transient(error.to_string())),
        };
        settle_outcome(settle, attempt, result, labels).await;
    }
}
