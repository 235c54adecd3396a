//! A service's settings file: the pipeline, the source, metrics and logging, in TOML, with
//! environment overrides; every error names the field.

use std::net::SocketAddr;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::LogFormat;
use crate::source::SourceSettings;
use crate::{BuildError, PipelineConfig};

/// Environment variables starting with this override the file: `__` separates the
/// levels, so `LONGSHORE_PIPELINE__PROCESSORS__CONCURRENCY=8` sets
/// `pipeline.processors.concurrency`. A variable without `__` (`LONGSHORE_CONFIG`) is no
/// override. Values are read as TOML (`8`, `true`, `"8"`,
/// `["a", "b"]`), or else taken as a string.
pub const ENV_PREFIX: &str = "LONGSHORE_";

/// A service's settings: `S` is the source's section, as its connector defines it; `A`
/// the service's own `[app]` section (none by default).
///
/// ```
/// use longshore::service::ServiceConfig;
///
/// #[derive(Debug, Default, serde::Deserialize)]
/// struct Source { queue: String }
/// impl longshore::source::SourceSettings for Source {}
///
/// let config: ServiceConfig<Source> = ServiceConfig::from_toml(
///     r#"
///     [pipeline]
///     name = "orders"
///     processors = { concurrency = 4 }
///
///     [source]
///     queue = "orders"
///     "#,
///     [("LONGSHORE_PIPELINE__PROCESSORS__CONCURRENCY", "8")],
/// ).unwrap();
/// assert_eq!(config.source.queue, "orders");
/// assert_eq!(config.pipeline.processors.concurrency(), 8);
///
/// let no_env: [(&str, &str); 0] = [];
/// let error = ServiceConfig::<Source>::from_toml("[pipeline]\nshutdown_deadline = 5", no_env).unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "invalid pipeline.shutdown_deadline: invalid type: integer `5`, expected a duration"
/// );
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceConfig<S, A = ()> {
    /// The pipeline's settings.
    pub pipeline: PipelineConfig,
    /// The source's settings.
    pub source: S,
    /// The service's own settings, the `[app]` section (a sink's address, say).
    pub app: A,
    /// Where the metrics and health endpoint listens.
    pub metrics: MetricsConfig,
    /// How the service logs.
    pub log: LogConfig,
}

/// The `[metrics]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served (default `0.0.0.0:9464`).
    pub addr: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 9464)),
        }
    }
}

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info,longshore=debug` (default `info`); `RUST_LOG`
    /// wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

impl<S, A> ServiceConfig<S, A>
where
    S: DeserializeOwned + Default + SourceSettings,
    A: DeserializeOwned + Default,
{
    /// Reads `path` (TOML; JSON if it ends in `.json`, as the Helm chart renders it),
    /// applies the `LONGSHORE_*` variables of the environment, checks the pipeline's
    /// settings.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the field: unreadable file (`config`), bad TOML, a value of
    /// the wrong type, an unknown field, or an invalid setting.
    pub fn load(path: &Path) -> Result<Self, BuildError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| BuildError::new("config", format!("cannot read {}: {error}", path.display())))?;
        if path.extension().is_some_and(|extension| extension == "json") {
            let table =
                serde_json::from_str(&text).map_err(|error| BuildError::new("config", error.to_string()))?;
            return Self::from_table(table, std::env::vars());
        }
        Self::from_toml(&text, std::env::vars())
    }

    /// As [`ServiceConfig::load`], from TOML text and the given environment.
    ///
    /// # Errors
    ///
    /// As [`ServiceConfig::load`].
    pub fn from_toml<K, V>(text: &str, env: impl IntoIterator<Item = (K, V)>) -> Result<Self, BuildError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let table: toml::Table = text
            .parse()
            .map_err(|error: toml::de::Error| BuildError::new("config", error.message().to_owned()))?;
        Self::from_table(table, env)
    }

    fn from_table<K, V>(
        mut table: toml::Table,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, BuildError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        for (key, value) in env {
            // Only section paths: LONGSHORE_CONFIG and the like are not settings.
            if let Some(path) = key
                .as_ref()
                .strip_prefix(ENV_PREFIX)
                .filter(|path| path.contains("__"))
            {
                override_value(&mut table, path, value.as_ref())?;
            }
        }
        let config: Self = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|error| {
            let path = error.path().to_string();
            // The path is given once; the deserializer's own location note is left out.
            let reason = error.into_inner().to_string();
            let reason = reason.lines().next().unwrap_or_default().to_owned();
            BuildError::new(if path == "." { "config".to_owned() } else { path }, reason)
        })?;
        config
            .pipeline
            .validate()
            .map_err(|error| error.within("pipeline"))?;
        config.source.validate()?;
        Ok(config)
    }
}

/// Sets `path` (`PIPELINE__PROCESSORS__CONCURRENCY`) in `table` to `raw`.
fn override_value(table: &mut toml::Table, path: &str, raw: &str) -> Result<(), BuildError> {
    let keys: Vec<String> = path.split("__").map(str::to_lowercase).collect();
    let field = keys.join(".");
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut parsed| parsed.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let (last, parents) = keys.split_last().expect("split yields at least one key");
    let mut at = table;
    for key in parents {
        let entry = at
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry.as_table_mut().ok_or_else(|| {
            BuildError::new(
                field.clone(),
                format!("{ENV_PREFIX}{path} goes inside `{key}`, which is not a table"),
            )
        })?;
    }
    at.insert(last.clone(), value);
    Ok(())
}
