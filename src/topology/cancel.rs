//! Work cut short when a token is cancelled, with nothing paid for the token while the
//! work is ready at once.

use std::future::Future;
use std::pin::Pin;
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

/// Polls `work` once, with the task's own waker: its output if it is ready now. Work
/// still pending is left to a `select!` over it and the waits that may cut it short, so
/// that those are made only when it has to wait.
pub(crate) async fn ready_now<F: Future>(mut work: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match work.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending => Poll::Ready(None),
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

    #[tokio::test]
    async fn work_ready_now_is_taken_and_pending_work_is_left_to_be_awaited() {
        assert_eq!(ready_now(std::pin::pin!(async { 7 })).await, Some(7));

        let notify = tokio::sync::Notify::new();
        let mut waiting = std::pin::pin!(async {
            notify.notified().await;
            8
        });
        assert_eq!(ready_now(waiting.as_mut()).await, None);
        // Left pending, it is awaited: woken by what it waits for.
        let woken = async {
            tokio::task::yield_now().await;
            notify.notify_waiters();
        };
        let (out, ()) = tokio::join!(waiting, woken);
        assert_eq!(out, 8);
    }
}
