//! The spans themselves (feature `otel`): made with the tracer a service gives the
//! pipeline, parented on the context the producer propagated.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{Link, SpanKind, Status as SpanStatus, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use super::{Attribute, TraceMetadata, TRACE_HEADERS};
use crate::handler::BatchInfo;
use crate::message::Status;

/// The tracer a pipeline makes its spans with: give it to
/// [`PipelineBuilder::tracing`](crate::PipelineBuilder::tracing).
///
/// Any OpenTelemetry tracer will do: the service's own provider's, or the global one.
/// The service entry point builds one that exports over OTLP from the `[tracing]`
/// settings (feature `otlp`, [`TracingConfig`](crate::trace::TracingConfig)).
///
/// ```
/// use longshore::trace::Tracing;
/// use opentelemetry::trace::TracerProvider;
/// use opentelemetry_sdk::trace::SdkTracerProvider;
///
/// let provider = SdkTracerProvider::builder().build();
/// let tracing = Tracing::new(provider.tracer("orders-service"));
/// # drop(tracing);
/// ```
#[derive(Clone)]
pub struct Tracing {
    tracer: Arc<BoxedTracer>,
    propagator: Arc<TextMapCompositePropagator>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracing")
    }
}

impl Tracing {
    /// Spans made by `tracer`, parented on W3C Trace Context and Baggage read from each
    /// message.
    pub fn new<T, S>(tracer: T) -> Self
    where
        T: Tracer<Span = S> + Send + Sync + 'static,
        S: opentelemetry::trace::Span + Send + Sync + 'static,
    {
        Tracing {
            tracer: Arc::new(BoxedTracer::new(Box::new(tracer))),
            propagator: Arc::new(TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ])),
        }
    }

    /// Spans made by the global tracer provider's tracer named `longshore`.
    pub fn global() -> Self {
        Tracing::new(global::tracer("longshore"))
    }

    pub(crate) fn erase<M: TraceMetadata + Send + 'static>(self) -> Arc<dyn ErasedTracing<M>> {
        Arc::new(Typed {
            tracing: self,
            metadata: PhantomData,
        })
    }
}

/// [`Tracing`] for a pipeline whose metadata is `M`, with no bound on `M` left in the
/// pipeline's own types.
pub(crate) trait ErasedTracing<M>: Send + Sync {
    /// The span of a message about to be handled for the first time (its attempt is set
    /// when it ends: the last one).
    fn message(&self, metadata: &M) -> MessageSpan;

    /// The span of a batch, linked to the spans of its messages.
    fn batch(&self, info: &BatchInfo, links: Vec<Link>) -> Context;
}

struct Typed<M> {
    tracing: Tracing,
    metadata: PhantomData<fn(&M)>,
}

/// The context of a message's span: what a handler runs within.
pub(crate) type MessageSpan = Context;

impl<M: TraceMetadata + Send + 'static> ErasedTracing<M> for Typed<M> {
    fn message(&self, metadata: &M) -> MessageSpan {
        let parent = self.tracing.propagator.extract(&Headers(metadata));
        let destination = metadata.destination();
        let mut attributes = vec![
            KeyValue::new("messaging.system", metadata.messaging_system()),
            KeyValue::new("messaging.destination.name", destination.to_owned()),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
        ];
        metadata.attributes(&mut |name, value| {
            attributes.push(KeyValue::new(name, attribute(value)));
        });
        let span = self
            .tracing
            .tracer
            .span_builder(format!("process {destination}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .start_with_context(&*self.tracing.tracer, &parent);
        parent.with_span(span)
    }

    fn batch(&self, info: &BatchInfo, links: Vec<Link>) -> Context {
        let size = links.len() as i64;
        let span = self
            .tracing
            .tracer
            .span_builder(format!("process batch {}", info.batcher))
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("longshore.batcher", info.batcher.to_string()),
                KeyValue::new("longshore.batch.trigger", info.trigger.as_str()),
                KeyValue::new("messaging.batch.message_count", size),
            ])
            .with_links(links)
            .start_with_context(&*self.tracing.tracer, &Context::new());
        Context::new().with_span(span)
    }
}

fn attribute(value: Attribute<'_>) -> Value {
    match value {
        Attribute::Text(text) => Value::String(capped(text, MAX_TEXT).into()),
        Attribute::Int(n) => Value::I64(n),
    }
}

/// A message's trace headers, as a propagator reads them.
struct Headers<'a, M>(&'a M);

impl<M: TraceMetadata> Extractor for Headers<'_, M> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.trace_header(key)
    }

    fn keys(&self) -> Vec<&str> {
        TRACE_HEADERS
            .into_iter()
            .filter(|name| self.0.trace_header(name).is_some())
            .collect()
    }
}

/// A message's span about to end: taken out of the message before it is handed to the
/// acknowledger (which takes the message), ended once that call returned.
pub(crate) struct Ending {
    span: Context,
    status: Status,
    attempt: u32,
    outcome: &'static str,
}

impl Ending {
    pub(crate) fn new(span: Context, status: &Status, attempt: u32, outcome: &'static str) -> Self {
        Ending {
            span,
            status: status.clone(),
            attempt,
            outcome,
        }
    }

    /// Ends the span with its outcome: `success`, `failed` (discarded), `dead_lettered`,
    /// `redelivered` (by the broker, after a failure) or `released` (unfinished at
    /// shutdown); `unacknowledged`, with an error status, when the acknowledger
    /// panicked (the broker delivers the message again).
    pub(crate) fn end(self, acknowledged: bool) {
        let span = self.span.span();
        span.set_attribute(KeyValue::new("longshore.attempt", i64::from(self.attempt)));
        let outcome = if acknowledged {
            self.outcome
        } else {
            "unacknowledged"
        };
        span.set_attribute(KeyValue::new("longshore.outcome", outcome));
        if let Status::Failed(failure) = &self.status {
            span.set_attribute(KeyValue::new("error.type", failure.kind().to_string()));
            span.set_status(SpanStatus::error(capped(
                &failure.error().to_string(),
                MAX_MESSAGE,
            )));
        } else if !acknowledged {
            span.set_status(SpanStatus::error("the acknowledger panicked"));
        }
        span.end();
    }
}

/// The longest text attribute kept from a message (a key, an id): a span's attributes
/// travel in export batches a collector caps (4 MiB over gRPC).
const MAX_TEXT: usize = 256;

/// The longest error message kept on a span or event.
pub(crate) const MAX_MESSAGE: usize = 1024;

/// `text`, cut to at most `max` bytes on a character boundary.
pub(crate) fn capped(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// An event on a message's span.
pub(crate) fn event(span: &Context, name: &'static str, attributes: Vec<KeyValue>) {
    span.span().add_event(Cow::Borrowed(name), attributes);
}

/// The trace context headers that continue `span`'s trace (W3C Trace Context and
/// Baggage), for a copy of its message written elsewhere.
pub(crate) fn headers_of(span: &Context) -> Vec<(&'static str, String)> {
    struct Collect(Vec<(&'static str, String)>);
    impl Injector for Collect {
        fn set(&mut self, key: &str, value: String) {
            // No empty `tracestate`: SQS refuses an attribute with an empty value.
            if value.is_empty() {
                return;
            }
            if let Some(name) = TRACE_HEADERS.into_iter().find(|name| *name == key) {
                self.0.push((name, value));
            }
        }
    }
    let mut headers = Collect(Vec::new());
    TraceContextPropagator::new().inject_context(span, &mut headers);
    BaggagePropagator::new().inject_context(span, &mut headers);
    headers.0
}

/// The span of `batch`, linked to each of its messages' spans.
pub(crate) fn batch_span<T, M>(
    tracing: &dyn ErasedTracing<M>,
    info: &BatchInfo,
    batch: &[crate::Message<T, M>],
) -> Context {
    let links = batch
        .iter()
        .filter_map(crate::Message::trace_context)
        .map(|span| Link::with_context(span.span().span_context().clone()))
        .collect();
    tracing.batch(info, links)
}

/// Ends a batch's span: an error status when the handler failed it (`Some(Err)`) or the
/// deadline cut it short (`None`).
pub(crate) fn end_batch_span(span: &Context, handled: Option<&Result<(), crate::Failure>>) {
    let span = span.span();
    match handled {
        Some(Ok(())) => {}
        Some(Err(failure)) => {
            span.set_attribute(KeyValue::new("error.type", failure.kind().to_string()));
            span.set_status(SpanStatus::error(failure.error().to_string()));
        }
        None => span.set_status(SpanStatus::error("abandoned at the shutdown deadline")),
    }
    span.end();
}
