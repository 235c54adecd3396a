//! The stall watch over a real socket: a hung handler is flagged in `/healthz`'s body, in
//! `longshore_stage_stalled` and on `/topology` after `stall.after`, and fails liveness
//! only when the watch says so. (Its own test binary: liveness is the process's.)

mod common;

use std::time::Duration;

use longshore::metrics::MetricsServer;
use longshore::source::memory::MemorySource;
use longshore::{BoxError, Handler, Message, Pipeline, Processors, StallWatch};

/// Message 5 hangs forever (a call without a timeout); the others pass.
struct Hangs;

impl Handler for Hangs {
    type Item = u64;
    type Metadata = ();

    async fn handle_message(&self, message: &mut Message<u64>) -> Result<(), BoxError> {
        if *message.data() == 5 {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

async fn until(server: &MetricsServer, path: &str, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = common::get(server.local_addr(), path).await;
        if done(status, &body) {
            return (status, body);
        }
        assert!(tokio::time::Instant::now() < deadline, "{path}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_handler_is_flagged_after_the_watchs_time_and_fails_liveness_only_if_asked() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let start = |name: &str, watch: StallWatch| {
        Pipeline::builder(MemorySource::from_iter(0..10u64), Hangs)
            .name(name)
            .processors(Processors::new(1).max_demand(1))
            .stall_watch(watch)
            .shutdown_deadline(Duration::from_millis(200))
            .start()
            .unwrap()
    };

    let pipeline = start("stall-flagged", StallWatch::after(Duration::from_secs(2)));
    server.add_pipeline(pipeline.control());
    let started = tokio::time::Instant::now();
    let (status, body) = until(&server, "/healthz", |_, body| body.contains("stalled:")).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "flagged only after stall.after"
    );
    assert_eq!(status, 200, "flagged, still alive: {body}");
    assert!(
        body.starts_with("ok\nstalled: stall-flagged processor, no progress for "),
        "{body}"
    );
    let (_, metrics) = common::get(server.local_addr(), "/metrics").await;
    let series = r#"longshore_stage_stalled{batcher="",pipeline="stall-flagged",stage="processor"}"#;
    assert_eq!(common::sample(&metrics, series), Some(1.0));
    let (_, feed) = common::get(server.local_addr(), "/topology.json").await;
    let feed: serde_json::Value = serde_json::from_str(&feed).unwrap();
    let shown = &feed["pipelines"][0];
    assert_eq!(shown["stalled"][0]["stage"], "processor");
    let reason = shown["bottleneck"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("processors stalled: holds 1 messages and has finished none"),
        "{reason}"
    );
    // Cut short at the deadline: the hung message goes back unacknowledged.
    assert!(pipeline.shutdown().await.is_err());
    let (_, metrics) = common::get(server.local_addr(), "/metrics").await;
    assert_eq!(
        common::sample(&metrics, series),
        Some(0.0),
        "cleared once it stopped"
    );

    let pipeline = start(
        "stall-fatal",
        StallWatch::after(Duration::from_secs(1)).fails_liveness(true),
    );
    let (_, body) = until(&server, "/healthz", |status, _| status == 503).await;
    assert!(
        body.starts_with("a pipeline failed or stalled\nstalled: stall-fatal processor"),
        "{body}"
    );
    assert!(pipeline.shutdown().await.is_err());
    assert_eq!(
        common::get(server.local_addr(), "/healthz").await.0,
        200,
        "alive again once it is gone"
    );
    server.shutdown().await;
}
