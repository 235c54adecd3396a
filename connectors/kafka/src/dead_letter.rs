//! A dead-letter topic: records that failed their last attempt, with why and where from.

use std::time::Duration;

use longshore::{BoxError, DeadLetter, Message};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::config::KafkaConfig;
use crate::error::KafkaSourceError;
use crate::metadata::KafkaMetadata;

/// Writes finally failed records to a dead-letter topic, with the original key, payload
/// and headers, plus headers saying why and where from:
///
/// | header | value |
/// | --- | --- |
/// | `longshore.reason` | the failure, as text |
/// | `longshore.attempts` | how many attempts were made |
/// | `longshore.topic`, `longshore.partition`, `longshore.offset` | where the record was read |
///
/// A write counts once the broker acknowledged it (`acks=all`); until then the pipeline
/// retries it and does not commit past the record.
pub struct KafkaDeadLetter {
    producer: FutureProducer,
    topic: String,
}

impl KafkaDeadLetter {
    /// Writes to `topic` on the cluster at `bootstrap_servers`.
    ///
    /// # Errors
    ///
    /// librdkafka refusing the configuration.
    pub fn new(bootstrap_servers: &str, topic: impl Into<String>) -> Result<Self, KafkaSourceError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap_servers);
        KafkaDeadLetter::with_config(config, topic)
    }

    /// Writes to `topic` on the source's own cluster, with its connection settings: the
    /// bootstrap servers and every `security.*`, `ssl.*`, `sasl.*`, `socket.*` and
    /// `client.*` property of its `properties`, so that on a secured cluster the
    /// dead-letter producer logs in as the consumer does.
    ///
    /// ```
    /// use longshore_kafka::{KafkaConfig, KafkaDeadLetter};
    ///
    /// let source = KafkaConfig::new("127.0.0.1:9093", "orders-service", ["orders"])
    ///     .property("security.protocol", "sasl_plaintext")
    ///     .property("sasl.mechanism", "SCRAM-SHA-256")
    ///     .property("sasl.username", "orders")
    ///     .property("sasl.password", "secret");
    /// let dead_letter = KafkaDeadLetter::for_source(&source, "orders.dlq").unwrap();
    /// # drop(dead_letter);
    /// ```
    ///
    /// # Errors
    ///
    /// librdkafka refusing the configuration.
    pub fn for_source(source: &KafkaConfig, topic: impl Into<String>) -> Result<Self, KafkaSourceError> {
        KafkaDeadLetter::with_config(source.connection_config(), topic)
    }

    /// Writes to `topic` with a producer made from `config` (TLS, SASL, ...).
    ///
    /// # Errors
    ///
    /// librdkafka refusing the configuration.
    pub fn with_config(mut config: ClientConfig, topic: impl Into<String>) -> Result<Self, KafkaSourceError> {
        config.set("acks", "all").set("enable.idempotence", "true");
        Ok(KafkaDeadLetter {
            producer: config.create()?,
            topic: topic.into(),
        })
    }
}

impl std::fmt::Debug for KafkaDeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDeadLetter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetter<KafkaMetadata> for KafkaDeadLetter {
    async fn dead_letter(&self, messages: &mut [Message<(), KafkaMetadata>]) -> Result<(), BoxError> {
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages.iter() {
            let record = message.metadata();
            let (reason, attempts) = (message.status().to_string(), message.attempt().to_string());
            let (partition, offset) = (record.partition().to_string(), record.offset().to_string());
            // The message span's context, when traced, in place of the producer's.
            let trace = message.trace_headers();
            let mut headers = OwnedHeaders::new_with_capacity(record.headers().len() + 5 + trace.len());
            for (name, value) in record.headers() {
                if trace.iter().any(|(traced, _)| traced == name) {
                    continue;
                }
                headers = headers.insert(Header {
                    key: name,
                    value: value.as_ref(),
                });
            }
            for (key, value) in &trace {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            for (key, value) in [
                ("longshore.reason", reason.as_str()),
                ("longshore.attempts", attempts.as_str()),
                ("longshore.topic", record.topic()),
                ("longshore.partition", partition.as_str()),
                ("longshore.offset", offset.as_str()),
            ] {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut out = FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = record.key() {
                out = out.key(key);
            }
            if let Some(payload) = record.payload() {
                out = out.payload(payload);
            }
            let delivery = self.producer.send(out, Duration::from_secs(30));
            deliveries.push(delivery);
        }
        // Enqueued together, awaited together: one round trip for the group.
        for delivery in futures_join(deliveries).await {
            delivery.map_err(|(error, _)| Box::new(error) as BoxError)?;
        }
        Ok(())
    }
}

/// Awaits every future, in order.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut outputs = Vec::with_capacity(futures.len());
    for future in futures {
        outputs.push(future.await);
    }
    outputs
}
