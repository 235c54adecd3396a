//! The SQS [`Source`]: receives on demand, holds what it received until acknowledged or
//! released, and runs the queue's background work (delete flushing, visibility
//! extension, lag).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use bytes::Bytes;
use longshore::source::{PartitionBy, Plan, Redelivery};
use longshore::{BoxError, BuildError, Source};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::acknowledge::{self, release_now, SqsAcknowledger};
use crate::config::{Ordering, SqsConfig};
use crate::error::SqsSourceError;
use crate::held::Held;
use crate::metadata::{SqsMessage, SqsMetadata};
use crate::queue::Queue;
use crate::receiver::{Polling, Receiver};
use crate::{lag, visibility};

/// Extra time a shutdown gives the polls in flight beyond their wait time.
const POLL_GRACE: Duration = Duration::from_secs(5);

/// Consumes an SQS queue on demand.
///
/// ```text
///  SQS ◀─ long polls (≤ 10 each, only for demand) ─ receiver ─▶ pipeline
///   ▲                                                              │ ack
///   ├── DeleteMessageBatch (successes, 10 at a time) ◀─────────────┤
///   ├── ChangeMessageVisibilityBatch (failures: after their backoff; last attempt: 0)
///   └── ChangeMessageVisibilityBatch (extension of messages still held)
/// ```
///
/// - Demand: polls ask for no more messages than the pipeline demanded, at most
///   `receive_concurrency` of them at once.
/// - Retries: a standard queue's failed message is made visible again after the
///   policy's backoff, and comes back with its receive count as its attempt. A FIFO
///   queue retries in process instead, so that its group's later messages wait behind
///   it (their group is locked in SQS meanwhile).
/// - After the last attempt: see [`FinalFailure`](crate::FinalFailure).
/// - Shutdown: messages received and not handed to the pipeline are made visible at
///   once, for another consumer; the rest are finished within the pipeline's deadline.
pub struct SqsSource {
    receiver: Arc<Receiver>,
    acknowledger: SqsAcknowledger,
    queue: Arc<Queue>,
    held: Arc<Held>,
    ordering: Ordering,
    /// `extend_visibility`.
    extends: bool,
    wait_time: Duration,
    /// Stops the background tasks when the source goes, if no pipeline flushed first.
    _stop: DropGuard,
}

impl SqsSource {
    /// Finds the queue, reads its attributes and starts the source's background tasks.
    ///
    /// # Errors
    ///
    /// An invalid setting (naming it), or a queue that cannot be found or read.
    pub async fn connect(config: SqsConfig) -> Result<Self, SqsSourceError> {
        config.validate()?;
        let queue = Arc::new(Queue::connect(&config).await?);
        let held = Arc::new(Held::default());
        let stop = CancellationToken::new();
        let mut attribute_names = vec![
            MessageSystemAttributeName::ApproximateReceiveCount,
            MessageSystemAttributeName::MessageGroupId,
            MessageSystemAttributeName::SentTimestamp,
        ];
        attribute_names.extend(config.attribute_names.iter().map(|name| name.as_str().into()));
        let polling = Polling {
            concurrency: config.receive_concurrency,
            wait_time: config.wait_time,
            attribute_names,
            message_attribute_names: config.message_attribute_names.clone(),
        };
        let receiver = Receiver::new(queue.clone(), held.clone(), polling);
        let (outbox, handed_over) = tokio::sync::mpsc::channel(acknowledge::OUTBOX);
        let pending = Arc::new(tokio::sync::Semaphore::new(acknowledge::PENDING_DELETES));
        tokio::spawn(acknowledge::send_handed_over(
            queue.clone(),
            held.clone(),
            handed_over,
            pending.clone(),
            config.delete_interval,
        ));
        if config.extend_visibility {
            tokio::spawn(visibility::run(queue.clone(), held.clone(), stop.clone()));
        }
        tokio::spawn(lag::run(queue.clone(), config.lag_interval, stop.clone()));
        tracing::info!(queue = %queue.name, fifo = queue.fifo, visibility = ?queue.visibility, "sqs source connected");
        Ok(SqsSource {
            acknowledger: SqsAcknowledger {
                queue: queue.clone(),
                held: held.clone(),
                outbox,
                pending,
                final_failure: config.on_final_failure,
                stop: stop.clone(),
            },
            receiver,
            queue,
            held,
            ordering: config.ordering,
            extends: config.extend_visibility,
            wait_time: config.wait_time,
            _stop: stop.drop_guard(),
        })
    }

    /// The queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue.url
    }

    /// Whether the queue is a FIFO queue.
    pub fn is_fifo(&self) -> bool {
        self.queue.fifo
    }

    /// Messages received and not yet acknowledged or released.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

impl std::fmt::Debug for SqsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsSource")
            .field("queue", &self.queue.url)
            .field("ordering", &self.ordering)
            .finish_non_exhaustive()
    }
}

impl Source for SqsSource {
    type Data = Bytes;
    type Metadata = SqsMetadata;
    type Acknowledger = SqsAcknowledger;

    /// A fetch under way completes at a pause: a long poll under way leases what it brings
    /// (invisible to the other consumers).
    fn drops_fetch_on_pause(&self) -> bool {
        false
    }

    fn panel(&self) -> Option<Arc<dyn longshore::source::SourcePanel>> {
        Some(Arc::new(crate::panel::SqsPanel {
            queue: self.queue.clone(),
            held: self.held.clone(),
            receiver: self.receiver.clone(),
        }))
    }

    fn acknowledger(&self) -> SqsAcknowledger {
        self.acknowledger.clone()
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<SqsMessage>>, BoxError> {
        self.receiver.receive(demand.get()).await.map(Some)
    }

    fn partition_by(&self) -> Option<PartitionBy<Bytes, SqsMetadata>> {
        match self.ordering {
            // A standard queue has no groups: any free processor takes any message, so
            // none waits behind a busy processor while another is idle.
            Ordering::Group if !self.queue.fifo => None,
            Ordering::Group => Some(Arc::new(|message: &SqsMessage| {
                let mut hasher = DefaultHasher::new();
                // Without a group, each message is its own: no order between them.
                match message.metadata().group_id() {
                    Some(group) => group.hash(&mut hasher),
                    None => message.ack_ref().hash(&mut hasher),
                }
                hasher.finish()
            })),
            Ordering::Unordered => None,
        }
    }

    fn redelivery(&self) -> Redelivery {
        if self.queue.fifo {
            Redelivery::InProcess
        } else {
            Redelivery::Broker
        }
    }

    fn prepare(&self, plan: &Plan) -> Result<(), BuildError> {
        // Ordered, a message waits in memory (for a retry in process, or behind its key),
        // kept invisible by the extension alone.
        if !self.extends && (self.queue.fifo || plan.ordered) {
            tracing::warn!(queue = %self.queue.name, visibility = ?self.queue.visibility, "extend_visibility is off in an ordered pipeline: a message held longer than its visibility timeout (waiting for a retry in process, or behind its key) is delivered again meanwhile, handled twice and out of order");
        }
        self.acknowledger.check(plan)
    }

    async fn shutdown(&self) {
        // Received but never handed out: visible again now, not after the timeout.
        let unstarted = self.receiver.stop(self.wait_time + POLL_GRACE).await;
        release_now(&self.queue, &self.held, unstarted).await;
    }
}
