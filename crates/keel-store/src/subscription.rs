//! Catch-up subscriptions: read pages after a cursor, then follow live.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream};

use keel_core::Position;

use crate::error::Result;
use crate::log::{Cursor, EventLog, LogFilter, Page};

/// How a subscription reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Events per page.
    pub batch_size: usize,
    /// The polling fallback: how long an idle subscription waits for a change
    /// notification before reading anyway.
    pub poll_interval: Duration,
    /// After a notification that found nothing yet (the writer's transaction is not
    /// below the snapshot horizon yet), retry after this delay, doubling up to
    /// `poll_interval`.
    pub settle_delay: Duration,
    /// End the stream once every event that was in the log when the subscription
    /// started has been passed, instead of following live.
    pub stop_when_caught_up: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            settle_delay: Duration::from_millis(5),
            stop_when_caught_up: false,
        }
    }
}

struct State {
    log: Arc<dyn EventLog>,
    cursor: Cursor,
    filter: LogFilter,
    options: SubscribeOptions,
    changes: tokio::sync::watch::Receiver<u64>,
    /// Whether a read that found nothing after a notification reads again shortly
    /// ([`EventLog::notified_appends_are_visible`]).
    settles: bool,
    /// Delay before the next read when the last one came back empty.
    retry: Option<Duration>,
    failed: bool,
    done: bool,
    /// With `stop_when_caught_up`: the head when the subscription started.
    target: Option<Position>,
}

/// Every event after `from` that matches `filter`, in subscription order, as pages;
/// follows the log live unless `stop_when_caught_up`. A read error is yielded and the
/// subscription goes on from the same cursor after `poll_interval`.
pub fn subscribe(
    log: Arc<dyn EventLog>,
    from: Cursor,
    filter: LogFilter,
    options: SubscribeOptions,
) -> BoxStream<'static, Result<Page>> {
    // Woken by appends to the filter's topic only, where it names one.
    let changes = match &filter.topic {
        Some(topic) => log.topic_changes(topic),
        None => log.changes(),
    };
    let settles = !log.notified_appends_are_visible();
    let state = State {
        log,
        cursor: from,
        filter,
        options,
        changes,
        settles,
        retry: None,
        failed: false,
        done: false,
        target: None,
    };
    Box::pin(stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        loop {
            if state.failed {
                state.failed = false;
                tokio::time::sleep(state.options.poll_interval).await;
            }
            // Mark what we have seen before reading, so a change during the read wakes us.
            state.changes.borrow_and_update();
            let page = match state
                .log
                .read_after(state.cursor, &state.filter, state.options.batch_size)
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    state.failed = true;
                    return Some((Err(error), state));
                }
            };
            state.cursor = state.cursor.max(page.next);
            if let Some(last) = page.events.last() {
                state.cursor = state.cursor.max(last.cursor);
                state.retry = None;
                return Some((Ok(page), state));
            }
            if state.options.stop_when_caught_up {
                let target = match state.target {
                    Some(target) => target,
                    None => match state.log.head().await {
                        Ok(head) => *state.target.insert(head),
                        Err(error) => {
                            state.failed = true;
                            return Some((Err(error), state));
                        }
                    },
                };
                // Nothing new can mean "caught up" or "held back behind a writer
                // still in flight": only the count tells.
                match state.log.count_after(state.cursor, target).await {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(error) => {
                        state.failed = true;
                        return Some((Err(error), state));
                    }
                }
            }
            let wait = state.retry.unwrap_or(state.options.poll_interval);
            let notified = tokio::select! {
                changed = state.changes.changed() => match changed {
                    Ok(()) => true,
                    // No notifier any more: plain polling.
                    Err(_) => {
                        tokio::time::sleep(wait).await;
                        false
                    }
                },
                () = tokio::time::sleep(wait) => false,
            };
            state.retry = if notified {
                state.settles.then_some(state.options.settle_delay)
            } else {
                state.retry.map(|d| (d * 2).min(state.options.poll_interval))
            };
        }
    }))
}

/// `pages` read on a task of their own, one page ahead of the caller: the next read
/// overlaps the caller's handling of the current page (a projection's writes, which on
/// PostgreSQL take about as long as the read). Cancel-safe like the subscription:
/// a page the caller stopped waiting for is the next one it gets. Dropping the stream
/// stops the task.
pub fn read_ahead(mut pages: BoxStream<'static, Result<Page>>) -> BoxStream<'static, Result<Page>> {
    let (ready, received) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(async move {
        while let Some(page) = futures::StreamExt::next(&mut pages).await {
            if ready.send(page).await.is_err() {
                return;
            }
        }
    });
    Box::pin(stream::unfold((received, AbortOnDrop(reader)), |(mut received, reader)| async move {
        received.recv().await.map(|page| (page, (received, reader)))
    }))
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
