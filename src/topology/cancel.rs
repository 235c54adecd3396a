//! Work cut short when a token is cancelled, with nothing paid for the token while the
//! work is ready at once.

use std::future::Future;
use std::task::Poll;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Runs `work` to its end, or until `token` is cancelled first: `None` then. Like a
/// biased `select!` of the two, the work is polled first each time; unlike one, the wait
/// on the token is made only once the work is pending: work ready at once (a stage's
/// every chunk, often) makes and drops none.
pub(crate) async fn until_cancelled<F: Future>(token: &CancellationToken, work: F) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    // Made at the work's first `Pending`, and polled after it each time.
    let mut cancelled = std::pin::pin!(None::<WaitForCancellationFuture<'_>>);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if cancelled.is_none() {
            cancelled.set(Some(token.cancelled()));
        }
        let cancelled = cancelled.as_mut().as_pin_mut().expect("made above");
        cancelled.poll(cx).map(|()| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_work_ends_and_waiting_work_is_cut_short_by_the_token() {
        let token = CancellationToken::new();
        assert_eq!(until_cancelled(&token, async { 7 }).await, Some(7));

        let waiting = until_cancelled(&token, std::future::pending::<()>());
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        token.cancel();
        assert_eq!(waiting.await, None);

        // Cancelled already: work that is ready still ends, as in a biased select.
        assert_eq!(until_cancelled(&token, async { 8 }).await, Some(8));
        assert_eq!(until_cancelled(&token, std::future::pending::<()>()).await, None);
    }
}
