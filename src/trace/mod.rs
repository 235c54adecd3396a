//! Distributed tracing: an OpenTelemetry span for every message and batch, continuing
//! the trace its producer started.
//!
//! A message crosses services: a producer writes it, a longshore pipeline handles it, a
//! sink stores it. With the `otel` feature and [`PipelineBuilder::tracing`], each message
//! gets a `process` span (kind consumer, the [messaging semantic conventions]) whose
//! parent is the producer's span, read from the W3C `traceparent` / `tracestate` and
//! `baggage` the source's metadata carries (Kafka headers, SQS message attributes). The
//! span lasts from the first call of `handle_message` to the message's acknowledgement,
//! so its batch, its retries (events) and its dead-lettering (an event) are inside it;
//! each batch gets a span linked to its messages' spans. A dead-letter copy carries the
//! message span's context on ([`Message::trace_headers`]).
//!
//! Without the feature, or without [`PipelineBuilder::tracing`], no span is made: the
//! hot path only checks an `Option` that is `None`.
//!
//! A source opts in by implementing [`TraceMetadata`] for its metadata: it says which
//! system and destination a message came from, where its trace headers are, and which
//! attributes describe it. The trait needs no OpenTelemetry types, so connectors
//! implement it whether or not the feature is on.
//!
//! [messaging semantic conventions]: https://opentelemetry.io/docs/specs/semconv/messaging/
//! [`PipelineBuilder::tracing`]: crate::PipelineBuilder
//! [`Message::trace_headers`]: crate::Message::trace_headers

mod config;
#[cfg(feature = "otlp")]
mod otlp;
#[cfg(feature = "otel")]
mod spans;

pub use config::{OtlpProtocol, TracingConfig};
#[cfg(feature = "otlp")]
pub use otlp::TraceExport;

#[cfg(feature = "otel")]
pub use spans::Tracing;
#[cfg(feature = "otel")]
pub(crate) use spans::{
    batch_span, capped, end_batch_span, event, headers_of, Ending, ErasedTracing, MessageSpan, MAX_MESSAGE,
};

/// The OpenTelemetry context a stage runs a handler call within: the message's or the
/// batch's span, when the pipeline traces.
#[cfg(feature = "otel")]
pub(crate) type Within = Option<opentelemetry::Context>;
/// Without the `otel` feature there is never one.
#[cfg(not(feature = "otel"))]
pub(crate) type Within = Option<NoContext>;

/// What a context would be without the `otel` feature: nothing can be one.
#[cfg(not(feature = "otel"))]
#[derive(Clone)]
pub(crate) enum NoContext {}

/// Runs a handler call within its spans: the `tracing` span that logs carry, when its
/// level is on, and the OpenTelemetry context, when the pipeline traces. With neither,
/// the call itself: no wrapper polled on the hot path.
pub(crate) async fn within<F: std::future::Future>(logs: tracing::Span, otel: Within, call: F) -> F::Output {
    use tracing::Instrument;
    #[cfg(feature = "otel")]
    if let Some(context) = otel {
        return opentelemetry::context::FutureExt::with_context(call.instrument(logs), context).await;
    }
    #[cfg(not(feature = "otel"))]
    let _ = otel;
    if logs.is_disabled() {
        call.await
    } else {
        call.instrument(logs).await
    }
}

/// The names of the trace context headers a source's metadata is asked for: W3C Trace
/// Context and W3C Baggage.
pub const TRACE_HEADERS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// A value of a span attribute, as a source describes its messages.
///
/// ```
/// use longshore::trace::Attribute;
///
/// let offset = Attribute::Int(42);
/// assert_eq!(offset, Attribute::Int(42));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute<'a> {
    /// Text, such as a message id or a key.
    Text(&'a str),
    /// An integer, such as a partition or an offset.
    Int(i64),
}

/// What a message span is told about a message by its source's metadata.
///
/// ```
/// use longshore::trace::{Attribute, TraceMetadata};
///
/// /// A job from a table: its id, and the trace context its producer stored with it.
/// struct Job {
///     id: i64,
///     traceparent: Option<String>,
/// }
///
/// impl TraceMetadata for Job {
///     fn messaging_system(&self) -> &'static str {
///         "postgresql"
///     }
///     fn destination(&self) -> &str {
///         "jobs"
///     }
///     fn trace_header(&self, name: &str) -> Option<&str> {
///         (name == "traceparent").then_some(self.traceparent.as_deref()?)
///     }
///     fn attributes(&self, record: &mut dyn FnMut(&'static str, Attribute<'_>)) {
///         record("messaging.message.id", Attribute::Int(self.id));
///     }
/// }
///
/// let job = Job { id: 7, traceparent: None };
/// let mut seen = Vec::new();
/// job.attributes(&mut |name, value| seen.push((name, format!("{value:?}"))));
/// assert_eq!(seen, [("messaging.message.id", "Int(7)".to_owned())]);
/// ```
pub trait TraceMetadata {
    /// `messaging.system`: `kafka`, `aws_sqs`, `rabbitmq`, …
    fn messaging_system(&self) -> &'static str;

    /// `messaging.destination.name`: the topic or queue the message came from.
    fn destination(&self) -> &str;

    /// The value of the trace context header `name` (one of [`TRACE_HEADERS`]) the
    /// producer put on the message, if any.
    fn trace_header(&self, name: &str) -> Option<&str>;

    /// Calls `record` with each further attribute of the message: partition, offset,
    /// message id, key, as the semantic conventions name them for the system.
    fn attributes(&self, record: &mut dyn FnMut(&'static str, Attribute<'_>)) {
        let _ = record;
    }
}

/// Messages of the in-memory and test sources, which carry no metadata.
impl TraceMetadata for () {
    fn messaging_system(&self) -> &'static str {
        "longshore_memory"
    }

    fn destination(&self) -> &str {
        "memory"
    }

    fn trace_header(&self, _: &str) -> Option<&str> {
        None
    }
}
