//! Work cut short when a token is cancelled, with nothing paid for the token while the
//! work is ready at once.

use std::future::Future;
use std::task::Poll;

use tokio_util::sync::CancellationToken;

/// Runs `work` to its end, or until `token` is cancelled first: `None` then. Like a
/// biased `select!` of the two, the work is polled first; unlike one, while the work is
/// ready at its first poll no wait on the token is made and dropped (a stage pays that
/// on every chunk otherwise).
pub(crate) async fn until_cancelled<F: Future>(token: &CancellationToken, work: F) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    if let Poll::Ready(out) = futures_util::poll!(work.as_mut()) {
        return Some(out);
    }
    tokio::select! {
        biased;
        out = work => Some(out),
        () = token.cancelled() => None,
    }
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
