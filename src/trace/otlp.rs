//! Export over OTLP (feature `otlp`): the tracer provider the `[tracing]` settings make.

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use super::{OtlpProtocol, Tracing, TracingConfig};
use crate::error::BuildError;

/// A running OTLP export: give its [`Tracing`] to each pipeline, and
/// [`shut it down`](TraceExport::shutdown) at exit so the last spans leave. Dropped
/// without that, it shuts down on a thread of its own: never blocking the runtime.
#[derive(Debug)]
pub struct TraceExport {
    provider: Option<SdkTracerProvider>,
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
            // A batch's span links every message of it: the default keeps 128.
            .with_max_links_per_span(u32::MAX)
            .build();
        // The service's own calls (a handler's HTTP client) propagate and trace through
        // the globals: the same context and export as the pipelines'.
        opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]));
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok(Some(TraceExport {
            provider: Some(provider),
        }))
    }
}

impl TraceExport {
    /// The pipelines' tracer (see [`PipelineBuilder::tracing`](crate::PipelineBuilder::tracing)).
    pub fn tracing(&self) -> Tracing {
        Tracing::new(self.provider().tracer("longshore"))
    }

    /// The provider, to trace the service's own work with the same export (it is the
    /// global one too).
    pub fn provider(&self) -> &SdkTracerProvider {
        self.provider
            .as_ref()
            .expect("taken only by shutdown, which consumes the export")
    }

    /// Exports the spans still buffered and stops, on a blocking thread.
    ///
    /// # Errors
    ///
    /// The exporter's error, when the last spans could not be sent.
    pub async fn shutdown(mut self) -> Result<(), crate::BoxError> {
        let provider = self.provider.take().expect("shut down once");
        tokio::task::spawn_blocking(move || provider.shutdown()).await??;
        Ok(())
    }
}

impl Drop for TraceExport {
    fn drop(&mut self) {
        // Its shutdown waits for the exporter: never on a runtime's thread.
        if let Some(provider) = self.provider.take() {
            std::thread::spawn(move || {
                let _ = provider.shutdown();
            });
        }
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

/// The traces URL of an HTTP collector given by its base URL, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` gives it: `/v1/traces` added, unless it is there already.
fn http_traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_and_a_full_one_stays() {
        // A gateway's path prefix is a base too.
        assert_eq!(
            http_traces_url("https://gateway/otlp"),
            "https://gateway/otlp/v1/traces"
        );
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
