//! A part of a process running in the background until told to stop: what
//! [`crate::RelayTask`], [`crate::ProjectionTask`] and [`crate::TimerTask`] share.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The future a task is handed that completes when it is told to stop.
pub(crate) type Stopped = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A spawned task and the signal that stops it.
#[derive(Debug)]
pub(crate) struct StoppableTask<E> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), E>>,
}

impl<E> StoppableTask<E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    /// Spawns `run`, handing it the future that completes when [`Self::stop`] is called.
    pub(crate) fn spawn<F>(run: impl FnOnce(Stopped) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(Box::pin(async {
            let _ = stopped.await;
        })));
        Self { stop, task }
    }

    /// Signals the task and waits for it; an error if it failed or panicked (`what`
    /// names it: "the relay task").
    pub(crate) async fn stop(self, what: &str) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => Ok(result?),
            Err(panicked) => Err(anyhow::Error::from(panicked).context(format!("{what} panicked"))),
        }
    }
}
