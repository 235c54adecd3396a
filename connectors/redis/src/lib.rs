//! # longshore-redis
//!
//! A Redis Streams source for [longshore]: one consumer of a consumer group, reading
//! only what the pipeline asks for (`XREADGROUP ... COUNT demand`), acknowledging each
//! entry after its last stage (`XACK`), taking back its own unacknowledged entries when
//! it starts again under its name and claiming a dead consumer's (`XAUTOCLAIM`) once
//! idle; the stream's length and the group's pending count and lag as metrics.
//!
//! Each message's data is one field of the entry (`payload` by default), or what the
//! pipeline's decode step makes of it; its [`RedisStreamMetadata`] has the id and every field.
//!
//! ```no_run
//! use longshore::decode::Json;
//! use longshore::{BoxError, Handler, Pipeline, Processors, RetryPolicy};
//! use longshore_redis::{RedisStreamMessage, RedisStreamMetadata, RedisStreamConfig, RedisStreamSource};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: u64 }
//!
//! struct Bill;
//! impl Handler for Bill {
//!     type Item = Order;
//!     type Metadata = RedisStreamMetadata;
//!     async fn handle_message(&self, message: &mut RedisStreamMessage<Order>) -> Result<(), BoxError> {
//!         println!("order {} (entry {})", message.data().id, message.metadata().id());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), BoxError> {
//! let config = RedisStreamConfig::new("redis://cache:6379", "orders", "billing");
//! let pipeline = Pipeline::builder(RedisStreamSource::connect(config).await?, Bill)
//!     .decode(Json::new())
//!     .processors(Processors::new(8))
//!     .retry(RetryPolicy::new(5))
//!     .start()?;
//! pipeline.run_until_signal().await?;
//! # Ok(()) }
//! ```
//!
//! [longshore]: https://docs.rs/longshore

mod acknowledge;
mod config;
mod error;
mod metadata;
mod metrics;
mod source;
mod stream;

pub use acknowledge::RedisStreamAcknowledger;
pub use bytes::Bytes;
pub use config::RedisStreamConfig;
pub use error::RedisStreamError;
pub use metadata::{RedisStreamMessage, RedisStreamMetadata};
pub use redis;
pub use source::RedisStreamSource;
