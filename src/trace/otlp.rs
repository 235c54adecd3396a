//! Export over OTLP (feature `otlp`): the `[tracing]` settings of a service, and the
//! tracer provider they make.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde::Deserialize;

use super::Tracing;
use crate::error::BuildError;

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
/// ```
/// use longshore::trace::TracingConfig;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let config: TracingConfig = toml::from_str("enabled = false").unwrap();
/// assert!(config.start().unwrap().is_none());
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TracingConfig {
    /// Export spans (default `false`).
    pub enabled: bool,
    /// The collector: a base URL (`http://host:4318`, to which `/v1/traces` is added) or
    /// the traces URL itself for HTTP; `http://host:4317` for gRPC.
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

/// A running OTLP export: give its [`Tracing`] to each pipeline, and
/// [`shut it down`](TraceExport::shutdown) at exit so the last spans leave.
#[derive(Debug)]
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TracingConfig {
    /// Starts exporting, or `None` when not `enabled`. With gRPC, call it on the tokio
    /// runtime the service runs on.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming `tracing.protocol` or `tracing.endpoint` when they cannot
    /// be used.
    pub fn start(&self) -> Result<Option<TraceExport>, BuildError> {
        if !self.enabled {
            return Ok(None);
        }
        let protocol = match self.protocol {
            Some(protocol) => protocol,
            None => protocol_from_env()?,
        };
        let exporter = match protocol {
            OtlpProtocol::HttpProtobuf => {
                let mut builder = SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary);
                if let Some(endpoint) = &self.endpoint {
                    builder = builder.with_endpoint(http_traces_url(endpoint));
                }
                if let Some(timeout) = self.timeout {
                    builder = builder.with_timeout(timeout);
                }
                builder.build()
            }
            OtlpProtocol::Grpc => {
                let mut builder = SpanExporter::builder().with_tonic();
                if let Some(endpoint) = &self.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(timeout) = self.timeout {
                    builder = builder.with_timeout(timeout);
                }
                builder.build()
            }
        }
        .map_err(|error| BuildError::new("tracing.endpoint", error.to_string()))?;
        let mut resource = Resource::builder();
        if let Some(name) = &self.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        Ok(Some(TraceExport { provider }))
    }
}

impl TraceExport {
    /// The pipelines' tracer (see [`PipelineBuilder::tracing`](crate::PipelineBuilder::tracing)).
    pub fn tracing(&self) -> Tracing {
        Tracing::new(self.provider.tracer("longshore"))
    }

    /// The provider, to trace the service's own work with the same export.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Exports the spans still buffered and stops. Blocks: call it from
    /// `tokio::task::spawn_blocking` inside a runtime.
    ///
    /// # Errors
    ///
    /// The exporter's error, when the last spans could not be sent.
    pub fn shutdown(self) -> Result<(), crate::BoxError> {
        self.provider.shutdown()?;
        Ok(())
    }
}

fn protocol_from_env() -> Result<OtlpProtocol, BuildError> {
    match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").ok().as_deref() {
        None | Some("http/protobuf") => Ok(OtlpProtocol::HttpProtobuf),
        Some("grpc") => Ok(OtlpProtocol::Grpc),
        Some(other) => Err(BuildError::new(
            "tracing.protocol",
            format!("OTEL_EXPORTER_OTLP_PROTOCOL is {other:?}: longshore exports http/protobuf or grpc"),
        )),
    }
}

/// The traces URL of an HTTP collector given by its base URL (as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` gives it), or the traces URL itself.
fn http_traces_url(endpoint: &str) -> String {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    match rest.find('/') {
        Some(at) if rest[at..] != *"/" => endpoint.to_owned(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_and_a_full_one_stays() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://c:4318/otlp/v1/traces"),
            "http://c:4318/otlp/v1/traces"
        );
    }

    #[test]
    fn unknown_settings_and_protocols_are_refused() {
        let error = toml::from_str::<TracingConfig>("protocol = \"http/json\"").unwrap_err();
        assert!(error.to_string().contains("http/protobuf"), "{error}");
        let error = toml::from_str::<TracingConfig>("endpiont = \"x\"").unwrap_err();
        assert!(error.to_string().contains("unknown field"), "{error}");
    }
}
