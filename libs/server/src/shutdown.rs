//! The shutdown signal, and the tasks a service stops when it comes.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long in-flight requests may take to finish once shutdown begins.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// How long background tasks may take to finish once they are stopped.
pub const TASK_STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "failed to install SIGTERM handler");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("received SIGTERM, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT, shutting down"),
    }
}

/// Every task a service spawns besides its requests: tracked, so shutdown
/// knows when they are done, and stopped together.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stopping: CancellationToken,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Spawns a loop that runs until the service stops: it is dropped at
    /// its next await once [`Tasks::stop`] is called.
    pub fn spawn_loop<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stopping = self.stopping.clone();
        self.tracker.spawn(async move {
            stopping.run_until_cancelled(future).await;
        });
    }

    /// Spawns a task that runs to its end; [`Tasks::stop`] waits for it
    /// (within its deadline). A task that must notice the stop itself
    /// watches [`Tasks::stopping`].
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(future)
    }

    /// Cancelled when the service starts stopping.
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// How many tasks are still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Cancels the loops and waits, at most `deadline`, for every task to
    /// end; returns whether all did. Tasks spawned afterwards still run,
    /// untracked by this wait.
    pub async fn stop(&self, deadline: Duration) -> bool {
        self.stopping.cancel();
        self.tracker.close();
        let done = tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(
                left = self.tracker.len(),
                ?deadline,
                "background tasks did not finish in time"
            );
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_cancels_loops_and_waits_for_one_off_tasks() {
        let tasks = Tasks::new();
        tasks.spawn_loop(std::future::pending());
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = finished.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        assert!(tasks.stop(Duration::from_secs(5)).await);
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
        assert!(tasks.is_empty());
    }

    #[tokio::test]
    async fn stop_gives_up_on_a_task_that_outlives_the_deadline() {
        let tasks = Tasks::new();
        tasks.spawn(std::future::pending::<()>());
        assert!(!tasks.stop(Duration::from_millis(20)).await);
        assert_eq!(tasks.len(), 1);
    }
}
