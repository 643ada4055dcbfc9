//! Group commit of the groups' progress (checkpoints, read marks, attempts).
//!
//! Every group's feeder stores a read mark before it hands a page out, and its
//! checkpoint as the settled prefix grows; at the end of a topic that is a write
//! transaction per group for every append, and the groups of a topic are all woken by
//! the same append. On SQLite those transactions queue for the one writer; on
//! PostgreSQL each commit waits for the disk. [`ProgressWriter`] lets whoever writes
//! first take everything queued while the previous transaction ran, and commit it as
//! one: nobody waits longer than for one transaction in progress plus its own (no
//! timer, no delay when idle), and under load the transactions per append fall from
//! one per group to one or two.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use keel_store::Result;
use tokio::sync::oneshot;

use crate::store::{BusStore, Progress};

/// Where the progress goes: one transaction per call.
#[async_trait]
pub(crate) trait ProgressStore: Send + Sync {
    /// Stores each group's progress, in the order given, in one transaction.
    async fn write(&self, groups: &[(&str, &Progress)]) -> Result<()>;
}

#[async_trait]
impl ProgressStore for Arc<dyn BusStore> {
    async fn write(&self, groups: &[(&str, &Progress)]) -> Result<()> {
        self.save_progress_of(groups).await
    }
}

/// A save waiting for the next transaction.
struct Queued {
    name: String,
    progress: Progress,
    /// Whether the transaction that took it committed.
    done: oneshot::Sender<bool>,
}

/// Writes groups' progress, several groups a transaction when they come together.
pub(crate) struct ProgressWriter<S = Arc<dyn BusStore>> {
    store: S,
    queue: Mutex<Vec<Queued>>,
    /// Held by the caller whose transaction runs.
    writing: tokio::sync::Mutex<()>,
}

impl<S: ProgressStore> ProgressWriter<S> {
    pub(crate) fn new(store: S) -> Self {
        Self { store, queue: Mutex::new(Vec::new()), writing: tokio::sync::Mutex::new(()) }
    }

    /// Stores group `name`'s progress; returns once it is committed, with whatever
    /// else was queued meanwhile. A transaction that fails is not the other groups'
    /// failure: each of them writes its own again, alone, and gets its own answer.
    /// Dropped before it returns, the save may still be committed, or not.
    pub(crate) async fn save(&self, name: &str, progress: &Progress) -> Result<()> {
        metrics::counter!("keel_logbus_progress_saves_total").increment(1);
        let (done, mut committed) = oneshot::channel();
        self.lock().push(Queued { name: name.to_owned(), progress: progress.clone(), done });
        let _writing = self.writing.lock().await;
        match committed.try_recv() {
            Ok(true) => return Ok(()),
            // The transaction that took it failed, or its writer was dropped mid-way.
            Ok(false) | Err(oneshot::error::TryRecvError::Closed) => {
                return self.store.write(&[(name, progress)]).await;
            }
            // Nobody is writing and nobody took it: it is in the queue.
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        // Saves whose callers went away are left out: nobody waits for them.
        let mut batch: Vec<Queued> =
            std::mem::take(&mut *self.lock()).into_iter().filter(|q| !q.done.is_closed()).collect();
        // Rows locked in one order by every transaction, so two processes' cannot
        // deadlock; stable, so one group's saves keep theirs.
        batch.sort_by(|a, b| a.name.cmp(&b.name));
        let groups: Vec<(&str, &Progress)> =
            batch.iter().map(|q| (q.name.as_str(), &q.progress)).collect();
        metrics::counter!("keel_logbus_progress_writes_total").increment(1);
        let written = self.store.write(&groups).await;
        let alone = batch.len() == 1;
        let ok = written.is_ok();
        for queued in batch {
            let _ = queued.done.send(ok);
        }
        match written {
            Ok(()) => Ok(()),
            Err(error) if alone => Err(error),
            Err(_) => self.store.write(&[(name, progress)]).await,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Queued>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S> std::fmt::Debug for ProgressWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressWriter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use keel_store::{Cursor, StoreError};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::store::ReadMark;

    /// Records each transaction's groups; holds the first until let go; fails any
    /// transaction holding the group named `poison`.
    struct Recorded {
        transactions: Mutex<Vec<Vec<String>>>,
        first_held: Semaphore,
        started: AtomicUsize,
    }

    impl Recorded {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                transactions: Mutex::new(Vec::new()),
                first_held: Semaphore::new(0),
                started: AtomicUsize::new(0),
            })
        }
    }

    #[async_trait]
    impl ProgressStore for Arc<Recorded> {
        async fn write(&self, groups: &[(&str, &Progress)]) -> Result<()> {
            if self.started.fetch_add(1, Ordering::SeqCst) == 0 {
                let _ = self.first_held.acquire().await.expect("semaphore");
            }
            self.transactions
                .lock()
                .unwrap()
                .push(groups.iter().map(|(name, _)| (*name).to_owned()).collect());
            if groups.iter().any(|(name, _)| *name == "poison") {
                return Err(StoreError::NotFound("poison".into()));
            }
            Ok(())
        }
    }

    fn mark(position: i64) -> Progress {
        let cursor = Cursor { position, ..Cursor::START };
        Progress { read_mark: ReadMark::Set(cursor), ..Progress::default() }
    }

    /// A writer whose first save (`bus:order:a`) is in its transaction, held there until
    /// `store.first_held` gets a permit.
    async fn first_save_held() -> (Arc<Recorded>, Arc<ProgressWriter<Arc<Recorded>>>, Saving) {
        let store = Recorded::new();
        let writer = Arc::new(ProgressWriter::new(store.clone()));
        let first = tokio::spawn({
            let writer = writer.clone();
            async move { writer.save("bus:order:a", &mark(1)).await }
        });
        while store.started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        (store, writer, first)
    }

    type Saving = tokio::task::JoinHandle<Result<()>>;

    /// Waits until `n` saves are queued behind the transaction in progress.
    async fn queued(writer: &ProgressWriter<Arc<Recorded>>, n: usize) {
        while writer.lock().len() < n {
            tokio::task::yield_now().await;
        }
    }

    /// Saves of each group named, one after the other, each queued before the next.
    async fn queue<const N: usize>(
        writer: &Arc<ProgressWriter<Arc<Recorded>>>,
        names: [&'static str; N],
    ) -> Vec<(&'static str, Saving)> {
        let mut saves = Vec::new();
        for (n, name) in names.into_iter().enumerate() {
            let saving = writer.clone();
            saves.push((name, tokio::spawn(async move { saving.save(name, &mark(2)).await })));
            queued(writer, n + 1).await;
        }
        saves
    }

    #[tokio::test]
    async fn saves_queued_behind_a_transaction_commit_together_by_group_name() {
        let (store, writer, first) = first_save_held().await;
        let rest = queue(&writer, ["bus:stock:a", "bus:order:c", "bus:order:b"]).await;
        store.first_held.add_permits(1);
        first.await.unwrap().expect("the first save");
        for (_, save) in rest {
            save.await.unwrap().expect("a queued save");
        }
        assert_eq!(
            *store.transactions.lock().unwrap(),
            vec![vec!["bus:order:a"], vec!["bus:order:b", "bus:order:c", "bus:stock:a"]],
            "one transaction for the first, one for everything queued behind it, by name"
        );
    }

    #[tokio::test]
    async fn a_failed_transaction_is_written_again_group_by_group() {
        let (store, writer, first) = first_save_held().await;
        let rest = queue(&writer, ["bus:order:b", "poison", "bus:order:c"]).await;
        store.first_held.add_permits(1);
        first.await.unwrap().expect("the first save");
        for (name, save) in rest {
            let saved = save.await.unwrap();
            assert_eq!(saved.is_ok(), name != "poison", "{name}: {saved:?}");
        }
        let transactions = store.transactions.lock().unwrap().clone();
        assert_eq!(transactions[1], vec!["bus:order:b", "bus:order:c", "poison"]);
        let mut alone: Vec<Vec<String>> = transactions[2..].to_vec();
        alone.sort();
        assert_eq!(alone, vec![vec!["bus:order:b"], vec!["bus:order:c"], vec!["poison"]]);
    }

    #[tokio::test]
    async fn a_save_whose_caller_went_away_is_left_out() {
        let (store, writer, first) = first_save_held().await;
        let gone = tokio::spawn({
            let writer = writer.clone();
            async move { writer.save("bus:order:gone", &mark(2)).await }
        });
        queued(&writer, 1).await;
        gone.abort();
        let _ = gone.await;
        let kept = tokio::spawn({
            let writer = writer.clone();
            async move { writer.save("bus:order:b", &mark(2)).await }
        });
        queued(&writer, 2).await;
        store.first_held.add_permits(1);
        first.await.unwrap().expect("the first save");
        kept.await.unwrap().expect("the kept save");
        assert_eq!(
            *store.transactions.lock().unwrap(),
            vec![vec!["bus:order:a"], vec!["bus:order:b"]]
        );
    }
}
