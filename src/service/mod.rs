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
//! impl longshore::source::SourceSettings for Source {}
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

pub use crate::source::SourceSettings;
pub use cli::{LogFormat, ServiceArgs};
pub use config::{ControlConfig, LogConfig, MetricsConfig, ServiceConfig, ENV_PREFIX};

/// The exit of a service's `main`: `error: ` and the error's message (with its causes)
/// on stderr and a failure status, instead of the `Debug` form Rust prints for a
/// returned error (`invalid source.wait_time: must be at most 20s, got 30s`, not
/// `BuildError { field: .. }`).
///
/// ```
/// use std::process::ExitCode;
///
/// fn run() -> Result<(), longshore::BoxError> {
///     Err(longshore::BuildError::new("source.wait_time", "must be at most 20s, got 30s").into())
/// }
///
/// // A service's `fn main() -> ExitCode` ends with this: here it prints
/// // "error: invalid source.wait_time: must be at most 20s, got 30s".
/// let code = longshore::service::exit(run());
/// assert_eq!(code, ExitCode::FAILURE);
/// ```
pub fn exit(outcome: Result<(), crate::BoxError>) -> std::process::ExitCode {
    let Err(error) = outcome else {
        return std::process::ExitCode::SUCCESS;
    };
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_message = inner.to_string();
        // A cause already spelled out in its error's message is not repeated.
        if !message.contains(&inner_message) {
            message = format!("{message}: {inner_message}");
        }
        cause = inner.source();
    }
    eprintln!("error: {message}");
    std::process::ExitCode::FAILURE
}
