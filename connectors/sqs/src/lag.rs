//! The queue's lag, read every `lag_interval`: messages visible, in flight and delayed
//! (`GetQueueAttributes`), and the age of the oldest message received.
//!
//! SQS has no attribute for the oldest message's age (CloudWatch computes it), so the
//! source reports the oldest `SentTimestamp` it received in the interval; when it
//! received nothing while messages wait, the age grows with the clock, as a stalled
//! consumer's would.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::QueueAttributeName;
use tokio_util::sync::CancellationToken;

use crate::queue::Queue;

pub(crate) async fn run(queue: Arc<Queue>, interval: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut age = Duration::ZERO;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        queue.metrics.call("GetQueueAttributes");
        let read = queue
            .client
            .get_queue_attributes()
            .queue_url(&queue.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await;
        let attributes = match read {
            Ok(answer) => answer.attributes.unwrap_or_default(),
            Err(error) => {
                tracing::debug!(queue = %queue.name, error = %aws_sdk_sqs::Error::from(error), "cannot read the queue's depth");
                continue;
            }
        };
        let count = |name: QueueAttributeName| {
            attributes
                .get(&name)
                .and_then(|n| n.parse::<i64>().ok())
                .unwrap_or(0)
        };
        let visible = count(QueueAttributeName::ApproximateNumberOfMessages);
        let not_visible = count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible);
        let metrics = &queue.metrics;
        metrics.visible.set(visible);
        metrics.not_visible.set(not_visible);
        metrics
            .delayed
            .set(count(QueueAttributeName::ApproximateNumberOfMessagesDelayed));
        age = match metrics.take_oldest_sent() {
            Some(sent) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                now.saturating_sub(Duration::from_millis(sent))
            }
            None if visible + not_visible == 0 => Duration::ZERO,
            None => age + interval,
        };
        metrics.oldest_age.set(age.as_secs() as i64);
    }
}
