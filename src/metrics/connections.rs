//! How the metrics server takes connections: each served on its own task, at most
//! [`MAX_CONNECTIONS`] at once, a request's headers read within [`HEADER_READ_TIMEOUT`].
//! The port answers Kubernetes' probes, so a slow or idle client must not hold it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connections served at once; one more is closed at once.
pub(crate) const MAX_CONNECTIONS: usize = 256;

/// How long a client has to send a request's headers, the wait for the next request on a
/// kept-alive connection included.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop`, then lets the requests under way finish.
pub(crate) async fn serve(listener: TcpListener, app: Router, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(%error, "metrics server could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = MAX_CONNECTIONS,
                "metrics server at its connection limit; one closed"
            );
            continue;
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away or times out is no error of the server's.
            let _ = connection.await;
            drop(slot);
        });
    }
    // New connections are refused at once rather than left in the backlog; a client that
    // stopped reading cannot hold the shutdown.
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_WAIT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(wait = ?SHUTDOWN_WAIT, "metrics server stopped with connections still open");
    }
}

/// How long a shutdown waits for the requests under way.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
