//! Settling rows after their last stage: handled ones deleted, failed ones made visible
//! after their backoff or kept as failed, released ones made visible at once.

use std::sync::Arc;

use longshore::source::Acknowledger;
use longshore::Status;

use crate::metadata::{PgQueueMessage, PgQueueMetadata};
use crate::queue::{Lease, Queue};

/// Acknowledges a [`PgQueueSource`](crate::PgQueueSource)'s rows. Made by the source.
///
/// Each call runs its statements before it returns, trying again while the database is
/// away for a third of a lease; what could not be settled comes back when its lease
/// passes, to be handled again: never lost.
#[derive(Debug, Clone)]
pub struct PgQueueAcknowledger(pub(crate) Arc<Queue>);

impl Acknowledger<PgQueueMetadata> for PgQueueAcknowledger {
    async fn ack<T: Send + 'static>(
        &self,
        successful: Vec<PgQueueMessage<T>>,
        failed: Vec<PgQueueMessage<T>>,
    ) {
        let mut delete: Vec<Lease> = successful.iter().map(|m| m.metadata().lease()).collect();
        let (mut retry, mut delays) = (Vec::new(), Vec::new());
        let (mut keep, mut errors) = (Vec::new(), Vec::new());
        for message in &failed {
            let id = message.metadata().lease();
            match message.redeliver_after() {
                Some(after) => {
                    retry.push(id);
                    delays.push(after.as_secs_f64());
                }
                // The pipeline's destination has it: the table need not keep it too.
                None if message.is_dead_lettered() => delete.push(id),
                None => {
                    keep.push(id);
                    errors.push(match message.status() {
                        Status::Failed(failure) => failure.to_string(),
                        Status::Ok => String::new(),
                    });
                }
            }
        }
        self.0.delete(&delete).await;
        self.0.retry_later(&retry, &delays).await;
        self.0.fail(&keep, &errors).await;
    }

    async fn release<T: Send + 'static>(&self, messages: Vec<PgQueueMessage<T>>) {
        let leases: Vec<Lease> = messages.iter().map(|m| m.metadata().lease()).collect();
        // Handled at least once (they waited for a retry): their attempts stand.
        self.0.release(&leases, false).await;
    }

    fn origin<T>(&self, message: &PgQueueMessage<T>) -> Option<String> {
        Some(format!("{} row {}", self.0.table, message.metadata().id()))
    }

    fn acknowledges_each(&self) -> bool {
        // A row deleted as soon as it is done is not handled again after a kill.
        true
    }
}
