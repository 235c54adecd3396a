//! An explicit dead-letter queue: the pipeline's [`DeadLetter`] destination for SQS
//! messages, with headers saying why and where from.

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use longshore::{BoxError, DeadLetter};

use crate::metadata::{SqsMessage, SqsMetadata};
use crate::queue::MAX_BATCH;

/// SQS takes at most this many message attributes per message.
const MAX_ATTRIBUTES: usize = 10;

/// Writes messages that failed their last attempt to another SQS queue, with the
/// message attributes `longshore.reason`, `longshore.attempts`,
/// `longshore.source_queue` and `longshore.message_id` (and as many of the message's
/// own as SQS's limit of 10 leaves room for). The source deletes what it wrote (see
/// [`FinalFailure`](crate::FinalFailure)): one dead letter per poison message.
///
/// ```no_run
/// # async fn example() -> Result<(), longshore::BoxError> {
/// use longshore_sqs::{SqsConfig, SqsDeadLetter, SqsSource};
///
/// let config = SqsConfig::new("orders").region("eu-west-1");
/// // The dead-letter queue is reached as the source is: same region, same endpoint.
/// let dead_letter = SqsDeadLetter::connect_beside(&config, "orders-dlq").await?;
/// let source = SqsSource::connect(config).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqsDeadLetter {
    client: Client,
    url: String,
    fifo: bool,
}

impl SqsDeadLetter {
    /// Writes to the queue `queue` (a URL or a name), with the SDK's standard chain
    /// and an optional endpoint override.
    ///
    /// # Errors
    ///
    /// The queue cannot be found.
    pub async fn connect(queue: &str, endpoint_url: Option<&str>) -> Result<Self, crate::SqsSourceError> {
        let mut config = crate::SqsConfig::new(queue);
        config.endpoint_url = endpoint_url.map(str::to_owned);
        Self::from_config(&config).await
    }

    /// Writes to the queue `queue` (a URL or a name), reached with the connection settings
    /// of the source configured by `source` (its region and endpoint), so that a
    /// settings file names them once, in `[source]`.
    ///
    /// # Errors
    ///
    /// The queue cannot be found.
    pub async fn connect_beside(
        source: &crate::SqsConfig,
        queue: &str,
    ) -> Result<Self, crate::SqsSourceError> {
        let mut config = crate::SqsConfig::new(queue);
        config.region.clone_from(&source.region);
        config.endpoint_url.clone_from(&source.endpoint_url);
        Self::from_config(&config).await
    }

    async fn from_config(config: &crate::SqsConfig) -> Result<Self, crate::SqsSourceError> {
        let (client, url) = crate::queue::client_and_url(config).await?;
        Ok(SqsDeadLetter {
            fifo: url.ends_with(".fifo"),
            client,
            url,
        })
    }

    fn entry(&self, id: usize, message: &SqsMessage<()>) -> SendMessageBatchRequestEntry {
        let data = message.metadata();
        let string = |value: String| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .expect("data type is set")
        };
        let mut attributes = vec![
            (
                "longshore.reason".to_owned(),
                string(message.status().to_string()),
            ),
            (
                "longshore.attempts".to_owned(),
                string(message.attempt().to_string()),
            ),
            (
                "longshore.source_queue".to_owned(),
                string(data.queue.to_string()),
            ),
            ("longshore.message_id".to_owned(), string(data.message_id.clone())),
        ];
        // The message span's context, when traced, in place of the producer's: its
        // `traceparent` first, then the producer's own attributes, then `tracestate` and
        // `baggage` as room is left (SQS takes 10).
        let trace = message.trace_headers();
        let traced = |name: &str| trace.iter().any(|(traced, _)| *traced == name);
        let mut own: Vec<_> = data
            .message_attributes
            .iter()
            .filter(|(name, _)| !traced(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        own.sort_by(|a, b| a.0.cmp(&b.0));
        let (parent, rest): (Vec<_>, Vec<_>) = trace
            .iter()
            .map(|(name, value)| ((*name).to_owned(), string(value.clone())))
            .partition(|(name, _)| name == "traceparent");
        let wanted: Vec<_> = parent.into_iter().chain(own).chain(rest).collect();
        let room = MAX_ATTRIBUTES - attributes.len();
        if wanted.len() > room {
            let dropped: Vec<&str> = wanted[room..].iter().map(|(name, _)| name.as_str()).collect();
            tracing::warn!(message_id = %data.message_id, ?dropped, "message attributes over SQS's limit left out of the dead letter");
        }
        attributes.extend(wanted.into_iter().take(room));
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(id.to_string())
            .message_body(data.body())
            .set_message_attributes(Some(attributes.into_iter().collect()));
        if self.fifo {
            entry = entry
                .message_group_id(data.group_id().unwrap_or("longshore"))
                .message_deduplication_id(&data.message_id);
        }
        entry.build().expect("id and body are set")
    }
}

impl DeadLetter<SqsMetadata> for SqsDeadLetter {
    async fn dead_letter(&self, messages: &mut [SqsMessage<()>]) -> Result<(), BoxError> {
        for (chunk_index, chunk) in messages.chunks(MAX_BATCH).enumerate() {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(id, message)| self.entry(id, message))
                .collect();
            let sent = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(aws_sdk_sqs::Error::from)?;
            if let Some(failure) = sent.failed.first() {
                return Err(format!(
                    "dead-letter queue refused {} of {} messages (batch {chunk_index}): {} {:?}",
                    sent.failed.len(),
                    chunk.len(),
                    failure.code,
                    failure.message
                )
                .into());
            }
        }
        Ok(())
    }
}
