//! A service's settings file: the pipeline, the source, metrics, control and logging, in TOML, with
//! environment overrides; every error names the field.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::LogFormat;
use crate::control::ControlSurface;
use crate::metrics::MetricsServer;
use crate::source::SourceSettings;
use crate::{BuildError, PipelineConfig};

/// Environment variables starting with this override the file: `__` separates the
/// levels, so `LONGSHORE_PIPELINE__PROCESSORS__CONCURRENCY=8` sets
/// `pipeline.processors.concurrency`. A variable without `__` (`LONGSHORE_CONFIG`) is no
/// override. A value is a string, as the environment holds it (one wholly in double
/// quotes, `"8"`, is read as a TOML string: what it quotes), unless its field takes
/// something else: then it is read as TOML (`8`,
/// `true`, `["a", "b"]`, `{ a = 1 }`). So
/// `LONGSHORE_APP__QUEUE=12345` sets a string field to `"12345"` and
/// `LONGSHORE_PIPELINE__PROCESSORS__CONCURRENCY=8` a number field to `8`.
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
    /// The control surface (off by default).
    pub control: ControlConfig,
    /// How the service logs.
    pub log: LogConfig,
    /// Spans of every message, exported over OTLP (off by default; exporting needs the
    /// feature `otlp`).
    pub tracing: crate::trace::TracingConfig,
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

/// The `[control]` section: the [`ControlSurface`] on the metrics server, off unless
/// `enabled`. Its token comes from `token_file` (a mounted Secret: the Helm chart's way)
/// or `token` (`LONGSHORE_CONTROL__TOKEN`, from a Secret), never from the file itself in
/// production; either must be set when it is enabled.
///
/// ```toml
/// [control]
/// enabled = true
/// token_file = "/var/run/secrets/longshore/control/token"
/// ```
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ControlConfig {
    /// Serve `/control` (default `false`).
    pub enabled: bool,
    /// A file holding the token.
    pub token_file: Option<PathBuf>,
    /// The token itself.
    pub token: Option<String>,
}

impl fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token.
        f.debug_struct("ControlConfig")
            .field("enabled", &self.enabled)
            .field("token_file", &self.token_file)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ControlConfig {
    /// The surface to serve, `None` when it is not enabled; the token file is read here.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] when it is enabled with no token, both token settings are set, or
    /// the token cannot be read or is too short.
    pub fn surface(&self) -> Result<Option<ControlSurface>, BuildError> {
        if !self.enabled {
            return Ok(None);
        }
        self.check()?;
        match (&self.token, &self.token_file) {
            (Some(token), _) => ControlSurface::new(token).map(Some),
            (None, Some(file)) => ControlSurface::from_token_file(file).map(Some),
            (None, None) => unreachable!("checked"),
        }
    }

    /// Checks the settings without reading the token file.
    fn check(&self) -> Result<(), BuildError> {
        match (self.enabled, &self.token, &self.token_file) {
            (true, None, None) => Err(BuildError::new(
                "control",
                "enabled with no token: set control.token_file, or control.token (LONGSHORE_CONTROL__TOKEN)",
            )),
            (_, Some(_), Some(_)) => Err(BuildError::new(
                "control",
                "control.token and control.token_file are both set: set one",
            )),
            _ => Ok(()),
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
            return Self::from_table(json_table(&text)?, std::env::vars());
        }
        Self::from_toml(&text, std::env::vars())
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `metrics.addr`, and `/control` too
    /// when `[control]` enables it: then put each pipeline on it with
    /// [`MetricsServer::add_pipeline`].
    ///
    /// # Errors
    ///
    /// A [`BuildError`] from `[control]` (see [`ControlConfig::surface`]), or a
    /// [`BindError`](crate::metrics::BindError) when the address cannot be bound.
    pub async fn serve_metrics(&self) -> Result<MetricsServer, crate::BoxError> {
        let mut server = MetricsServer::builder(self.metrics.addr);
        if let Some(surface) = self.control.surface()? {
            server = server.control(surface);
        }
        Ok(server.bind().await?)
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

    fn from_table<K, V>(table: toml::Table, env: impl IntoIterator<Item = (K, V)>) -> Result<Self, BuildError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        // Only section paths: LONGSHORE_CONFIG and the like are not settings.
        let overrides: Vec<Override> = env
            .into_iter()
            .filter_map(|(key, value)| {
                let path = key.as_ref().strip_prefix(ENV_PREFIX)?;
                path.contains("__").then(|| Override::new(path, value.as_ref()))
            })
            .collect();
        // Each value starts as a string; one whose field refuses a string is read as TOML
        // instead, and the file read again: at most once per override.
        let mut typed = vec![false; overrides.len()];
        let config: Self = loop {
            let mut layered = table.clone();
            for (value, &typed) in overrides.iter().zip(&typed) {
                value.apply(&mut layered, typed)?;
            }
            let error = match serde_path_to_error::deserialize(toml::Value::Table(layered)) {
                Ok(config) => break config,
                Err(error) => error,
            };
            let path = error.path().to_string();
            let retry = overrides
                .iter()
                .zip(&typed)
                .position(|(value, &typed)| !typed && value.covers(&path) && value.parses_as_toml());
            match retry {
                Some(index) => typed[index] = true,
                None => {
                    // The path is given once; the deserializer's own location note is left out.
                    let reason = error.into_inner().to_string();
                    let reason = reason.lines().next().unwrap_or_default().to_owned();
                    return Err(BuildError::new(
                        if path == "." { "config".to_owned() } else { path },
                        reason,
                    ));
                }
            }
        };
        config
            .pipeline
            .validate()
            .map_err(|error| error.within("pipeline"))?;
        config.source.validate()?;
        config.control.check()?;
        if config.tracing.enabled && !cfg!(feature = "otlp") {
            return Err(BuildError::new(
                "tracing.enabled",
                "this service was built without longshore's feature `otlp`, which exports spans",
            ));
        }
        Ok(config)
    }
}

/// One `LONGSHORE_*` variable: the field it sets and its raw value.
struct Override {
    /// The variable's path, as written (`PIPELINE__PROCESSORS__CONCURRENCY`).
    path: String,
    /// The field's keys, in the file's terms (`pipeline`, `processors`, `concurrency`).
    keys: Vec<String>,
    raw: String,
}

impl Override {
    fn new(path: &str, raw: &str) -> Self {
        Override {
            path: path.to_owned(),
            keys: path.split("__").map(str::to_lowercase).collect(),
            raw: raw.to_owned(),
        }
    }

    fn field(&self) -> String {
        self.keys.join(".")
    }

    /// Whether an error at `path` (`source.topics[0]`) is about this override's field.
    fn covers(&self, path: &str) -> bool {
        let field = self.field();
        path.strip_prefix(&field)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    }

    /// The value read as TOML: one value and nothing else (no comment, no second key).
    fn as_toml(&self) -> Option<toml::Value> {
        let mut parsed = format!("v = {}", self.raw).parse::<toml::Table>().ok()?;
        let value = parsed.remove("v")?;
        let alone = parsed.is_empty() && !self.raw.contains('#');
        alone.then_some(value)
    }

    /// Whether it is written as a TOML string in double quotes, and nothing more.
    fn is_quoted(&self) -> bool {
        let raw = self.raw.trim();
        raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"')
    }

    /// Whether reading it as TOML makes it something other than the string it is.
    fn parses_as_toml(&self) -> bool {
        self.as_toml().is_some_and(|value| !value.is_str())
    }

    /// Sets the field in `table`: to the string (one in double quotes, `"8"`, is read as
    /// a TOML string: what it quotes), or (`typed`) to its TOML value.
    fn apply(&self, table: &mut toml::Table, typed: bool) -> Result<(), BuildError> {
        let value = match self.as_toml() {
            Some(value) if typed || (value.is_str() && self.is_quoted()) => value,
            _ => toml::Value::String(self.raw.clone()),
        };
        let (last, parents) = self.keys.split_last().expect("split yields at least one key");
        let mut at = table;
        for key in parents {
            let entry = at
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = entry.as_table_mut().ok_or_else(|| {
                BuildError::new(
                    self.field(),
                    format!(
                        "{ENV_PREFIX}{} goes inside `{key}`, which is not a table",
                        self.path
                    ),
                )
            })?;
        }
        at.insert(last.clone(), value);
        Ok(())
    }
}

/// A JSON settings file as a table: a `null` is an unset field (its default), as JSON
/// writers and the Helm chart's `toJson` of an empty value produce; TOML has no null.
fn json_table(text: &str) -> Result<toml::Table, BuildError> {
    fn strip_nulls(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.retain(|_, value| !value.is_null());
                map.values_mut().for_each(strip_nulls);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
            _ => {}
        }
    }
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| BuildError::new("config", error.to_string()))?;
    strip_nulls(&mut value);
    serde_json::from_value(value).map_err(|error| BuildError::new("config", error.to_string()))
}
