//! A connector's periodic work (extending leases, reading lag) until it stops.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `tick` every `period` until `stop` is cancelled: the first at once, a late one
/// delaying those after it rather than bunching them. A connector's keepers (lease or
/// visibility extension, lag readings) are spawned with it and stopped with the source.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tokio_util::sync::CancellationToken;
///
/// let (ticks, stop) = (Arc::new(AtomicU32::new(0)), CancellationToken::new());
/// let counted = ticks.clone();
/// let keeper = tokio::spawn(longshore::source::every(Duration::from_millis(10), stop.clone(), move || {
///     let counted = counted.clone();
///     async move { counted.fetch_add(1, Ordering::Relaxed); }
/// }));
/// tokio::time::sleep(Duration::from_millis(35)).await;
/// stop.cancel();
/// keeper.await.unwrap();
/// assert!(ticks.load(Ordering::Relaxed) >= 2);
/// # }
/// ```
pub async fn every<F, Fut>(period: Duration, stop: CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tick() => {}
        }
    }
}
