//! Visibility extension: a message still held when its visibility timeout nears gets a
//! new one, so a long job is not delivered to another consumer meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::held::Held;
use crate::queue::Queue;

/// Every third of the timeout, extends what would become visible within half of it.
pub(crate) async fn run(queue: Arc<Queue>, held: Arc<Held>, stop: CancellationToken) {
    let visibility = queue.visibility;
    let mut ticks = tokio::time::interval((visibility / 3).max(Duration::from_millis(500)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let due = held.due_for_extension(tokio::time::Instant::now(), visibility / 2, visibility);
        if !due.is_empty() {
            tracing::debug!(queue = %queue.name, messages = due.len(), "extending visibility");
            queue.send_all(due).await;
        }
    }
}
