//! The trait a service implements: what to do with each message and each batch.

use std::future::Future;
use std::sync::Arc;

use crate::error::BoxError;
use crate::message::{BatchKey, Message};

/// What a pipeline does with messages. This is the one trait a service implements.
///
/// ```text
///  source ──▶ prepare_messages ──▶ handle_message ──▶ [batcher] ──▶ handle_batch ──▶ ack ✓
///                    │                   │                              │
///                    └──── failed ───────┴────────── failed ────────────┴──▶ handle_failed ──▶ ack ✗
/// ```
///
/// Every method runs inside a panic guard: an error or a panic fails the messages
/// concerned, never the stage. A failed message skips later stages, is given to
/// [`handle_failed`](Handler::handle_failed) once (or, if its data did not decode, to
/// [`handle_undecoded`](Handler::handle_undecoded)), and is acknowledged as failed.
///
/// # Examples
///
/// ```
/// use longshore::{BatchInfo, BoxError, Handler, Message};
///
/// struct Orders;
///
/// impl Handler for Orders {
///     type Item = String;
///     type Metadata = ();
///
///     async fn handle_message(&self, message: &mut Message<String>) -> Result<(), BoxError> {
///         if message.data().is_empty() {
///             return Err("empty order".into());
///         }
///         message.put_batch_key(if message.data().starts_with("eu") { "eu" } else { "us" });
///         Ok(())
///     }
///
///     async fn handle_batch(
///         &self,
///         batch: &mut [Message<String>],
///         info: &BatchInfo,
///     ) -> Result<(), BoxError> {
///         println!("inserting {} orders for {}", batch.len(), info.batch_key);
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The data every stage gets: the source's own [`Source::Data`](crate::Source::Data),
    /// or what the pipeline's [decode step](crate::PipelineBuilder::decode) makes of it
    /// (an order parsed from JSON, say).
    type Item: Send + 'static;
    /// The source's [`Source::Metadata`](crate::Source::Metadata): `()` for the in-memory
    /// source, `KafkaMetadata` or `SqsMetadata` for those connectors.
    type Metadata: Send + 'static;

    /// Handles one message in a processor. Return an error (or call
    /// [`Message::fail`]) to fail it; call [`Message::put_batcher`] or
    /// [`Message::put_batch_key`] to route it.
    fn handle_message(
        &self,
        message: &mut Message<Self::Item, Self::Metadata>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Handles one batch in a batcher. An error fails every message of the batch;
    /// [`Message::fail`] fails one.
    ///
    /// In an ordered pipeline (`partition_by`, or the source's own order), when a message
    /// of the batch is to be tried again, the messages after it in the batch are tried
    /// again with it, those that succeeded included, so that none is finished ahead of
    /// it: make the batch's effects idempotent (an upsert), as at-least-once delivery
    /// asks anyway. Such a retry comes with [`BatchTrigger::Retry`].
    ///
    /// The default fails the batch: a pipeline with batchers must implement it, and
    /// nothing is acknowledged as done without having been handled.
    fn handle_batch(
        &self,
        batch: &mut [Message<Self::Item, Self::Metadata>],
        info: &BatchInfo,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = batch;
        let batcher = info.batcher.clone();
        async move {
            Err(format!("handle_batch is not implemented, but batcher `{batcher}` is configured").into())
        }
    }

    /// Runs once on each chunk a processor receives, before
    /// [`handle_message`](Handler::handle_message): the place to load what many
    /// messages need in one round trip. An error fails the whole chunk. Messages failed
    /// already (routed to an unknown batcher, delivered more often than
    /// [`max_deliveries`](crate::RetryPolicy::max_deliveries)) come too, their status
    /// saying so: they reach no other method. Default: nothing.
    fn prepare_messages(
        &self,
        messages: &mut [Message<Self::Item, Self::Metadata>],
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = messages;
        async { Ok(()) }
    }

    /// Called once with messages that failed for good, just before they go to the
    /// dead-letter destination and are acknowledged as failed: the place to log or count
    /// them. Messages whose data did not decode go to
    /// [`handle_undecoded`](Handler::handle_undecoded) instead. Default: nothing.
    fn handle_failed(
        &self,
        messages: &mut [Message<Self::Item, Self::Metadata>],
    ) -> impl Future<Output = ()> + Send {
        let _ = messages;
        async {}
    }

    /// Called once with messages whose data the pipeline's
    /// [decode step](crate::PipelineBuilder::decode) could not decode, just before they go
    /// to the dead-letter destination and are acknowledged as failed. They reach no other
    /// method, having no decoded value; their metadata keeps the original bytes (Kafka's
    /// key and payload, SQS's body) and their status says why. Default: nothing.
    fn handle_undecoded(
        &self,
        messages: &mut [Message<(), Self::Metadata>],
    ) -> impl Future<Output = ()> + Send {
        let _ = messages;
        async {}
    }
}

/// What a batch is: which batcher made it, for which key, and why it was sent.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BatchInfo {
    /// The batcher's name.
    pub batcher: Arc<str>,
    /// The key all messages of the batch share.
    pub batch_key: BatchKey,
    /// Why the batch was sent now.
    pub trigger: BatchTrigger,
}

/// Why a batcher sent a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchTrigger {
    /// It reached the batcher's `batch_size`.
    Size,
    /// Its oldest message waited `batch_timeout`.
    Timeout,
    /// The pipeline is shutting down.
    Flush,
    /// Its messages are tried again: those that failed in an earlier attempt of the
    /// batch and, in an ordered pipeline, those that followed them in it.
    Retry,
}

impl BatchTrigger {
    /// Its name, as the `trigger` label of `longshore_batches_total` spells it.
    ///
    /// ```
    /// assert_eq!(longshore::BatchTrigger::Timeout.as_str(), "timeout");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            BatchTrigger::Size => "size",
            BatchTrigger::Timeout => "timeout",
            BatchTrigger::Flush => "flush",
            BatchTrigger::Retry => "retry",
        }
    }
}

/// A shared handler: keep an `Arc` to read its state while the pipeline runs it.
impl<H: Handler> Handler for std::sync::Arc<H> {
    type Item = H::Item;
    type Metadata = H::Metadata;

    fn handle_message(
        &self,
        message: &mut Message<Self::Item, Self::Metadata>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).handle_message(message)
    }

    fn handle_batch(
        &self,
        batch: &mut [Message<Self::Item, Self::Metadata>],
        info: &BatchInfo,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).handle_batch(batch, info)
    }

    fn prepare_messages(
        &self,
        messages: &mut [Message<Self::Item, Self::Metadata>],
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).prepare_messages(messages)
    }

    fn handle_failed(
        &self,
        messages: &mut [Message<Self::Item, Self::Metadata>],
    ) -> impl Future<Output = ()> + Send {
        (**self).handle_failed(messages)
    }

    fn handle_undecoded(
        &self,
        messages: &mut [Message<(), Self::Metadata>],
    ) -> impl Future<Output = ()> + Send {
        (**self).handle_undecoded(messages)
    }
}
