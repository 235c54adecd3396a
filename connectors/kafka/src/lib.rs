//! # longshore-kafka
//!
//! A Kafka source for [longshore]: a consumer group read on demand, offsets
//! committed only over the contiguous acknowledged prefix of each partition, in-flight
//! messages drained on revoke, per-partition or per-key order, and a dead-letter topic.
//!
//! ```no_run
//! use longshore::{BoxError, Handler, Message, Pipeline, Processors, RetryPolicy};
//! use longshore_kafka::{KafkaConfig, KafkaDeadLetter, KafkaRecord, KafkaSource, Ordering};
//!
//! struct Print;
//! impl Handler for Print {
//!     type Item = KafkaRecord;
//!     async fn handle_message(&self, message: &mut Message<KafkaRecord>) -> Result<(), BoxError> {
//!         println!("{:?}", message.data().payload_str());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), BoxError> {
//! let config = KafkaConfig::new("127.0.0.1:9092", "printer", ["events"]).ordering(Ordering::Key);
//! let pipeline = Pipeline::builder(KafkaSource::new(config)?, Print)
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
mod offsets;
mod partitions;
mod poller;
mod record;
mod slot;
mod source;
mod status;

pub use config::{KafkaConfig, Ordering};
pub use dead_letter::KafkaDeadLetter;
pub use error::KafkaSourceError;
pub use lag::{KafkaLag, PartitionLag};
pub use record::{KafkaHeader, KafkaRecord};
pub use source::{KafkaAcknowledger, KafkaSource};
pub use status::{KafkaStatus, PartitionStatus};
