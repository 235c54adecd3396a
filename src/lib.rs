//! # longshore
//!
//! Demand-driven, acknowledged consumers of message queues, in the spirit of Elixir's
//! Broadway: implement [`Handler`], pick a [`Source`], and get concurrent processing,
//! batching, acknowledgement and graceful shutdown, with memory bounded by demand.
//!
//! ```text
//!  source ──▶ processors (N tasks: handle_message) ──▶ batchers (size / timeout / key)
//!    ▲            partition_by keeps one key in order        │ handle_batch
//!    │                                                       ▼
//!    └───────────── acknowledger (once per message: successful or failed) ◀──┘
//! ```
//!
//! ## Guarantees
//!
//! - **Demand-driven.** A source is asked for exactly as many messages as the pipeline
//!   has room for, and never when it has none: at most `max_in_flight` messages are
//!   received and unacknowledged at any time, whatever the backlog.
//! - **Exactly-once acknowledgement.** Every message received is acknowledged once, as
//!   successful or failed, after its last stage: its processor if it goes to no batcher,
//!   else its batch processor; or, at shutdown, released unacknowledged if it waited for
//!   a retry. Messages are moved, never cloned, so no path can ack twice.
//! - **Failure isolation.** An error or a panic in a handler fails the messages it was
//!   handling, never the stage. Failed messages skip later stages, pass through
//!   [`Handler::handle_failed`] once, and are acknowledged as failed.
//! - **Graceful shutdown.** [`Pipeline::shutdown`] stops demand, drains processors,
//!   flushes partial batches and acknowledges, within a deadline. What is not finished
//!   by then is not acknowledged, so the broker redelivers it: at-least-once.
//!
//! ## Modules
//!
//! | item | what it is |
//! | --- | --- |
//! | [`Message`] | data, the source's metadata, and the pipeline's bookkeeping (status, batcher, batch key, attempt) |
//! | [`decode`] | the decode step: the source's bytes into the handler's type, once (`Json` built in) |
//! | [`Handler`] | the trait a service implements |
//! | [`Source`], [`Acknowledger`] | the connector side: produce on demand, acknowledge |
//! | [`Pipeline`], [`PipelineBuilder`], [`Processors`], [`Batcher`] | configure, start, stop |
//! | [`source::memory`] | the in-memory source: no broker needed |
//! | [`testing`] | push data through a real topology in unit tests; [`testing::conformance`], the source contract as checks |
//! | [`PauseSwitch`], [`Batching`], [`RateLimits`], [`Scaling`], [`Change`] | change a running pipeline: pause, batch sizes and timeouts, rate limits, stage sizes; the record of changes |
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use longshore::source::memory::MemorySource;
//! use longshore::{BatchInfo, Batcher, BoxError, Handler, Message, Pipeline, Processors};
//!
//! struct Sum;
//!
//! impl Handler for Sum {
//!     type Item = u64;
//!     type Metadata = ();
//!
//!     async fn handle_message(&self, message: &mut Message<u64>) -> Result<(), BoxError> {
//!         if *message.data() % 1000 == 999 {
//!             return Err("unlucky number".into());
//!         }
//!         message.put_batch_key(*message.data() % 2);
//!         Ok(())
//!     }
//!
//!     async fn handle_batch(&self, batch: &mut [Message<u64>], info: &BatchInfo) -> Result<(), BoxError> {
//!         let sum: u64 = batch.iter().map(|m| *m.data()).sum();
//!         tracing::debug!(key = %info.batch_key, sum, "batch");
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pipeline = Pipeline::builder(MemorySource::from_iter(0..10_000u64), Sum)
//!     .processors(Processors::new(4))
//!     .batcher(Batcher::new("sum").batch_size(100).batch_timeout(Duration::from_millis(50)))
//!     .start()?;
//! let summary = pipeline.wait().await?;
//! assert_eq!((summary.successful, summary.failed), (9_990, 10));
//! # Ok(())
//! # }
//! ```

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod control;
pub mod decode;
mod error;
mod failure;
mod handler;
mod message;
pub mod metrics;
mod pipeline;
mod receipt;
#[cfg(feature = "service")]
pub mod service;
pub mod source;
pub mod testing;
mod topology;
pub mod trace;

pub use control::batching::Batching;
pub use control::changes::Change;
pub use control::pause::PauseSwitch;
pub use control::scaling::{Scaling, MAX_TASKS};
pub use error::{BoxError, BuildError, DeadlineExceeded, PipelineError};
pub use failure::dead_letter::DeadLetter;
pub use failure::rate_limit::{RateLimit, RateLimits};
pub use failure::retry::{Permanent, RetryAfter, RetryPolicy};
pub use handler::{BatchInfo, BatchTrigger, Handler};
pub use message::{BatchKey, Failure, FailureKind, Message, Status};
pub use pipeline::config::{Batcher, PipelineConfig, Processors};
pub use pipeline::stall::StallWatch;
pub use pipeline::{shutdown_signal, Pipeline, PipelineBuilder, Stats, StatsHandle, Summary, HAND_BACK_TIME};
pub use source::{Acknowledger, Source};
