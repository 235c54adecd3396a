//! Errors of the Kafka connector.

/// The Kafka source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaSourceError {
    /// A setting is invalid; the error names it.
    #[error(transparent)]
    Config(#[from] longshore::BuildError),
    /// librdkafka refused the configuration or the subscription.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The consumer's poll thread could not start.
    #[error("cannot start the kafka poll thread: {0}")]
    Thread(#[from] std::io::Error),
}
