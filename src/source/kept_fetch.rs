//! Fetches that outlive a dropped `receive`: what a broker handed over is never left
//! behind because the pipeline stopped waiting for it.

use std::collections::VecDeque;
use std::future::Future;

use tokio::task::JoinHandle;

use crate::error::BoxError;

/// What a source fetched and has not handed out, and a fetch under way.
///
/// [`Source::receive`](crate::Source::receive) may be dropped at any await (at
/// shutdown). A fetch from a broker that was dropped half way has taken messages the
/// source then never hands out: leased, delivered, invisible to others until a timeout.
/// `KeptFetch` runs each fetch as a task of its own and keeps it, and what it brought
/// beyond the demand, for the next call; [`KeptFetch::drain`] gives back the rest at
/// shutdown, to release. Keep it behind a `tokio::sync::Mutex` in the source.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), longshore::BoxError> {
/// use longshore::source::KeptFetch;
///
/// let mut fetch = KeptFetch::default();
/// // A broker that answers a fetch of `n` with n numbers.
/// let got = fetch.take(3, |n| async move { Ok((0..n as u32 + 2).collect()) }).await?;
/// assert_eq!(got, [0, 1, 2]);
/// // Brought more than asked: kept for the next call, which fetches nothing.
/// let got = fetch.take(10, |_| async { unreachable!("nothing fetched while some wait") }).await?;
/// assert_eq!(got, [3, 4]);
/// assert!(fetch.drain().await.is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct KeptFetch<T> {
    ready: VecDeque<T>,
    pending: Option<JoinHandle<Result<Vec<T>, BoxError>>>,
}

impl<T> Default for KeptFetch<T> {
    fn default() -> Self {
        KeptFetch {
            ready: VecDeque::new(),
            pending: None,
        }
    }
}

impl<T: Send + 'static> KeptFetch<T> {
    /// At most `demand` of what was fetched before; else what the fetch under way
    /// brings, or a new `fetch(demand)` started now. Empty when the fetch found nothing
    /// (the caller waits, or fetches again). Cancel safe: dropped, the fetch goes on and
    /// its messages wait for the next call.
    ///
    /// # Errors
    ///
    /// The fetch's error, or its panic.
    pub async fn take<F, Fut>(&mut self, demand: usize, fetch: F) -> Result<Vec<T>, BoxError>
    where
        F: FnOnce(usize) -> Fut,
        Fut: Future<Output = Result<Vec<T>, BoxError>> + Send + 'static,
    {
        if self.ready.is_empty() {
            let pending = self.pending.get_or_insert_with(|| tokio::spawn(fetch(demand)));
            let fetched = pending.await;
            self.pending = None;
            self.ready.extend(fetched??);
        }
        let take = demand.min(self.ready.len());
        Ok(self.ready.drain(..take).collect())
    }

    /// Everything fetched and not handed out, the fetch under way awaited: to release
    /// at shutdown. A fetch that failed brought nothing.
    pub async fn drain(&mut self) -> Vec<T> {
        if let Some(pending) = self.pending.take() {
            if let Ok(Ok(fetched)) = pending.await {
                self.ready.extend(fetched);
            }
        }
        self.ready.drain(..).collect()
    }
}
