//! # longshore-kafka
//!
//! A Kafka source for [longshore]: a consumer group read on demand, offsets
//! committed only over the contiguous acknowledged prefix of each partition, in-flight
//! messages drained on revoke, per-partition or per-key order, and a dead-letter topic.
//!
//! Each message's data is the record's payload ([`Bytes`]), or what the pipeline's decode
//! step makes of it; its [`KafkaMetadata`] tells the topic, partition, offset, key,
//! headers and timestamp, and keeps the original bytes for the dead-letter topic.
//!
//! ```no_run
//! use longshore::decode::Json;
//! use longshore::{BoxError, Handler, Pipeline, Processors, RetryPolicy};
//! use longshore_kafka::{KafkaConfig, KafkaDeadLetter, KafkaMessage, KafkaMetadata, KafkaSource, Ordering};
//!
//! #[derive(serde::Deserialize)]
//! struct Event { kind: String }
//!
//! struct Print;
//! impl Handler for Print {
//!     type Item = Event;
//!     type Metadata = KafkaMetadata;
//!     async fn handle_message(&self, message: &mut KafkaMessage<Event>) -> Result<(), BoxError> {
//!         let record = message.metadata();
//!         println!("{}/{}@{}: {}", record.topic(), record.partition(), record.offset(), message.data().kind);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), BoxError> {
//! let config = KafkaConfig::new("127.0.0.1:9092", "printer", ["events"]).ordering(Ordering::Key);
//! let pipeline = Pipeline::builder(KafkaSource::new(config)?, Print)
//!     .decode(Json::new())
//!     .processors(Processors::new(16))
//!     .retry(RetryPolicy::new(5))
//!     .dead_letter(KafkaDeadLetter::new("127.0.0.1:9092", "events.dlq")?)
//!     .start()?;
//! pipeline.run_until_signal().await?;
//! # Ok(()) }
//! ```

mod assignment;
mod client_errors;
mod config;
mod dead_letter;
mod error;
mod lag;
mod metadata;
mod offsets;
mod panel;
mod partitions;
mod pause;
mod poller;
mod slot;
mod source;
mod status;

pub use bytes::Bytes;
pub use config::{KafkaConfig, Ordering};
pub use dead_letter::KafkaDeadLetter;
pub use error::KafkaSourceError;
pub use lag::{KafkaLag, PartitionLag};
pub use metadata::{KafkaHeader, KafkaMessage, KafkaMetadata};
pub use pause::KafkaPause;
pub use source::{KafkaAcknowledger, KafkaSource};
pub use status::{KafkaStatus, PartitionStatus};
