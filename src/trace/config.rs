//! The `[tracing]` settings of a service: read whether or not the feature `otlp` is on,
//! so that a settings file means the same to every build of a service.

use std::time::Duration;

use serde::Deserialize;

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum OtlpProtocol {
    /// OTLP over HTTP, protobuf bodies (port 4318).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP over gRPC (port 4317).
    #[serde(rename = "grpc")]
    Grpc,
}

/// The `[tracing]` section of a service: spans of every message and batch, exported over
/// OTLP (off by default). Unset fields follow the standard `OTEL_*` variables
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`), then OTLP's defaults.
///
/// ```toml
/// [tracing]
/// enabled = true
/// endpoint = "http://otel-collector:4318"
/// protocol = "http/protobuf"   # or "grpc" (then port 4317)
/// service_name = "orders-consumer"
/// ```
///
/// Exporting needs the feature `otlp` ([`TracingConfig::start`]); a service built
/// without it refuses `enabled = true` at start rather than run untraced.
///
/// ```
/// use longshore::trace::{OtlpProtocol, TracingConfig};
///
/// let config: TracingConfig = toml::from_str(r#"
///     enabled = true
///     endpoint = "http://otel-collector:4318"
///     protocol = "grpc"
/// "#).unwrap();
/// assert_eq!(config.protocol, Some(OtlpProtocol::Grpc));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TracingConfig {
    /// Export spans (default `false`).
    pub enabled: bool,
    /// The collector: for HTTP its base URL (`http://host:4318`, or with a path prefix
    /// `https://gateway/otlp`), to which `/v1/traces` is added unless it ends so already;
    /// for gRPC `http://host:4317`. `https://` takes the system's root certificates.
    pub endpoint: Option<String>,
    /// `http/protobuf` or `grpc` (default: `OTEL_EXPORTER_OTLP_PROTOCOL`, else
    /// `http/protobuf`).
    pub protocol: Option<OtlpProtocol>,
    /// The `service.name` resource attribute (default: `OTEL_SERVICE_NAME`).
    pub service_name: Option<String>,
    /// How long one export may take (default 10 s).
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
}
