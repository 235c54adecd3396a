//! The HTTP endpoint: `/metrics` for Prometheus, `/healthz` and `/readyz` for Kubernetes.

use std::net::SocketAddr;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, TextEncoder};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{health, registry};
use crate::control::watched::Watched;
use crate::control::{Control, ControlSurface};

/// Serves `/metrics` (the process registry in Prometheus' text format), `/healthz`
/// (200 while no pipeline of the process has failed: 503 once one has, see
/// [`PipelineError::Failed`](crate::PipelineError::Failed)) and `/readyz` (200 while every pipeline of the process
/// runs with its source ready; 503 before the source connects and once a shutdown starts).
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), longshore::metrics::BindError> {
/// let server = longshore::metrics::MetricsServer::bind("0.0.0.0:9090".parse().unwrap()).await?;
/// println!("metrics on http://{}/metrics", server.local_addr());
/// // ... start and run pipelines ...
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    pipelines: Watched,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The metrics server could not listen on its address, named as in the settings file.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use longshore::metrics::MetricsServer;
///
/// let taken = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
/// let error = MetricsServer::bind(taken.local_addr()).await.unwrap_err();
/// assert!(error.to_string().starts_with(&format!("cannot listen on metrics.addr {}: ", taken.local_addr())));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on metrics.addr {addr}: {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why it failed.
    #[source]
    pub source: std::io::Error,
}

/// Configures a [`MetricsServer`]; made by [`MetricsServer::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `bind` is called"]
pub struct MetricsServerBuilder {
    addr: SocketAddr,
    control: Option<ControlSurface>,
}

impl MetricsServerBuilder {
    /// Serves the control surface too, under `/control` (off unless given; see
    /// [`ControlSurface`]).
    pub fn control(mut self, surface: ControlSurface) -> Self {
        self.control = Some(surface);
        self
    }

    /// Binds the address (port 0 picks a free port) and serves on the current tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`BindError`] when the address cannot be bound (a port already taken, say).
    pub async fn bind(self) -> Result<MetricsServer, BindError> {
        MetricsServer::serve(self.addr, self.control).await
    }
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port) and serves on the current tokio runtime,
    /// with no control surface.
    ///
    /// # Errors
    ///
    /// [`BindError`] when the address cannot be bound (a port already taken, say).
    pub async fn bind(addr: SocketAddr) -> Result<Self, BindError> {
        MetricsServer::serve(addr, None).await
    }

    /// Starts configuring a server on `addr`, to add a control surface to it.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use longshore::control::ControlSurface;
    /// use longshore::metrics::MetricsServer;
    ///
    /// let surface = ControlSurface::from_token_file("/var/run/secrets/longshore/control-token".as_ref())?;
    /// let server = MetricsServer::builder("0.0.0.0:9090".parse()?).control(surface).bind().await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(addr: SocketAddr) -> MetricsServerBuilder {
        MetricsServerBuilder { addr, control: None }
    }

    async fn serve(addr: SocketAddr, control: Option<ControlSurface>) -> Result<Self, BindError> {
        let failed = |source| BindError { addr, source };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
        let local_addr = listener.local_addr().map_err(failed)?;
        let mut app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz));
        let pipelines = Watched::default();
        app = app.merge(super::page::routes(pipelines.clone(), control.is_some()));
        if let Some(surface) = &control {
            app = app.merge(surface.routes(pipelines.clone()));
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(super::connections::serve(listener, app, stop.clone()));
        tracing::info!(%local_addr, control = control.is_some(), "metrics and health endpoint listening");
        Ok(MetricsServer {
            local_addr,
            pipelines,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Puts a pipeline on the server: shown on `/topology` and, with the control surface
    /// on, offered on `/control`. A pipeline of the same name is replaced.
    pub fn add_pipeline(&self, control: Control) {
        self.pipelines.add(control);
    }

    /// Stops serving, letting requests under way finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn metrics() -> impl IntoResponse {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&registry().gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn healthz() -> impl IntoResponse {
    // The stalled stages, if any, follow the verdict (see `StallWatch`).
    let alive = health::alive();
    let mut body = if alive {
        String::from("ok")
    } else {
        String::from("a pipeline failed or stalled")
    };
    for line in health::stalls() {
        body.push('\n');
        body.push_str(&line);
    }
    let status = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

async fn readyz() -> impl IntoResponse {
    if health::ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
