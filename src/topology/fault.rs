//! The first failure of the pipeline's own machinery (not of a message): a stage or the
//! acknowledger panicked, or the source reported it can no longer deliver. Raising one
//! starts the shutdown; the pipeline then ends with [`PipelineError::Failed`].
//!
//! [`PipelineError::Failed`]: crate::PipelineError::Failed

use std::sync::OnceLock;

use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub(crate) struct Fault {
    cause: OnceLock<String>,
    raised: CancellationToken,
    /// The pipeline's stop token: cancelled with the fault, so that the pipeline stops
    /// fetching at once, whoever (if anyone) awaits it.
    stop: CancellationToken,
}

impl Fault {
    /// A fault that stops the pipeline through `stop` when raised.
    pub(crate) fn new(stop: CancellationToken) -> Self {
        Fault {
            stop,
            ..Fault::default()
        }
    }

    /// Records `cause` unless a fault was raised before (that one is kept: it came first,
    /// later ones are mostly its consequences), and wakes whoever waits in [`Fault::raised`].
    pub(crate) fn raise(&self, cause: impl Into<String>) {
        let cause = cause.into();
        tracing::error!(%cause, "pipeline failed; shutting down");
        let _ = self.cause.set(cause);
        crate::metrics::health::failed();
        self.raised.cancel();
        self.stop.cancel();
    }

    /// The first cause raised, if any.
    pub(crate) fn cause(&self) -> Option<&str> {
        self.cause.get().map(String::as_str)
    }

    /// A task of the pipeline's machinery ended: if it panicked (user code runs guarded,
    /// so that is a fault of the machinery), the pipeline stops and says so.
    pub(crate) fn check(&self, joined: Result<(), JoinError>) {
        if let Err(error) = joined {
            if error.is_panic() {
                self.raise(format!("a pipeline stage panicked: {error}"));
            }
        }
    }

    /// Waits for every task of the set to end, checking each; cancel safe, so the set
    /// can be aborted after.
    pub(crate) async fn join_all(&self, tasks: &mut JoinSet<()>) {
        while let Some(joined) = tasks.join_next().await {
            self.check(joined);
        }
    }

    /// Completes once a fault is raised.
    pub(crate) async fn raised(&self) {
        self.raised.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_first_cause_and_wakes_the_waiter() {
        let stop = CancellationToken::new();
        let fault = Fault::new(stop.clone());
        assert_eq!(fault.cause(), None);
        let waiting = fault.raised();
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        fault.raise("the acknowledger panicked");
        fault.raise("a stage ended");
        waiting.await;
        assert_eq!(fault.cause(), Some("the acknowledger panicked"));
        assert!(stop.is_cancelled(), "the pipeline stops");
    }
}
