//! An OTLP receiver on loopback for the tracing tests: it takes what an exporter sends,
//! over HTTP/protobuf (`POST /v1/traces`) and gRPC (`TraceService/Export`), and decodes
//! the protobuf into spans a test can read. A real collector is not packaged here; this
//! decodes the same wire format with the protocol's own generated types.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeSet, HashMap};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::StatusCode;
use longshore::{BatchInfo, BoxError, Handler, Message};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use prost::Message as _;

/// One span as received.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub service: String,
    /// Hex, as `TraceId`'s `Display` writes it.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// The protocol's span kind: 5 is consumer, 1 internal.
    pub kind: i32,
    pub attributes: HashMap<String, String>,
    /// Each link's trace and span id.
    pub links: Vec<(String, String)>,
    pub events: Vec<(String, HashMap<String, String>)>,
    /// The protocol's status code: 2 is error.
    pub status: i32,
    /// Start and end, in nanoseconds since the epoch.
    pub start: u64,
    pub end: u64,
    /// Each event's name and time.
    pub event_times: Vec<(String, u64)>,
}

/// The receiver; its servers run until the test's runtime ends.
#[derive(Clone)]
pub struct Receiver {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            http: http.local_addr().unwrap(),
            grpc: grpc.local_addr().unwrap(),
            spans: spans.clone(),
        };
        let keep = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let keep = keep.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            keep.lock().unwrap().extend(spans_of(request));
                            (
                                StatusCode::OK,
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )
                        }
                        Err(error) => (StatusCode::BAD_REQUEST, error.to_string().into_bytes()),
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(http, app).await.unwrap() });
        let service = TraceServiceServer::new(Grpc(spans));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .unwrap()
        });
        receiver
    }

    /// The HTTP endpoint, as `[tracing] endpoint` takes it.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The gRPC endpoint.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

struct Grpc(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().extend(spans_of(request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(list: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(n)) => n.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn spans_of(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .and_then(|a| a.get("service.name").cloned())
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                out.push(Span {
                    name: span.name,
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    events: span
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attributes(&e.attributes)))
                        .collect(),
                    status: span.status.map_or(0, |s| s.code),
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                    event_times: span
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), e.time_unix_nano))
                        .collect(),
                });
            }
        }
    }
    out
}

/// The producer's span of each message, by the test's key: trace id and span id.
pub type Produced = HashMap<String, (String, String)>;

/// A producer service's span around publishing one message: the trace context headers it
/// puts on the message (W3C Trace Context, and `baggage` when given), and its ids.
pub fn publish(
    tracer: &opentelemetry_sdk::trace::SdkTracer,
    baggage: Option<(&'static str, &'static str)>,
) -> (HashMap<String, String>, (String, String)) {
    let span = tracer.start("publish");
    let ids = (
        span.span_context().trace_id().to_string(),
        span.span_context().span_id().to_string(),
    );
    let mut cx = opentelemetry::Context::current_with_span(span);
    if let Some((name, value)) = baggage {
        cx = opentelemetry::baggage::BaggageExt::with_baggage(
            &cx,
            [opentelemetry::KeyValue::new(name, value)],
        );
    }
    let mut headers = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut headers);
    BaggagePropagator::new().inject_context(&cx, &mut headers);
    // As a producer must for SQS, which refuses empty attributes (`tracestate`).
    headers.retain(|_, value| !value.is_empty());
    (headers, ids)
}

fn span_id(cx: &opentelemetry::Context) -> String {
    cx.span().span_context().span_id().to_string()
}

/// Fails the messages `poison` picks every time; records each batch with the span it ran
/// in and its messages' spans, as the handler sees them, and any message not handled
/// within its own span.
pub struct Traced<T, M> {
    poison: fn(&M) -> bool,
    pub batches: Mutex<Vec<(String, BTreeSet<String>)>>,
    pub outside_their_span: std::sync::atomic::AtomicUsize,
    data: PhantomData<fn(T)>,
}

impl<T, M> Traced<T, M> {
    pub fn new(poison: fn(&M) -> bool) -> Self {
        Traced {
            poison,
            batches: Mutex::new(Vec::new()),
            outside_their_span: Default::default(),
            data: PhantomData,
        }
    }
}

impl<T: Send + Sync + 'static, M: Send + Sync + 'static> Handler for Traced<T, M> {
    type Item = T;
    type Metadata = M;

    async fn handle_message(&self, message: &mut Message<T, M>) -> Result<(), BoxError> {
        let current = span_id(&opentelemetry::Context::current());
        if Some(current) != message.trace_context().map(span_id) {
            self.outside_their_span
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if (self.poison)(message.metadata()) {
            return Err("poison".into());
        }
        Ok(())
    }

    async fn handle_batch(&self, batch: &mut [Message<T, M>], _: &BatchInfo) -> Result<(), BoxError> {
        let messages = batch
            .iter()
            .map(|m| span_id(m.trace_context().expect("a traced message")))
            .collect();
        let current = span_id(&opentelemetry::Context::current());
        self.batches.lock().unwrap().push((current, messages));
        Ok(())
    }
}

/// Checks what every traced pipeline's spans must show, for messages told apart by the
/// attribute `key` (the producer's key of each in `produced`), one of them `poison`:
/// - one consumer span `process {destination}` per message, in its producer's trace with
///   the producer's span as parent, with the documented attributes and outcome;
/// - the poison message's retry and dead-lettering as events, with an error status;
/// - each batch's span (`process batch {batcher}`) linking exactly its messages' spans.
///
/// Returns the message spans by key.
pub fn assert_traced<T, M>(
    spans: &[Span],
    handler: &Traced<T, M>,
    expect: Expect<'_>,
) -> HashMap<String, Span> {
    assert_eq!(
        handler
            .outside_their_span
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a handler ran outside its message's span"
    );
    let name = format!("process {}", expect.destination);
    let mut messages: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    // Redelivered by the broker, the poison message comes back as a new delivery with a
    // span of its own: the first ends `redelivered`, with the retry as its event.
    if expect.redelivered_by_broker {
        let first = messages
            .iter()
            .position(|s| s.attributes["longshore.outcome"] == "redelivered")
            .expect("the poison message's first delivery");
        let first = messages.remove(first);
        assert_eq!(first.attributes[expect.key], expect.poison);
        assert_eq!(first.attributes["longshore.attempt"], "1");
        let events: Vec<&str> = first.events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(events, ["retry"]);
        assert_eq!(first.status, 2, "an error status");
        let (trace, parent) = &expect.produced[expect.poison];
        assert_eq!((&first.trace_id, &first.parent_span_id), (trace, parent));
    }
    assert_eq!(messages.len(), expect.produced.len(), "one span per message");
    let mut by_key = HashMap::new();
    for span in &messages {
        let attribute = |name: &str| span.attributes.get(name).map(String::as_str);
        let key = attribute(expect.key).unwrap_or_else(|| panic!("{} recorded: {span:?}", expect.key));
        let (trace, parent) = &expect.produced[key];
        assert_eq!(&span.trace_id, trace, "{key}: the producer's trace");
        assert_eq!(
            &span.parent_span_id, parent,
            "{key}: the producer's span is the parent"
        );
        assert_eq!(span.kind, 5, "a consumer span");
        assert_eq!(span.service, expect.service);
        assert_eq!(attribute("messaging.system"), Some(expect.system));
        assert_eq!(attribute("messaging.destination.name"), Some(expect.destination));
        assert_eq!(attribute("messaging.operation.type"), Some("process"));
        let events: Vec<&str> = span.events.iter().map(|(name, _)| name.as_str()).collect();
        if key == expect.poison && expect.redelivered_by_broker {
            assert_eq!(attribute("longshore.attempt"), Some("2"));
            assert_eq!(attribute("longshore.outcome"), Some("dead_lettered"));
            assert_eq!(events, ["dead_lettered"]);
            assert_eq!(span.status, 2, "an error status");
        } else if key == expect.poison {
            // Its last attempt: retried once in the pipeline.
            assert_eq!(attribute("longshore.attempt"), Some("2"));
            assert_eq!(attribute("longshore.outcome"), Some("dead_lettered"));
            assert_eq!(events, ["retry", "dead_lettered"]);
            assert_eq!(span.events[0].1["longshore.attempt"], "1");
            assert_eq!(span.events[0].1["exception.message"], "poison");
            assert_eq!(span.status, 2, "an error status");
            assert_eq!(attribute("error.type"), Some("error"));
        } else {
            assert_eq!(attribute("longshore.attempt"), Some("1"));
            assert_eq!(attribute("longshore.outcome"), Some("success"), "{key}");
            assert!(events.is_empty(), "{key}: {events:?}");
            assert_ne!(span.status, 2);
        }
        assert!(
            by_key.insert(key.to_owned(), (*span).clone()).is_none(),
            "{key} has two spans"
        );
    }

    let batches = handler.batches.lock().unwrap().clone();
    let batch_name = format!("process batch {}", expect.batcher);
    let batch_spans: HashMap<&str, &Span> = spans
        .iter()
        .filter(|s| s.name == batch_name)
        .map(|s| (s.span_id.as_str(), s))
        .collect();
    assert_eq!(batch_spans.len(), batches.len());
    assert_eq!(
        batches.iter().map(|(_, m)| m.len()).sum::<usize>(),
        expect.produced.len() - 1,
        "every message but the poison one was batched once"
    );
    let traces: HashMap<&str, &str> = messages
        .iter()
        .map(|s| (s.span_id.as_str(), s.trace_id.as_str()))
        .collect();
    for (batch, members) in &batches {
        let span = batch_spans[batch.as_str()];
        assert_eq!(
            span.attributes["messaging.batch.message_count"],
            members.len().to_string()
        );
        let linked: BTreeSet<String> = span.links.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(&linked, members, "batch {batch} links exactly its messages");
        for (trace, id) in &span.links {
            assert_eq!(traces[id.as_str()], trace);
        }
    }
    by_key
}

/// What [`assert_traced`] expects of a source's spans.
pub struct Expect<'a> {
    pub produced: &'a Produced,
    pub key: &'a str,
    pub poison: &'a str,
    pub system: &'a str,
    pub destination: &'a str,
    pub batcher: &'a str,
    pub service: &'a str,
    /// The source's failed messages come back from the broker (SQS), not from the
    /// pipeline's own retry (Kafka).
    pub redelivered_by_broker: bool,
}

/// The `[tracing]` settings exporting to `receiver` over `protocol`.
pub fn settings(receiver: &Receiver, protocol: &str, service: &str) -> longshore::trace::TracingConfig {
    let endpoint = match protocol {
        "grpc" => receiver.grpc_endpoint(),
        _ => receiver.http_endpoint(),
    };
    let text = format!(
        "enabled = true\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\nservice_name = \"{service}\""
    );
    toml::from_str(&text).unwrap()
}

/// One trace drawn as a waterfall (SVG): the spans of `trace`, each a bar on the time
/// axis under its service's name, events as ticks, and the spans linked to them (a
/// batch's) drawn after, marked as links. The README's picture comes from it.
pub fn waterfall(spans: &[Span], trace: &str) -> String {
    let mut rows: Vec<(&Span, bool)> = spans
        .iter()
        .filter(|s| s.trace_id == trace)
        .map(|s| (s, false))
        .collect();
    rows.sort_by_key(|(s, _)| s.start);
    let ids: Vec<&str> = rows.iter().map(|(s, _)| s.span_id.as_str()).collect();
    let linked: Vec<&Span> = spans
        .iter()
        .filter(|s| s.links.iter().any(|(_, id)| ids.contains(&id.as_str())))
        .collect();
    rows.extend(linked.into_iter().map(|s| (s, true)));
    // The time axis is the consumer's: the wait in the queue before it (seconds, while a
    // group forms) would squeeze its spans to nothing. The producer's spans are drawn at
    // the start, with that wait in words.
    let from = rows
        .iter()
        .filter(|(s, _)| s.service != "producer")
        .map(|(s, _)| s.start)
        .min()
        .unwrap_or(0);
    let to = rows.iter().map(|(s, _)| s.end).max().unwrap_or(1).max(from + 1);
    let (label, width, row) = (330.0, 560.0, 34.0);
    let x = |t: u64| label + (t.saturating_sub(from)) as f64 / (to - from) as f64 * width;
    let height = 60.0 + row * rows.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-weight=\"bold\">trace {trace}</text>\n\
         <text x=\"{label}\" y=\"20\" fill=\"#555\">0 ms</text>\n\
         <text x=\"{end}\" y=\"20\" fill=\"#555\" text-anchor=\"end\">{ms:.1} ms</text>\n",
        w = label + width + 20.0,
        end = label + width,
        ms = (to - from) as f64 / 1e6,
    );
    for (i, (span, is_link)) in rows.iter().enumerate() {
        let y = 40.0 + row * i as f64;
        let mut depth = 0;
        if !is_link {
            let mut parent = span.parent_span_id.as_str();
            while let Some((up, _)) = rows.iter().find(|(s, link)| !link && s.span_id == parent) {
                depth += 1;
                parent = up.parent_span_id.as_str();
            }
        }
        let indent = 10.0 + 14.0 * depth as f64;
        let name = if *is_link {
            format!("{} (links it)", span.name)
        } else if span.end < from {
            format!("{} ({:.0} ms before)", span.name, (from - span.end) as f64 / 1e6)
        } else {
            span.name.clone()
        };
        let color = match (span.status, is_link) {
            (2, _) => "#d9534f",
            (_, true) => "#999999",
            _ if span.service == "producer" => "#5b8def",
            _ => "#3aa76d",
        };
        let (x0, x1) = (x(span.start), x(span.end).max(x(span.start) + 3.0));
        svg.push_str(&format!(
            "<text x=\"{indent}\" y=\"{ty}\">{service}: {name}</text>\n\
             <rect x=\"{x0:.1}\" y=\"{by}\" width=\"{bw:.1}\" height=\"16\" rx=\"3\" fill=\"{color}\"/>\n",
            ty = y + 13.0,
            service = span.service,
            by = y + 1.0,
            bw = x1 - x0,
        ));
        for (n, (event, at)) in span.event_times.iter().enumerate() {
            let ex = x(*at);
            let tyy = y + 30.0 + 10.0 * n as f64;
            svg.push_str(&format!(
                "<line x1=\"{ex:.1}\" y1=\"{y0}\" x2=\"{ex:.1}\" y2=\"{y1}\" stroke=\"black\" stroke-width=\"2\"/>\n\
                 <text x=\"{tx:.1}\" y=\"{tyy}\" font-size=\"10\" text-anchor=\"{anchor}\">{event}</text>\n",
                y0 = y - 2.0,
                y1 = y + 19.0,
                // Near the right edge, the label goes left of its tick.
                tx = if ex > label + width - 100.0 { ex - 3.0 } else { ex + 3.0 },
                anchor = if ex > label + width - 100.0 { "end" } else { "start" },
            ));
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// Runs `builder`'s pipeline with a batcher `sink` of `batch_size`, two attempts a message,
/// and the tracing of `export`, until `count` messages are finished; stops it, then the
/// export (which sends what it still holds): every span is then in `receiver`.
pub async fn run_traced<S, H, C>(
    builder: longshore::PipelineBuilder<S, H, C>,
    export: longshore::trace::TraceExport,
    batch_size: usize,
    count: u64,
    receiver: &Receiver,
) -> Vec<Span>
where
    S: longshore::Source,
    S::Metadata: longshore::trace::TraceMetadata + Sync,
    H: Handler<Metadata = S::Metadata>,
    C: longshore::decode::Decode<S::Data, S::Metadata, Output = H::Item>,
{
    use std::time::Duration;
    let pipeline = builder
        .batcher(
            longshore::Batcher::new("sink")
                .batch_size(batch_size)
                .batch_timeout(Duration::from_millis(200)),
        )
        .retry(longshore::RetryPolicy::new(2).initial_backoff(Duration::from_millis(5)))
        .tracing(export.tracing())
        .start()
        .unwrap();
    let stats = pipeline.stats();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stats.get().successful + stats.get().failed < count {
        assert!(
            std::time::Instant::now() < deadline,
            "{count} messages not finished: {:?}",
            stats.get()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pipeline.shutdown().await.unwrap();
    export.shutdown().await.unwrap();
    receiver.spans()
}
