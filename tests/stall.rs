//! The stall watch over a real socket: a hung handler is flagged in `/healthz`'s body, in
//! `longshore_stage_stalled` and on `/topology` after `stall.after`, and fails liveness
//! only when the watch says so; messages waiting as configured (a retry's backoff, a
//! rate limit) are no stall; a source's stalled part is flagged unless paused. (Its own
//! test binary: liveness is the process's.)

mod common;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use longshore::metrics::MetricsServer;
use longshore::source::memory::MemorySource;
use longshore::source::{SourcePanel, SourcePart};
use longshore::{
    BatchInfo, Batcher, BoxError, Handler, Message, Pipeline, Processors, RateLimit, RetryPolicy, Source,
    StallWatch,
};

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

/// With 4 processors, one call that never returns while the other 3 keep finishing
/// messages: the stage's finished count moves, and the hung call is flagged all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hung_call_among_busy_tasks_is_flagged() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let pipeline = Pipeline::builder(MemorySource::from_iter(0..u64::MAX), Hangs)
        .name("stall-one-of-four")
        .processors(Processors::new(4).max_demand(1))
        .stall_watch(StallWatch::after(Duration::from_secs(2)))
        .shutdown_deadline(Duration::from_millis(200))
        .start()
        .unwrap();
    server.add_pipeline(pipeline.control());
    let stats = pipeline.stats();
    let (_, body) = until(&server, "/healthz", |_, body| {
        body.contains("stall-one-of-four processor")
    })
    .await;
    assert!(body.contains("no progress for "), "{body}");
    let before = stats.get().successful;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(stats.get().successful > before, "the other tasks go on meanwhile");
    let _ = pipeline.shutdown().await;
    server.shutdown().await;
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
    let (status, body) = until(&server, "/healthz", |_, body| {
        body.contains("stall-flagged processor")
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "flagged only after stall.after"
    );
    assert_eq!(status, 200, "flagged, still alive: {body}");
    assert!(body.starts_with("ok\n"), "{body}");
    assert!(
        body.contains("\nstalled: stall-flagged processor, no progress for "),
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
    assert!(body.starts_with("a pipeline failed or stalled\n"), "{body}");
    assert!(body.contains("\nstalled: stall-fatal processor"), "{body}");
    assert!(pipeline.shutdown().await.is_err());
    until(&server, "/healthz", |status, body| {
        status == 200 && !body.contains("stall-fatal")
    })
    .await;
    server.shutdown().await;
}

/// Every message fails once (a retry waits out its backoff), then passes into a batcher
/// whose rate limit lets one batch through every few seconds.
struct FailsOnce;

impl Handler for FailsOnce {
    type Item = u64;
    type Metadata = ();

    async fn handle_message(&self, message: &mut Message<u64>) -> Result<(), BoxError> {
        if message.attempt() == 1 {
            return Err("not yet".into());
        }
        Ok(())
    }

    async fn handle_batch(&self, _: &mut [Message<u64>], _: &BatchInfo) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_out_a_backoff_or_a_rate_limit_are_no_stall() {
    waits_are_no_stall(false).await;
}

/// Ordered, a key's later messages wait behind its retry: waiting as configured too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_key_behind_its_retry_are_no_stall() {
    waits_are_no_stall(true).await;
}

async fn waits_are_no_stall(ordered: bool) {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let after = Duration::from_secs(1);
    let name = if ordered { "stall-ordered" } else { "stall-waits" };
    let mut builder = Pipeline::builder(MemorySource::from_iter(0..3u64), FailsOnce)
        .name(name)
        .processors(Processors::new(1))
        .retry(
            RetryPolicy::new(2)
                .initial_backoff(Duration::from_secs(3))
                .jitter(0.0),
        )
        .batcher(
            Batcher::new("slow")
                .batch_size(1)
                // Ordered, the messages come out of their retries 3 s apart: a batch
                // every 6 s makes the second wait.
                .rate_limit(RateLimit::new(1, Duration::from_secs(if ordered { 6 } else { 3 })).burst(1)),
        )
        .stall_watch(StallWatch::after(after));
    if ordered {
        builder = builder.partition_by(|_: &Message<u64>| 0);
    }
    let pipeline = builder.start().unwrap();
    server.add_pipeline(pipeline.control());
    let series = |stage: &str, batcher: &str| {
        format!(r#"longshore_stage_{{batcher="{batcher}",pipeline="{name}",stage="{stage}"}}"#)
    };
    let sample = |metrics: &str, name: &str, stage: &str, batcher: &str| {
        common::sample(
            metrics,
            &series(stage, batcher).replace("stage_{", &format!("stage_{name}{{")),
        )
    };
    // Each phase held for more than `after` (and looked at by the watch) without a flag.
    for (what, stage, batcher, gauge) in [
        ("a retry's backoff", "processor", "", "retry_waiting_messages"),
        (
            "a rate limit",
            "batch_processor",
            "slow",
            "rate_limit_waiting_messages",
        ),
    ] {
        until(&server, "/metrics", |_, metrics| {
            sample(metrics, gauge, stage, batcher).is_some_and(|n| n >= 1.0)
        })
        .await;
        let waiting_since = tokio::time::Instant::now();
        while waiting_since.elapsed() < after * 2 {
            let (_, metrics) = common::get(server.local_addr(), "/metrics").await;
            if sample(&metrics, gauge, stage, batcher) == Some(0.0) {
                break;
            }
            assert_eq!(
                sample(&metrics, "stalled", stage, batcher),
                Some(0.0),
                "{what} flagged as a stall"
            );
            let (_, health) = common::get(server.local_addr(), "/healthz").await;
            assert!(!health.contains(name), "{what} flagged as a stall: {health}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let summary = pipeline.wait().await.unwrap();
    assert_eq!((summary.successful, summary.retried), (3, 3));
    server.shutdown().await;
}

/// A source of one part whose stall the test sets, over a memory source.
struct Panelled {
    inner: MemorySource<u64>,
    panel: Arc<Part>,
}

/// A part whose source saw no progress since `since` (none: it progresses).
#[derive(Default)]
struct Part {
    since: std::sync::Mutex<Option<std::time::Instant>>,
    paused: std::sync::atomic::AtomicBool,
    in_flight: std::sync::atomic::AtomicU64,
}

impl SourcePanel for Part {
    fn parts(&self) -> Vec<SourcePart> {
        vec![SourcePart::new("queue-a")
            .waiting(7)
            .paused(self.paused.load(std::sync::atomic::Ordering::Relaxed))
            .in_flight(self.in_flight.load(std::sync::atomic::Ordering::Relaxed))
            .stalled_for(
                self.since
                    .lock()
                    .unwrap()
                    .map_or(Duration::ZERO, |since| since.elapsed()),
            )]
    }
}

impl Source for Panelled {
    type Data = u64;
    type Metadata = ();
    type Acknowledger = longshore::source::memory::AckCounts;

    fn acknowledger(&self) -> Self::Acknowledger {
        self.inner.acknowledger()
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<u64>>>, BoxError> {
        self.inner.receive(demand).await
    }

    fn panel(&self) -> Option<Arc<dyn SourcePanel>> {
        Some(self.panel.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_source_part_is_flagged_unless_it_or_the_pipeline_is_paused() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (inner, sender) = MemorySource::channel(1);
    let part = Arc::new(Part::default());
    let source = Panelled {
        inner,
        panel: part.clone(),
    };
    let pipeline = Pipeline::builder(source, Hangs)
        .name("stall-source")
        .stall_watch(StallWatch::after(Duration::from_secs(1)).fails_liveness(true))
        .start()
        .unwrap();
    server.add_pipeline(pipeline.control());
    let series = r#"longshore_source_stalled{part="queue-a",pipeline="stall-source"}"#;
    *part.since.lock().unwrap() = Some(std::time::Instant::now() - Duration::from_secs(5));
    let flagged = |_: u16, body: &str| body.contains("stall-source source queue-a");
    let (status, body) = until(&server, "/healthz", flagged).await;
    assert!(
        body.contains("\nstalled: stall-source source queue-a, no progress for 5s"),
        "the source's own reading at first: {body}"
    );
    // A source part's stall never fails liveness: a restart cannot mend a broker, and it
    // would redeliver all the pod holds.
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = common::get(server.local_addr(), "/metrics").await;
    assert_eq!(common::sample(&metrics, series), Some(1.0));
    let (_, feed) = common::get(server.local_addr(), "/topology.json").await;
    let feed: serde_json::Value = serde_json::from_str(&feed).unwrap();
    let shown = &feed["pipelines"][0];
    assert_eq!(shown["source"][0]["name"], "queue-a");
    assert_eq!(shown["source"][0]["waiting"], 7);
    let reason = shown["bottleneck"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("the source's queue-a stalled"), "{reason}");

    // Paused with messages of it still out, it is stalled still: they should finish.
    part.in_flight.store(3, std::sync::atomic::Ordering::Relaxed);
    part.paused.store(true, std::sync::atomic::Ordering::Relaxed);
    let watched_since = tokio::time::Instant::now();
    while watched_since.elapsed() < Duration::from_millis(2500) {
        let (_, body) = common::get(server.local_addr(), "/healthz").await;
        assert!(
            body.contains("stall-source source queue-a, no progress for"),
            "a pause hid messages out and unfinished: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // An operator's pause, of the part or of the pipeline, with nothing out, is no stall.
    part.in_flight.store(0, std::sync::atomic::Ordering::Relaxed);
    let clear = |_: u16, body: &str| !body.contains("stall-source");
    until(&server, "/healthz", clear).await;
    let (_, metrics) = common::get(server.local_addr(), "/metrics").await;
    assert_eq!(common::sample(&metrics, series), Some(0.0));
    // Resumed, its stall counts from the resume, not from before the pause.
    part.paused.store(false, std::sync::atomic::Ordering::Relaxed);
    let (_, body) = until(&server, "/healthz", flagged).await;
    assert!(!body.contains("no progress for 5s"), "{body}");
    pipeline.pause_switch().pause();
    until(&server, "/healthz", clear).await;
    pipeline.pause_switch().resume();
    let (_, body) = until(&server, "/healthz", flagged).await;
    assert!(!body.contains("no progress for 5s"), "{body}");
    *part.since.lock().unwrap() = None;
    until(&server, "/healthz", clear).await;
    drop(sender);
    pipeline.wait().await.unwrap();
    server.shutdown().await;
}
