//! `/topology` and its feed over a real socket: every stage of a running pipeline with
//! the pipeline's own figures, and a deliberately slowed batcher named as what limits
//! throughput.

mod common;

use std::time::Duration;

use longshore::metrics::MetricsServer;
use longshore::source::memory::MemorySource;
use longshore::{BatchInfo, Batcher, BoxError, Handler, Message, Pipeline, Processors};
use serde_json::Value;

/// Quick messages; batches of 10 that take 20 ms each.
struct SlowSink;

impl Handler for SlowSink {
    type Item = u64;
    type Metadata = ();

    async fn handle_message(&self, _: &mut Message<u64>) -> Result<(), BoxError> {
        Ok(())
    }

    async fn handle_batch(&self, _: &mut [Message<u64>], _: &BatchInfo) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

async fn feed(server: &MetricsServer) -> Value {
    let (status, body) = common::get(server.local_addr(), "/topology.json").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_every_stage_with_the_pipelines_figures_and_names_the_slow_batcher() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let pipeline = Pipeline::builder(MemorySource::from_iter(0..u64::MAX), SlowSink)
        .name("topology-test")
        .processors(Processors::new(2).max_demand(10))
        .batcher(Batcher::new("db").batch_size(10).concurrency(1))
        .start()
        .unwrap();
    server.add_pipeline(pipeline.control());
    let stats = pipeline.stats();

    // The first second measures; then the batcher is named, with the reason.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let feed = feed(&server).await;
        assert_eq!(feed["control"], false, "no control surface on this server");
        let shown = feed["pipelines"][0].clone();
        if shown["bottleneck"]["stage"] == "batch_processor" {
            break shown;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow batcher was never named: {}",
            shown["bottleneck"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(shown["bottleneck"]["batcher"], "db");
    let reason = shown["bottleneck"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("batcher db's batch processors"), "{reason}");
    assert!(reason.contains("% busy"), "{reason}");
    let stages: Vec<(String, String)> = shown["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_owned(),
                s["batcher"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let stage = |name: &str, batcher: &str| (name.to_owned(), batcher.to_owned());
    assert_eq!(
        stages,
        [
            stage("producer", ""),
            stage("processor", ""),
            stage("batcher", "db"),
            stage("batch_processor", "db")
        ]
    );
    let batch_processors = &shown["stages"][3];
    assert_eq!(batch_processors["tasks"], 1);
    assert!(
        batch_processors["busy_percent"].as_f64().unwrap() >= 80.0,
        "{batch_processors}"
    );
    // 20 ms a batch: the p50 is in the bucket holding 20 ms.
    let p50 = batch_processors["p50_ms"].as_f64().unwrap();
    assert!((20.0..=62.5).contains(&p50), "p50 {p50}");
    assert_eq!(shown["stages"][1]["tasks"], 2);

    // The figures are the pipeline's own at that moment: the feed's body is at most
    // half a second old (one body serves every client for that long), so one taken half
    // a second after `before` was made after it.
    let before = stats.get();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shown = feed(&server).await["pipelines"][0].clone();
    let after = stats.get();
    for (field, was, then) in [
        ("received", before.received, after.received),
        ("successful", before.successful, after.successful),
    ] {
        let value = shown[field].as_u64().unwrap();
        assert!(
            was <= value && value <= then,
            "{field}: {value} not within {was}..={then}"
        );
    }
    assert_eq!(
        shown["max_in_flight"].as_u64().unwrap() as usize,
        after.max_in_flight
    );

    let (status, head, page) = common::get_with_head(server.local_addr(), "/topology").await;
    assert_eq!(status, 200);
    let head = head.to_ascii_lowercase();
    for header in [
        "x-frame-options: deny",
        "content-security-policy: frame-ancestors 'none'",
        "x-content-type-options: nosniff",
    ] {
        assert!(head.contains(header), "no framing of the page: {head}");
    }
    assert!(page.contains("<title>longshore topology</title>"));
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(
            !page.contains(external),
            "the page loads nothing from elsewhere: {external}"
        );
    }

    pipeline.shutdown().await.unwrap();
    server.shutdown().await;
}

/// A pipeline that ended leaves the page (and the server forgets it); one that runs stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_pipeline_leaves_the_page() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let names = |feed: Value| -> Vec<String> {
        feed["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let running = Pipeline::builder(MemorySource::from_iter(0..u64::MAX), SlowSink)
        .name("stays")
        .batcher(Batcher::new("db").batch_size(10))
        .start()
        .unwrap();
    let ending = Pipeline::builder(MemorySource::from_iter(0..10u64), SlowSink)
        .name("ends")
        .batcher(Batcher::new("db").batch_size(10))
        .start()
        .unwrap();
    server.add_pipeline(running.control());
    server.add_pipeline(ending.control());
    assert_eq!(names(feed(&server).await), ["stays", "ends"]);
    ending.wait().await.unwrap();
    // The body made before it ended is served for at most half a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while names(feed(&server).await) != ["stays"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ended pipeline stays on the page"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.shutdown().await.unwrap();
    server.shutdown().await;
}
