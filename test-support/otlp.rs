//! An OTLP receiver on loopback for the tracing tests: it takes what an exporter sends,
//! over HTTP/protobuf (`POST /v1/traces`) and gRPC (`TraceService/Export`), and decodes
//! the protobuf into spans a test can read. A real collector is not packaged here; this
//! decodes the same wire format with the protocol's own generated types.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
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
                            (StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
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
                });
            }
        }
    }
    out
}
