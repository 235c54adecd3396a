//! What every service binary does the same way (feature `service`): read its settings from
//! a TOML file with environment overrides, take the standard flags, set up logging.
//!
//! ```no_run
//! use clap::Parser;
//! use longshore::service::{ServiceArgs, ServiceConfig};
//!
//! #[derive(Debug, Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     service: ServiceArgs,
//! }
//!
//! #[derive(Debug, Default, serde::Deserialize)]
//! struct Source { queue: String }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let args = Args::parse();
//! let config: ServiceConfig<Source> = args.service.load()?; // --config, LONGSHORE_* overrides
//! args.service.init_logging(&config);
//! // Pipeline::builder(source_from(config.source), handler).config(config.pipeline) ...
//! # Ok(()) }
//! ```

mod cli;
mod config;

pub use cli::{LogFormat, ServiceArgs};
pub use config::{LogConfig, MetricsConfig, ServiceConfig, ENV_PREFIX};
