//! The feeder: one task per consumer group in this process that reads the log for it.
//!
//! It waits for the group's lease (one process feeds a group at a time; another takes
//! over when the holder dies or lets go), starts from the group's checkpoint and the
//! attempts stored after it, reads the group's topic in subscription order into the
//! group's lanes (no further ahead than its read-ahead window), stores the checkpoint
//! as the settled prefix grows and its read mark before a page can be handed out (one
//! transaction for both), picks up retried dead letters, and dead-letters rows that do
//! not decode. It wakes on the store's change notifications, on settles, and polls as
//! a fallback. It lets the group go when the bus is dropped, or when the group has had
//! no members here for [`LogBusOptions::idle_release`], storing what it knows of
//! attempts and clearing its read mark (see `group.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keel_core::StartFrom;
use keel_core::bus::{DeadLetterId, Payload};
use keel_store::{Cursor, Lease, LogFilter, StoreError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::LogBusOptions;
use crate::envelope;
use crate::group::{Stopped, payload_size};
use crate::shared::{GroupShared, Registry};
use crate::store::{Attempts, NewDeadLetter, Progress, ReadMark};

enum Ended {
    /// The bus was dropped, or the group retired.
    Done,
    LeaseLost,
}

fn is_shutdown(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Removes the group from the registry if it has been without members for `idle`
/// (checked under the registry lock, so a subscribe either joins it before or creates
/// a new group after). Whether it retired.
fn try_retire(registry: &Registry, group: &Arc<GroupShared>, idle: Duration) -> bool {
    let mut groups = registry.lock();
    let mut state = group.lock();
    if state.is_closed() {
        return true;
    }
    if state.idle_since().is_none_or(|since| since.elapsed() < idle) {
        return false;
    }
    let key = (group.topic.clone(), group.group.clone());
    if groups.get(&key).is_some_and(|g| Arc::ptr_eq(g, group)) {
        groups.remove(&key);
    }
    state.close();
    true
}

fn close(group: &GroupShared) {
    group.lock().close();
    group.members.notify_waiters();
}

pub(crate) async fn run(
    group: Arc<GroupShared>,
    registry: Arc<Registry>,
    options: LogBusOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let lease = loop {
            if is_shutdown(&shutdown) {
                close(&group);
                return;
            }
            if try_retire(&registry, &group, options.idle_release) {
                group.members.notify_waiters();
                return;
            }
            match group.store.try_lease(&group.name).await {
                Ok(Some(lease)) => break lease,
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(group = %group.name, %error, "could not ask for the group's lease")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(options.lease_poll) => {}
                _ = shutdown.changed() => {}
            }
        };
        let (start, attempts) = match start(&group).await {
            Ok(start) => start,
            Err(error) => {
                tracing::warn!(group = %group.name, %error, "could not read the group's checkpoint");
                lease.release().await;
                tokio::time::sleep(options.poll_interval).await;
                continue;
            }
        };
        tracing::debug!(group = %group.name, %start, "feeding the consumer group");
        let marked = attempts.read_mark;
        group.lock().activate(start, attempts);
        group.letters_due.store(true, Ordering::SeqCst);
        let mut feeder =
            Feeder { group: &group, options, read: start, flushed: start, marked, lease };
        let ended = feeder.feed(&registry, &mut shutdown).await;
        if let Ended::Done = ended {
            close(&group);
            let stopped = group.lock().take_stopped();
            if let Some(stopped) = stopped {
                feeder.stop(stopped).await;
            }
        }
        let Feeder { lease, .. } = feeder;
        match ended {
            Ended::Done => {
                lease.release().await;
                return;
            }
            Ended::LeaseLost => {
                tracing::warn!(group = %group.name, "lost the consumer group's lease; standing by");
                group.lock().deactivate();
                group.members.notify_waiters();
                drop(lease);
            }
        }
    }
}

/// Where the group starts, and what is stored of its attempts.
async fn start(group: &GroupShared) -> Result<(Cursor, Attempts), StoreError> {
    let cursor = start_cursor(group).await?;
    Ok((cursor, group.store.attempts(&group.name, cursor).await?))
}

async fn start_cursor(group: &GroupShared) -> Result<Cursor, StoreError> {
    if let Some(cursor) = group.store.checkpoint(&group.name).await? {
        return Ok(cursor);
    }
    match group.start {
        StartFrom::Earliest => Ok(Cursor::START),
        StartFrom::Latest => {
            let head = group.store.head().await?;
            let cursor = group.store.cursor_before(head).await?;
            group.store.save_checkpoint(&group.name, cursor).await?;
            Ok(cursor)
        }
    }
}

struct Feeder<'a> {
    group: &'a Arc<GroupShared>,
    options: LogBusOptions,
    /// Where the next read starts.
    read: Cursor,
    /// The checkpoint as stored.
    flushed: Cursor,
    /// The read mark as stored.
    marked: Option<Cursor>,
    lease: Box<dyn Lease>,
}

impl Feeder<'_> {
    async fn feed(&mut self, registry: &Registry, shutdown: &mut watch::Receiver<bool>) -> Ended {
        let group = self.group;
        let options = self.options;
        // Woken by appends to the group's topic only; where a notified append is
        // always visible (SQLite), a read that finds nothing needs no second look.
        let mut changes = group.store.topic_changes(&group.topic);
        let settles = !group.store.notified_appends_are_visible();
        let mut retry: Option<Duration> = None;
        let mut renewed = Instant::now();
        // As often as the options say, and at least as often as the lease needs.
        let renew_every = options.lease_renew.min(self.lease.renew_interval());
        let mut letters_read: Option<Instant> = None;
        // Whether the log may hold more for the group than it has read: false once a
        // read found the end of the topic with room to spare, true again on an append,
        // a timer (the poll fallback, or a second look for an append not visible yet)
        // or a failed read. Settles and takes wake the feeder for room, not for the
        // log: at the end they need no read.
        let mut may_have_more = true;
        loop {
            if is_shutdown(shutdown) || try_retire(registry, group, options.idle_release) {
                return Ended::Done;
            }
            if renewed.elapsed() >= renew_every {
                if !self.lease.renew().await {
                    return Ended::LeaseLost;
                }
                renewed = Instant::now();
            }
            if group.letters_due.swap(false, Ordering::SeqCst)
                || letters_read.is_none_or(|at| at.elapsed() >= options.poll_interval)
            {
                letters_read = Some(Instant::now());
                self.load_letters().await;
            }
            let (room, types) = {
                let state = group.lock();
                (state.room(options.batch_size, options.max_buffered_bytes), state.types.clone())
            };
            let filter =
                LogFilter { topic: Some(group.topic.clone()), types, ..LogFilter::default() };
            let mut more = false;
            let mut page = None;
            // An append since the last read began (`borrow_and_update` below) counts
            // even if it came before the wait.
            if changes.has_changed().unwrap_or(true) {
                may_have_more = true;
            }
            if room > 0 && may_have_more {
                let limit = room.min(options.batch_size);
                // Marked before reading, so an append during the read wakes us.
                changes.borrow_and_update();
                metrics::counter!("keel_logbus_reads_total", "topic" => group.topic.clone(), "group" => group.group.clone()).increment(1);
                match group.store.read_after(self.read, &filter, limit).await {
                    Ok(read) => {
                        more = read.events.len() >= limit;
                        may_have_more = more;
                        page = Some(read);
                    }
                    Err(StoreError::Decode { .. }) => match self.skip_bad_row(&filter).await {
                        Ok(()) => more = true,
                        Err(error) => {
                            tracing::warn!(group = %group.name, %error, "could not dead-letter an undecodable row");
                            self.pause(shutdown).await;
                        }
                    },
                    Err(error) => {
                        tracing::warn!(group = %group.name, %error, "reading the log failed; retrying");
                        self.save_checkpoint().await;
                        self.pause(shutdown).await;
                        continue;
                    }
                }
            }
            // One transaction stores the checkpoint if the settled prefix grew and the
            // read mark of the page about to be handed out.
            let last = page.as_ref().and_then(|p| p.events.last()).map(|e| e.cursor);
            if let Err(error) = self.save(last).await {
                if last.is_some() {
                    // Nothing is handed out unmarked: the page is read again.
                    tracing::warn!(group = %group.name, %error, "could not store the read mark; retrying");
                    self.pause(shutdown).await;
                    continue;
                }
                tracing::warn!(group = %group.name, %error, "could not store the checkpoint");
            }
            if let Some(page) = page {
                if !page.events.is_empty() {
                    retry = None;
                }
                self.take_in(page.events, page.next);
            }
            if more {
                tokio::task::yield_now().await;
                continue;
            }
            let wait = retry
                .unwrap_or(options.poll_interval)
                .min(renew_every.saturating_sub(renewed.elapsed()))
                .max(Duration::from_millis(1));
            let (notified, timed_out) = tokio::select! {
                biased;
                _ = shutdown.changed() => (false, false),
                () = group.feeder.notified() => (false, false),
                changed = changes.changed() => (changed.is_ok(), false),
                () = tokio::time::sleep(wait) => (false, true),
            };
            may_have_more |= notified || timed_out;
            retry = if notified {
                settles.then_some(options.settle_delay)
            } else {
                retry.map(|d| (d * 2).min(options.poll_interval))
            };
        }
    }

    async fn pause(&mut self, shutdown: &mut watch::Receiver<bool>) {
        tokio::select! {
            () = tokio::time::sleep(self.options.poll_interval) => {}
            _ = shutdown.changed() => {}
        }
    }

    /// Puts read events into the group and notes that the log up to `next` is read.
    fn take_in(&mut self, events: Vec<keel_store::LogEvent>, next: Cursor) {
        let any = !events.is_empty();
        {
            let mut state = self.group.lock();
            for event in events {
                let payload = Payload::Event(envelope::from_log(event.event));
                let size = payload_size(&payload);
                state.push(payload, event.cursor, size);
                self.read = self.read.max(event.cursor);
            }
            self.read = self.read.max(next);
            state.pass(self.read);
        }
        if any {
            self.group.members.notify_waiters();
        }
    }

    /// A page did not decode: reads one event at a time up to the bad row, then
    /// dead-letters that row as it is stored and moves past it.
    async fn skip_bad_row(&mut self, filter: &LogFilter) -> Result<(), StoreError> {
        let group = self.group;
        loop {
            match group.store.read_after(self.read, filter, 1).await {
                Ok(page) => {
                    let done = page.events.is_empty();
                    self.save(page.events.last().map(|e| e.cursor)).await?;
                    self.take_in(page.events, page.next);
                    if done {
                        return Ok(());
                    }
                }
                Err(StoreError::Decode { position, source }) => {
                    let raw = group.store.raw_row(position).await?.ok_or_else(|| {
                        StoreError::NotFound(format!("the log row at position {position}"))
                    })?;
                    let mut message = raw.message;
                    message.error =
                        format!("the log row at position {position} is not a CloudEvent: {source}");
                    tracing::warn!(group = %group.name, position, error = %message.error, "dead-lettering an undecodable row");
                    let letter = NewDeadLetter {
                        id: DeadLetterId(uuid::Uuid::now_v7().to_string()),
                        topic: group.topic.clone(),
                        group: group.group.clone(),
                        reason: message.error.clone(),
                        attempts: 1,
                        payload: Payload::Undecodable(message),
                    };
                    group.store.insert_dead_letter(&letter).await?;
                    metrics::counter!("keel_logbus_dead_lettered_total", "topic" => group.topic.clone(), "group" => group.group.clone()).increment(1);
                    self.read = self.read.max(raw.cursor);
                    group.lock().pass(self.read);
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Stores, in one transaction, the checkpoint if the settled prefix grew and the
    /// read mark if `read` (the last event about to be handed out) is past it.
    async fn save(&mut self, read: Option<Cursor>) -> Result<(), StoreError> {
        let committed = self.group.lock().committed();
        let checkpoint = (committed > self.flushed).then_some(committed);
        let mark = read.filter(|read| self.marked.is_none_or(|marked| *read > marked));
        if checkpoint.is_none() && mark.is_none() {
            return Ok(());
        }
        let read_mark = mark.map_or(ReadMark::Keep, ReadMark::Set);
        let progress = Progress { checkpoint, read_mark, attempts: Vec::new() };
        self.group.progress.save(&self.group.name, &progress).await?;
        if let Some(checkpoint) = checkpoint {
            self.flushed = checkpoint;
            self.group.lock().forget_records_up_to(checkpoint);
        }
        if mark.is_some() {
            self.marked = mark;
        }
        Ok(())
    }

    /// Stores the checkpoint if the settled prefix grew, as far as the store lets it.
    async fn save_checkpoint(&mut self) {
        if let Err(error) = self.save(None).await {
            tracing::warn!(group = %self.group.name, %error, "could not store the checkpoint");
        }
    }

    /// A clean stop: stores the checkpoint and the attempts known here, and clears the
    /// read mark unless it covers events this activation never read.
    async fn stop(&mut self, stopped: Stopped) {
        let checkpoint = (stopped.committed > self.flushed).then_some(stopped.committed);
        let read_mark = if stopped.window.is_some_and(|window| window > self.read) {
            ReadMark::Keep
        } else {
            ReadMark::Clear
        };
        let progress = Progress { checkpoint, read_mark, attempts: stopped.attempts };
        if let Err(error) = self.group.progress.save(&self.group.name, &progress).await {
            tracing::warn!(group = %self.group.name, %error, "could not store the group's progress as it stopped");
        }
    }

    /// Takes in the group's dead letters that were sent back for another try.
    async fn load_letters(&mut self) {
        let group = self.group;
        let load = group.lock().begin_letter_load();
        match group.store.dead_letters(&group.topic, &group.group, true, 1000).await {
            Ok(letters) => {
                if group.lock().push_letters(load, letters) {
                    group.members.notify_waiters();
                }
            }
            Err(error) => {
                tracing::warn!(group = %group.name, %error, "could not read retried dead letters")
            }
        }
    }
}
