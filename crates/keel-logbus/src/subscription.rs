//! A member of a consumer group ([`LogSubscription`]) and the settle handle of each
//! delivery ([`LogSettle`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keel_core::bus::{
    BusError, DeadLetterId, DeadLetterReason, Delivery, Payload, Settle, Subscription,
};
use keel_store::Cursor;

use crate::error::Error;
use crate::group::{Origin, Take};
use crate::shared::GroupShared;
use crate::store::{NewDeadLetter, Progress};

#[derive(Debug)]
pub(crate) struct LogSubscription {
    group: Arc<GroupShared>,
    member: u64,
}

impl LogSubscription {
    pub(crate) fn new(group: Arc<GroupShared>, member: u64) -> Self {
        Self { group, member }
    }
}

impl Drop for LogSubscription {
    fn drop(&mut self) {
        self.group.lock().leave(self.member);
        self.group.members.notify_waiters();
        self.group.feeder.notify_one();
    }
}

#[async_trait]
impl Subscription for LogSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        let group = Arc::clone(&self.group);
        loop {
            // Registered before looking, so a wake-up in between is not lost.
            let notified = group.members.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let taken = group.lock().take(self.member);
            let deadline = match taken {
                Take::Delivery { payload, attempt, id, generation, record } => {
                    // The feeder may read more now that this one is out.
                    group.feeder.notify_one();
                    // From here on, dropping the delivery gives it back.
                    let settle =
                        LogSettle { group: Arc::clone(&group), id, generation, settled: false };
                    if let Some(cursor) = record {
                        record_attempt(&group, generation, cursor, attempt).await;
                    }
                    let payload = Payload::clone(&payload);
                    return Some(Ok(Delivery::new(payload, attempt, Box::new(settle))));
                }
                Take::Gone => return None,
                Take::Wait(deadline) => deadline,
            };
            match deadline {
                Some(at) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn close(self: Box<Self>) -> Result<(), BusError> {
        drop(self);
        Ok(())
    }
}

/// Stores the attempt of a redelivery before the handler gets it, so that a crash in
/// the handler counts (see `group.rs`). A failure is logged and the delivery goes
/// ahead: a crash during this one attempt would then not be counted.
async fn record_attempt(group: &GroupShared, generation: u64, cursor: Cursor, attempt: u32) {
    let progress = Progress { attempts: vec![(cursor, attempt)], ..Progress::default() };
    match group.progress.save(&group.name, &progress).await {
        Ok(()) => group.lock().recorded_attempt(generation, cursor, attempt),
        Err(error) => {
            tracing::warn!(group = %group.name, %error, attempt, "could not store a redelivery's attempt")
        }
    }
}

/// Settles one delivery. Dropped unsettled, it gives the message back at once.
#[derive(Debug)]
pub(crate) struct LogSettle {
    group: Arc<GroupShared>,
    id: u64,
    generation: u64,
    settled: bool,
}

impl LogSettle {
    fn wake(&self) {
        self.group.members.notify_waiters();
        self.group.feeder.notify_one();
    }
}

impl Drop for LogSettle {
    fn drop(&mut self) {
        if !self.settled {
            self.group.lock().nack(self.generation, self.id, Duration::ZERO);
            self.wake();
        }
    }
}

/// A delivery that is no longer out: its subscription closed, or this process
/// stopped feeding the group, and the message goes (or went) to someone else.
fn gone() -> BusError {
    BusError::Closed
}

#[async_trait]
impl Settle for LogSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.settled = true;
        let origin = self.group.lock().ack(self.generation, self.id);
        self.wake();
        match origin {
            None => Err(gone()),
            Some(Origin::Log { .. }) => {
                metrics::counter!("keel_logbus_acked_total", "topic" => self.group.topic.clone(), "group" => self.group.group.clone()).increment(1);
                Ok(())
            }
            Some(Origin::Letter(id)) => {
                // The retried letter is done: its row goes (a crash before this gives
                // it to the group once more). Until the group hears how that went,
                // loads of the retrying letters leave it out.
                let mut written = LetterWritten { group: &self.group, id, stored: false };
                self.group.store.delete_dead_letter(&written.id).await.map_err(Error::from)?;
                written.stored = true;
                Ok(())
            }
        }
    }

    async fn nack(mut self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        self.settled = true;
        let out = self.group.lock().nack(self.generation, self.id, delay);
        self.wake();
        metrics::counter!("keel_logbus_nacked_total", "topic" => self.group.topic.clone(), "group" => self.group.group.clone()).increment(1);
        if out { Ok(()) } else { Err(gone()) }
    }

    async fn dead_letter(mut self: Box<Self>, reason: DeadLetterReason) -> Result<(), BusError> {
        let Some(leaving) = self.group.lock().begin_dead_letter(self.generation, self.id) else {
            self.settled = true;
            return Err(gone());
        };
        // Stored first: the cursor may move past the message only once its letter is
        // durable. On error the delivery stays out, and dropping it gives it back.
        let stored = match &leaving.origin {
            Origin::Log { .. } => {
                let letter = NewDeadLetter {
                    id: DeadLetterId(uuid::Uuid::now_v7().to_string()),
                    topic: self.group.topic.clone(),
                    group: self.group.group.clone(),
                    reason: reason.error.clone(),
                    attempts: reason.attempts,
                    payload: Payload::clone(&leaving.payload),
                };
                self.group.store.insert_dead_letter(&letter).await
            }
            Origin::Letter(id) => {
                self.group.store.dead_letter_again(id, &reason.error, reason.attempts).await
            }
        };
        stored.map_err(Error::from)?;
        self.settled = true;
        // If the delivery went back meanwhile (its member left) it may come once more;
        // the letter is stored either way.
        self.group.lock().end_dead_letter(self.generation, self.id);
        self.wake();
        metrics::counter!("keel_logbus_dead_lettered_total", "topic" => self.group.topic.clone(), "group" => self.group.group.clone()).increment(1);
        Ok(())
    }
}

/// Tells the group whether a settled letter's row was written, when dropped: also if
/// the settle is dropped halfway (then as not written, so the letter may come again).
struct LetterWritten<'a> {
    group: &'a GroupShared,
    id: DeadLetterId,
    stored: bool,
}

impl Drop for LetterWritten<'_> {
    fn drop(&mut self) {
        self.group.lock().letter_written(&self.id, self.stored);
    }
}
