//! The flags every service binary takes, and its logging.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::DeserializeOwned;

use super::ServiceConfig;
use crate::source::SourceSettings;
use crate::BuildError;

/// The standard flags of a longshore service; flatten them into the binary's own.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct ServiceArgs {
    /// The settings file (TOML). Without it, the defaults and the LONGSHORE_* variables.
    #[arg(long, env = "LONGSHORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where /metrics, /healthz and /readyz listen; overrides `metrics.addr`.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// `text` or `json`; overrides `log.format`.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How a service writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl ServiceArgs {
    /// The settings: the `--config` file (or the defaults) with the environment's
    /// overrides, then the flags.
    ///
    /// # Errors
    ///
    /// As [`ServiceConfig::load`].
    pub fn load<S, A>(&self) -> Result<ServiceConfig<S, A>, BuildError>
    where
        S: DeserializeOwned + Default + SourceSettings,
        A: DeserializeOwned + Default,
    {
        let mut config = match &self.config {
            Some(path) => ServiceConfig::load(path)?,
            None => ServiceConfig::from_toml("", std::env::vars())?,
        };
        if let Some(addr) = self.metrics_addr {
            config.metrics.addr = addr;
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        Ok(config)
    }

    /// Installs the global `tracing` subscriber the settings ask for (`RUST_LOG` wins
    /// over `log.filter`). Does nothing if one is installed already.
    pub fn init_logging<S, A>(&self, config: &ServiceConfig<S, A>) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        let _ = match config.log.format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().try_init(),
        };
    }
}
