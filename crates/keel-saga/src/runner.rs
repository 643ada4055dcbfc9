//! The runner: loads a saga instance, hands it an input, stores its state and carries
//! out its steps, all in the caller's (the inbox's) transaction.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use chrono::Utc;
use keel_bus::layer::current_context;
use keel_bus::{ConsumerHandle, HandlerError, Message};
use keel_core::envelope::ext;
use keel_core::{
    BusError, CloudEvent, EventSet, ExpectedVersion, StreamId, Subscriber, SubscriptionSpec,
};
use keel_sql::{Db, Tx, args, start_inbox_consumer};
use keel_timers::{DEFAULT_DISPATCHER, Timer, cancel_named_in, schedule_in};

use crate::error::{Error, Result};
use crate::saga::{Saga, Step, Steps};

/// A saga instance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance<S> {
    /// The correlation id.
    pub correlation_id: String,
    /// The state.
    pub state: S,
    /// How many inputs changed it (1 after the first).
    pub version: i64,
}

/// What handling one input did.
pub struct Handled<S: Saga> {
    /// The instance after the input (stored in the transaction).
    pub instance: Instance<S>,
    /// Whether the input created the instance.
    pub started: bool,
    /// The steps the saga decided (carried out in the transaction).
    pub steps: Steps<S>,
}

impl<S: Saga + fmt::Debug> fmt::Debug for Handled<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handled")
            .field("instance", &self.instance)
            .field("started", &self.started)
            .field("steps", &self.steps.len())
            .finish()
    }
}

/// Runs saga `S`: [`SagaRunner::handle_in`] in a transaction of yours, or
/// [`SagaRunner::start`] to consume its topics through the store's inbox. Cheap to
/// clone.
pub struct SagaRunner<S> {
    source: Arc<str>,
    dispatcher: Arc<str>,
    saga: PhantomData<fn() -> S>,
}

impl<S> Clone for SagaRunner<S> {
    fn clone(&self) -> Self {
        Self { source: self.source.clone(), dispatcher: self.dispatcher.clone(), saga: PhantomData }
    }
}

impl<S: Saga> fmt::Debug for SagaRunner<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaRunner")
            .field("saga", &S::NAME)
            .field("source", &self.source)
            .field("dispatcher", &self.dispatcher)
            .finish()
    }
}

impl<S: Saga> Default for SagaRunner<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Saga> SagaRunner<S> {
    /// A runner whose events have the source `/sagas/<NAME>` and whose timers belong
    /// to the default dispatcher.
    pub fn new() -> Self {
        Self {
            source: format!("/sagas/{}", S::NAME).into(),
            dispatcher: DEFAULT_DISPATCHER.into(),
            saga: PhantomData,
        }
    }

    /// The CloudEvents `source` of the events the saga appends.
    #[must_use]
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into().into();
        self
    }

    /// Puts the saga's timers under the dispatcher named `name`.
    #[must_use]
    pub fn dispatcher(mut self, name: impl Into<String>) -> Self {
        self.dispatcher = name.into().into();
        self
    }

    /// The key of the saga's timer `key` of instance `correlation_id` in `keel_timers`.
    pub fn timer_key(correlation_id: &str, key: &str) -> String {
        format!("saga:{}:{correlation_id}:{key}", S::NAME)
    }

    /// Handles `event` inside `tx`: decodes it as an input, loads its instance (or
    /// starts one, if the input may), lets the saga decide, stores the new state
    /// (expecting the version it read) and carries out the steps: appends, timers
    /// scheduled and cancelled. Nothing is visible until `tx` commits.
    ///
    /// Errors: [`Error::Decode`] (not an input), [`Error::UnknownCorrelation`] (no
    /// instance and the input does not start one), [`Error::Conflict`] (another input
    /// of the instance committed first: retry), [`Error::InvalidStep`], store errors.
    pub async fn handle_in(&self, tx: &mut Tx, event: &CloudEvent) -> Result<Handled<S>> {
        let input: S::Input = event.decode().map_err(|source| Error::Decode {
            saga: S::NAME,
            event_id: event.id().to_owned(),
            event_type: event.ty().to_owned(),
            source,
        })?;
        let correlation_id = S::correlation_id(&input).to_owned();
        let row: Option<(String, i64)> = tx
            .fetch_optional(
                "SELECT state, version FROM keel_sagas WHERE saga = $1 AND correlation_id = $2",
                args![S::NAME, correlation_id.as_str()],
            )
            .await?;
        let (mut state, version) = match row {
            Some((json, version)) => (from_json::<S>(&json)?, version),
            None if S::starts(&input) => (S::default(), 0),
            None => {
                return Err(Error::UnknownCorrelation {
                    saga: S::NAME,
                    correlation_id,
                    event_type: event.ty().to_owned(),
                    event_id: event.id().to_owned(),
                });
            }
        };
        let steps = state.handle(&input);
        self.store(tx, &correlation_id, &state, version).await?;
        for step in &steps {
            self.carry_out(tx, &correlation_id, step).await?;
        }
        tracing::debug!(
            saga = S::NAME,
            correlation_id = %correlation_id,
            input = event.ty(),
            steps = steps.len(),
            "saga handled an input"
        );
        Ok(Handled {
            instance: Instance { correlation_id, state, version: version + 1 },
            started: version == 0,
            steps,
        })
    }

    /// The instance `correlation_id`, if there is one.
    pub async fn load(&self, db: &Db, correlation_id: &str) -> Result<Option<Instance<S>>> {
        let row: Option<(String, i64)> = db
            .fetch_optional(
                "SELECT state, version FROM keel_sagas WHERE saga = $1 AND correlation_id = $2",
                args![S::NAME, correlation_id],
            )
            .await?;
        row.map(|(json, version)| {
            Ok(Instance {
                correlation_id: correlation_id.to_owned(),
                state: from_json(&json)?,
                version,
            })
        })
        .transpose()
    }

    /// Consumes the saga's inputs on every topic of [`Saga::TOPICS`] (only the input
    /// types), as consumer group `group`, each through the store's inbox: the state,
    /// the steps and the processed mark commit together, so a redelivered event
    /// changes nothing. A conflict is retried; an input that cannot be read or has no
    /// instance (and does not start one) is dead-lettered with the reason.
    pub async fn start(
        &self,
        db: &Db,
        bus: Arc<dyn Subscriber>,
        group: &str,
        concurrency: usize,
    ) -> Result<Vec<ConsumerHandle>, BusError> {
        let mut handles = Vec::with_capacity(S::TOPICS.len());
        for topic in S::TOPICS {
            let spec = SubscriptionSpec::new(*topic, group).types(S::Input::types());
            let runner = self.clone();
            let handler = move |message: Message, mut tx: Tx| {
                let runner = runner.clone();
                async move {
                    runner.handle_in(&mut tx, message.event()).await.map_err(HandlerError::from)?;
                    Ok(tx)
                }
            };
            match start_inbox_consumer(db, bus.clone(), spec, concurrency, handler).await {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    for handle in handles {
                        let _ = handle.stop().await;
                    }
                    return Err(error);
                }
            }
        }
        Ok(handles)
    }

    /// Writes the state, expecting `version` (0: no row yet).
    async fn store(
        &self,
        tx: &mut Tx,
        correlation_id: &str,
        state: &S,
        version: i64,
    ) -> Result<()> {
        let json = serde_json::to_string(state)
            .map_err(|source| Error::State { saga: S::NAME, source })?;
        let finished = i64::from(state.is_finished());
        let now = Utc::now().timestamp_micros();
        let conflict =
            || Error::Conflict { saga: S::NAME, correlation_id: correlation_id.to_owned() };
        if version == 0 {
            let inserted = tx
                .execute(
                    "INSERT INTO keel_sagas (saga, correlation_id, state, version, finished, updated_at)
                     VALUES ($1, $2, $3, 1, $4, $5)",
                    args![S::NAME, correlation_id, json, finished, now],
                )
                .await;
            match inserted {
                Ok(_) => Ok(()),
                Err(error) if error.is_unique_violation() => Err(conflict()),
                Err(error) => Err(error.into()),
            }
        } else {
            let updated = tx
                .execute(
                    "UPDATE keel_sagas SET state = $1, version = $2, finished = $3, updated_at = $4
                     WHERE saga = $5 AND correlation_id = $6 AND version = $7",
                    args![json, version + 1, finished, now, S::NAME, correlation_id, version],
                )
                .await?;
            if updated == 0 { Err(conflict()) } else { Ok(()) }
        }
    }

    /// Carries out one step in `tx`.
    async fn carry_out(
        &self,
        tx: &mut Tx,
        correlation_id: &str,
        step: &Step<S::Output, S::Input>,
    ) -> Result<()> {
        let invalid = |reason: String| Error::InvalidStep { saga: S::NAME, reason };
        match step {
            Step::Emit { stream, event } => {
                let stream = StreamId::new(stream.as_str())
                    .map_err(|e| invalid(format!("stream `{stream}`: {e}")))?;
                let event = self.envelope(event, None).map_err(invalid)?;
                tx.append(&stream, ExpectedVersion::Any, &[event]).await?;
            }
            Step::Schedule { key, due, event } => {
                let event = self.envelope(event, Some(S::TIMER_TOPIC)).map_err(invalid)?;
                let timer = Timer::new(Self::timer_key(correlation_id, key), *due, event)
                    .dispatcher(self.dispatcher.as_ref());
                schedule_in(tx, &timer).await?;
            }
            Step::Cancel { key } => {
                cancel_named_in(tx, &self.dispatcher, &Self::timer_key(correlation_id, key))
                    .await?;
            }
        }
        Ok(())
    }

    /// The envelope of `event`, stamped with the current handling context.
    fn envelope<E: EventSet>(&self, event: &E, topic: Option<&str>) -> Result<CloudEvent, String> {
        let mut builder =
            CloudEvent::from_event(event, self.source.as_ref()).map_err(|e| e.to_string())?;
        if let Some(topic) = topic {
            builder = builder.extension(ext::TOPIC, topic);
        }
        let mut envelope = builder.build().map_err(|e| e.to_string())?;
        if let Some(context) = current_context() {
            context.apply(&mut envelope);
        }
        Ok(envelope)
    }
}

fn from_json<S: Saga>(json: &str) -> Result<S> {
    serde_json::from_str(json).map_err(|source| Error::State { saga: S::NAME, source })
}
