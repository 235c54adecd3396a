//! `/healthz` and `/readyz` over a real socket. A binary of its own: readiness is
//! process-wide, and other tests' pipelines would count in it.

mod common;

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use longshore::metrics::MetricsServer;
use longshore::source::memory::{AckCounts, MemorySource};
use longshore::{BoxError, Handler, Message, Pipeline, Source};

/// A channel source that reports ready only once `connected` is set.
struct Connecting {
    inner: MemorySource<u64>,
    connected: Arc<AtomicBool>,
}

impl Source for Connecting {
    type Data = u64;
    type Metadata = ();
    type Acknowledger = AckCounts;

    fn acknowledger(&self) -> Self::Acknowledger {
        self.inner.acknowledger()
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<u64>>>, BoxError> {
        self.inner.receive(demand).await
    }

    fn is_ready(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }
}

struct Ok;

impl Handler for Ok {
    type Item = u64;
    type Metadata = ();
    async fn handle_message(&self, _message: &mut Message<u64>) -> Result<(), BoxError> {
        Result::Ok(())
    }
}

#[tokio::test]
async fn readyz_is_ready_only_while_the_source_is_connected_and_the_pipeline_runs() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = server.local_addr();
    assert_eq!(common::get(addr, "/healthz").await.0, 200);
    assert_eq!(common::get(addr, "/readyz").await.0, 503, "no pipeline yet");

    let (inner, sender) = MemorySource::channel(10);
    let connected = Arc::new(AtomicBool::new(false));
    let source = Connecting {
        inner,
        connected: connected.clone(),
    };
    let pipeline = Pipeline::builder(source, Ok).start().unwrap();
    assert_eq!(common::get(addr, "/readyz").await.0, 503, "source not connected");
    connected.store(true, Ordering::SeqCst);
    assert_eq!(common::get(addr, "/readyz").await, (200, "ready".to_owned()));

    pipeline.stop_token().cancel();
    assert_eq!(common::get(addr, "/readyz").await.0, 503, "shutting down");
    assert_eq!(common::get(addr, "/healthz").await.0, 200, "alive while draining");
    drop(sender);
    pipeline.wait().await.expect("the pipeline ends cleanly");
    assert_eq!(common::get(addr, "/readyz").await.0, 503, "stopped");
    server.shutdown().await;
}
