//! # longshore-file
//!
//! A file source for [longshore]: newline-delimited or CSV records read only as the
//! pipeline asks for them, each acknowledged once, and a checkpoint file recording the
//! position before which every record is acknowledged, so that a restart (or a
//! `kill -9`) resumes where the work stopped, the way a Kafka consumer resumes at its
//! committed offset. Optionally followed as it grows, like `tail -f`.
//!
//! Each message's data is the record's bytes ([`Bytes`]), or what the pipeline's decode
//! step makes of them ([`Csv`] by the file's header, `longshore::decode::Json` for
//! newline-delimited JSON); its [`FileMetadata`] tells the line and byte offset.
//!
//! ```no_run
//! use longshore::decode::Json;
//! use longshore::{BoxError, Handler, Pipeline, Processors};
//! use longshore_file::{FileConfig, FileMessage, FileMetadata, FileSource};
//!
//! #[derive(serde::Deserialize)]
//! struct Event { kind: String }
//!
//! struct Print;
//! impl Handler for Print {
//!     type Item = Event;
//!     type Metadata = FileMetadata;
//!     async fn handle_message(&self, message: &mut FileMessage<Event>) -> Result<(), BoxError> {
//!         println!("line {}: {}", message.metadata().line(), message.data().kind);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), BoxError> {
//! let source = FileSource::open(FileConfig::new("events.ndjson")).await?;
//! let pipeline = Pipeline::builder(source, Print)
//!     .decode(Json::new())
//!     .processors(Processors::new(4))
//!     .start()?;
//! pipeline.wait().await?;
//! # Ok(()) }
//! ```
//!
//! [longshore]: https://docs.rs/longshore

mod checkpoint;
mod config;
mod decode;
mod error;
mod metadata;
mod metrics;
mod progress;
mod reader;
mod source;

pub use bytes::Bytes;
pub use config::{FileConfig, Format};
pub use csv;
pub use decode::Csv;
pub use error::FileSourceError;
pub use metadata::{FileMessage, FileMetadata};
pub use source::{FileAcknowledger, FileSource};
