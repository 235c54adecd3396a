//! The queue: the SDK client, what the source learned of the queue at start, and the
//! batch calls (delete, change visibility) with their per-entry retries.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, QueueAttributeName,
};
use aws_sdk_sqs::Client;

use crate::config::{sqs_seconds, SqsConfig};
use crate::error::SqsSourceError;
use crate::metrics::QueueMetrics;

/// SQS takes at most this many entries per batch call and messages per receive.
pub(crate) const MAX_BATCH: usize = 10;

/// Tries of one batch entry before it is given up (the message is then redelivered).
const TRIES: u32 = 5;
const RETRY_MIN: Duration = Duration::from_millis(50);

/// A queue the source reads, resolved at start.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) client: Client,
    pub(crate) url: String,
    /// The queue's name, the `queue` label of its metrics.
    pub(crate) name: Arc<str>,
    pub(crate) fifo: bool,
    /// Whether the queue has a redrive policy (a dead-letter queue of its own).
    pub(crate) redrive: bool,
    /// The visibility timeout each received message gets.
    pub(crate) visibility: Duration,
    pub(crate) metrics: QueueMetrics,
    /// When a message was last acknowledged, for the stall watch.
    pub(crate) progress: crate::panel::Progress,
}

/// One entry of a batch call: a receipt, and for a visibility change the new timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) receipt: String,
    pub(crate) visibility: Option<i32>,
}

impl Entry {
    pub(crate) fn delete(receipt: String) -> Self {
        Entry {
            receipt,
            visibility: None,
        }
    }

    pub(crate) fn change(receipt: String, visibility: Duration) -> Self {
        Entry {
            receipt,
            visibility: Some(sqs_seconds(visibility)),
        }
    }
}

/// Why one entry of a batch call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryFailure {
    pub(crate) code: String,
    pub(crate) message: String,
    /// The request's fault (a receipt expired or already used): trying again is futile.
    pub(crate) sender_fault: bool,
}

impl EntryFailure {
    /// The whole call failed (network, throttling): worth trying again.
    fn call() -> Self {
        EntryFailure {
            code: "CallFailed".into(),
            message: String::new(),
            sender_fault: false,
        }
    }
}

/// Builds a client from the SDK's standard chain and the config's overrides, and finds
/// the queue's URL.
pub(crate) async fn client_and_url(config: &SqsConfig) -> Result<(Client, String), SqsSourceError> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &config.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    let client = Client::new(&loader.load().await);
    if config.queue.starts_with("https://") || config.queue.starts_with("http://") {
        return Ok((client, config.queue.clone()));
    }
    let found = client.get_queue_url().queue_name(&config.queue).send().await;
    let url = found
        .map_err(|error| SqsSourceError::queue(&config.queue, DisplayErrorContext(&error)))?
        .queue_url
        .ok_or_else(|| SqsSourceError::queue(&config.queue, "no URL in the answer"))?;
    Ok((client, url))
}

impl Queue {
    /// Connects to the queue and reads its attributes.
    pub(crate) async fn connect(config: &SqsConfig) -> Result<Self, SqsSourceError> {
        let (client, url) = client_and_url(config).await?;
        let attributes = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|error| SqsSourceError::queue(&url, DisplayErrorContext(&error)))?
            .attributes
            .unwrap_or_default();
        let name: Arc<str> = Arc::from(url.rsplit('/').next().unwrap_or(&url));
        let queue_visibility = attributes
            .get(&QueueAttributeName::VisibilityTimeout)
            .and_then(|seconds| seconds.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(30));
        Ok(Queue {
            client,
            fifo: name.ends_with(".fifo"),
            redrive: attributes.contains_key(&QueueAttributeName::RedrivePolicy),
            visibility: config.visibility_timeout.unwrap_or(queue_visibility),
            metrics: QueueMetrics::new(&name),
            progress: crate::panel::Progress::default(),
            name,
            url,
        })
    }

    /// Sends `entries` (at most [`MAX_BATCH`]) in one batch call, retrying the entries
    /// that failed for a reason of the server's, and gives up on the others with a
    /// warning: their messages will be delivered again.
    pub(crate) async fn send_batch(&self, mut entries: Vec<Entry>) {
        debug_assert!(entries.len() <= MAX_BATCH);
        let mut delay = RETRY_MIN;
        for attempt in 1..=TRIES {
            let outcomes = match self.batch_call(&entries).await {
                Ok(outcomes) => outcomes,
                Err(error) => {
                    tracing::warn!(queue = %self.name, %error, entries = entries.len(), attempt, "batch call failed");
                    entries.iter().map(|_| Err(EntryFailure::call())).collect()
                }
            };
            let mut outcomes = outcomes.into_iter();
            entries.retain(|_| match outcomes.next() {
                Some(Err(failure)) if failure.sender_fault => {
                    // A receipt that expired or was already used: the message is (or
                    // will be) delivered again, and is then handled again.
                    tracing::warn!(queue = %self.name, code = %failure.code, message = %failure.message, "batch entry refused");
                    false
                }
                Some(Err(_)) => true,
                Some(Ok(())) | None => false,
            });
            if entries.is_empty() {
                return;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        tracing::error!(queue = %self.name, entries = entries.len(), "batch entries given up; those messages will be delivered again");
    }

    /// One batch call; each entry's outcome, in order.
    pub(crate) async fn batch_call(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<Result<(), EntryFailure>>, aws_sdk_sqs::Error> {
        let deleting = entries[0].visibility.is_none();
        self.metrics.call(if deleting {
            "DeleteMessageBatch"
        } else {
            "ChangeMessageVisibilityBatch"
        });
        // Ids are positions: unique in the call even if a message was received twice.
        let failures = if deleting {
            let batch = entries.iter().enumerate().map(|(id, entry)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(id.to_string())
                    .receipt_handle(&entry.receipt)
                    .build()
                    .expect("id and receipt are set")
            });
            let call = self.client.delete_message_batch().queue_url(&self.url);
            call.set_entries(Some(batch.collect())).send().await?.failed
        } else {
            let batch = entries.iter().enumerate().map(|(id, entry)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(id.to_string())
                    .receipt_handle(&entry.receipt)
                    .visibility_timeout(entry.visibility.unwrap_or(0))
                    .build()
                    .expect("id and receipt are set")
            });
            let call = self.client.change_message_visibility_batch().queue_url(&self.url);
            call.set_entries(Some(batch.collect())).send().await?.failed
        };
        let mut outcomes: Vec<Result<(), EntryFailure>> = entries.iter().map(|_| Ok(())).collect();
        for failure in failures {
            let Some(index) = failure.id.parse::<usize>().ok().filter(|&i| i < entries.len()) else {
                continue;
            };
            outcomes[index] = Err(EntryFailure {
                code: failure.code,
                message: failure.message.unwrap_or_default(),
                sender_fault: failure.sender_fault,
            });
        }
        Ok(outcomes)
    }

    /// Sends `entries` in calls of at most [`MAX_BATCH`], all at once; one receipt is
    /// sent once per call.
    pub(crate) async fn send_all(&self, entries: Vec<Entry>) {
        let batches = batches(entries);
        let calls = batches.into_iter().map(|batch| self.send_batch(batch));
        futures_util::future::join_all(calls).await;
    }
}

/// Splits entries into batches of at most [`MAX_BATCH`] of one kind (deletes and
/// visibility changes are different calls), dropping repeated receipts: a receipt twice
/// in one call would fail the call.
pub(crate) fn batches(entries: Vec<Entry>) -> Vec<Vec<Entry>> {
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    let (deletes, changes): (Vec<Entry>, Vec<Entry>) = entries
        .into_iter()
        .filter(|entry| seen.insert(entry.receipt.clone()))
        .partition(|entry| entry.visibility.is_none());
    let mut out = Vec::with_capacity((deletes.len() + changes.len()).div_ceil(MAX_BATCH) + 1);
    for kind in [deletes, changes] {
        let mut rest = kind.into_iter().peekable();
        while rest.peek().is_some() {
            out.push(rest.by_ref().take(MAX_BATCH).collect());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_ten_distinct_receipts_of_one_kind() {
        let mut entries: Vec<Entry> = (0..23).map(|i| Entry::delete(format!("r{i}"))).collect();
        entries.push(Entry::delete("r3".into()));
        entries.push(Entry::change("r30".into(), Duration::from_secs(2)));
        let out = batches(entries);
        let sizes: Vec<usize> = out.iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 3, 1]);
        assert_eq!(out[3][0].visibility, Some(2));
    }
}
